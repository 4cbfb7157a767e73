"""TCP ports: choosing free ones without races, checking and waiting for them.

Choosing a port and binding it later is a race: another process (or the next call in this one) may take it in
between. Two rules keep it away:

- ``free_ports(n)`` holds every probe socket open until all ``n`` are chosen, so one call never returns the
  same port twice, and remembers what it handed out, so later calls in this process do not return it again
  while the port is still unbound;
- ``start_on_free_port(start)`` starts a server on a chosen port and, if the port was taken meanwhile
  (``PortTaken``), chooses another and tries again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from services.infra.errors import InfraError

T = TypeVar("T")

_handed_out: set[tuple[str, int]] = set()
_lock = threading.Lock()


class PortTaken(InfraError):
    """A server could not listen: its port is already taken."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"{what}: port {host}:{port} is already taken; free it or choose another port")
        self.host, self.port, self.what = host, port, what


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # servers bind with SO_REUSEADDR, so a port held only by TIME_WAIT counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, what: str) -> None:
    if not port_is_free(host, port):
        raise PortTaken(host, port, what)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now, none handed out before by this process.

    Every probe socket stays bound until all are chosen (so the kernel cannot give one port twice); a port an
    earlier call handed out is skipped and probed again."""
    if count < 1:
        raise ValueError("count must be at least 1")
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        with _lock:
            while len(chosen) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind((host, 0))
                port = int(s.getsockname()[1])
                if (host, port) in _handed_out or port in chosen:
                    continue  # keep it bound so the kernel offers another
                chosen.append(port)
            _handed_out.update((host, p) for p in chosen)
    finally:
        for s in held:
            s.close()
    return chosen


def free_port(host: str = "127.0.0.1") -> int:
    """One free port (see ``free_ports``)."""
    return free_ports(1, host)[0]


def start_on_free_port(start: Callable[[int], T], *, host: str = "127.0.0.1", attempts: int = 5) -> T:
    """``start(port)`` on a free port; when the port was taken before the server bound it (``start`` raised
    ``PortTaken``), choose another and start again, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port(host))
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def retry_on_taken_port(start: Callable[[], T], *, attempts: int = 5, message: Callable[[Exception], str] = str
                        ) -> T:
    """``start()`` again (it chooses its own ports) while it fails because a port was taken; for launchers
    that report failure as a message (a child process's stderr), ``message`` extracts the text to check."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if attempt == attempts or "is already taken" not in message(exc):
                raise
    raise AssertionError("unreachable")


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
    p = Path(str(path))
    if not p.exists():
        return "(no log written)"
    return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])


def mentions_taken_port(text: str) -> bool:
    """Whether a server's log says it could not bind (PostgreSQL, Tansu, the JVM, uvicorn)."""
    lowered = text.lower()
    return any(s in lowered for s in ("address already in use", "could not bind", "addrinuse", "errno 98"))
