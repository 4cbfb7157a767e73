"""The shared projection loop on real Kafka + PostgreSQL: duplicates, restarts and garbage change no totals."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg import sql

from events import GENESIS_HASH, event_hash, to_json
from events.registries import PhysicianRegistered
from projections.base import Delivered, ProjectionConsumer
from services.infra.kafka_admin import ensure_topics_async
from tests.support import unique_id, unique_topic


class PhysiciansPerHospital:
    name = "test_physicians"

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.per_hospital (hospital_id text PRIMARY KEY, "
                             "physicians int NOT NULL)").format(sql.Identifier(schema)))

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        counts: dict[str, int] = {}
        for d in batch:
            counts[d.event.hospital_id] = counts.get(d.event.hospital_id, 0) + 1
        conn.cursor().executemany(
            sql.SQL("INSERT INTO {}.per_hospital VALUES (%s, %s) ON CONFLICT (hospital_id) DO UPDATE "
                    "SET physicians = per_hospital.physicians + EXCLUDED.physicians").format(sql.Identifier(schema)),
            list(counts.items()),
        )


def _event(hospital: str, i: int) -> PhysicianRegistered:
    e = PhysicianRegistered(originator_id=uuid.uuid4(), originator_version=1, timestamp=datetime.now(UTC),
                            prev_hash=GENESIS_HASH, physician_id=f"D{i}", hospital_id=hospital, name=f"Dr {i}",
                            qualification_no=f"Q{i}", changed_by="agency:370100",
                            effective_from=datetime.now(UTC).date())
    return e.model_copy(update={"hash": event_hash(e)})


async def _publish(bootstrap: str, topic: str, events: list[PhysicianRegistered], garbage: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, to_json(e), key=str(e.originator_id).encode(), headers=[
                ("event_type", b"PhysicianRegistered"), ("event_id", f"{e.originator_id}:1".encode())])
        for i in range(garbage):
            await producer.send(topic, b"{not json" + str(i).encode(), key=b"junk",
                                headers=[("event_type", b"PhysicianRegistered")])
        await producer.flush()
    finally:
        await producer.stop()


def _table(pg_url: str, schema: str) -> list[tuple[str, int]]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(sql.SQL("SELECT hospital_id, physicians FROM {}.per_hospital ORDER BY 1").format(
            sql.Identifier(schema))).fetchall()


async def _run(pg_url: str, bootstrap: str, topic: str, dlq: str, schema: str, group: str) -> Any:
    consumer = ProjectionConsumer(PhysiciansPerHospital(), pg_url, bootstrap, schema=schema, topic=topic,
                                  dlq_topic=dlq, group_id=group, max_records=7)
    return await consumer.run(asyncio.Event(), idle_timeout_s=3.0)


async def test_duplicates_restarts_and_garbage_leave_totals_as_a_clean_pass(pg_url: str, kafka_bootstrap: str) -> None:
    topic, dlq = unique_topic("events"), unique_topic("dlq")
    await ensure_topics_async(kafka_bootstrap, [topic, dlq], partitions=3)
    hospitals = [unique_id("H") for _ in range(3)]
    events = [_event(hospitals[i % 3], i) for i in range(30)]
    await _publish(kafka_bootstrap, topic, events[:20], garbage=2)
    await _publish(kafka_bootstrap, topic, events[:20])  # every event delivered twice
    await _publish(kafka_bootstrap, topic, events[20:])

    schema = unique_id("proj").replace("-", "_")
    first = await _run(pg_url, kafka_bootstrap, topic, dlq, schema, unique_id("g"))
    expected = sorted((h, 10) for h in hospitals)
    assert _table(pg_url, schema) == expected
    assert first.applied == 30 and first.dead_lettered >= 2
    assert first.duplicates >= 20  # a rebalance may hand a batch over twice; the versions keep it out

    again = await _run(pg_url, kafka_bootstrap, topic, dlq, schema, unique_id("g"))  # new group: offsets from PG
    assert (again.applied, again.duplicates) == (0, 0)
    assert _table(pg_url, schema) == expected

    await _publish(kafka_bootstrap, topic, events[:5])  # a republish after restart
    third = await _run(pg_url, kafka_bootstrap, topic, dlq, schema, unique_id("g"))
    assert third.applied == 0 and third.duplicates >= 5
    assert _table(pg_url, schema) == expected

    reader = AIOKafkaConsumer(dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        got = await reader.getmany(timeout_ms=5000)
        dead = [m for msgs in got.values() for m in msgs]
    finally:
        await reader.stop()
    # at least once: a rebalance can hand a batch over twice, so a bad message may be dead-lettered twice
    assert len({dict(m.headers)["dlq_source"] for m in dead}) == 2
    assert all(dict(m.headers)["dlq_error"].startswith(b"value is not JSON") for m in dead)
