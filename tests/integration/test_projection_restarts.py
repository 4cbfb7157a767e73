"""Consumers stopped mid-work (a cancelled task, a SIGKILLed runner process) resume to the same tables."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from projections.base import ProjectionConsumer
from projections.registry import build
from tests.support import unique_id
from tests.support.trails import (
    PROJECTION_NAMES,
    Published,
    differences,
    dump_all,
    publish_and_build_reference,
    run_all_to_idle,
    version_total,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def published(make_database: Callable[[], str], kafka_bootstrap: str) -> Published:
    return await publish_and_build_reference(make_database, kafka_bootstrap, n=36, seed=5)


def _applied(db: str) -> int:
    total = 0
    with psycopg.connect(db, autocommit=True) as conn:
        for name in PROJECTION_NAMES:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{name}.stream_versions",)).fetchone()
            if exists and exists[0]:
                row = conn.execute(f"SELECT coalesce(sum(version), 0) FROM {name}.stream_versions").fetchone()
                total += int(row[0]) if row else 0
    return total


async def test_cancelled_consumers_resume_to_a_clean_pass(
        published: Published, make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    db = make_database()
    for round_ in range(3):
        consumers = [ProjectionConsumer(build(n), db, kafka_bootstrap, topic=published.topic,
                                        dlq_topic=published.topic + ".dlq", group_id=unique_id("g"), max_records=13)
                     for n in PROJECTION_NAMES]
        tasks = [asyncio.create_task(c.run(asyncio.Event())) for c in consumers]
        deadline = time.monotonic() + 30
        while min(c.stats.batches for c in consumers) < 2 + round_ and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert 0 < _applied(db)
    await run_all_to_idle(db, kafka_bootstrap, published.topic, expect=version_total(published.events))
    assert differences(dump_all(db, PROJECTION_NAMES), published.reference) == {}


def _runner(db: str, bootstrap: str, topic: str, group_prefix: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RXTRAIL_DATABASE_URL": db, "RXTRAIL_KAFKA_BOOTSTRAP": bootstrap,
           "RXTRAIL_EVENTS_TOPIC": topic, "RXTRAIL_DLQ_TOPIC": topic + ".dlq",
           "RXTRAIL_PROJECTIONS__GROUP_PREFIX": group_prefix, "RXTRAIL_PROJECTIONS__MAX_RECORDS": "11"}
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", "projection", "all"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


async def test_sigkilled_runner_resumes_to_a_clean_pass(
        published: Published, make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    db = make_database()
    heads: dict[object, int] = {}
    for e in published.events:
        heads[e.originator_id] = max(heads.get(e.originator_id, 0), e.originator_version)
    everything = sum(heads.values()) * len(PROJECTION_NAMES)  # what _applied() reads once all is applied
    group = unique_id("rxtrail.test")
    proc = _runner(db, kafka_bootstrap, published.topic, group)
    try:
        deadline = time.monotonic() + 40
        while _applied(db) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen = _applied(db)
        os.kill(proc.pid, signal.SIGKILL)  # mid-work: some batches committed, at most one open
        proc.wait(10)
        assert 0 < seen < everything, "the runner finished before it could be killed mid-work"
        proc = _runner(db, kafka_bootstrap, published.topic, group)
        deadline = time.monotonic() + 45
        while _applied(db) < everything and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert differences(dump_all(db, PROJECTION_NAMES), published.reference) == {}
