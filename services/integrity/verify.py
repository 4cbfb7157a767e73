"""`rxtrail verify`: recompute every stream's hash chain from the event store and from ``rx.events``, and check the
signed checkpoints — the database's chain, reconciled with the copies on ``rx.checkpoints`` and a regulator's witness
file — against the log. Exit code: 0 intact, 1 tampered.

Every path runs the one chain check (``services.integrity.chain.check_stream``) and fills in the one ``Report``:
the whole store (``verify_store``), one aggregate through the application's store (``verify_aggregate``, what the
regulator API shows), what ``rx.events`` carries against the store (``verify_messages``), and offline bundles
(``services.integrity.bundle.verify_bundle``).

With region shards (``stores``: every event store by name, ``bootstrap.shard_database_urls``) each store is checked
against its own checkpoint chain, and a ``ShardedReport`` keeps each store's report; every finding and note names
its store (``370100/store``, ``global/checkpoint``). ``rx.events`` is checked once against the union of the stores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections import defaultdict
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from events import topics
from events.envelope import AGGREGATE_ID, AGGREGATE_VERSION, EVENT_TYPE, NOTIFICATION_ID, header
from services.adapters.event_log import discover_logs, iter_streams, stored_stream
from services.adapters.store import RxTrailStore
from services.integrity.chain import Finding, Report, check_stream
from services.integrity.checkpoint import Checkpoint, Copy, belongs_to, key_id, load_public_key, verify_checkpoints

T = TypeVar("T")

StoredBytes = dict[tuple[str, int], bytes]
"""The stored JSON by (aggregate id, version), kept while checking the store to compare Kafka's copy with."""


# --- the event store --------------------------------------------------------------------------------------------


def verify_store(database_url: str, *, data_dir: str | Path | None = None, logs: Sequence[str] | None = None,
                 schema: str = "public", keep: StoredBytes | None = None, copies: Sequence[Copy] = (),
                 report: Report | None = None) -> Report:
    """Check every stream's chain and every signed checkpoint, in one snapshot of the store. With ``keep``, the
    stored bytes of every event are put there, so a Kafka copy can be compared with them. ``copies``: checkpoints
    held outside the database (``rx.checkpoints``, a witness file) its chain must agree with."""
    report = report if report is not None else Report()
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            names = list(logs) if logs is not None else discover_logs(conn, schema)
            for log in names:
                for aggregate_id, rows in iter_streams(conn, log, schema):
                    report.streams += 1
                    report.events += len(rows)
                    finding, unchained = check_stream(aggregate_id, [(r.version, r.topic, r.state) for r in rows])
                    report.unchained_events += unchained
                    if finding is not None:
                        report.findings.append(finding)
                    if keep is not None:
                        for r in rows:
                            keep[(aggregate_id, r.version)] = r.state
            verify_checkpoints(conn, names, report, data_dir=data_dir, schema=schema, copies=copies)
    return report


@dataclasses.dataclass
class ShardedReport(Report):
    """A verification over several event stores (region shards): the totals, and each store's own report."""

    stores: dict[str, Report] = dataclasses.field(default_factory=dict)

    def add(self, name: str, part: Report) -> None:
        """Count ``part`` (store ``name``'s report) in; its findings and notes name the store."""
        self.stores[name] = part
        for counter in ("streams", "events", "unchained_events", "checkpoints", "uncovered_events",
                        "uncovered_streams"):
            setattr(self, counter, getattr(self, counter) + getattr(part, counter))
        for where, n in part.checkpoint_copies.items():
            self.checkpoint_copies[where] = self.checkpoint_copies.get(where, 0) + n
        self.findings += [dataclasses.replace(f, source=f"{name}/{f.source}") for f in part.findings]
        self.notes += [f"{name}: {note}" for note in part.notes]

    def coverage(self) -> str:
        return "; ".join(f"{name}: {part.coverage()}" for name, part in self.stores.items())

    def summary(self) -> str:
        where = f"in {len(self.stores)} event stores ({', '.join(self.stores)})"
        return super().summary().replace("in the event store", where, 1)


def verify_stores(stores: Mapping[str, str], *, data_dir: str | Path | None = None, logs: Sequence[str] | None = None,
                  schema: str = "public", keep: StoredBytes | None = None, copies: Sequence[Copy] = (),
                  report: ShardedReport | None = None) -> ShardedReport:
    """``verify_store`` on each event store by name, each against the copies of its own checkpoint chain."""
    report = report if report is not None else ShardedReport()
    for name, url in stores.items():
        own = [(where, c) for where, c in copies if belongs_to(c, name)]
        report.add(name, verify_store(url, data_dir=data_dir, logs=logs, schema=schema, keep=keep, copies=own))
    return report


def verify_aggregate(store: RxTrailStore, aggregate_id: UUID) -> Finding | None:
    """The first broken link of one aggregate's chain as the application's store holds it, or None."""
    finding, _ = check_stream(str(aggregate_id), stored_stream(store, aggregate_id))
    return finding


# --- Kafka ------------------------------------------------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, idle_s: float = 2.0, timeout_s: float = 300.0) -> list[Any]:
    """Every message on ``topic``, from each partition's start to its high watermark (as fetched)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():  # naming a missing topic makes Tansu create it
            return []
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    messages: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or
                                                        await _partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline, idle_since = loop.time() + timeout_s, loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
            if batch:
                idle_since = loop.time()
            done = True
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or await consumer.position(tp) < high:
                    done = False
            if done or loop.time() - idle_since > idle_s:
                break
    finally:
        await consumer.stop()
    return messages


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())


def verify_messages(messages: Iterable[Any], stored: Mapping[tuple[str, int], bytes] | None,
                    report: Report) -> None:
    """Check the chains ``rx.events`` carries and, given the store's bytes, that each message is the stored event
    byte for byte. Findings go into ``report``."""
    by_key: dict[str, dict[int, tuple[int, str, bytes]]] = defaultdict(dict)
    count = 0
    for m in messages:
        count += 1
        aggregate_id = header(m.headers, AGGREGATE_ID) or (m.key or b"").decode()
        try:
            version = int(_header(m, AGGREGATE_VERSION, "0"))
            int(_header(m, NOTIFICATION_ID, "0"))
        except ValueError:
            report.findings.append(Finding("kafka", aggregate_id, 0, "headers are not numbers"))
            continue
        event_type = _header(m, EVENT_TYPE, "")
        seen = by_key[aggregate_id].get(version)
        if seen is not None and seen[2] != m.value:
            report.findings.append(Finding("kafka", aggregate_id, version, "two different messages for one version"))
        by_key[aggregate_id].setdefault(version, (version, event_type, m.value))
    report.kafka_messages = count
    for aggregate_id, versions in by_key.items():
        rows = [versions[v] for v in sorted(versions)]
        finding, _ = check_stream(aggregate_id, rows, source="kafka")
        if finding is not None:
            report.findings.append(finding)
        if stored is not None:
            for v, _t, value in rows:
                original = stored.get((aggregate_id, v))
                if original is None:
                    report.findings.append(Finding("kafka", aggregate_id, v, "not in the event store"))
                elif original != value:
                    report.findings.append(Finding("kafka", aggregate_id, v, "differs from the event store"))
    if stored is not None:
        report.missing_on_kafka = sum(1 for (a, v) in stored if v not in by_key.get(a, {}))


def _header(message: Any, name: str, default: str) -> str:
    value = header(message.headers, name)
    return default if value is None else value


# --- everything -------------------------------------------------------------------------------------------------


def verify(database_url: str | None, bootstrap: str | None = None, *, topic: str = topics.EVENTS,
           data_dir: str | Path | None = None, logs: Sequence[str] | None = None,
           checkpoint_copies: str | None = None, checkpoints_topic: str = topics.CHECKPOINTS,
           witness: Sequence[Checkpoint] = (), copies_timeout_s: float = 20.0,
           stores: Mapping[str, str] | None = None) -> Report:
    """What `rxtrail verify` runs. ``report.exit_code``: 0 intact, 1 tampered.

    ``stores``: every event store by name when the write side is sharded (``database_url`` is then the global
    one, among them); each is checked against its own checkpoint chain (``verify_stores``).

    ``bootstrap``: also check what ``topic`` (``rx.events``) carries against the store. ``checkpoint_copies``
    (default: ``bootstrap``): the broker whose ``checkpoints_topic`` holds the published copies of the
    checkpoints; when it cannot be read, the report notes it and the database's own chain is checked.
    ``witness``: checkpoints a regulator kept (``services.integrity.witness.load_witness``)."""
    from services.integrity.witness import KAFKA_SOURCE, WITNESS_SOURCE, read_copies_or_note

    report = ShardedReport() if stores else Report()
    copies: list[Copy] = [(WITNESS_SOURCE, c) for c in witness]
    copies_from = checkpoint_copies or bootstrap
    if database_url and copies_from:
        mine = key_id(load_public_key(data_dir)) if data_dir is not None else None
        copies += [(KAFKA_SOURCE, c) for c in read_copies_or_note(copies_from, checkpoints_topic, mine,
                                                                  copies_timeout_s, report.notes)]
    stored: StoredBytes | None = {} if database_url and bootstrap else None
    if stores and isinstance(report, ShardedReport):
        verify_stores(stores, data_dir=data_dir, logs=logs, keep=stored, copies=copies, report=report)
    elif database_url:
        verify_store(database_url, data_dir=data_dir, logs=logs, keep=stored, copies=copies, report=report)
    if bootstrap:
        verify_messages(run_coroutine(read_topic(bootstrap, topic)), stored, report)
    elif report.uncovered_events:
        report.notes.append(f"{report.uncovered_events} events are newer than the latest checkpoint: only their "
                            f"chains vouch for them (check them against {topic} with --kafka)")
    return report


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end from sync code, also when called inside a running event loop (in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
