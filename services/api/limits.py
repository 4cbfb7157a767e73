"""The request body's size limit (issue 12: bounded input everywhere).

Every field of every request body is bounded by its type (``events.base``), so the largest valid body is a few
hundred kilobytes (a prescription of ITEMS_MAX items, a dispense of TRACE_CODES_MAX codes). A body larger than
``BODY_MAX`` is answered 413 before it is parsed, so no request makes the server hold megabytes in memory or parse
them; the body is read at most once (up to the limit) and handed on unchanged.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_MAX = 4 * 1024 * 1024
"""Bytes of a request body: well above the largest valid body (so a body of a few megabytes still gets its 422 naming
the field that is too long), well below anything that strains the server."""


class BodyLimit:
    """Pure ASGI middleware: 413 ``{"error": "PayloadTooLarge", ...}`` for a body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int = BODY_MAX) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([], message), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(send, size)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)

    async def _too_large(self, send: Send, size: int) -> None:
        body = json.dumps({"error": "PayloadTooLarge",
                           "reason": f"request body of {size} bytes or more; at most {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(chunks: list[bytes], last: Message | None, then: Receive | None = None) -> Receive:
    """A ``receive`` that hands over the buffered body once, then whatever the client sends next."""
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}] if chunks \
        or last is None else []
    if last is not None:
        pending.append(last)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive



