"""The relay: eventsourcing notification log(s) in PostgreSQL → Kafka ``rx.events``, at least once.

One loop per process (composition root: ``run_relay``):

1. read up to ``batch_size`` notifications after the stored position (ids may have gaps: always "greater than");
2. send them all (key = aggregate id, value = the stored JSON bytes, headers), then wait for every ack;
3. only then store the position (and the acknowledged partition offsets) in ``relay_position``/``relay_broker``.

A kill between 2 and 3 re-sends that batch on restart: consumers drop duplicates by the ``event_id`` header.
It wakes on LISTEN/NOTIFY and polls as a fallback. A database or broker that goes away is retried with
capped exponential backoff. When the broker lost data (a partition ends below what it acknowledged to us, the
topic is gone, or a record it acknowledged to us is no longer at its offset), positions reset to 0 and everything
is published again, with a WARNING. The last test reads our own records back (``positions.py``, ``marks``): with
several relays on one topic (region shards) the others' records can lift a truncated partition's end back above
ours, and only the records themselves tell.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    BrokerResponseError,
    KafkaError,
    MessageSizeTooLargeError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from psycopg import AsyncConnection
from psycopg.sql import SQL, Identifier
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from events import topics
from events.contracts import dead_letter_headers, dead_letter_value
from events.envelope import EVENT_ID, event_id, header, record_headers
from services.adapters.event_log import discover_logs_async, read_after_async
from services.infra.kafka_admin import default_replication
from services.relay import positions as pos

log = logging.getLogger("rxtrail.relay")

DEFAULT_TOPIC = topics.EVENTS
_TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    KafkaError,
    TimeoutError,
    OSError,
)
_TOO_LARGE: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordTooLargeError)
"""The broker (or the producer, before sending) will never take this message: dead-letter it, don't retry."""


@dataclass(frozen=True)
class RelayConfig:
    database_url: str
    bootstrap: str
    topic: str = DEFAULT_TOPIC
    name: str = "relay"
    partitions: int = 12
    batch_size: int = 500
    poll_interval_s: float = 1.0
    check_interval_s: float = 15.0
    """How often the broker is checked for data loss while nothing else reveals it."""
    logs: tuple[str, ...] = ()
    """eventsourcing event tables to relay; empty = every ``*_events`` table with a ``notification_id``."""
    schema: str = "public"
    max_backoff_s: float = 10.0
    send_timeout_s: float = 30.0
    commit_delay_s: float = 0.0
    """Fault injection for tests only: pause between broker ack and position commit."""
    idempotence: str = "auto"
    """"auto": idempotent producer when the broker grants one; "required": refuse to run without it."""

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> RelayConfig:
        if not settings.database_url or not settings.kafka_bootstrap:
            raise ValueError("the relay needs RXTRAIL_DATABASE_URL and RXTRAIL_KAFKA_BOOTSTRAP "
                             "(`rxtrail up` sets both when it starts the embedded parts)")
        base = cls(database_url=settings.database_url, bootstrap=settings.kafka_bootstrap,
                   partitions=settings.partitions)
        return replace(base, **overrides)


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    resets: int = 0
    sessions: int = 0
    dead_lettered: int = 0
    """Stored events the broker refused (too large), recorded in ``relay_dead_letters`` and skipped."""
    checks: int = 0
    """Broker checks made (end offsets, and our own records read back)."""
    idempotent: bool | None = None
    on_ack: Callable[[Sequence[tuple[str, int, int]], float], None] | None = field(default=None, repr=False)
    """Called after each acknowledged batch with (log, notification id, aggregate version) per event and the
    ack time (time.time()); the bench measures save → ack latency with it."""


class BrokerLostData(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- broker access --------------------------------------------------------------------------------------------

_idempotence_by_bootstrap: dict[str, bool] = {}


async def start_producer(bootstrap: str, stats: RelayStats, idempotence: str = "auto") -> AIOKafkaProducer:
    """An idempotent acks=all producer when the broker grants a producer id, else a plain acks=all one
    (``idempotence="required"``: a broker that refuses is an error, never a silent fallback).

    The probe runs once per bootstrap address per process: Tansu answers InitProducerId with UnknownError.
    """
    common: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 0, "max_batch_size": 512 * 1024,
        "request_timeout_ms": 15000, "retry_backoff_ms": 200,
    }
    known = _idempotence_by_bootstrap.get(bootstrap)
    if known is not False or idempotence == "required":
        producer = AIOKafkaProducer(enable_idempotence=True, **common)
        sender_log = logging.getLogger("aiokafka.producer.sender")
        level = sender_log.level
        sender_log.setLevel(logging.CRITICAL)  # the refusal is expected on Tansu; we log it ourselves
        try:
            await asyncio.wait_for(producer.start(), 20)
        except BrokerResponseError as exc:
            await producer.stop()
            if idempotence == "required":
                raise RuntimeError(f"relay: broker {bootstrap} refused an idempotent producer ({type(exc).__name__})"
                                   " and RXTRAIL_RELAY__IDEMPOTENCE=required") from exc
            _idempotence_by_bootstrap[bootstrap] = False
            log.info("relay: broker %s refused an idempotent producer (%s); using acks=all without idempotence",
                     bootstrap, type(exc).__name__)
        except BaseException:
            await producer.stop()
            raise
        else:
            if known is None:
                log.info("relay: broker %s grants idempotent producers; using enable_idempotence + acks=all",
                         bootstrap)
            _idempotence_by_bootstrap[bootstrap] = True
            stats.idempotent = True
            return producer
        finally:
            sender_log.setLevel(level)
    producer = AIOKafkaProducer(**common)
    await asyncio.wait_for(producer.start(), 20)
    stats.idempotent = False
    return producer


class BrokerView:
    """Admin + offsets client: does the topic exist, with how many partitions, ending where."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                         request_timeout_ms=10000, metadata_max_age_ms=5000)

    async def start(self) -> None:
        await asyncio.wait_for(self.admin.start(), 20)
        await asyncio.wait_for(self.consumer.start(), 20)

    async def stop(self) -> None:
        with suppress(Exception):
            await self.consumer.stop()
        with suppress(Exception):
            await self.admin.close()

    async def partition_count(self, topic: str) -> int | None:
        # Tansu auto-creates a topic named in a metadata or list-offsets request: look before naming it.
        if topic not in await asyncio.wait_for(self.admin.list_topics(), 15):
            return None
        described = await asyncio.wait_for(self.admin.describe_topics([topic]), 15)
        for t in described:
            if t.get("topic") == topic:
                if t.get("error_code", 0) != 0:
                    return None
                return len(t.get("partitions") or []) or None
        return None

    async def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await asyncio.wait_for(self.consumer.end_offsets(tps), 15)
        return {tp.partition: int(o) for tp, o in ends.items()}

    async def read_at(self, topic: str, wanted: dict[int, int], timeout_s: float = 10.0
                      ) -> dict[int, tuple[int, str | None]]:
        """The first record at or after each wanted offset: partition → (its offset, its ``event_id`` header).

        A partition is left out when the broker no longer keeps that offset (retention moved the partition's start
        past it: not a loss) or sent nothing in time (the check is inconclusive, never a loss)."""
        if not wanted:
            return {}
        # One record per partition is wanted. Tansu ignores the per-partition limit and answers each partition with
        # up to fetch_max_bytes (aiokafka's default 50 MB): from a mark one check interval back that is everything
        # relayed since, so the total is bounded too (a broker still returns at least one batch per fetch).
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                  auto_offset_reset="none", request_timeout_ms=10000, fetch_max_wait_ms=100,
                                  max_partition_fetch_bytes=64 * 1024, fetch_max_bytes=1024 * 1024)
        await asyncio.wait_for(reader.start(), 20)
        try:
            tps = {TopicPartition(topic, p): o for p, o in wanted.items()}
            starts = await asyncio.wait_for(reader.beginning_offsets(list(tps)), 15)
            tps = {tp: o for tp, o in tps.items() if int(starts.get(tp, 0)) <= o}
            reader.assign(list(tps))
            for tp, o in tps.items():
                reader.seek(tp, o)
            found: dict[int, tuple[int, str | None]] = {}
            deadline = time.monotonic() + timeout_s
            while len(found) < len(tps) and time.monotonic() < deadline:
                waiting = [tp for tp in tps if tp.partition not in found]
                try:
                    batch = await reader.getmany(*waiting, timeout_ms=500)
                except OffsetOutOfRangeError:
                    break  # moved out of reach while we asked: leave those partitions out
                for tp, records in batch.items():
                    if records and tp.partition not in found:
                        first = min(records, key=lambda r: r.offset)
                        found[tp.partition] = (first.offset, header(first.headers, EVENT_ID))
            return found
        finally:
            with suppress(Exception):
                await reader.stop()

    async def create_topic(self, topic: str, partitions: int) -> None:
        with suppress(TopicAlreadyExistsError):
            replicas = default_replication(len((await self.admin.describe_cluster())["brokers"]))
            await asyncio.wait_for(self.admin.create_topics([NewTopic(topic, partitions, replicas)]), 15)

    async def recreate_topic(self, topic: str, partitions: int) -> None:
        await asyncio.wait_for(self.admin.delete_topics([topic]), 15)
        for _ in range(50):
            if await self.partition_count(topic) is None:
                break
            await asyncio.sleep(0.1)
        await self.create_topic(topic, partitions)


def find_loss(floors: dict[int, int], partitions: int | None, ends: dict[int, int]) -> str | None:
    """Why the broker holds less than it acknowledged to us, or None (``floors``: see positions.py)."""
    if not floors:
        return None
    if partitions is None:
        return "the topic does not exist"
    for p, floor in sorted(floors.items()):
        if p >= partitions:
            return f"partition {p} is gone (the topic has {partitions} partitions)"
        if ends.get(p, 0) < floor + 1:
            return f"partition {p} ends at offset {ends.get(p, 0)} but the broker acknowledged offset {floor}"
    return None


def find_displaced(expected: dict[int, tuple[int, str]], ends: dict[int, int],
                   found: dict[int, tuple[int, str | None]]) -> str | None:
    """Why records the broker acknowledged to us are not where it put them, or None (``expected``: partition →
    (offset, event id) of our record; ``found``: ``BrokerView.read_at``, a partition missing there is unknown)."""
    for p, (offset, eid) in sorted(expected.items()):
        if ends.get(p, 0) <= offset:
            return f"partition {p} ends at offset {ends.get(p, 0)}, at or below our event {eid} at offset {offset}"
        got = found.get(p)
        if got is None or got == (offset, eid):
            continue
        if got[0] == offset:
            return (f"partition {p} holds event {got[1]} at offset {offset}, where the broker acknowledged our "
                    f"event {eid}")
        return (f"partition {p} has no record at offset {offset} (the next is at {got[0]}), where the broker "
                f"acknowledged our event {eid}")
    return None


# --- the relay ------------------------------------------------------------------------------------------------


class Relay:
    def __init__(self, config: RelayConfig, stop_event: asyncio.Event | None = None,
                 stats: RelayStats | None = None) -> None:
        self.config = config
        self.stop_event = stop_event or asyncio.Event()
        self.stats = stats or RelayStats()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        cfg = self.config

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            where = "database" if isinstance(exc, (psycopg.Error,)) else "broker" if isinstance(
                exc, KafkaError) else "database or broker"
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("relay %s: %s unavailable (%s: %s); retrying in %.1fs (attempt %d)", cfg.name, where,
                        type(exc).__name__, str(exc)[:200] or "-", wait, state.attempt_number)

        async def interruptible_sleep(seconds: float) -> None:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), seconds)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.2, min=0.2, max=cfg.max_backoff_s),
            stop=lambda _state: self.stop_event.is_set(),
            sleep=interruptible_sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        log.info("relay %s: starting (topic %s, batch %d)", cfg.name, cfg.topic, cfg.batch_size)
        while not self.stop_event.is_set():  # a session that returns wants a fresh start (reset, new tables)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._session()
            except _TRANSIENT:
                if not self.stop_event.is_set():
                    raise
        log.info("relay %s: stopped after publishing %d events", cfg.name, self.stats.published)

    async def _session(self) -> None:
        cfg = self.config
        self.stats.sessions += 1
        async with AsyncExitStack() as stack:
            conn = await AsyncConnection.connect(cfg.database_url, autocommit=True, connect_timeout=10,
                                               application_name=f"rxtrail-relay:{cfg.name}")
            stack.push_async_callback(conn.close)
            await self._acquire_lock(conn)
            await pos.ensure_tables(conn)
            logs = list(cfg.logs) or await discover_logs_async(conn, cfg.schema)
            state = await pos.load_state(conn, cfg.name, cfg.topic, logs)

            listener = await AsyncConnection.connect(cfg.database_url, autocommit=True, connect_timeout=10,
                                                   application_name=f"rxtrail-relay:{cfg.name}")
            stack.push_async_callback(listener.close)
            await self._listen(listener, [pos.CONTROL_CHANNEL, *logs])
            listen_task = asyncio.create_task(self._notifications(listener))
            stack.callback(listen_task.cancel)

            view = BrokerView(cfg.bootstrap)
            stack.push_async_callback(view.stop)
            await view.start()
            state = await self._check_broker(conn, view, state, logs, at_start=True)

            producer = await start_producer(cfg.bootstrap, self.stats, cfg.idempotence)
            stack.push_async_callback(producer.stop)
            log.info("relay %s: relaying %s → %s from %s (idempotent producer: %s)", cfg.name,
                     ", ".join(logs) or "(no event tables yet)", cfg.topic,
                     ", ".join(f"{k}>{v}" for k, v in state.positions.items()) or "-", self.stats.idempotent)

            last_check = time.monotonic()
            last_discovery = time.monotonic()
            while not self.stop_event.is_set():
                if listen_task.done():
                    listen_task.result()  # re-raise the listener's connection error
                generation = await pos.current_generation(conn, cfg.name)
                if generation != state.generation:
                    log.info("relay %s: positions were reset elsewhere (republish); reloading", cfg.name)
                    state = await pos.load_state(conn, cfg.name, cfg.topic, logs)
                moved = False
                for table in logs:
                    try:
                        moved |= await self._relay_batch(conn, producer, state, table)
                    except pos.GenerationChanged:
                        state = await pos.load_state(conn, cfg.name, cfg.topic, logs)
                        moved = True
                    except BrokerLostData as lost:
                        state = await self._on_loss(conn, view, logs, lost.reason)
                        return  # a fresh session: new producer, topic checked again
                now = time.monotonic()
                if now - last_check >= cfg.check_interval_s:  # busy or not: others may hide a loss from us
                    before = state.generation
                    state = await self._check_broker(conn, view, state, logs, at_start=False)
                    last_check = now
                    if state.generation != before:
                        return
                if moved:
                    continue
                if not cfg.logs and now - last_discovery >= max(5.0, cfg.poll_interval_s):
                    last_discovery = now
                    found = await discover_logs_async(conn, cfg.schema)
                    if found != logs:
                        log.info("relay %s: event tables now %s", cfg.name, ", ".join(found))
                        return
                await self._wait_for_wake()

    async def _acquire_lock(self, conn: AsyncConnection) -> None:
        key = pos.lock_key(self.config.name)
        warned = False
        while not self.stop_event.is_set():
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            row = await cur.fetchone()
            if row and row[0]:
                if warned:
                    log.info("relay %s: lock acquired", self.config.name)
                return
            if not warned:
                log.warning("relay %s: another relay with this name is running; waiting for it to stop",
                            self.config.name)
                warned = True
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), 1.0)

    @staticmethod
    async def _listen(conn: AsyncConnection, channels: Sequence[str]) -> None:
        for channel in channels:
            await conn.execute(SQL("LISTEN {}").format(Identifier(channel.replace(".", "_"))))

    async def _notifications(self, conn: AsyncConnection) -> None:
        async for _ in conn.notifies():
            self._wake.set()

    async def _wait_for_wake(self) -> None:
        stop = asyncio.ensure_future(self.stop_event.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=self.config.poll_interval_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()
        self._wake.clear()

    async def _relay_batch(self, conn: AsyncConnection, producer: AIOKafkaProducer, state: pos.RelayState,
                           table: str) -> bool:
        cfg = self.config
        after = state.positions.get(table, 0)
        rows = await read_after_async(conn, table, after, cfg.batch_size, cfg.schema)
        if not rows:
            return False
        futures = []
        refused: list[tuple[tuple[Any, ...], BaseException]] = []
        for row in rows:
            notification_id, aggregate_id, version, topic, value = row
            try:
                futures.append(await producer.send(
                    cfg.topic, value=value, key=aggregate_id.encode(),
                    headers=record_headers(notification_id, aggregate_id, version, topic, value, table),
                ))
            except _TOO_LARGE as exc:  # refused by the producer itself (larger than max_request_size)
                refused.append((row, exc))
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), cfg.send_timeout_s)
        acked_at = time.time()
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, _TOO_LARGE)]
        if failed:
            raise failed[0]
        sent_rows = [row for row in rows if all(row is not r for r, _ in refused)]
        refused += [(row, r) for row, r in zip(sent_rows, results, strict=True) if isinstance(r, BaseException)]
        if refused:
            await self._dead_letter(conn, producer, table, refused)
        offsets = dict(state.next_offsets)
        floors = dict(state.floors)
        floor_ids = dict(state.floor_ids)
        batch_floor: dict[int, tuple[int, str]] = {}
        for row, md in zip(sent_rows, results, strict=True):
            if isinstance(md, BaseException):
                continue
            p, o = md.partition, md.offset
            known = state.next_offsets.get(p, 0)
            if o < known:
                raise BrokerLostData(f"partition {p} acknowledged offset {o} but had already acknowledged up to "
                                     f"{known - 1}: the partition was emptied")
            offsets[p] = max(offsets.get(p, 0), o + 1)
            if p not in batch_floor or o < batch_floor[p][0]:
                batch_floor[p] = (o, event_id(row[1], row[2]))
        floors.update({p: o for p, (o, _) in batch_floor.items()})
        floor_ids.update({p: eid for p, (_, eid) in batch_floor.items()})
        if cfg.commit_delay_s:
            await asyncio.sleep(cfg.commit_delay_s)
        last = rows[-1][0]
        await pos.commit_batch(conn, cfg.name, table, last, state.generation, offsets, floors, len(rows), floor_ids)
        state.positions[table] = last
        state.next_offsets = offsets
        state.floors = floors
        state.floor_ids = floor_ids
        state.published += len(rows)
        self.stats.published += len(rows)
        self.stats.batches += 1
        if self.stats.on_ack is not None:
            self.stats.on_ack([(table, n, v) for n, _a, v, _t, _s in rows], acked_at)
        return True

    async def _dead_letter(self, conn: AsyncConnection, producer: AIOKafkaProducer, table: str,
                           refused: Sequence[tuple[tuple[Any, ...], BaseException]]) -> None:
        """Stored events the broker will never take (too large): recorded in ``relay_dead_letters``, a reference
        sent to the dead-letter topic, and the relay moves past them (consumers read them from the store when
        they meet the version gap). One such event must never stop every event after it."""
        cfg = self.config
        sends = []
        for (notification_id, aggregate_id, version, topic, value), exc in refused:
            error = f"{type(exc).__name__}: {exc}"
            letter = pos.RelayDeadLetter(cfg.name, table, int(notification_id), str(aggregate_id), int(version),
                                         len(value), error)
            await pos.record_dead_letter(conn, letter)
            self.stats.dead_lettered += 1
            log.error("relay %s: the broker refuses event %s v%s (notification %s of %s, %d bytes: %s); recorded in "
                      "relay_dead_letters and moving past it", cfg.name, aggregate_id, version, notification_id,
                      table, len(value), error)
            source = f"{table}/{notification_id}"
            carried, extra = dead_letter_value(value, error=error, source=source)
            headers = record_headers(notification_id, aggregate_id, version, topic, value, table)
            sends.append(await producer.send(
                self.dead_letter_topic, value=carried, key=str(aggregate_id).encode(),
                headers=dead_letter_headers(headers, error=error, consumer=f"rxtrail.relay.{cfg.name}",
                                            source=source) + extra))
        await asyncio.wait_for(asyncio.gather(*sends), cfg.send_timeout_s)

    @property
    def dead_letter_topic(self) -> str:
        return topics.DLQ

    async def _check_broker(self, conn: AsyncConnection, view: BrokerView, state: pos.RelayState,
                            logs: list[str], *, at_start: bool) -> pos.RelayState:
        cfg = self.config
        self.stats.checks += 1
        partitions = await view.partition_count(cfg.topic)
        ends = await view.end_offsets(cfg.topic, partitions) if partitions else {}
        reason = find_loss(state.floors, partitions, ends)
        if reason is None and partitions is not None:
            reason = await self._read_back(conn, view, state, partitions, ends)
        if reason is not None:
            return await self._on_loss(conn, view, logs, reason)
        if partitions is None:
            log.info("relay %s: creating topic %s with %d partitions", cfg.name, cfg.topic, cfg.partitions)
            await view.create_topic(cfg.topic, cfg.partitions)
        elif at_start and partitions < cfg.partitions:
            log.warning("relay %s: topic %s has %d partitions, configuration says %d; leaving it as it is",
                        cfg.name, cfg.topic, partitions, cfg.partitions)
        return state

    async def _read_back(self, conn: AsyncConnection, view: BrokerView, state: pos.RelayState, partitions: int,
                         ends: dict[int, int]) -> str | None:
        """Are our records still where the broker put them? First the ones the last check found (``checked``:
        acknowledged before it, so a loss since then shows even when our later batches moved the floors onto
        records written after the loss), then the current floors. The floors found in place become ``checked``."""
        cfg = self.config
        earlier = {p: mark for p, mark in state.checked.items() if p < partitions}
        floors = {p: (state.floors[p], eid) for p, eid in state.floor_ids.items()
                  if p in state.floors and p < partitions and state.checked.get(p) != (state.floors[p], eid)}
        confirmed: dict[int, tuple[int, str]] = {}
        for expected in (earlier, floors):
            if not expected:
                continue
            found = await view.read_at(cfg.topic, {p: o for p, (o, _) in expected.items()})
            reason = find_displaced(expected, ends, found)
            if reason is not None:
                return reason
            if len(found) < len(expected):
                log.info("relay %s: %d of %d partitions did not show our records in time (or retention passed "
                         "them); checking them again later", cfg.name, len(expected) - len(found), len(expected))
            confirmed.update({p: mark for p, mark in expected.items() if found.get(p) == mark})
        checked = {**state.checked, **{p: mark for p, mark in confirmed.items() if p in floors}}
        if checked != state.checked and await pos.save_checked(conn, cfg.name, state.generation, checked):
            state.checked = checked
        return None

    async def _on_loss(self, conn: AsyncConnection, view: BrokerView, logs: list[str], reason: str
                       ) -> pos.RelayState:
        cfg = self.config
        log.warning("relay %s: BROKER LOST DATA on topic %s (%s); republishing every event from the start of "
                    "the event store", cfg.name, cfg.topic, reason)
        self.stats.resets += 1
        await pos.reset_positions(conn, cfg.name, 0, broker_lost_data=True)
        partitions = await view.partition_count(cfg.topic)
        if partitions is None:
            await view.create_topic(cfg.topic, cfg.partitions)
        elif partitions < cfg.partitions:
            # An empty broker auto-creates a produced-to topic with one partition; what it holds now is a
            # fragment we are about to publish again anyway.
            log.warning("relay %s: recreating topic %s with %d partitions (it came back with %d)", cfg.name,
                        cfg.topic, cfg.partitions, partitions)
            await view.recreate_topic(cfg.topic, cfg.partitions)
        return await pos.load_state(conn, cfg.name, cfg.topic, logs)


# --- composition roots ----------------------------------------------------------------------------------------


def _config(settings_or_config: Any, overrides: dict[str, Any]) -> RelayConfig:
    if isinstance(settings_or_config, RelayConfig):
        return replace(settings_or_config, **overrides)
    if isinstance(settings_or_config, tuple):
        database_url, bootstrap = settings_or_config
        return RelayConfig(database_url=database_url, bootstrap=bootstrap, **overrides)
    return RelayConfig.from_settings(settings_or_config, **overrides)


async def run_relay(settings_or_config: Any, stop_event: asyncio.Event | None = None,
                    stats: RelayStats | None = None, **overrides: Any) -> RelayStats:
    """Relay until ``stop_event`` is set. Accepts ``Settings``, a ``RelayConfig`` or ``(database_url, bootstrap)``;
    keyword overrides replace RelayConfig fields (topic=, name=, batch_size=, ...)."""
    relay = Relay(_config(settings_or_config, overrides), stop_event, stats)
    await relay.run()
    return relay.stats


async def republish(settings_or_config: Any, from_notification_id: int = 0, **overrides: Any) -> int:
    """Make relay ``name`` publish again every event after ``from_notification_id`` (0 = everything).

    Works whether or not that relay is running: a running relay notices the reset and continues from there; a
    stopped one starts there. Returns the new generation number.
    """
    cfg = _config(settings_or_config, overrides)
    if from_notification_id < 0:
        raise ValueError("from_notification_id must be >= 0")
    async with await AsyncConnection.connect(cfg.database_url, autocommit=True, connect_timeout=10) as conn:
        await pos.ensure_tables(conn)
        logs = list(cfg.logs) or await discover_logs_async(conn, cfg.schema)
        await pos.load_state(conn, cfg.name, cfg.topic, logs)
        generation = await pos.reset_positions(conn, cfg.name, from_notification_id, broker_lost_data=False)
    log.warning("relay %s: republish requested from notification id %d (generation %d)", cfg.name,
                from_notification_id, generation)
    return generation
