"""Drop and rebuild projections, from Kafka ``rx.events`` or straight from the event store, optionally "as of" a time.

- From Kafka: partitions are assigned by hand (no consumer group), read from the beginning to the end offsets
  captured at the start, then the replay stops. The stored offsets of the rebuilt schema are those ends, with
  each partition's incarnation (``projections.base``), so the live consumer continues from there, on that topic
  only. A version the topic lacks (a broker that lost data) is read from the event store, never skipped.
- From the event store (``from_store=True``, for when the broker lost data): every eventsourcing ``*_events`` table
  with a ``notification_id`` is read in notification order with psycopg and decoded with ``events.from_json``.
  The end offsets of ``rx.events`` (and the incarnation of each partition) are captured *before* the store is
  read, and stored as the schema's offsets:
  everything before them was published from events already in the store, anything after is consumed live
  (and anything read twice is dropped by the per-aggregate versions).
- Region shards (``stores``: every event store by name, ``bootstrap.shard_database_urls``): from the store, each
  store is read in turn (the global one first; one snapshot per store, no order across them, as on the topic) and
  the result counts what came from each (``ReplayResult.stores``); from Kafka, versions the topic lacks are read
  from every store. The rebuilt views live in ``database_url`` (the global database, the read side).
- A full rebuild is built into ``<schema>__rebuild`` and swapped in with one transaction at the end, so readers
  keep the old view until the new one is complete.
- ``as_of``: only events with ``timestamp <= as_of`` are applied, into ``<name>_asof_<yyyymmddhhmmss>`` (UTC), a
  separate schema for investigations; the live schema is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from events import topics
from projections import registry
from projections.base import (
    Delivered,
    MissingEvents,
    Projection,
    RunnerStats,
    TopicProbe,
    Undecodable,
    apply_batch,
    bump_epoch,
    decode,
    decode_stored,
    drop_schema,
    ensure_schema,
    fingerprint,
    in_thread,
    reads_of,
)
from projections.registry import ProjectionOptions
from services.adapters.event_log import count_events, discover_logs, pages
from services.adapters.missing_events import StoreEvents
from services.adapters.shard_events import ShardedStoreEvents

log = logging.getLogger("rxtrail.replay")

DEFAULT_TOPIC = topics.EVENTS


@dataclass
class ReplayResult:
    """What one projection's replay did."""

    projection: str
    schema: str
    source: str
    as_of: datetime | None
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    undecodable: int = 0
    after_as_of: int = 0
    gaps_filled: int = 0
    """Version gaps of the topic closed by reading the missing versions from the event store."""
    events_filled: int = 0
    seconds: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    stores: dict[str, int] = field(default_factory=dict)
    """From the store: events read from each event store, by name (one entry, ``""``, without shards)."""

    @property
    def events_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


class ReplayError(RuntimeError):
    pass


def _default_options() -> ProjectionOptions:
    """The projection options from the environment (``RXTRAIL_PROJECTIONS__*``), when the caller gave none."""
    from services.infra.settings import Settings

    return Settings().projections


def as_of_schema(name: str, as_of: datetime) -> str:
    """``<name>_asof_<yyyymmddhhmmss>`` with the time in UTC."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return f"{name}_asof_{as_of.astimezone(UTC):%Y%m%d%H%M%S}"


def replay(name: str, database_url: str, bootstrap: str | None = None, *, as_of: datetime | None = None,
           from_store: bool = False, progress: bool = True, topic: str = DEFAULT_TOPIC, schema: str | None = None,
           store_schema: str = "public", batch_size: int = 5000, settings: ProjectionOptions | None = None,
           console: Any = None, missing: MissingEvents | None = None,
           stores: Mapping[str, str] | None = None) -> list[ReplayResult]:
    """Rebuild projection ``name`` (or ``"all"``) and return one result per projection; see the module doc.

    ``bootstrap`` may be None only with ``from_store`` (then no Kafka offsets are stored and the live consumer
    reads the topic from the start, dropping what it already has). ``schema`` overrides the target schema of a
    single projection (default: the projection's name, or the as-of schema). ``missing``: where versions the
    topic lacks are read (default: the event store in ``store_schema``, or every one of ``stores``). ``stores``:
    every event store by name when the write side is sharded.
    """
    return asyncio.run(replay_async(name, database_url, bootstrap, as_of=as_of, from_store=from_store,
                                    progress=progress, topic=topic, schema=schema, store_schema=store_schema,
                                    batch_size=batch_size, settings=settings, console=console, missing=missing,
                                    stores=stores))


@dataclass
class _Target:
    projection: Projection
    final_schema: str
    build_schema: str
    result: ReplayResult
    conn: Any = None
    """Its own connection for applying batches: the projections of one replay are applied side by side."""


async def replay_async(name: str, database_url: str, bootstrap: str | None = None, *, as_of: datetime | None = None,
                       from_store: bool = False, progress: bool = True, topic: str = DEFAULT_TOPIC,
                       schema: str | None = None, store_schema: str = "public", batch_size: int = 5000,
                       settings: ProjectionOptions | None = None, console: Any = None,
                       missing: MissingEvents | None = None,
                       stores: Mapping[str, str] | None = None) -> list[ReplayResult]:
    """The coroutine behind :func:`replay` (for callers already inside an event loop)."""
    names = registry.resolve(name)
    if schema is not None and len(names) != 1:
        raise ValueError("schema= applies to a single projection, not 'all'")
    if as_of is not None and as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if bootstrap is None and not from_store:
        raise ValueError("a Kafka replay needs bootstrap servers")
    source = "store" if from_store else "kafka"
    targets: list[_Target] = []
    for n in names:
        final = schema or (as_of_schema(n, as_of) if as_of else n)
        building = final if as_of else f"{final}__rebuild"
        targets.append(_Target(registry.build(n, settings if settings is not None else _default_options()), final,
                               building, ReplayResult(n, final, source, as_of)))

    owned = missing is None
    reader: MissingEvents = missing if missing is not None else (
        ShardedStoreEvents(stores.values(), store_schema) if stores else StoreEvents(database_url, store_schema))
    conn: psycopg.Connection[Any] = await asyncio.to_thread(lambda: psycopg.connect(database_url, autocommit=True))
    try:
        for t in targets:
            locked = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"rxtrail.replay.{t.final_schema}",)
                                  ).fetchone()
            if not (locked and locked[0]):
                raise ReplayError(f"another replay of {t.final_schema} is running")
            with conn.transaction():
                drop_schema(conn, t.build_schema)
                ensure_schema(conn, t.projection, t.build_schema)
        for t in targets:
            t.conn = await asyncio.to_thread(lambda: psycopg.connect(database_url, autocommit=True))
        started = time.monotonic()
        with _Progress(progress, console) as bar:
            if from_store:
                ends = await _positions_or_none(bootstrap, topic) if as_of is None else None
                await asyncio.to_thread(_from_store, stores or {"": database_url}, targets, store_schema,
                                        as_of, batch_size, bar)
                if ends is not None:
                    offsets = {(topic, p): o for p, (o, _) in ends.items()}
                    incarnations = {(topic, p): i for p, (_, i) in ends.items() if i is not None}
                    for t in targets:
                        t.result.offsets = {p: o for p, (o, _) in ends.items()}
                        with conn.transaction():
                            apply_batch(conn, t.projection, t.build_schema, [], offsets, incarnations=incarnations)
            elif bootstrap is not None:
                await _from_kafka(targets, bootstrap, topic, as_of, batch_size, bar, reader)
        elapsed = time.monotonic() - started
        for t in targets:
            t.result.seconds = elapsed
            if t.build_schema != t.final_schema:
                # statistics before readers see it: a schema filled just now has none, and the planner's guesses
                # made the trail query 5-20x slower right after a rebuild (bench/scale.py at 80 k events)
                for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                             (t.build_schema,)).fetchall():
                    conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(t.build_schema),
                                                                 sql.Identifier(table)))
                with conn.transaction():
                    # first: a running consumer of this schema finishes its batch (or waits), then notices the
                    # new epoch and continues from the rebuilt view's offsets (projections.base.EPOCHS_TABLE)
                    bump_epoch(conn, t.final_schema)
                    drop_schema(conn, t.final_schema)
                    conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                        sql.Identifier(t.build_schema), sql.Identifier(t.final_schema)))
        if progress:
            _print_summary([t.result for t in targets], console)
        return [t.result for t in targets]
    finally:
        for t in targets:
            if t.conn is not None:
                await asyncio.to_thread(t.conn.close)
        await asyncio.to_thread(conn.close)  # also releases the advisory locks
        if owned and isinstance(reader, StoreEvents | ShardedStoreEvents):
            reader.close()


def _apply(targets: Sequence[_Target], batch: list[Delivered], read: int, undecodable: int, as_of: datetime | None,
           offsets: dict[tuple[str, int], int] | None, missing: MissingEvents | None = None,
           incarnations: dict[tuple[str, int], str] | None = None) -> None:
    """The batch into every target, each in its own transaction on its own connection, side by side (threads: the
    Python of one overlaps the SQL of the others)."""
    kept = batch if as_of is None else [d for d in batch if d.timestamp <= as_of]

    def one(t: _Target) -> None:
        tally = RunnerStats()
        with t.conn.transaction():
            applied = apply_batch(t.conn, t.projection, t.build_schema, kept, offsets if as_of is None else None,
                                  missing=missing, incarnations=incarnations if as_of is None else None, tally=tally)
        r = t.result
        r.gaps_filled += tally.gaps_filled
        r.events_filled += tally.events_filled
        r.read += read
        r.undecodable += undecodable
        r.after_as_of += len(batch) - len(kept)
        r.applied += applied
        r.duplicates += len(kept) - applied

    if len(targets) == 1:
        one(targets[0])
        return
    with ThreadPoolExecutor(len(targets), thread_name_prefix="replay") as pool:
        futures = [pool.submit(one, t) for t in targets]
    for f in futures:
        f.result()  # every target finished (the pool's exit waits); the first error, if any


# --- from Kafka ---------------------------------------------------------------------------------------------


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await asyncio.wait_for(admin.describe_topics([topic]), 15)
    finally:
        await admin.close()
    for t in described:
        if t.get("topic") == topic and not t.get("error_code"):
            return sorted(int(p["partition"]) for p in t.get("partitions", ()))
    raise ReplayError(f"topic {topic} does not exist on {bootstrap}")


async def _ends(consumer: Any, tps: list[Any], timeout_s: float = 15.0) -> dict[Any, int]:
    """End offsets as a fetch sees them: ListOffsets, then the high watermark of a fetch from there, whichever is
    higher. (Tansu answers ListOffsets(latest) with the last record batch's base offset + 1, short of the end.)"""
    listed = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    deadline = time.monotonic() + timeout_s
    while any(consumer.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            raise ReplayError("no fetch answer from the broker for the end offsets")
        await consumer.getmany(timeout_ms=200)
    return {tp: max(int(listed[tp]), int(consumer.highwater(tp))) for tp in tps}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The current end offset of every partition of ``topic``."""
    parts = await _partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _ends(consumer, [TopicPartition(topic, p) for p in parts])
    finally:
        await consumer.stop()
    return {tp.partition: o for tp, o in ends.items()}


async def positions(bootstrap: str, topic: str) -> dict[int, tuple[int, str | None]]:
    """Every partition's end offset and incarnation (the fingerprint of its first record; None when empty):
    what a rebuilt schema stores so the live consumer continues there, on this topic only."""
    ends = await end_offsets(bootstrap, topic)
    probe = TopicProbe(bootstrap)
    await probe.start()
    try:
        seen = await probe.observe({TopicPartition(topic, p): None for p in ends})
    finally:
        await probe.stop()
    return {p: (max(o, seen[TopicPartition(topic, p)].end), seen[TopicPartition(topic, p)].record)
            for p, o in ends.items()}


async def _positions_or_none(bootstrap: str | None, topic: str) -> dict[int, tuple[int, str | None]] | None:
    if bootstrap is None:
        log.warning("replay from the store without a broker: the live consumers will re-read %s from the start", topic)
        return None
    try:
        return await asyncio.wait_for(positions(bootstrap, topic), 30)
    except Exception as exc:
        log.warning("replay: cannot read the end offsets of %s (%r); the live consumers will re-read it from the "
                    "start (duplicates are dropped)", topic, exc)
        return None


async def _from_kafka(targets: Sequence[_Target], bootstrap: str, topic: str,
                      as_of: datetime | None, batch_size: int, bar: _Progress, missing: MissingEvents) -> None:
    parts = await _partitions(bootstrap, topic)
    tps = [TopicPartition(topic, p) for p in parts]
    # The prefetch is bounded: Tansu ignores max_partition_fetch_bytes and answers each partition with up to
    # fetch_max_bytes, so 64 MB let the fetched blobs grow with the topic (24 MB at 60 k events, 56 MB at 152 k;
    # replay all's peak RSS 175 → 238 MB); with 1 MB, 156 → 169 MB, no slower (bench/scale.py --events a,b).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=batch_size, fetch_max_bytes=1024 * 1024)
    await consumer.start()
    try:
        ends = await _ends(consumer, tps)
        starts = await consumer.beginning_offsets(tps)
        for t in targets:
            t.result.offsets = {tp.partition: int(o) for tp, o in ends.items()}
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        bar.start(f"{topic} → {', '.join(t.final_schema for t in targets)}", sum(ends[tp] - starts[tp] for tp in tps))
        if not pending:
            return
        consumer.pause(*[tp for tp in tps if tp not in pending])
        unlearned = set(pending)  # each partition's incarnation: its first record, read here
        # events no target reads are passed by version, undecoded (as-of cuts need every event's time: all decoded)
        reads = reads_of(*(t.projection for t in targets)) if as_of is None else None
        last_progress = time.monotonic()
        applying: asyncio.Future[Any] | None = None  # the previous batch, applied while this one is read
        while pending:
            records = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            if not records:
                if time.monotonic() - last_progress > 60:
                    raise ReplayError(f"no records for 60 s with {len(pending)} partitions short of their end offsets")
                continue
            last_progress = time.monotonic()
            batch: list[Delivered] = []
            offsets: dict[tuple[str, int], int] = {}
            learned: dict[tuple[str, int], str] = {}
            read = undecodable = 0
            for tp, msgs in records.items():
                if tp not in pending:
                    continue
                for m in msgs:
                    if m.offset >= ends[tp]:
                        break
                    if tp in unlearned:
                        unlearned.discard(tp)
                        learned[(tp.topic, tp.partition)] = fingerprint(m)
                    read += 1
                    offsets[(tp.topic, tp.partition)] = m.offset + 1
                    try:
                        batch.append(decode(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset,
                                            reads=reads))
                    except Undecodable as exc:
                        undecodable += 1
                        log.warning("replay: %s[%d]@%d undecodable, skipped: %s", m.topic, m.partition, m.offset, exc)
                if offsets.get((tp.topic, tp.partition), -1) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if applying is not None:
                await applying
            applying = asyncio.ensure_future(in_thread(_apply, targets, batch, read, undecodable, as_of, offsets,
                                                       missing, learned))
            bar.advance(read)
        if applying is not None:
            await applying
            applying = None
    finally:
        if applying is not None:  # an error while reading: the batch being applied still ends before we leave
            with contextlib.suppress(BaseException):
                await applying
        await consumer.stop()


# --- from the event store ----------------------------------------------------------------------------------------


def _from_store(stores: Mapping[str, str], targets: Sequence[_Target],
                store_schema: str, as_of: datetime | None, batch_size: int, bar: _Progress) -> None:
    """Every event of every store (``stores``: name → database URL), one store after the other."""
    for name, database_url in stores.items():
        reader = psycopg.connect(database_url)
        try:
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one snapshot of its logs
            tables = discover_logs(reader, store_schema)
            total = sum(count_events(reader, table, store_schema) for table in tables)
            where = f"event store {name} " if name else "event store "
            bar.start(f"{where}({', '.join(tables) or 'no event tables'}) → "
                      f"{', '.join(t.final_schema for t in targets)}", total)
            for t in targets:
                t.result.stores[name] = 0
            reads = reads_of(*(t.projection for t in targets)) if as_of is None else None
            for table in tables:
                for rows in pages(reader, table, batch_size, schema=store_schema):
                    batch: list[Delivered] = []
                    undecodable = 0
                    for row in rows:
                        try:
                            batch.append(decode_stored(*row, reads=reads))
                        except Undecodable as exc:
                            undecodable += 1
                            log.warning("replay: %s%s notification %s undecodable, skipped: %s",
                                        f"{name}/" if name else "", table, row[0], exc)
                    _apply(targets, batch, len(rows), undecodable, as_of, None)
                    for t in targets:
                        t.result.stores[name] += len(rows)
                    bar.advance(len(rows))
        finally:
            reader.close()


# --- progress and summary -------------------------------------------------------------------------------------------


class _Progress:
    """A Rich progress bar, or nothing when ``enabled`` is false."""

    def __init__(self, enabled: bool, console: Any) -> None:
        self.enabled, self.console = enabled, console
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, description: str, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)


def _print_summary(results: Sequence[ReplayResult], console: Any) -> None:
    table = Table(title="replay")
    for column in ("projection", "schema", "source", "as of", "read", "applied", "duplicates", "undecodable",
                   "after as-of", "from store", "seconds", "events/s"):
        table.add_column(column, justify="right" if column not in ("projection", "schema", "source") else "left")
    for r in results:
        table.add_row(r.projection, r.schema, r.source, r.as_of.isoformat() if r.as_of else "-", f"{r.read:,}",
                      f"{r.applied:,}", f"{r.duplicates:,}", f"{r.undecodable:,}", f"{r.after_as_of:,}",
                      f"{r.events_filled:,}", f"{r.seconds:.1f}", f"{r.events_per_s:,.0f}")
    (console or Console()).print(table)


__all__ = ["ReplayError", "ReplayResult", "as_of_schema", "decode_stored", "end_offsets", "positions", "replay",
           "replay_async"]
