"""The API's listening socket hands out connections with TCP_NODELAY (services.bootstrap.bind_api_socket): without
it every response on a kept-alive connection waited ~40 ms for the client's delayed ACK (issue 15)."""

from __future__ import annotations

import socket

import uvicorn

from services.bootstrap import bind_api_socket


def test_accepted_api_connections_have_tcp_nodelay() -> None:
    config = uvicorn.Config(app=lambda scope, receive, send: None, host="127.0.0.1", port=0)
    listener = bind_api_socket(config)
    try:
        listener.listen()
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        accepted, _ = listener.accept()
        try:
            assert accepted.proto != socket.IPPROTO_TCP  # so asyncio would not set it itself
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()
