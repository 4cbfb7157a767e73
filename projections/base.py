"""The shared projection loop: consume a batch of `rx.events`, apply it, and record the consumed offsets in the
same PostgreSQL transaction; on start, seek to the stored offsets.

Each projection owns one PostgreSQL schema. Inside it the loop keeps two tables of its own:
``kafka_offsets`` (next offset per topic partition) and ``stream_versions`` (last applied version per
aggregate). The second makes redelivered or republished events (same aggregate version again, at a new
offset) change nothing, so replays, duplicates and restarts never change totals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from psycopg import sql

from events import from_json, topics
from events.base import current_schema_version
from events.codec import EVENT_TYPES
from events.contracts import dead_letter_headers, record_source
from events.envelope import EVENT_TYPE, NOTIFICATION_ID, SCHEMA_VERSION, Headers, event_id_of, header

log = logging.getLogger(__name__)

GROUP_PREFIX = "rxtrail.projection"
"""A projection reads ``rx.events`` as consumer group ``<GROUP_PREFIX>.<name>``."""


@dataclass(frozen=True)
class Delivered:
    """One decoded event as it arrived: the event model plus where it came from."""

    event: Any
    event_type: str
    aggregate_id: UUID
    version: int
    event_id: str
    timestamp: datetime
    topic: str = ""
    partition: int = -1
    offset: int = -1
    notification_id: int | None = None


class Projection(Protocol):
    """A read model. `apply` gets only events not applied before, in per-aggregate order, and must write in
    bulk on the connection it is given (the caller owns the transaction)."""

    name: str

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None: ...

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None: ...


class Undecodable(ValueError):
    pass


def decode(value: bytes | None, headers: Headers, *, topic: str = "", partition: int = -1, offset: int = -1
           ) -> Delivered:
    """Turn a relay message into a Delivered event, upcasting old schema versions; Undecodable otherwise."""
    if value is None:
        raise Undecodable("empty message value")
    headers = list(headers or ())
    event_type = header(headers, EVENT_TYPE)
    fast = _decode_current(value, event_type, header(headers, SCHEMA_VERSION))
    if fast is not None:
        return _delivered(fast, event_type or "", headers, topic, partition, offset)
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Undecodable(f"value is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise Undecodable("value is not a JSON object")
    event_type = event_type or raw.get("event_type")
    if not event_type:
        raise Undecodable("no event_type header")
    try:
        event = from_json(event_type, raw)
    except Exception as exc:
        raise Undecodable(f"{event_type}: {exc}") from exc
    return _delivered(event, event_type, headers, topic, partition, offset)


def _decode_current(value: bytes, event_type: str | None, schema_version: str | None) -> Any | None:
    """The common case in one step: a current-schema event parsed and validated straight from its bytes (pydantic's
    JSON parser), without a Python dict in between. Anything unusual takes the general path (upcasting, errors)."""
    cls = EVENT_TYPES.get(event_type or "")
    if cls is None or not schema_version or schema_version != str(current_schema_version(cls)):
        return None
    try:
        return cls.model_validate_json(value)
    except ValueError:
        return None


def _delivered(event: Any, event_type: str, headers: list[tuple[str, Any]], topic: str, partition: int,
               offset: int) -> Delivered:
    notification = header(headers, NOTIFICATION_ID)
    aggregate_id = UUID(str(event.originator_id))
    return Delivered(
        event=event,
        event_type=event_type,
        aggregate_id=aggregate_id,
        version=int(event.originator_version),
        event_id=event_id_of(headers, aggregate_id, event.originator_version),
        timestamp=event.timestamp,
        topic=topic,
        partition=partition,
        offset=offset,
        notification_id=int(notification) if notification else None,
    )


def _connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


def ensure_schema(conn: psycopg.Connection[Any], projection: Projection, schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.kafka_offsets (topic text, partition int, next_offset bigint NOT NULL, "
        "PRIMARY KEY (topic, partition))").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.stream_versions (aggregate_id uuid PRIMARY KEY, version int NOT NULL)"
    ).format(s))
    projection.create_tables(conn, schema)


def drop_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stored_offsets(conn: psycopg.Connection[Any], schema: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        sql.SQL("SELECT partition, next_offset FROM {}.kafka_offsets WHERE topic = %s").format(sql.Identifier(schema)),
        (topic,),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def apply_batch(conn: psycopg.Connection[Any], projection: Projection, schema: str, batch: Sequence[Delivered],
                offsets: dict[tuple[str, int], int] | None = None) -> int:
    """Apply the new events of a batch and store offsets, in the caller's transaction. Returns events applied."""
    s = sql.Identifier(schema)
    ids = list({d.aggregate_id for d in batch})
    known: dict[UUID, int] = {}
    if ids:
        rows = conn.execute(
            sql.SQL("SELECT aggregate_id, version FROM {}.stream_versions WHERE aggregate_id = ANY(%s)").format(s),
            (ids,),
        ).fetchall()
        known = {r[0]: int(r[1]) for r in rows}
    fresh: list[Delivered] = []
    for d in batch:
        if d.version > known.get(d.aggregate_id, 0):
            fresh.append(d)
            known[d.aggregate_id] = d.version
    if fresh:
        projection.apply(conn, schema, fresh)
        heads: dict[UUID, int] = {}
        for d in fresh:
            heads[d.aggregate_id] = max(d.version, heads.get(d.aggregate_id, 0))
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {}.stream_versions (aggregate_id, version) "
                    "SELECT * FROM unnest(%s::uuid[], %s::int[]) "
                    "ON CONFLICT (aggregate_id) DO UPDATE SET version = GREATEST("
                    "{}.stream_versions.version, EXCLUDED.version)"
                ).format(s, s),
                (list(heads), list(heads.values())),
            )
    if offsets:
        topics, parts, nexts = zip(*[(t, p, o) for (t, p), o in offsets.items()], strict=True)
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.kafka_offsets (topic, partition, next_offset) "
                "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
            ).format(s),
            (list(topics), list(parts), list(nexts)),
        )
    return len(fresh)


@dataclass
class RunnerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0


@dataclass
class ProjectionConsumer:
    """Consumes `rx.events` for one projection as its own consumer group; offsets live in PostgreSQL."""

    projection: Projection
    database_url: str
    bootstrap: str
    schema: str = ""
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DLQ
    group_id: str = ""
    max_records: int = 2000
    session_timeout_ms: int = 6000
    stats: RunnerStats = field(default_factory=RunnerStats)

    def __post_init__(self) -> None:
        self.schema = self.schema or self.projection.name
        self.group_id = self.group_id or f"{GROUP_PREFIX}.{self.projection.name}"

    async def run(self, stop: asyncio.Event, idle_timeout_s: float | None = None) -> RunnerStats:
        """Run until `stop` is set (or, with idle_timeout_s, until nothing arrived for that long)."""
        conn = await asyncio.to_thread(_connect, self.database_url)
        try:
            with conn.transaction():
                ensure_schema(conn, self.projection, self.schema)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=min(1000, self.session_timeout_ms // 3), max_poll_records=self.max_records,
            )
            # Seeks happen in this loop, between batches, never inside aiokafka's rebalance callback: there
            # they could read offsets while a batch's transaction is open, and aiokafka may reset the
            # position after the callback anyway.
            unpositioned: set[Any] = set()

            class MarkAssigned(ConsumerRebalanceListener):  # type: ignore[misc]
                async def on_partitions_revoked(self, revoked: Any) -> None:
                    unpositioned.difference_update(revoked)

                async def on_partitions_assigned(self, assigned: Any) -> None:
                    unpositioned.update(assigned)

            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await producer.start()
            consumer.subscribe([self.topic], listener=MarkAssigned())
            await consumer.start()
            try:
                idle_since = asyncio.get_running_loop().time()
                while not stop.is_set():
                    if unpositioned:
                        await self._seek_to_stored(conn, consumer, unpositioned)
                    records = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                    if unpositioned:
                        # a rebalance landed during the fetch: drop the batch and put every partition back
                        # at its stored offset (everything applied so far is committed there)
                        unpositioned.update(consumer.assignment())
                        continue
                    messages = [m for part in records.values() for m in part]
                    if not messages:
                        if not consumer.assignment():
                            idle_since = asyncio.get_running_loop().time()
                        elif idle_timeout_s is not None and \
                                asyncio.get_running_loop().time() - idle_since > idle_timeout_s:
                            break
                        continue
                    idle_since = asyncio.get_running_loop().time()
                    await self._handle(conn, producer, messages)
                    await consumer.commit({TopicPartition(self.topic, p.partition): msgs[-1].offset + 1
                                           for p, msgs in records.items()})
            finally:
                await consumer.stop()
                await producer.stop()
        finally:
            await asyncio.to_thread(conn.close)
        return self.stats

    async def _seek_to_stored(self, conn: psycopg.Connection[Any], consumer: Any, partitions: set[Any]) -> None:
        stored = await asyncio.to_thread(stored_offsets, conn, self.schema, self.topic)
        assigned = consumer.assignment()
        for tp in list(partitions):
            if tp in assigned:
                if tp.partition in stored:
                    consumer.seek(tp, stored[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            partitions.discard(tp)

    async def _handle(self, conn: psycopg.Connection[Any], producer: Any, messages: list[Any]) -> None:
        good: list[Delivered] = []
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            offsets[(m.topic, m.partition)] = m.offset + 1
            try:
                good.append(decode(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset))
            except Undecodable as exc:
                log.warning("%s: %s[%d]@%d undecodable, sent to %s: %s", self.projection.name, m.topic,
                            m.partition, m.offset, self.dlq_topic, exc)
                dead = dead_letter_headers(m.headers, error=str(exc), consumer=self.group_id,
                                           source=record_source(m.topic, m.partition, m.offset))
                await producer.send_and_wait(self.dlq_topic, value=m.value, key=m.key, headers=dead)
                self.stats.dead_lettered += 1

        def write() -> int:
            with conn.transaction():
                return apply_batch(conn, self.projection, self.schema, good, offsets)

        applied = await asyncio.to_thread(write)
        self.stats.applied += applied
        self.stats.duplicates += len(good) - applied
        self.stats.batches += 1
