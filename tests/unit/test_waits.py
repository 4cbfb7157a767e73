"""The polling waits of tests/support: the first truthy value, ignored errors, and a timeout that says what it saw."""

from __future__ import annotations

import itertools

import pytest

from tests.support import wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: (n := next(calls)) >= 3 and n, interval=0.001) == 3


def test_wait_until_counts_ignored_errors_as_not_yet() -> None:
    calls = itertools.count(1)

    def flaky() -> str:
        if next(calls) < 3:
            raise LookupError("not there yet")
        return "there"

    assert wait_until(flaky, interval=0.001, ignore=(LookupError,)) == "there"


def test_wait_until_times_out_naming_what_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the answer; last value 0"):
        wait_until(lambda: 0, timeout=0.05, interval=0.01, what="the answer")


async def test_wait_until_async_takes_plain_and_coroutine_predicates() -> None:
    calls = itertools.count(1)

    async def ready() -> int:
        return max(0, next(calls) - 2)

    assert await wait_until_async(ready, interval=0.001) == 1
    assert await wait_until_async(lambda: "plain", interval=0.001, in_thread=True) == "plain"


async def test_wait_until_async_checks_before_each_attempt_and_describes_lazily() -> None:
    seen: list[int] = []

    def crashed() -> None:
        if len(seen) >= 2:
            raise RuntimeError("a task died")

    with pytest.raises(RuntimeError, match="a task died"):
        await wait_until_async(lambda: seen.append(1), interval=0.001, check=crashed)
    seen.clear()
    with pytest.raises(AssertionError, match=r"waiting for \d+ attempts") as timed_out:
        await wait_until_async(lambda: seen.append(1), timeout=0.02, interval=0.01, what=lambda: f"{len(seen)} attempts")
    assert f"waiting for {len(seen)} attempts" in str(timed_out.value)  # described when it timed out
