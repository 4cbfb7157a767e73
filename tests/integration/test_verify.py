"""Tampering with stored history is found: chains from the store and from rx.events, signed checkpoints, and
exported trail bundles checked offline."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from events import topics
from services.integrity import create_checkpoint, export_trail, stored_event_hash, verify, verify_bundle
from services.integrity.checkpoint import load_or_create_key
from services.relay import RelayStats, run_relay
from tests.integration.test_relay import TrailStore, config, has_all, read_topic, wait_published
from tests.support import unique_topic


@pytest.fixture
def store(make_database: Callable[[], str]) -> Iterator[TrailStore]:
    s = TrailStore(make_database(), name="VerifyTest")
    yield s
    s.close()


def tamper(url: str, table: str, aggregate_id: uuid.UUID, version: int, **changes: object) -> None:
    """What an insider with SQL access does: rewrite one stored event's JSON in place."""
    with psycopg.connect(url) as conn:
        state = conn.execute(f"SELECT state FROM {table} WHERE originator_id = %s AND originator_version = %s",
                             (aggregate_id, version)).fetchone()[0]
        doc = json.loads(bytes(state))
        doc.update(changes)
        conn.execute(f"UPDATE {table} SET state = %s WHERE originator_id = %s AND originator_version = %s",
                     (json.dumps(doc, ensure_ascii=False).encode(), aggregate_id, version))


async def test_edited_row_is_reported_by_aggregate_and_version(
    store: TrailStore, kafka_bootstrap: str, tmp_path: Path
) -> None:
    aggregates = [uuid.uuid4() for _ in range(5)]
    for a in aggregates:
        store.append(a, 6)
    topic = unique_topic(topics.EVENTS)
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, kafka_bootstrap, topic), stop, stats))
    try:
        await wait_published(stats, 30)
        await read_topic(kafka_bootstrap, topic, has_all(30))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    create_checkpoint(store.url, tmp_path)

    intact = verify(store.url, kafka_bootstrap, topic=topic, data_dir=tmp_path)
    assert intact.exit_code == 0, [str(f) for f in intact.findings]
    assert (intact.streams, intact.events, intact.kafka_messages, intact.checkpoints) == (5, 30, 30, 1)

    victim = aggregates[2]
    tamper(store.url, store.table, victim, 4, note="a different drug, 处方 changed")
    report = verify(store.url, kafka_bootstrap, topic=topic, data_dir=tmp_path)
    assert report.exit_code == 1
    store_findings = [f for f in report.findings if f.source == "store"]
    assert [(f.aggregate_id, f.version) for f in store_findings] == [(str(victim), 4)]
    assert "hash does not match" in store_findings[0].reason
    assert any(f.source == "kafka" and f.aggregate_id == str(victim) and f.version == 4
               and "differs from the event store" in f.reason for f in report.findings)


def test_rewritten_tail_with_recomputed_hashes_is_caught_by_the_checkpoint(store: TrailStore, tmp_path: Path
                                                                            ) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    store.append(a, 3)
    store.append(b, 3)
    create_checkpoint(store.url, tmp_path)
    store.append(a, 2)
    create_checkpoint(store.url, tmp_path)
    assert verify(store.url, data_dir=tmp_path).exit_code == 0

    # Rewrite b's last event consistently (content and hash): the chain alone cannot tell.
    with psycopg.connect(store.url) as conn:
        state = conn.execute(f"SELECT state FROM {store.table} WHERE originator_id = %s AND originator_version = 3",
                             (b,)).fetchone()[0]
        doc = json.loads(bytes(state))
        doc["note"] = "quietly rewritten"
        doc["hash"] = stored_event_hash("TrailNoted", doc)
        conn.execute(f"UPDATE {store.table} SET state = %s WHERE originator_id = %s AND originator_version = 3",
                     (json.dumps(doc).encode(), b))
    report = verify(store.url, data_dir=tmp_path)
    assert report.exit_code == 1
    assert not [f for f in report.findings if f.source == "store"]
    assert [f.checkpoint for f in report.findings if f.source == "checkpoint" and "differs" in f.reason] == [1]


def test_exported_trail_verifies_offline_and_one_changed_byte_fails(store: TrailStore, tmp_path: Path) -> None:
    rx = uuid.uuid4()
    store.append(rx, 4)
    for _ in range(6):
        store.append(uuid.uuid4(), 2)
    store.append(rx, 1)  # after any checkpoint: export makes a covering one
    out = export_trail(store.url, tmp_path / "keys", str(rx), tmp_path / "trail.json")
    key = load_or_create_key(tmp_path / "keys").public_key()

    ok = verify_bundle(out, trusted_public_key=key)
    assert ok.ok, [str(f) for f in ok.findings]
    assert (ok.aggregate_id, ok.streams, ok.events) == (str(rx), 1, 5)
    assert oct((tmp_path / "keys" / "checkpoint_ed25519.pem").stat().st_mode & 0o777) == "0o600"

    raw = out.read_bytes()
    at = raw.index(b"note 3")
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(raw[:at + 5] + b"9" + raw[at + 6:])
    bad = verify_bundle(tampered, trusted_public_key=key)
    assert not bad.ok
    assert any("hash does not match" in f.reason for f in bad.findings), [str(f) for f in bad.findings]
