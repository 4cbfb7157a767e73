from __future__ import annotations

import socket
import time

from services.infra.errors import InfraError


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, what: str) -> None:
    if not port_is_free(host, port):
        raise InfraError(f"{what}: port {host}:{port} is already taken; free it or choose another port")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def log_tail(path: object, lines: int = 30) -> str:
    from pathlib import Path

    p = Path(str(path))
    if not p.exists():
        return "(no log written)"
    return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
