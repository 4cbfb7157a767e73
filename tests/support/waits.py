"""Waits that poll a condition until it holds or a timeout passes (never a fixed sleep).

``wait_until`` (sync) and ``wait_until_async`` (async) call ``predicate`` every ``interval`` seconds and return
its first truthy value; on timeout they raise ``AssertionError`` naming ``what`` (a text, or a function giving one
at that moment, e.g. to show what was seen) and the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


Description = str | Callable[[], str]


def _timed_out(what: Description, timeout: float, last: object, error: BaseException | None) -> AssertionError:
    detail = f"; last error {error!r}" if error is not None else f"; last value {last!r}"
    text = what if isinstance(what, str) else what()
    return AssertionError(f"timed out after {timeout:g}s waiting for {text}{detail}")


def wait_until(predicate: Callable[[], T], *, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05,
               what: Description = "condition", ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` until it returns a truthy value, which is returned.

    Exceptions of the ``ignore`` types count as "not yet" (e.g. a table another process has not created yet).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, error)
        time.sleep(interval)


@overload
async def wait_until_async(predicate: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ...,
                           what: Description = ..., in_thread: bool = ..., check: Callable[[], Any] | None = ...,
                           ignore: tuple[type[BaseException], ...] = ...) -> T: ...


@overload
async def wait_until_async(predicate: Callable[[], T], *, timeout: float = ..., interval: float = ...,
                           what: Description = ..., in_thread: bool = ..., check: Callable[[], Any] | None = ...,
                           ignore: tuple[type[BaseException], ...] = ...) -> T: ...


async def wait_until_async(predicate: Callable[[], Any], *, timeout: float = DEFAULT_TIMEOUT,
                           interval: float = 0.1, what: Description = "condition", in_thread: bool = False,
                           check: Callable[[], Any] | None = None,
                           ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Async ``wait_until``: ``predicate`` may be a plain function or return an awaitable (a coroutine function).

    ``in_thread=True`` runs a blocking plain predicate (a database read) in a worker thread so the event loop keeps
    serving the tasks under test. ``check`` runs before every attempt, e.g. to re-raise a crashed background task.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            result = await asyncio.to_thread(predicate) if in_thread else predicate()
            value = await result if inspect.isawaitable(result) else result
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, last, error)
        await asyncio.sleep(interval)
