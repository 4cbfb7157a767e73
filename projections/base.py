"""The shared consumer loop: consume a batch of `rx.events`, apply it, and record the consumed offsets in the
same PostgreSQL transaction; on start, seek to the stored offsets. Projections and the workers on ``rx.events``
(router, settlement, gateway, expiry) run on it; ``services.replay`` shares ``apply_batch`` and the probe.

Each consumer owns one PostgreSQL schema. Inside it the loop keeps two tables of its own:
``kafka_offsets`` (next offset and topic incarnation per topic partition) and ``stream_versions`` (last applied
version per aggregate). The second makes redelivered or republished events (same aggregate version again, at a
new offset) change nothing, so replays, duplicates and restarts never change totals.

Consumers that cannot skip
--------------------------
Two promises, kept here once for every consumer:

1. **A stored offset is only used on the topic it was read from.** A broker that loses its data (the embedded
   Tansu keeps everything in memory; a topic deleted and recreated on Apache Kafka) comes back with the same
   topic name and offsets starting again at 0, holding *other* records at the offsets we stored. So each
   partition's row stores, with the offset, an **incarnation fingerprint**: ``"<offset>/<timestamp ms>/<event
   id>"`` of the first record this consumer read of the partition (the record at its log start; learned from the
   record itself when first consumed, in the transaction that stores the offset). The record at that offset is
   probed (``TopicProbe``: a group-less consumer fetching one record per partition) on start, on every partition
   assignment, after a failed offset commit and every ``check_interval_s`` between batches. When it is missing or
   different, or the stored offset lies beyond the partition's end, the partition is read again from the
   beginning (``stats.incarnation_resets``, a WARNING); the per-aggregate versions drop what was applied before.

   Why this fingerprint: it works the same on Tansu and Apache Kafka with what aiokafka offers. Topic ids
   (Metadata v10+) are not exposed by aiokafka 0.14; an epoch written by the relay would cover only what the
   relay writes (not a topic recreated by hand, nor test or replay topics) and would itself be a record to read.
   The event id alone is not enough: after a loss the relay republishes the store from the start, so offset 0
   can hold the *same* event again while later offsets shift (duplicates of the old topic are gone, an in-flight
   batch lands first). The record's timestamp is the producer's send time (CreateTime; the broker's append time
   under LogAppendTime), so a republished record differs from the original even when the event is the same.
   Only the log start is fingerprinted, never the last record read: a consumer that already read records of a
   new incarnation at its old position would otherwise re-fingerprint on them and never notice.
   The end is read as the larger of ListOffsets and a fetch's high watermark (Tansu answers ListOffsets with the
   last batch's base offset + 1). On Apache Kafka, retention can move the log start past the fingerprinted
   offset: when the stored position still lies inside the log, the new log start is fingerprinted instead
   (a topic recreated *and* trimmed by retention since we last looked is not told apart; retention is days).

2. **Dedup never drops an event it has not applied.** ``stream_versions`` holds the last version applied per
   aggregate; versions are applied without holes. When version n+2 (or later) arrives and n+1 was never applied,
   the missing versions are read from the record (an injected ``MissingEvents``: the composition root wires the
   event store; projections import no ``services``) and applied first, in order (``stats.gaps_filled``,
   ``stats.events_filled``, a WARNING). If the record does not hold them yet, the batch waits and is tried again
   from its stored offsets; it is never skipped. Workers' keyed commands get the same guarantee: their ``apply``
   receives the read-through events like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError
from psycopg import sql

from events import from_json, to_json, topics
from events.base import current_schema_version
from events.codec import EVENT_TYPES
from events.contracts import dead_letter_headers, dead_letter_value, record_source
from events.envelope import (
    AGGREGATE_ID,
    AGGREGATE_VERSION,
    EVENT_ID,
    EVENT_TYPE,
    NOTIFICATION_ID,
    SCHEMA_VERSION,
    Headers,
    event_id,
    event_type_of,
    header,
)

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
    undecodable: str | None = None
    """Set on a tombstone: a stored event that no longer decodes (``event`` is None). Never applied; its version
    is passed (so later versions are no gap) and it is dead-lettered."""
    unread: bool = False
    """An event of a type the projection does not read (``Projection.reads``), taken from the relay's headers
    without parsing its value (``event`` is None): never given to ``apply``, its version is passed."""


class Projection(Protocol):
    """A read model. `apply` gets only events not applied before, in per-aggregate order, and must write in
    bulk on the connection it is given (the caller owns the transaction)."""

    name: str
    # Optional: ``reads``, a set of event type names (``event_types``). A projection that has it is given only
    # events of those types; the others are passed by version from their headers, never decoded (``decode``).

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None: ...

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None: ...


class Undecodable(ValueError):
    pass


def event_types(*bases: type, also: Callable[[str, type], bool] | None = None) -> frozenset[str]:
    """The names of the event types that are ``bases`` or subclasses of them (or that ``also(name, class)``
    accepts): what a projection declares it reads (``Projection.reads``), in the terms its ``isinstance`` tests
    use, so a new event type of a read class is read without another list to keep."""
    return frozenset(n for n, c in EVENT_TYPES.items() if issubclass(c, bases) or (also is not None and also(n, c)))


def reads_of(*projections: Any) -> frozenset[str] | None:
    """The event types any of ``projections`` reads; None (every type) when one of them does not say."""
    names: set[str] = set()
    for p in projections:
        reads = getattr(p, "reads", None)
        if reads is None:
            return None
        names.update(reads)
    return frozenset(names)


def decode(value: bytes | None, headers: Headers, *, topic: str = "", partition: int = -1, offset: int = -1,
           reads: Container[str] | None = None) -> Delivered:
    """Turn a relay message into a Delivered event, upcasting old schema versions; Undecodable otherwise.

    ``reads``: the event types the caller reads. A message of another type that carries the relay's headers
    (event type, aggregate id and version) is passed from its headers alone (``Delivered.unread``): its value is
    not parsed, so it is neither checked nor dead-lettered by this caller (a reader of its type does both). A type
    this code does not know is decoded as before (and so dead-lettered)."""
    if value is None:
        raise Undecodable("empty message value")
    named = _headers(headers)
    event_type = named.get(EVENT_TYPE)
    if reads is not None and event_type in EVENT_TYPES and event_type not in reads:  # an unknown type: decode it
        unread = _unread(event_type, named, topic, partition, offset)
        if unread is not None:
            return unread
    fast = _decode_current(value, event_type, named.get(SCHEMA_VERSION))
    if fast is not None:
        return _delivered(fast, event_type or "", named, topic, partition, offset)
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
    return _delivered(event, event_type, named, topic, partition, offset)


_READ_HEADERS = frozenset((EVENT_TYPE, SCHEMA_VERSION, NOTIFICATION_ID, EVENT_ID, AGGREGATE_ID, AGGREGATE_VERSION))


def _headers(headers: Headers) -> dict[str, str]:
    """The headers ``decode`` reads, as text, each the first of its name with a value (as ``header`` reads them)."""
    named: dict[str, str] = {}
    for key, value in headers or ():
        if key in _READ_HEADERS and value is not None and key not in named:
            named[key] = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return named


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def _make(**fields: Any) -> Delivered:
    """``Delivered(**fields)`` for the decode path without the frozen dataclass's ``__init__`` (an
    ``object.__setattr__`` per field, ~2 µs an event); the instance is the same (fields not given keep their
    defaults, the class attributes) and stays frozen."""
    d: Delivered = object.__new__(Delivered)
    d.__dict__.update(fields)
    return d


def _unread(event_type: str, named: dict[str, str], topic: str, partition: int, offset: int) -> Delivered | None:
    """An unread event from the relay's headers (None when they lack its aggregate or version: decode it)."""
    try:
        aggregate_id = UUID(named[AGGREGATE_ID])
        version = int(named[AGGREGATE_VERSION])
    except (KeyError, ValueError):
        return None
    notification = named.get(NOTIFICATION_ID)
    return _make(event=None, event_type=event_type, aggregate_id=aggregate_id, version=version,
                 event_id=named.get(EVENT_ID) or event_id(aggregate_id, version), timestamp=_NO_TIME,
                 topic=topic, partition=partition, offset=offset,
                 notification_id=int(notification) if notification else None, unread=True)


def _decode_current(value: bytes, event_type: str | None, schema_version: str | None) -> Any | None:
    """The common case in one step: a current-schema event parsed and validated straight from its bytes (pydantic's
    JSON parser), without a Python dict in between. Anything unusual takes the general path (upcasting, errors)."""
    cls = EVENT_TYPES.get(event_type or "")
    if cls is None or not schema_version or schema_version != _CURRENT.get(cls):
        return None
    try:
        return cls.model_validate_json(value)
    except ValueError:
        return None


_CURRENT: dict[type, str] = {cls: str(current_schema_version(cls)) for cls in EVENT_TYPES.values()}


def _delivered(event: Any, event_type: str, named: dict[str, str], topic: str, partition: int,
               offset: int) -> Delivered:
    notification = named.get(NOTIFICATION_ID)
    originator = event.originator_id
    aggregate_id = originator if type(originator) is UUID else UUID(str(originator))
    version = int(event.originator_version)
    return _make(
        event=event,
        event_type=event_type,
        aggregate_id=aggregate_id,
        version=version,
        event_id=named.get(EVENT_ID) or event_id(aggregate_id, version),
        timestamp=event.timestamp,
        topic=topic,
        partition=partition,
        offset=offset,
        notification_id=int(notification) if notification else None,
    )


def decode_stored(notification_id: int, originator_id: UUID | str, version: int, topic: str, state: bytes, *,
                  reads: Container[str] | None = None) -> Delivered:
    """A stored event (eventsourcing ``topic`` + plain JSON ``state``) as the relay would have delivered it
    (``reads``: as ``decode``, a type not in it is passed by version without parsing ``state``)."""
    type_name = event_type_of(topic)
    if reads is not None and type_name in EVENT_TYPES and type_name not in reads:
        aggregate_id = UUID(str(originator_id))
        return Delivered(event=None, event_type=type_name, aggregate_id=aggregate_id, version=int(version),
                         event_id=event_id(str(aggregate_id), int(version)), timestamp=_NO_TIME,
                         notification_id=int(notification_id), unread=True)
    try:
        event = from_json(type_name, bytes(state))
    except Exception as exc:
        raise Undecodable(f"{type_name or topic}: {exc}") from exc
    aggregate_id = UUID(str(originator_id))
    return Delivered(event=event, event_type=type_name, aggregate_id=aggregate_id, version=int(version),
                     event_id=event_id(str(aggregate_id), int(version)), timestamp=event.timestamp,
                     notification_id=int(notification_id))


def decode_stored_or_tombstone(notification_id: int, originator_id: UUID | str, version: int, topic: str,
                               state: bytes) -> Delivered:
    """``decode_stored``, or a tombstone (``undecodable`` set) for a stored event that does not decode: a reader of
    the record must not stop on one bad event, and the version must still be passed."""
    try:
        return decode_stored(notification_id, originator_id, version, topic, state)
    except Undecodable as exc:
        aggregate_id = UUID(str(originator_id))
        return Delivered(event=None, event_type=event_type_of(topic) or topic, aggregate_id=aggregate_id,
                         version=int(version), event_id=event_id(str(aggregate_id), int(version)),
                         timestamp=datetime.now(UTC), notification_id=int(notification_id),
                         undecodable=str(exc)[:2000])


# --- the record behind the topic ------------------------------------------------------------------------------


class MissingEvents(Protocol):
    """Reads events of one aggregate from the record (the event store) that the topic did not deliver.

    ``read`` answers the stored versions ``after_version < v < before_version`` in version order, as
    ``Delivered`` (``decode_stored`` makes one of a stored row); fewer when the record does not hold them
    (yet). Called from the consumer's worker thread, inside the batch's transaction (on another connection).
    ``services.adapters.missing_events.StoreEvents`` is the one implementation.
    """

    def read(self, aggregate_id: UUID, after_version: int, before_version: int) -> Sequence[Delivered]: ...


class Misplaced(RuntimeError):
    """A partition whose incarnation is still to be learned delivered a first record that is not the one at its
    beginning (it was positioned by someone else, or records before it were skipped): position it again."""

    def __init__(self, partition: int, offset: int, expected: int | None) -> None:
        super().__init__(f"partition {partition}: first record read at offset {offset}, expected {expected}")
        self.partition = partition


class GapNotFilled(RuntimeError):
    """An event arrived after a version the record does not hold yet: the batch must wait, not skip."""


GAP_WAITS_S = (0.1, 0.3, 1.0, 2.0)
"""Waits between reads of the record for missing versions inside one batch, before the batch is given up and
delivered again from its stored offsets."""


def _fill(missing: MissingEvents | None, d: Delivered, have: int) -> list[Delivered]:
    """Versions ``have+1 .. d.version-1`` of ``d``'s aggregate, from the record (waiting a little for them)."""
    want = list(range(have + 1, d.version))
    if missing is None:
        log.warning("%s v%d arrived after v%d without a reader of the record: versions %s cannot be read through",
                    d.aggregate_id, d.version, have, want)
        return []
    got: list[Delivered] = []
    for wait in (0.0, *GAP_WAITS_S):
        if wait:
            time.sleep(wait)
        got = sorted(missing.read(d.aggregate_id, have, d.version), key=lambda e: e.version)
        if [e.version for e in got] == want:
            return got
    raise GapNotFilled(f"{d.aggregate_id}: v{d.version} arrived, the record holds {[e.version for e in got]} of "
                       f"the missing versions {want}")


# --- tables -------------------------------------------------------------------------------------------------


class _Decoded(NamedTuple):
    """A batch ready to write: the events, the next offset per partition, the incarnations learned in it."""

    events: list[Delivered]
    offsets: dict[tuple[str, int], int]
    learned: dict[tuple[str, int], str]


class Position(NamedTuple):
    """A partition's stored position: the next offset to read and the incarnation it belongs to."""

    next_offset: int
    incarnation: str | None


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn`` in a worker thread, as ``asyncio.to_thread``, except that a cancelled caller still waits for the thread
    to finish before the cancellation goes on: a consumer cancelled mid-batch must not close its connection under a
    transaction that is still running in the thread (the transaction then ends by its own commit or rollback)."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


def _connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


def ensure_schema(conn: psycopg.Connection[Any], projection: Projection, schema: str) -> None:
    """``schema``'s tables, in one transaction serialised per schema by an advisory lock: two consumers (or a
    consumer and a replay) starting at once never run a projection's DDL (drop and re-create views) side by side."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"rxtrail.ddl.{schema}",))
        _ensure_schema(conn, projection, schema)


def _ensure_schema(conn: psycopg.Connection[Any], projection: Projection, schema: str) -> None:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.kafka_offsets (topic text, partition int, next_offset bigint NOT NULL, "
        "incarnation text, PRIMARY KEY (topic, partition))").format(s))
    if not conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = "
                        "'kafka_offsets' AND column_name = 'incarnation'", (schema,)).fetchone():
        # offsets stored before incarnations existed (no ALTER, so no exclusive lock, when the column is there)
        conn.execute(sql.SQL("ALTER TABLE {}.kafka_offsets ADD COLUMN IF NOT EXISTS incarnation text").format(s))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.stream_versions (aggregate_id uuid PRIMARY KEY, version int NOT NULL)"
    ).format(s))
    projection.create_tables(conn, schema)


# --- a rebuilt view under a running consumer -----------------------------------------------------------------

EPOCHS_TABLE = "rxtrail_consumer_epochs"
"""``schema -> epoch``: bumped by ``services.replay`` in the transaction that swaps a rebuilt schema in. A running
consumer reads its schema's epoch ``FOR SHARE`` at the start of every batch's transaction; a new epoch means the
view (and its stored offsets) was replaced under it: the batch rolls back and every partition is positioned again
at the rebuilt view's offsets. The row lock orders the swap and the batches (no pid, no signal, no lost batch)."""


def ensure_epoch(conn: psycopg.Connection[Any], schema: str) -> None:
    """The epochs table (created once, serialised by an advisory lock only while it is missing) and ``schema``'s
    row. Takes no lock that a running consumer's batch could wait behind."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (EPOCHS_TABLE,)).fetchone()
    if not (exists and exists[0]):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('rxtrail.consumer_epochs.ddl'))")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {EPOCHS_TABLE} (schema text PRIMARY KEY, epoch bigint NOT "
                         "NULL DEFAULT 0, changed_at timestamptz NOT NULL DEFAULT now())")
    conn.execute(f"INSERT INTO {EPOCHS_TABLE} (schema) VALUES (%s) ON CONFLICT DO NOTHING", (schema,))


def read_epoch(conn: psycopg.Connection[Any], schema: str, *, lock: bool = True) -> int:
    """``schema``'s epoch (0 when it has no row). ``lock``: row-locked FOR SHARE until the caller's transaction
    ends, which a batch needs (the swap waits for it, it waits for the swap); a plain read is enough before
    positioning (read the epoch first, then the offsets: offsets newer than the epoch read only cost one more
    positioning) and when idle."""
    query = f"SELECT epoch FROM {EPOCHS_TABLE} WHERE schema = %s" + (" FOR SHARE" if lock else "")
    row = conn.execute(query, (schema,)).fetchone()
    return int(row[0]) if row else 0


def bump_epoch(conn: psycopg.Connection[Any], schema: str) -> int:
    """A new epoch for ``schema`` (call first in the transaction that replaces the schema)."""
    ensure_epoch(conn, schema)
    row = conn.execute(f"UPDATE {EPOCHS_TABLE} SET epoch = epoch + 1, changed_at = now() WHERE schema = %s "
                       "RETURNING epoch", (schema,)).fetchone()
    return int(row[0]) if row else 0


EPOCH_CHECK_IDLE_S = 1.0
"""How often an idle consumer (nothing to apply) reads its epoch; a busy one reads it with every batch."""


class Rebuilt(RuntimeError):
    """The consumer's schema was replaced (a replay) since its partitions were positioned."""


def drop_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stored_positions(conn: psycopg.Connection[Any], schema: str, topic: str) -> dict[int, Position]:
    rows = conn.execute(
        sql.SQL("SELECT partition, next_offset, incarnation FROM {}.kafka_offsets WHERE topic = %s").format(
            sql.Identifier(schema)),
        (topic,),
    ).fetchall()
    return {int(p): Position(int(o), i) for p, o, i in rows}


def stored_offsets(conn: psycopg.Connection[Any], schema: str, topic: str) -> dict[int, int]:
    return {p: pos.next_offset for p, pos in stored_positions(conn, schema, topic).items()}


@dataclass
class RunnerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    incarnation_resets: int = 0
    rejoins: int = 0  # the broker answered a rebalance with an assignment the group's leader did not make
    """Partitions read again from the beginning: the topic was not the one the stored offsets belong to."""
    gaps_filled: int = 0
    """Version gaps (n+2 before n+1) closed by reading the missing versions from the record."""
    events_filled: int = 0
    """Events read from the record to close gaps (applied before the event that revealed the gap)."""
    gap_waits: int = 0
    """Batches put back because the record did not hold a missing version yet."""
    poisoned: list[tuple[Delivered, str]] = field(default_factory=list, repr=False)
    """Events of the batch the view could not take (with the error): left out, for the dead-letter topic."""


def apply_batch(conn: psycopg.Connection[Any], projection: Projection, schema: str, batch: Sequence[Delivered],
                offsets: Mapping[tuple[str, int], int] | None = None, *, missing: MissingEvents | None = None,
                incarnations: Mapping[tuple[str, int], str] | None = None, tally: RunnerStats | None = None) -> int:
    """Apply the new events of a batch and store offsets, in the caller's transaction. Returns how many of the
    batch's events were applied (events read through from ``missing`` are counted in ``tally``).

    An event whose aggregate misses earlier versions (never applied) gets them from ``missing`` first, in
    order; ``GapNotFilled`` when the record does not hold them (the caller rolls back and tries again later).
    ``incarnations``: fingerprints learned in this batch, stored with the offsets (see the module doc)."""
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
    delivered = 0
    for d in batch:
        have = known.get(d.aggregate_id, 0)
        if d.version <= have:
            continue
        if d.version > have + 1:
            filled = _fill(missing, d, have)
            if filled:
                log.warning("%s: %s v%d arrived before v%d..v%d, which were never applied: read %d from the record",
                            projection.name, d.aggregate_id, d.version, have + 1, d.version - 1, len(filled))
                fresh.extend(filled)
                if tally is not None:
                    tally.gaps_filled += 1
                    tally.events_filled += len(filled)
        fresh.append(d)
        delivered += 1
        known[d.aggregate_id] = d.version
    if fresh:
        tombstones = [(d, d.undecodable) for d in fresh if d.undecodable is not None]
        poisoned = _apply_isolating(conn, projection, schema,
                                    [d for d in fresh if d.undecodable is None and not d.unread])
        if tally is not None:
            tally.poisoned.extend([*tombstones, *poisoned])
        for d, error in tombstones:
            log.error("%s: %s v%d (%s) in the record does not decode: passed and dead-lettered: %s", projection.name,
                      d.aggregate_id, d.version, d.event_type, error)
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
        learned = incarnations or {}
        topics_, parts, nexts, fps = zip(*[(t, p, o, learned.get((t, p))) for (t, p), o in offsets.items()],
                                         strict=True)
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.kafka_offsets (topic, partition, next_offset, incarnation) "
                "SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[]) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                "incarnation = COALESCE(EXCLUDED.incarnation, {}.kafka_offsets.incarnation)"
            ).format(s, s),
            (list(topics_), list(parts), list(nexts), list(fps)),
        )
    return delivered


# --- topic incarnations ---------------------------------------------------------------------------------------


POISON: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError,
                                           ArithmeticError, LookupError)
"""Errors an event itself causes (a value out of a column's range, a broken constraint, data the view cannot read):
retrying never helps. Anything else (a lost connection) is retried as a whole batch."""


def _apply_isolating(conn: psycopg.Connection[Any], projection: Projection, schema: str,
                     events: Sequence[Delivered]) -> list[tuple[Delivered, str]]:
    """Apply ``events``; if the view cannot take one of them, apply them one by one (each in a savepoint) and leave
    out those that fail. Returns the events left out with their errors (the caller dead-letters them): one bad
    event never stops a stage."""
    if not events:
        return []
    try:
        with conn.transaction():  # a savepoint in the caller's transaction
            projection.apply(conn, schema, events)
        return []
    except POISON as exc:
        if len(events) == 1:
            return [_poisoned(projection, events[0], exc)]
    left_out = []
    for d in events:
        try:
            with conn.transaction():
                projection.apply(conn, schema, [d])
        except POISON as exc:
            left_out.append(_poisoned(projection, d, exc))
    return left_out


def _poisoned(projection: Projection, d: Delivered, exc: BaseException) -> tuple[Delivered, str]:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("%s: cannot apply %s v%d (%s, %s[%d]@%d): %s; left out and dead-lettered", projection.name,
              d.aggregate_id, d.version, d.event_type, d.topic, d.partition, d.offset, error)
    return d, error

def fingerprint(record: Any) -> str:
    """``"<offset>/<timestamp ms>/<event id>"`` of a Kafka record (a digest of key and value when it carries no
    event id): what tells this incarnation of the partition from a later one (see the module doc)."""
    eid = header(record.headers, EVENT_ID)
    if not eid:
        eid = hashlib.sha256((record.key or b"") + b"\0" + (record.value or b"")).hexdigest()[:32]
    return f"{int(record.offset)}/{int(record.timestamp)}/{eid}"


def fingerprint_offset(incarnation: str) -> int:
    return int(incarnation.split("/", 1)[0])


class Observed(NamedTuple):
    """What the probe saw of one partition."""

    beginning: int
    end: int
    """The larger of ListOffsets(latest) and the fetch's high watermark."""
    record: str | None
    """Fingerprint of the first record at or after the asked offset (None: the partition has none there)."""


class TopicProbe:
    """A group-less consumer that reads one record per partition at a given offset, and the partition's bounds.
    Cheap: ListOffsets and one small fetch per partition (``fetch_bytes``; brokers still answer the whole first
    record batch), nothing left assigned in between; it never touches a consumer group's position."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0, fetch_bytes: int = 4096) -> None:
        self.timeout_s = timeout_s
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", max_partition_fetch_bytes=fetch_bytes,
                                          fetch_max_bytes=max(fetch_bytes, FETCH_MAX_BYTES), fetch_max_wait_ms=100)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def observe(self, wanted: Mapping[Any, int | None]) -> dict[Any, Observed]:
        """For each partition, the record at ``max(offset, beginning)`` (``None``: at the beginning)."""
        c = self._consumer
        tps = list(wanted)
        if not tps:
            return {}
        c.assign(tps)
        begins = await c.beginning_offsets(tps)
        listed = await c.end_offsets(tps)
        at = {tp: max(int(begins[tp]), wanted[tp] or 0) for tp in tps}
        for tp in tps:
            c.seek(tp, at[tp])
        found: dict[Any, Any] = {}
        pending = set(tps)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch answer for {sorted(str(tp) for tp in pending)}")
            got = await c.getmany(*pending, timeout_ms=200, max_records=len(pending) * 4)
            for tp, msgs in got.items():
                if tp in pending and msgs:
                    found[tp] = msgs[0]
                    pending.discard(tp)
                    c.pause(tp)
            for tp in list(pending):
                hw = c.highwater(tp)
                if hw is not None and hw <= at[tp] and int(listed[tp]) <= at[tp]:
                    pending.discard(tp)  # nothing there: empty, or the offset lies past the end
        seen = {tp: Observed(int(begins[tp]), max(int(listed[tp]), int(c.highwater(tp) or 0)),
                             fingerprint(found[tp]) if tp in found else None) for tp in tps}
        c.assign([])  # nothing stays assigned: no background fetching between probes
        return seen


def verdict(position: Position, seen: Observed) -> tuple[str | None, str | None]:
    """Whether a stored position may be used on the partition as probed: ``(reason to read it again from the
    beginning or None, the incarnation to keep)``."""
    stored = position.incarnation
    if stored is None:
        if position.next_offset > seen.beginning:
            return "offsets stored without an incarnation", None
        return None, None
    at = fingerprint_offset(stored)
    if seen.record is None:
        return f"the record at offset {at} is gone (partition holds {seen.beginning}..{seen.end})", None
    if seen.record == stored:
        if position.next_offset > seen.end:
            return f"stored offset {position.next_offset} lies beyond the end {seen.end}", None
        return None, stored
    if seen.beginning > at and fingerprint_offset(seen.record) == seen.beginning and \
            seen.beginning <= position.next_offset <= seen.end:
        return None, seen.record  # retention moved the log start; the position still lies inside the log
    return f"the record at offset {at} is {seen.record}, not {stored}", None


# --- the loop -------------------------------------------------------------------------------------------------


FETCH_MAX_BYTES = 4 * 1024 * 1024
"""The most a consumer fetches in one request (every partition together): a few batches of events."""


class LeaderAssignments:
    """The assignment this member made as the group's leader in the latest rebalance, to tell a broker that
    answers with another one.

    Tansu (0.6) keeps a group at generation 0 and answers every later rebalance with the assignment of the first:
    when the topic comes back with more partitions (the embedded broker restarted empty and a client's request
    created it with its own count) the leader assigns every partition, yet each member is given the old ones
    again and the new partitions are never read — a consumer that skips. When the partitions handed to this
    member are not one of the sets its own assignor just made, the consumer leaves the group and joins it again
    as a new member, which the broker assigns afresh. A member that was not the leader made no assignment and
    checks nothing (its leader, running this same code, does)."""

    def __init__(self) -> None:
        self.latest: list[frozenset[TopicPartition]] | None = None
        recorder = self

        class Assignor(RoundRobinPartitionAssignor):  # type: ignore[misc]
            name = "roundrobin"  # the protocol every member of our groups names

            @classmethod
            def assign(cls, cluster: Any, member_metadata: Any) -> Any:
                made = super().assign(cluster, member_metadata)
                recorder.latest = [frozenset(a.partitions()) for a in made.values()]
                return made

        self.assignor: type = Assignor

    def stale(self, assigned: Any) -> str | None:
        made, self.latest = self.latest, None
        if made is None or frozenset(assigned) in made:
            return None
        given = sorted(tp.partition for tp in assigned)
        wanted = sorted(tp.partition for tp in frozenset().union(*made)) if made else []
        return (f"the broker assigned partitions {given} after this member, as the group's leader, assigned "
                f"{wanted} to the {len(made)} member(s)")


@dataclass
class ProjectionConsumer:
    """Consumes `rx.events` for one projection as its own consumer group; offsets live in PostgreSQL.

    ``missing``: reads versions the topic did not deliver from the record (see the module doc); the composition
    root always gives one. ``check_interval_s``: how often the incarnations of the assigned partitions are
    checked between batches (also on start, on every assignment and after a failed commit)."""

    projection: Projection
    database_url: str
    bootstrap: str
    schema: str = ""
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DLQ
    group_id: str = ""
    max_records: int = 2000
    session_timeout_ms: int = 6000
    missing: MissingEvents | None = None
    check_interval_s: float = 10.0
    retry_delay_s: float = 1.0
    stats: RunnerStats = field(default_factory=RunnerStats)

    def __post_init__(self) -> None:
        self.schema = self.schema or self.projection.name
        self.group_id = self.group_id or f"{GROUP_PREFIX}.{self.projection.name}"
        self._incarnations: dict[int, str | None] = {}
        """Per assigned partition: the incarnation its position belongs to (None: learn it from the first record
        consumed)."""
        self._expect: dict[int, int] = {}
        """Per partition still to learn: the offset its first record must have (the partition's beginning)."""
        self._bounced: dict[int, int] = {}
        self._epoch: int | None = None
        """The schema's epoch the positions were read under (``EPOCHS_TABLE``)."""

    async def run(self, stop: asyncio.Event, idle_timeout_s: float | None = None) -> RunnerStats:
        """Run until `stop` is set (or, with idle_timeout_s, until nothing arrived for that long)."""
        conn = await in_thread(_connect, self.database_url)
        try:
            def prepare() -> None:  # off the event loop: DDL may wait for another session's transaction
                with conn.transaction():
                    ensure_schema(conn, self.projection, self.schema)
                ensure_epoch(conn, self.schema)

            await in_thread(prepare)
            leader = LeaderAssignments()
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=min(1000, self.session_timeout_ms // 3), max_poll_records=self.max_records,
                # a topic that came back with other partitions (recreated; on Tansu, auto-created with 4 by any
                # request naming it) is assigned anew within one check interval, not the default 5 minutes
                metadata_max_age_ms=int(max(self.check_interval_s, 1.0) * 1000),
                partition_assignment_strategy=(leader.assignor,),
                # Tansu answers each partition with up to fetch_max_bytes (it ignores the per-partition bound):
                # aiokafka's 50 MB let a consumer catching up hold tens of MB of prefetched records
                fetch_max_bytes=FETCH_MAX_BYTES,
            )
            # Seeks happen in this loop, between batches, never inside aiokafka's rebalance callback: there
            # they could read offsets while a batch's transaction is open, and aiokafka may reset the
            # position after the callback anyway.
            unpositioned: set[Any] = set()
            stale: list[str] = []  # why the group must be joined again as a new member (see LeaderAssignments)

            class MarkAssigned(ConsumerRebalanceListener):  # type: ignore[misc]
                async def on_partitions_revoked(self, revoked: Any) -> None:
                    unpositioned.difference_update(revoked)
                    leader.latest = None

                async def on_partitions_assigned(self, assigned: Any) -> None:
                    unpositioned.update(assigned)
                    if (why := leader.stale(assigned)) is not None:
                        stale.append(why)

            listener = MarkAssigned()

            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            probe = TopicProbe(self.bootstrap)
            await producer.start()
            await probe.start()
            consumer.subscribe([self.topic], listener=listener)
            await consumer.start()
            # Pipelining: while one batch is written (its transaction runs in a worker thread), the next is fetched
            # and decoded. Anything else that touches the connection or the positions waits for the write first
            # (``drain``); a batch whose partitions still learn their incarnation too. When the write fails (a gap
            # the record cannot fill yet, a rebuilt view), the batch decoded meanwhile is dropped and every
            # partition is positioned again at its stored offsets, as before.
            writing: tuple[asyncio.Future[None], Any] | None = None

            async def drain() -> bool:
                """Wait for the batch being written and commit its offsets to the group; False when it failed and
                the partitions must be positioned again (they are marked)."""
                nonlocal writing
                if writing is None:
                    return True
                (task, written), writing = writing, None
                try:
                    await task
                except GapNotFilled as exc:
                    self.stats.gap_waits += 1
                    log.warning("%s: %s; the batch waits and is read again from the stored offsets",
                                self.projection.name, exc)
                    unpositioned.update(consumer.assignment())
                    await self._pause(stop)
                    return False
                except Rebuilt as exc:
                    log.warning("%s: %s; continuing from the rebuilt view's offsets", self.projection.name, exc)
                    unpositioned.update(consumer.assignment())
                    return False
                try:
                    await consumer.commit({TopicPartition(self.topic, p.partition): msgs[-1].offset + 1
                                           for p, msgs in written.items()})
                except KafkaError as exc:
                    # the offsets that count are in PostgreSQL; a failed group commit means the group or the
                    # broker changed under us: check every partition again before reading on
                    log.warning("%s: committing offsets to the group failed (%r); checking positions again",
                                self.projection.name, exc)
                    unpositioned.update(consumer.assignment())
                    return False
                return True

            try:
                loop = asyncio.get_running_loop()
                idle_since = last_check = epoch_checked = loop.time()
                while not stop.is_set():
                    if writing is not None and (unpositioned or stale
                                                or loop.time() - last_check >= self.check_interval_s):
                        await drain()
                        continue
                    if stale:
                        self.stats.rejoins += 1
                        log.warning("%s: %s; joining the group %s again as a new member", self.projection.name,
                                    stale[-1], self.group_id)
                        stale.clear()
                        consumer.unsubscribe()  # leaves the group: the next join is a new member's
                        consumer.subscribe([self.topic], listener=listener)
                        continue
                    if unpositioned:
                        if not await self._position(conn, consumer, probe, unpositioned):
                            await self._pause(stop)
                            continue
                        last_check = loop.time()
                    elif loop.time() - last_check >= self.check_interval_s and consumer.assignment():
                        await self._check(consumer, probe)
                        last_check = loop.time()
                    records = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                    if unpositioned:
                        # a rebalance landed during the fetch: drop the batch and put every partition back
                        # at its stored offset (everything applied so far is committed there)
                        await drain()
                        unpositioned.update(consumer.assignment())
                        continue
                    messages = [m for part in records.values() for m in part]
                    if not messages and writing is not None:
                        await drain()
                        continue
                    if not messages:
                        if not consumer.assignment():
                            idle_since = loop.time()
                        elif idle_timeout_s is not None and loop.time() - idle_since > idle_timeout_s:
                            break
                        if loop.time() - epoch_checked >= EPOCH_CHECK_IDLE_S:  # a replay swapped in while idle
                            epoch_checked = loop.time()
                            if await in_thread(read_epoch, conn, self.schema, lock=False) != self._epoch:
                                unpositioned.update(consumer.assignment())
                        continue
                    idle_since = loop.time()
                    if writing is not None and any(self._incarnations.get(m.partition) is None for m in messages):
                        if not await drain():  # a partition learning its incarnation: after the write before
                            continue
                    try:
                        decoded = await self._decode_batch(producer, messages)
                    except Misplaced as exc:
                        log.warning("%s: %s; positioning it again", self.projection.name, exc)
                        await drain()
                        unpositioned.add(TopicPartition(self.topic, exc.partition))
                        continue
                    if not await drain():
                        continue  # the batch before failed: this one is read again from the stored offsets
                    writing = (asyncio.ensure_future(self._write_batch(conn, producer, decoded)), records)
                await drain()
            finally:
                if writing is not None:  # leaving on an error: the write in flight ends before the connection
                    with contextlib.suppress(BaseException):
                        await writing[0]
                await consumer.stop()
                await probe.stop()
                await producer.stop()
        finally:
            await in_thread(conn.close)
        return self.stats

    async def _pause(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), self.retry_delay_s)
        except TimeoutError:
            pass

    async def _position(self, conn: psycopg.Connection[Any], consumer: Any, probe: TopicProbe,
                        partitions: set[Any]) -> bool:
        """Seek newly assigned partitions to their stored offsets, or to the beginning when the topic is not the
        one those offsets belong to. False when the broker could not be probed (try again shortly)."""
        def read() -> tuple[int, dict[int, Position]]:
            # the epoch first, then the offsets (a swap between the two makes the next batch position again)
            return read_epoch(conn, self.schema, lock=False), stored_positions(conn, self.schema, self.topic)

        epoch, stored = await in_thread(read)
        if self._epoch is not None and epoch != self._epoch:
            partitions.update(consumer.assignment())  # the view was rebuilt: every partition to its new offsets
        self._epoch = epoch
        assigned = consumer.assignment()
        snapshot = set(partitions)  # assignments landing during the awaits below stay for the next round
        todo = [tp for tp in snapshot if tp in assigned]
        positions = {tp: stored.get(tp.partition, Position(0, None)) for tp in todo}
        try:
            seen = await probe.observe({tp: fingerprint_offset(p.incarnation) if p.incarnation else None
                                        for tp, p in positions.items()})
        except Exception as exc:
            log.warning("%s: cannot probe %s (%r); positioning again shortly", self.projection.name, self.topic, exc)
            return False
        for tp in todo:
            if tp not in consumer.assignment():
                continue  # revoked while the probe ran (a rebalance): its next assignment positions it
            position = positions[tp]
            reason, incarnation = verdict(position, seen[tp])
            if reason is not None:
                self._reset(tp, reason, seen[tp].beginning)
                await consumer.seek_to_beginning(tp)
            elif tp.partition in stored:
                self._incarnations[tp.partition] = incarnation
                self._expect[tp.partition] = max(position.next_offset, seen[tp].beginning)
                consumer.seek(tp, position.next_offset)
            else:
                self._incarnations[tp.partition] = None
                self._expect[tp.partition] = seen[tp].beginning
                await consumer.seek_to_beginning(tp)
        partitions.difference_update(snapshot)
        return True

    async def _check(self, consumer: Any, probe: TopicProbe) -> None:
        """Between batches: is every assigned partition still the incarnation its position belongs to?"""
        assigned = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        try:
            seen = await probe.observe({tp: fingerprint_offset(i) if (i := self._incarnations.get(tp.partition))
                                        else None for tp in assigned})
        except Exception as exc:
            log.warning("%s: cannot probe %s (%r); checking again later", self.projection.name, self.topic, exc)
            return
        for tp in assigned:
            if tp not in consumer.assignment():
                continue  # revoked while the probe ran (a rebalance): its next assignment positions it
            position = Position(await consumer.position(tp), self._incarnations.get(tp.partition))
            if position.incarnation is None and position.next_offset <= seen[tp].end:
                continue  # still to learn from the first record consumed
            reason, _ = verdict(position, seen[tp])
            if reason is not None:
                self._reset(tp, reason, seen[tp].beginning)
                await consumer.seek_to_beginning(tp)

    def _reset(self, tp: Any, reason: str, beginning: int) -> None:
        self.stats.incarnation_resets += 1
        self._incarnations[tp.partition] = None
        self._expect[tp.partition] = beginning
        log.warning("%s: %s[%d] is not the topic its offsets were stored for (%s): reading it again from the "
                    "beginning", self.projection.name, tp.topic, tp.partition, reason)

    def _check_first_records(self, messages: list[Any]) -> None:
        """An incarnation is only learned from the record at the partition's beginning: a first record elsewhere
        means records before it were not read (Misplaced). The same first offset twice is the log's real start
        (offsets a broker leaves unused, e.g. transaction markers)."""
        first: dict[int, int] = {}
        for m in messages:
            first.setdefault(m.partition, m.offset)
        for partition, offset in first.items():
            if self._incarnations.get(partition) is not None:
                continue
            expected = self._expect.get(partition)
            if offset == expected or self._bounced.get(partition) == offset:
                continue
            self._bounced[partition] = offset
            raise Misplaced(partition, offset, expected)

    async def _decode_batch(self, producer: Any, messages: list[Any]) -> _Decoded:
        """Check and decode a batch (undecodable records go to the dead-letter topic); nothing is written."""
        self._check_first_records(messages)
        good: list[Delivered] = []
        offsets: dict[tuple[str, int], int] = {}
        learned: dict[tuple[str, int], str] = {}
        reads = reads_of(self.projection)
        for m in messages:
            offsets[(m.topic, m.partition)] = m.offset + 1
            if self._incarnations.get(m.partition) is None and (m.topic, m.partition) not in learned:
                learned[(m.topic, m.partition)] = fingerprint(m)
            try:
                good.append(decode(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset,
                                   reads=reads))
            except Undecodable as exc:
                log.warning("%s: %s[%d]@%d undecodable, sent to %s: %s", self.projection.name, m.topic,
                            m.partition, m.offset, self.dlq_topic, exc)
                dead = dead_letter_headers(m.headers, error=str(exc), consumer=self.group_id,
                                           source=record_source(m.topic, m.partition, m.offset))
                await producer.send_and_wait(self.dlq_topic, value=m.value, key=m.key, headers=dead)
                self.stats.dead_lettered += 1
        return _Decoded(good, offsets, learned)

    async def _write_batch(self, conn: psycopg.Connection[Any], producer: Any, batch: _Decoded) -> None:
        """Apply a decoded batch and store its offsets in one transaction (in a worker thread); then dead-letter
        what the view could not take and learn the partitions' incarnations."""
        good, offsets, learned = batch
        tally = RunnerStats()

        def write() -> int:
            with conn.transaction():
                if (epoch := read_epoch(conn, self.schema)) != self._epoch:
                    raise Rebuilt(f"schema {self.schema} was rebuilt (epoch {self._epoch} -> {epoch})")
                return apply_batch(conn, self.projection, self.schema, good, offsets, missing=self.missing,
                                   incarnations=learned, tally=tally)

        applied = await in_thread(write)
        for d, error in tally.poisoned:  # committed without them; the stage goes on (stats.dead_lettered says so)
            source = record_source(d.topic, d.partition, d.offset) if d.offset >= 0 else None
            raw = to_json(d.event) if d.event is not None else json.dumps(
                {"aggregate_id": str(d.aggregate_id), "version": d.version, "event_type": d.event_type,
                 "notification_id": d.notification_id}).encode()
            value, extra = dead_letter_value(raw, error=error, source=source)
            original = [(EVENT_ID, d.event_id.encode()), (EVENT_TYPE, d.event_type.encode())]
            dead = dead_letter_headers(original, error=error, consumer=self.group_id, source=source)
            await producer.send_and_wait(self.dlq_topic, value=value, key=str(d.aggregate_id).encode(),
                                         headers=dead + extra)
            self.stats.dead_lettered += 1
        for (_t, p), fp in learned.items():
            self._incarnations[p] = fp
        self.stats.applied += applied
        self.stats.duplicates += len(good) - applied
        self.stats.gaps_filled += tally.gaps_filled
        self.stats.events_filled += tally.events_filled
        self.stats.batches += 1
