"""Helpers for the projection tests (no tests here): realistic hash-chained trails (``services.simulate``), relay-style
publishing, writing the same events into eventsourcing's event store, and whole-schema dumps for comparison."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from events import to_json, topics
from events.base import DomainEvent
from projections import registry
from services.simulate import APPLICATION_OF, Trail, all_events, make_trails, relay_headers


async def publish(bootstrap: str, topic: str, events: Sequence[DomainEvent], *, first_notification: int = 1) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i, e in enumerate(events):
            await producer.send(topic, to_json(e), key=str(e.originator_id).encode(),
                                headers=relay_headers(e, first_notification + i))
        await producer.flush()
    finally:
        await producer.stop()


def store(database_url: str, events: Sequence[DomainEvent]) -> None:
    """Write events into eventsourcing's PostgreSQL event store the way the application does (one table per
    application, topic = event class topic, state = the JSON of model_dump(mode="json"))."""
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent
    from eventsourcing.utils import Environment, get_topic

    from services.infra.settings import eventsourcing_env

    by_app: dict[str, list[StoredEvent]] = {}
    for e in events:
        app = APPLICATION_OF.get(type(e).__name__, "prescriptions")
        by_app.setdefault(app, []).append(StoredEvent(
            originator_id=e.originator_id, originator_version=e.originator_version, topic=get_topic(type(e)),
            state=to_json(e)))
    for app, stored in by_app.items():
        factory = InfrastructureFactory.construct(Environment(app, eventsourcing_env(database_url)))
        recorder = factory.application_recorder()
        for i in range(0, len(stored), 500):
            recorder.insert_events(stored[i:i + 500])
        factory.close()


def dump(database_url: str, schema: str, *, skip: Sequence[str] = ("kafka_offsets",)) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of a schema, rows sorted, for whole-table comparisons. Identity columns (the read side's ``seq``
    cursors) are left out: they number rows in the order they were first written, and a rolled-back batch (a crash,
    a rebalance) uses up numbers, so they differ between equal views; the API needs them only to be increasing."""
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'"
            " ORDER BY 1", (schema,))]
        out = {}
        for table in tables:
            if table in skip:
                continue
            columns = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " AND is_identity = 'NO' ORDER BY ordinal_position", (schema, table))]
            rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, table))).fetchall()
            out[table] = sorted(rows, key=repr)
        return out


def dump_all(database_url: str, schemas: Iterable[str]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    return {s: dump(database_url, s) for s in schemas}


# --- running projections ---------------------------------------------------------------------------------------

PROJECTION_NAMES = registry.NAMES


async def run_to_idle(projection: Any, database_url: str, bootstrap: str, topic: str, *, schema: str | None = None,
                      group: str | None = None, max_records: int = 500, idle_s: float = 3.0) -> Any:
    """Run one projection consumer until nothing new arrived for ``idle_s``; returns its stats."""
    import asyncio

    from projections.base import ProjectionConsumer
    from tests.support import unique_id

    consumer = ProjectionConsumer(projection, database_url, bootstrap, schema=schema or projection.name, topic=topic,
                                  dlq_topic=topic + ".dlq", group_id=group or unique_id("g"), max_records=max_records)
    return await consumer.run(asyncio.Event(), idle_timeout_s=idle_s)


def version_total(events: Iterable[DomainEvent]) -> int:
    """Sum over aggregates of their last version: what ``stream_versions`` adds up to once everything is applied."""
    heads: dict[uuid.UUID, int] = {}
    for e in events:
        heads[e.originator_id] = max(heads.get(e.originator_id, 0), e.originator_version)
    return sum(heads.values())


def applied_versions(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass(%s)", (f"{schema}.stream_versions",)).fetchone()[0]:  # type: ignore[index]
            return 0
        row = conn.execute(sql.SQL("SELECT coalesce(sum(version), 0) FROM {}.stream_versions").format(
            sql.Identifier(schema))).fetchone()
        return int(row[0]) if row else 0


async def run_all_to_idle(database_url: str, bootstrap: str, topic: str, *, expect: int | None = None,
                          **kwargs: Any) -> list[Any]:
    """Run the three projections until idle; with ``expect`` (see version_total), again until each has it all
    (an idle timeout can fire during a slow rebalance on a busy machine)."""
    import asyncio

    stats: list[Any] = []
    for _ in range(5):
        stats = list(await asyncio.gather(*(run_to_idle(registry.build(n), database_url, bootstrap, topic, **kwargs)
                                            for n in PROJECTION_NAMES)))
        if expect is None or all(applied_versions(database_url, n) >= expect for n in PROJECTION_NAMES):
            return stats
    raise AssertionError(f"projections did not catch up with {topic} after 5 runs")


@dataclass
class Published:
    """A topic holding ``trails`` once, and a database with the three projections built from it in one pass."""

    trails: list[Trail]
    events: list[DomainEvent]
    topic: str
    reference_db: str
    reference: dict[str, dict[str, list[tuple[Any, ...]]]]


async def publish_and_build_reference(make_database: Any, bootstrap: str, n: int = 24, seed: int = 7
                                      ) -> Published:
    from services.infra.kafka_admin import ensure_topics_async
    from tests.support import unique_topic

    trails = make_trails(n, seed=seed)
    events = all_events(trails)
    topic = unique_topic(topics.EVENTS)
    await ensure_topics_async(bootstrap, [topic, topic + ".dlq"], partitions=3)
    await publish(bootstrap, topic, events)
    db = make_database()
    await run_all_to_idle(db, bootstrap, topic, expect=version_total(events))
    return Published(trails, events, topic, db, dump_all(db, PROJECTION_NAMES))


def differences(got: dict[str, dict[str, list[tuple[Any, ...]]]], want: dict[str, dict[str, list[tuple[Any, ...]]]]
                ) -> dict[str, Any]:
    """Per schema and table, the rows only in ``got`` and only in ``want`` (empty when the dumps are equal)."""
    out: dict[str, Any] = {}
    for schema in sorted(set(got) | set(want)):
        for table in sorted(set(got.get(schema, {})) | set(want.get(schema, {}))):
            a, b = got.get(schema, {}).get(table, []), want.get(schema, {}).get(table, [])
            if a != b:
                out[f"{schema}.{table}"] = {"only_got": [r for r in a if r not in b][:3],
                                            "only_want": [r for r in b if r not in a][:3], "rows": (len(a), len(b))}
    return out
