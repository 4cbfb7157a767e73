"""Tamper evidence without holes: an insider with SQL access deletes checkpoints and rewrites chains; the copies of
the checkpoints on Kafka (``rx.checkpoints``) and in a regulator's witness file still catch it, every finding names
the stream and version, and what no checkpoint covers yet is counted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from events import topics
from services.integrity import create_checkpoint, stored_event_hash, verify
from services.integrity.chain import Report
from services.integrity.witness import KAFKA_SOURCE, WITNESS_SOURCE, export_checkpoints, load_witness, publish_pending
from services.relay import RelayStats, run_relay
from tests.integration.test_relay import TrailStore, config, has_all, read_topic, wait_published
from tests.support import unique_topic


@pytest.fixture
def store(make_database: Callable[[], str]) -> Iterator[TrailStore]:
    s = TrailStore(make_database(), name="TamperTest")
    yield s
    s.close()


@pytest.fixture
def copies_topic() -> str:
    return unique_topic(topics.CHECKPOINTS)


def checkpoint(store: TrailStore, data_dir: Path, bootstrap: str | None = None, topic: str | None = None) -> int:
    """What the checkpoint runner does: sign the log, then publish the copy."""
    cp = create_checkpoint(store.url, data_dir)
    if bootstrap and topic:
        assert asyncio.run(publish_pending(store.url, bootstrap, topic)) >= 1
    return cp.id


def rewrite(store: TrailStore, aggregate_id: uuid.UUID, version: int, note: str) -> None:
    """A careful insider: change one event's content and recompute its hash and every later link of the chain,
    so the chain alone cannot tell."""
    with psycopg.connect(store.url) as conn:
        rows = conn.execute(f"SELECT originator_version, state FROM {store.table} WHERE originator_id = %s"
                            " AND originator_version >= %s ORDER BY originator_version",
                            (aggregate_id, version)).fetchall()
        prev = None
        for v, state in rows:
            doc = json.loads(bytes(state))
            if v == version:
                doc["note"] = note
            else:
                doc["prev_hash"] = prev
            doc["hash"] = prev = stored_event_hash("TrailNoted", doc)
            conn.execute(f"UPDATE {store.table} SET state = %s WHERE originator_id = %s AND originator_version = %s",
                         (json.dumps(doc, ensure_ascii=False).encode(), aggregate_id, v))


def delete_checkpoints(store: TrailStore, *, from_id: int = 1, thorough: bool = False) -> None:
    """Delete checkpoint rows; ``thorough``: also what the checkpoint wrote beside them (ledger, heads)."""
    with psycopg.connect(store.url) as conn:
        conn.execute("DELETE FROM checkpoints WHERE id >= %s", (from_id,))
        if thorough:
            conn.execute("TRUNCATE checkpoint_ledger, checkpoint_heads")


def named(report: Report, source: str | None = None) -> set[tuple[str, int]]:
    return {(f.aggregate_id, f.version) for f in report.findings
            if f.aggregate_id and (source is None or f.source == source)}


def text(report: Report) -> str:
    return "\n".join(str(f) for f in report.findings)


def test_deleted_latest_checkpoint_and_rewrite_are_caught_by_the_kafka_copy(
    store: TrailStore, tmp_path: Path, kafka_bootstrap: str, copies_topic: str
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    store.append(a, 3)
    store.append(b, 2)
    checkpoint(store, tmp_path, kafka_bootstrap, copies_topic)
    store.append(b, 2)  # b v3, v4: only checkpoint #2 covers them
    checkpoint(store, tmp_path, kafka_bootstrap, copies_topic)

    def check() -> Report:
        return verify(store.url, data_dir=tmp_path, checkpoint_copies=kafka_bootstrap, checkpoints_topic=copies_topic)

    intact = check()
    assert intact.ok, text(intact)
    assert intact.checkpoint_copies == {KAFKA_SOURCE: 2}
    assert (intact.latest_checkpoint, intact.uncovered_events, intact.uncovered_streams) == (2, 0, 0)

    delete_checkpoints(store, from_id=2)
    rewrite(store, b, 4, "quietly rewritten")
    report = check()
    assert not report.ok
    assert any(f.checkpoint == 2 and not f.aggregate_id and "deleted" in f.reason and KAFKA_SOURCE in f.reason
               for f in report.findings), text(report)
    assert named(report) == {(str(b), 4)}, text(report)
    [finding] = [f for f in report.findings if f.aggregate_id]
    assert (finding.source, finding.checkpoint) == ("checkpoint", 2)
    assert "rewritten" in finding.reason and f"{b} v4 (checkpoint #2)" in str(finding)
    assert not [f for f in report.findings if f.source == "store"]  # the chain itself is consistent

    # Without the copy, the database alone still shows the ledger written past its latest checkpoint.
    alone = verify(store.url, data_dir=tmp_path)
    assert not alone.ok and "later checkpoints were deleted" in text(alone)

    # A thorough insider also removes what the checkpoint wrote beside its row: only the copy catches it now.
    delete_checkpoints(store, from_id=2, thorough=True)
    assert verify(store.url, data_dir=tmp_path).ok  # the hole a copy outside the database closes
    again = check()
    assert not again.ok
    assert any(f.checkpoint == 2 and "deleted" in f.reason for f in again.findings), text(again)
    assert any(f.checkpoint == 2 and "differs from what checkpoint #2 signed" in f.reason
               for f in again.findings), text(again)


def test_a_regulators_witness_file_catches_deleted_checkpoints_and_the_rewrite(
    store: TrailStore, tmp_path: Path
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    store.append(a, 2)
    checkpoint(store, tmp_path)
    store.append(b, 3)
    store.append(a, 1)
    checkpoint(store, tmp_path)
    witness_file, count = export_checkpoints(store.url, tmp_path / "kept.json")
    assert count == 2
    witness = load_witness(witness_file)
    assert verify(store.url, data_dir=tmp_path, witness=witness).ok

    delete_checkpoints(store, from_id=2)
    rewrite(store, b, 2, "another drug")  # b v2 and v3 change (v3 only in its links)
    report = verify(store.url, data_dir=tmp_path, witness=witness)
    assert not report.ok
    assert report.checkpoint_copies == {WITNESS_SOURCE: 2}
    assert any(f.checkpoint == 2 and "deleted" in f.reason and WITNESS_SOURCE in f.reason for f in report.findings)
    assert named(report) == {(str(b), 2), (str(b), 3)}, text(report)
    assert all(f.checkpoint == 2 for f in report.findings if f.aggregate_id)

    # An earlier witness (only #1) still sees that the chain it knows was cut and the log under it rewritten.
    early = [c for c in witness if c.id == 1]
    rewrite(store, a, 1, "rewritten at the start")
    delete_checkpoints(store, thorough=True)
    old = verify(store.url, data_dir=tmp_path, witness=early)
    assert any(f.checkpoint == 1 and "deleted" in f.reason for f in old.findings), text(old)
    assert any(f.checkpoint == 1 and "differs from what checkpoint #1 signed" in f.reason
               for f in old.findings), text(old)


def test_deleting_every_checkpoint_is_caught(store: TrailStore, tmp_path: Path, kafka_bootstrap: str,
                                             copies_topic: str) -> None:
    a = uuid.uuid4()
    store.append(a, 3)
    checkpoint(store, tmp_path, kafka_bootstrap, copies_topic)
    store.append(a, 1)
    checkpoint(store, tmp_path, kafka_bootstrap, copies_topic)

    delete_checkpoints(store)
    rewrite(store, a, 2, "rewritten")
    alone = verify(store.url, data_dir=tmp_path)
    assert not alone.ok and "no checkpoint is left" in text(alone), text(alone)

    report = verify(store.url, data_dir=tmp_path, checkpoint_copies=kafka_bootstrap, checkpoints_topic=copies_topic)
    assert {f.checkpoint for f in report.findings if "deleted" in f.reason} >= {1, 2}, text(report)
    assert named(report) == {(str(a), 2), (str(a), 3), (str(a), 4)}, text(report)

    # Everything the checkpoints left removed, and the runner signing afresh: Kafka holds two different #1.
    delete_checkpoints(store, thorough=True)
    checkpoint(store, tmp_path, kafka_bootstrap, copies_topic)
    fresh = verify(store.url, data_dir=tmp_path, checkpoint_copies=kafka_bootstrap, checkpoints_topic=copies_topic)
    assert not fresh.ok
    reasons = text(fresh)
    assert "two different checkpoints #1" in reasons
    assert any(f.checkpoint == 1 and "altered" in f.reason for f in fresh.findings), reasons
    assert any(f.checkpoint == 2 and "deleted" in f.reason for f in fresh.findings), reasons


async def test_rewrite_newer_than_the_latest_checkpoint_is_counted_and_caught_with_kafka(
    store: TrailStore, tmp_path: Path, kafka_bootstrap: str
) -> None:
    a, c = uuid.uuid4(), uuid.uuid4()
    store.append(a, 2)
    await asyncio.to_thread(create_checkpoint, store.url, tmp_path)
    store.append(a, 3)  # a v3..v5 and c v1..v2: after the latest checkpoint
    store.append(c, 2)
    topic = unique_topic(topics.EVENTS)
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, kafka_bootstrap, topic), stop, stats))
    try:
        await wait_published(stats, 7)
        await read_topic(kafka_bootstrap, topic, has_all(7))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)

    rewrite(store, a, 4, "rewritten after the checkpoint")
    report = await asyncio.to_thread(verify, store.url, data_dir=tmp_path)
    assert report.ok  # nothing in the database can vouch for events no checkpoint signed yet...
    assert (report.latest_checkpoint, report.uncovered_events, report.uncovered_streams) == (1, 5, 2)
    assert "5 events in 2 streams not yet covered" in report.summary()
    assert any("5 events are newer than the latest checkpoint" in n and "--kafka" in n for n in report.notes)

    with_kafka = await asyncio.to_thread(verify, store.url, kafka_bootstrap, topic=topic, data_dir=tmp_path)
    assert not with_kafka.ok  # ...but rx.events does
    assert named(with_kafka, "kafka") == {(str(a), 4), (str(a), 5)}, text(with_kafka)


def test_a_finding_only_a_checkpoint_catches_names_stream_and_version(store: TrailStore, tmp_path: Path) -> None:
    streams = [uuid.uuid4() for _ in range(4)]
    for s in streams:
        store.append(s, 3)
    checkpoint(store, tmp_path)
    victim = streams[1]
    rewrite(store, victim, 3, "rewritten head")
    report = verify(store.url, data_dir=tmp_path)
    assert not [f for f in report.findings if f.source == "store"]
    assert [(f.source, f.aggregate_id, f.version, f.checkpoint) for f in report.findings] == [
        ("checkpoint", str(victim), 3, 1)], text(report)

    # With the ledger gone too, the heads the Merkle root signed still name the stream and its head version.
    with psycopg.connect(store.url) as conn:
        conn.execute("TRUNCATE checkpoint_ledger")
    fallback = verify(store.url, data_dir=tmp_path)
    assert named(fallback) == {(str(victim), 3)}, text(fallback)
    assert any(f.aggregate_id == str(victim) and f.checkpoint == 1 and "head v3" in f.reason
               for f in fallback.findings), text(fallback)


def test_cli_exports_checkpoints_and_prints_the_source_labels(store: TrailStore, tmp_path: Path,
                                                              kafka_bootstrap: str, copies_topic: str) -> None:
    env = {**os.environ, "RXTRAIL_DATABASE_URL": store.url, "RXTRAIL_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "RXTRAIL_DATA_DIR": str(tmp_path / "data"), "RXTRAIL_CHECKPOINTS_TOPIC": copies_topic}

    def rxtrail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    a, b = uuid.uuid4(), uuid.uuid4()
    store.append(a, 3)
    store.append(b, 2)
    kept = tmp_path / "kept.json"
    first = rxtrail("checkpoint", "--export", str(kept))
    assert first.returncode == 0, first.stderr
    assert "not published" not in first.stderr, first.stderr
    assert "wrote 1 checkpoints" in first.stdout and len(json.loads(kept.read_text())) == 1
    store.append(a, 1)
    ok = rxtrail("verify", "--checkpoints", str(kept))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 events in 1 streams not yet covered" in " ".join(ok.stdout.split())
    assert f"1 checkpoint copies from {KAFKA_SOURCE} compared" in " ".join(ok.stdout.split())

    with psycopg.connect(store.url) as conn:  # an edit the chain catches, and a rewrite only the checkpoint does
        state = conn.execute(f"SELECT state FROM {store.table} WHERE originator_id = %s AND originator_version = 1",
                             (a,)).fetchone()
        assert state is not None
        conn.execute(f"UPDATE {store.table} SET state = %s WHERE originator_id = %s AND originator_version = 1",
                     (bytes(state[0]).replace(b"note 1", b"note X"), a))
    rewrite(store, b, 2, "rewritten")
    delete_checkpoints(store)
    bad = rxtrail("verify", "--witness", str(kept))
    assert bad.returncode == 1
    out = " ".join((bad.stdout + bad.stderr).split())
    assert f"[store] {a} v1: hash does not match" in out, out
    assert f"[checkpoint] {b} v2 (checkpoint #1): rewritten" in out, out
    assert "[checkpoint] checkpoint #1: deleted" in out, out


async def test_the_checkpoint_runner_publishes_every_checkpoint(store: TrailStore, tmp_path: Path,
                                                                kafka_bootstrap: str, copies_topic: str) -> None:
    from services.bootstrap import run_checkpoints
    from services.infra.settings import Settings
    from services.integrity.checkpoint import ensure_tables, key_id, load_public_key
    from services.integrity.witness import read_copies
    from tests.support import wait_until_async

    store.append(uuid.uuid4(), 2)
    settings = Settings(database_url=store.url, kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path,
                        checkpoints_topic=copies_topic, checkpoint_interval_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(run_checkpoints(settings, stop))
    try:
        with psycopg.connect(store.url) as conn:
            ensure_tables(conn)

            def published() -> int:
                row = conn.execute("SELECT count(*) FROM checkpoints WHERE published_at IS NOT NULL").fetchone()
                conn.rollback()
                return int(row[0]) if row else 0

            await wait_until_async(lambda: published() >= 3, timeout=30, interval=0.1,
                                   what=lambda: "three published checkpoints")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    copies = await read_copies(kafka_bootstrap, copies_topic, key_id(load_public_key(tmp_path)))
    with psycopg.connect(store.url) as conn:
        stored = conn.execute("SELECT id, payload FROM checkpoints WHERE published_at IS NOT NULL ORDER BY id"
                              ).fetchall()
    assert [(c.id, c.payload) for c in copies][:len(stored)] == [(int(i), bytes(p)) for i, p in stored]
    report = await asyncio.to_thread(verify, store.url, data_dir=tmp_path, checkpoint_copies=kafka_bootstrap,
                                     checkpoints_topic=copies_topic)
    assert report.ok, text(report)
    assert report.checkpoint_copies[KAFKA_SOURCE] >= 3
