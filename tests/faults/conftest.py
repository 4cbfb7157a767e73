"""Fixtures of the fault tests: a whole stack per test (its own PostgreSQL, broker and services)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FaultStack, say


@pytest.fixture
def make_stack() -> Iterator[Callable[..., FaultStack]]:
    """Factory: ``make_stack(kafka="tansu"|"apache", **env)`` starts a stack in a fresh temp dir (``env``: extra
    RXTRAIL_* variables for its services); stopped after the test. RXTRAIL_FAULTS_KEEP=1 keeps the dirs (logs)."""
    stacks: list[FaultStack] = []
    dirs: list[Path] = []

    def make(kafka: str = "tansu", **env: Any) -> FaultStack:
        base = Path(tempfile.mkdtemp(prefix="rxtrail-faults-", dir="/var/tmp"))
        dirs.append(base)
        stack = FaultStack(base, kafka=kafka, env_overrides={k: str(v) for k, v in env.items()})
        stacks.append(stack)
        return stack.start()

    yield make
    for s in stacks:
        s.stop()
    for d in dirs:
        if os.environ.get("RXTRAIL_FAULTS_KEEP"):
            say(f"kept stack dir {d} (logs in {d}/logs)")
        else:
            shutil.rmtree(d, ignore_errors=True)
