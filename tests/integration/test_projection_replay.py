"""Replays: from Kafka and from the event store they rebuild exactly the tables of a clean pass; "as of" a time they
show the trail as it stood then."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from rich.console import Console

from projections.hospital_settlement import statements
from projections.registry import build
from projections.traceability import prescription, trail
from services.replay import as_of_schema, end_offsets, replay, replay_async
from tests.support.trails import (
    PROJECTION_NAMES,
    Published,
    dump_all,
    publish_and_build_reference,
    run_to_idle,
    store,
)


@pytest.fixture(scope="module")
async def published(make_database: Callable[[], str], kafka_bootstrap: str) -> Published:
    return await publish_and_build_reference(make_database, kafka_bootstrap, n=12, seed=3)


def _offsets(db: str, schema: str) -> dict[int, int]:
    with psycopg.connect(db) as conn:
        return {p: o for p, o in conn.execute(f"SELECT partition, next_offset FROM {schema}.kafka_offsets")}


async def test_kafka_replay_of_all_rebuilds_the_same_tables(published: Published, kafka_bootstrap: str) -> None:
    out = io.StringIO()
    results = await replay_async("all", published.reference_db, kafka_bootstrap, topic=published.topic,
                                 progress=True, console=Console(file=out, width=200), batch_size=50)
    assert [r.projection for r in results] == list(PROJECTION_NAMES)
    assert [(r.read, r.applied, r.undecodable) for r in results] == [(len(published.events),) * 2 + (0,)] * len(PROJECTION_NAMES)
    assert dump_all(published.reference_db, PROJECTION_NAMES) == published.reference
    ends = await end_offsets(kafka_bootstrap, published.topic)
    assert all(_offsets(published.reference_db, n) == ends for n in PROJECTION_NAMES)
    assert "replay" in out.getvalue() and "traceability" in out.getvalue()
    with psycopg.connect(published.reference_db) as conn:
        leftovers = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%%__rebuild'").fetchall()
    assert leftovers == []
    # the live consumer continues from the stored offsets: nothing to re-apply
    stats = await run_to_idle(build("traceability"), published.reference_db, kafka_bootstrap, published.topic)
    assert (stats.applied, stats.duplicates) == (0, 0)


async def test_store_replay_rebuilds_the_same_tables_and_sets_offsets_to_the_end(
        published: Published, make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    db = make_database()
    store(db, published.events)
    results = await replay_async("all", db, kafka_bootstrap, from_store=True, topic=published.topic, progress=False,
                                 batch_size=64)
    assert all(r.source == "store" and r.read == len(published.events) == r.applied for r in results)
    assert dump_all(db, PROJECTION_NAMES) == published.reference
    ends = await end_offsets(kafka_bootstrap, published.topic)
    assert all(_offsets(db, n) == ends for n in PROJECTION_NAMES)


async def test_as_of_replay_shows_the_trail_as_it_stood(published: Published, kafka_bootstrap: str) -> None:
    t = published.trails[0]
    approved_not_dispensed = t.times["approved"] + timedelta(minutes=1)
    schema = as_of_schema("traceability", approved_not_dispensed)
    [result] = await replay_async("traceability", published.reference_db, kafka_bootstrap,
                                  as_of=approved_not_dispensed, topic=published.topic, progress=False)
    assert result.schema == schema and result.after_as_of > 0
    with psycopg.connect(published.reference_db) as conn:
        summary = prescription(conn, schema, t.prescription_id)
        steps = [s.step for s in trail(conn, schema, t.prescription_id)]
        live = prescription(conn, "traceability", t.prescription_id)
    assert summary is not None and summary["status"] == "approved"
    assert steps == ["FollowUpVisitRecorded", "PrescriptionIssued", "ConsultationSettled", "PrescriptionApproved"]
    assert live is not None and live["status"] == "settled"  # the live view is untouched


async def test_as_of_from_the_store_matches_as_of_from_kafka(
        published: Published, make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    cut = published.trails[5].times["settled"]
    db = make_database()
    store(db, published.events)
    await replay_async("hospital_settlement", db, None, as_of=cut, from_store=True, progress=False)
    await replay_async("hospital_settlement", published.reference_db, kafka_bootstrap, as_of=cut,
                       topic=published.topic, progress=False)
    schema = as_of_schema("hospital_settlement", cut)
    with psycopg.connect(db) as a, psycopg.connect(published.reference_db) as b:
        from_store, from_kafka, now = statements(a, schema), statements(b, schema), statements(b)
    assert from_store == from_kafka
    assert sum(r["prescriptions"] for r in from_store) < sum(r["prescriptions"] for r in now)


def test_sync_entry_point_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        replay("nope", "postgresql://x/y", "127.0.0.1:1")
    with pytest.raises(ValueError):
        replay("traceability", "postgresql://x/y", None)  # a Kafka replay needs a broker
