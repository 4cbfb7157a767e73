"""Projection throughput and trail-query latency (run by hand: ``python bench/read_side.py [--events N]``).

Starts its own embedded PostgreSQL and Tansu, generates realistic hash-chained trails (``services.simulate``, as the
projection tests do), publishes them to ``rx.events`` with relay headers, then for each projection prints:
  - events/s of our Kafka consumer (consume + decode + bulk apply + offsets, one transaction per batch);
  - vs a raw aiokafka consume of the same topic (fetch only, no decode, no write): the issue's target is
    ≥ 40,000 events/s and ≥ 0.3× raw consume per projection;
  - vs (a) a raw COPY of one row per event of the same shape into an unindexed table (the write floor);
  - vs (b) eventsourcing's ProjectionRunner doing the same projection, one event + tracking row per
    transaction (on a subset: it is slow), as ratios from the same run;
and the traceability query latencies (trail, by_trace_code, by_patient) p50/p99 at the full event count.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from events import to_json, topics
from projections.base import Delivered, ProjectionConsumer, ensure_schema
from projections.registry import NAMES, build
from services.simulate import all_events, make_trails, relay_headers

TOPIC = topics.EVENTS


def generate(n_events: int, seed: int) -> tuple[list[tuple[bytes, bytes, list[tuple[str, bytes]]]], list[Any]]:
    """(key, value, headers) messages for about ``n_events`` events, plus the first trails' events for the store."""
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    sample: list[Any] = []
    chunk = 0
    start = time.monotonic()
    while len(messages) < n_events:
        events = all_events(make_trails(200, seed=seed + chunk))
        chunk += 1
        for e in events:
            messages.append((str(e.originator_id).encode(), to_json(e), relay_headers(e, len(messages) + 1)))
        if len(sample) < 200_000:
            sample.extend(events)
        if chunk % 50 == 0:
            rate = len(messages) / (time.monotonic() - start)
            print(f"  generated {len(messages):,} events ({rate:,.0f}/s)", flush=True)
    return messages, sample


async def publish(bootstrap: str, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=256 * 1024)
    await producer.start()
    started = time.monotonic()
    try:
        for i, (key, value, hdrs) in enumerate(messages):
            await producer.send(TOPIC, value, key=key, headers=hdrs)
            if i % 20_000 == 19_999:
                await producer.flush()
        await producer.flush()
    finally:
        await producer.stop()
    return len(messages) / (time.monotonic() - started)


async def consume_rate(name: str, url: str, bootstrap: str, total: int, max_records: int) -> tuple[float, float]:
    """Events/s of one projection consumer from its first batch to the last event applied, and the CPU time this
    process spent per event meanwhile (µs; the consumer's own Python, PostgreSQL's and the broker's CPU aside): on
    a shared machine the second moves much less than the first."""
    consumer = ProjectionConsumer(build(name), url, bootstrap, topic=TOPIC, group_id=f"bench.{name}.{uuid.uuid4().hex[:6]}",
                                  max_records=max_records)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    while consumer.stats.batches == 0:
        await asyncio.sleep(0.005)
    first, cpu = time.monotonic(), time.process_time()
    while consumer.stats.applied + consumer.stats.duplicates < total:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    elapsed, cpu = time.monotonic() - first, time.process_time() - cpu
    stop.set()
    await task
    batch_events = max_records  # the first batch was already applied when timing began
    return (total - batch_events) / elapsed, cpu * 1e6 / (total - batch_events)


async def raw_consume_rate(bootstrap: str, total: int, max_records: int) -> float:
    """Messages/s of a bare aiokafka consumer reading the whole topic (assigned partitions, no group, no decode)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=max_records)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(TOPIC) or set()
        while not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(TOPIC) or set()
        consumer.assign([TopicPartition(TOPIC, p) for p in parts])
        got = first_batch = 0
        first = 0.0
        while got < total:
            records = await consumer.getmany(timeout_ms=500, max_records=max_records)
            n = sum(len(m) for m in records.values())
            if n and not got:
                first, first_batch = time.monotonic(), n
            got += n
        return (got - first_batch) / (time.monotonic() - first)
    finally:
        await consumer.stop()


def copy_rate(url: str, name: str, sample: list[Any], total: int) -> float:
    """Rows/s of COPY of one row per event shaped like the projection's own per-event write, ``total`` rows."""
    from projections.traceability.projection import _details

    rows: list[tuple[Any, ...]]
    if name == "traceability":
        rows = [(e.originator_id, e.originator_version, e.originator_id, type(e).__name__, e.timestamp, "actor",
                 str(uuid.uuid4()), e.hash, _details(e)) for e in sample[:50_000]]
        ddl = ("(stream_id uuid, version int, prescription_id uuid, step text, at timestamptz, actor text,"
               " event_id text, hash text, details jsonb)")
    else:
        rows = [(e.originator_id, e.originator_version, type(e).__name__, e.timestamp, "H1", "2026-01",
                 getattr(e, "fund", 0), getattr(e, "total", 0)) for e in sample[:50_000]]
        ddl = "(aggregate_id uuid, version int, event_type text, at timestamptz, party text, month text, fund numeric," \
              " total numeric)"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS copy_{name}; CREATE TABLE copy_{name} {ddl}")
        started = time.monotonic()
        written = 0
        while written < total:
            part = rows[: min(len(rows), total - written)]
            with conn.transaction(), conn.cursor() as cur, cur.copy(f"COPY copy_{name} FROM STDIN") as copy:
                for row in part:
                    copy.write_row(row)
            written += len(part)
        return written / (time.monotonic() - started)


def eventsourcing_rate(url: str, name: str, events: list[Any]) -> float:
    """Events/s of eventsourcing's ProjectionRunner applying the same projection one event per transaction."""
    from eventsourcing.application import Application
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent, Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection, ProjectionRunner
    from eventsourcing.utils import Environment, get_topic
    from psycopg.rows import tuple_row

    from services.adapters.persistence import PydanticJSONTranscoder, PydanticMapper
    from services.infra.settings import eventsourcing_env

    env = eventsourcing_env(url)
    app_name = f"bench_{name}"
    factory = InfrastructureFactory.construct(Environment(app_name, env))
    recorder = factory.application_recorder()
    stored = [StoredEvent(originator_id=e.originator_id, originator_version=e.originator_version,
                          topic=get_topic(type(e)), state=to_json(e)) for e in events]
    for i in range(0, len(stored), 1000):
        recorder.insert_events(stored[i:i + 1000])
    factory.close()
    projection_impl = build(name)
    schema = f"es_{name}"
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        ensure_schema(conn, projection_impl, schema)

    class View(PostgresTrackingRecorder):
        def apply_one(self, event: Any, tracking: Tracking) -> None:
            d = Delivered(event=event, event_type=type(event).__name__, aggregate_id=event.originator_id,
                          version=event.originator_version, event_id=str(tracking.notification_id),
                          timestamp=event.timestamp)
            with self.datastore.transaction(commit=True) as curs:
                conn = curs.connection
                conn.row_factory = tuple_row  # type: ignore[assignment]
                try:
                    projection_impl.apply(conn, schema, [d])
                finally:
                    conn.row_factory = curs.row_factory  # type: ignore[assignment]
                self._insert_tracking(curs, tracking)

    class BenchApp(Application[uuid.UUID]):
        def construct_mapper(self) -> Any:
            return PydanticMapper(transcoder=PydanticJSONTranscoder())

    BenchApp.name = app_name

    class ESProjection(Projection[View]):
        def process_event(self, domain_event: Any, tracking: Tracking) -> None:  # type: ignore[override]
            self.view.apply_one(domain_event, tracking)

    ESProjection.name = f"es_{name}"
    started = time.monotonic()
    with ProjectionRunner(application_class=BenchApp, projection_class=ESProjection, view_class=View,
                          env=env) as runner:
        last = runner.app.recorder.max_notification_id()
        runner.wait(last, timeout=3600)
    return len(events) / (time.monotonic() - started)


def query_latencies(url: str, samples: int) -> dict[str, tuple[float, float]]:
    from projections.traceability import by_patient, by_trace_code, trail

    out: dict[str, tuple[float, float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        ids = [r[0] for r in conn.execute(
            "SELECT prescription_id FROM traceability.prescriptions TABLESAMPLE SYSTEM (5) LIMIT %s", (samples,))]
        codes = [r[0] for r in conn.execute(
            "SELECT code FROM traceability.trace_code_uses TABLESAMPLE SYSTEM (5) LIMIT %s", (samples,))]
        patients = [r[0] for r in conn.execute(
            "SELECT patient_ref FROM traceability.prescriptions TABLESAMPLE SYSTEM (5) LIMIT %s", (samples,))]
        for label, fn, keys in (("trail", trail, ids), ("by_trace_code", by_trace_code, codes),
                                ("by_patient", by_patient, patients)):
            random.shuffle(keys)
            times = []
            for k in keys:
                t0 = time.perf_counter()
                fn(conn, "traceability", k)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            out[label] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    return out


def main() -> int:
    from services.infra.embedded import EmbeddedPostgres, Tansu
    from services.infra.kafka_admin import ensure_topics_async
    from services.infra.ports import free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--es-events", type=int, default=10_000, help="events for the eventsourcing runner")
    parser.add_argument("--max-records", type=int, default=5000, help="records per consumer batch")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--only", nargs="*", default=None, help="projections to run (default: all)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rxtrail-bench-", dir="/var/tmp"))
    pg = EmbeddedPostgres(work, free_port())
    broker = Tansu(work / "tansu", free_port())
    url = pg.start()
    bootstrap = broker.start()
    try:
        print(f"PostgreSQL {url}, Tansu {bootstrap}; generating {args.events:,} events", flush=True)
        t0 = time.monotonic()
        messages, sample = generate(args.events, seed=1)
        print(f"generated {len(messages):,} events in {time.monotonic() - t0:.0f}s", flush=True)
        asyncio.run(ensure_topics_async(bootstrap, [TOPIC, topics.DLQ], partitions=args.partitions))
        rate = asyncio.run(publish(bootstrap, messages))
        total = len(messages)
        del messages
        print(f"published at {rate:,.0f} msg/s", flush=True)

        names = [n for n in NAMES if not args.only or n in args.only]
        raw = asyncio.run(raw_consume_rate(bootstrap, total, args.max_records))
        print(f"raw consume: {raw:,.0f} msg/s", flush=True)
        results: dict[str, dict[str, float]] = {}
        for name in names:
            ours, cpu_us = asyncio.run(consume_rate(name, url, bootstrap, total, args.max_records))
            print(f"{name}: {ours:,.0f} events/s, {cpu_us:.1f} µs CPU/event", flush=True)
            results[name] = {"ours": ours, "cpu_us": cpu_us, "copy": copy_rate(url, name, sample, min(total, 1_000_000))}
            print(f"{name}: raw COPY {results[name]['copy']:,.0f} rows/s", flush=True)
        es_events = sample[: args.es_events]
        for name in names:
            results[name]["es"] = eventsourcing_rate(url, name, es_events) if es_events else float("nan")
            print(f"{name}: eventsourcing ProjectionRunner {results[name]['es']:,.0f} events/s", flush=True)
        latencies = query_latencies(url, args.queries) if "traceability" in names else {}

        print()
        print(f"=== {total:,} events, {args.partitions} partitions, batch {args.max_records}; eventsourcing runner on "
              f"{len(es_events):,} events ===")
        print(f"raw consume {raw:,.0f} msg/s; target per projection: >= 40,000 ev/s and >= 0.3x raw consume")
        print(f"{'projection':<22}{'ours ev/s':>12}{'ours/raw':>9}{'CPU µs/ev':>10}{'COPY rows/s':>14}{'ours/COPY':>11}"
              f"{'ES ev/s':>10}{'ours/ES':>9}")
        for name, r in results.items():
            print(f"{name:<22}{r['ours']:>12,.0f}{r['ours'] / raw:>9.2f}{r['cpu_us']:>10.1f}{r['copy']:>14,.0f}"
                  f"{r['ours'] / r['copy']:>11.2f}{r['es']:>10,.0f}{r['ours'] / r['es']:>9.1f}")
        with psycopg.connect(url) as conn:
            tables = ("steps", "prescriptions", "trace_code_uses") if "traceability" in names else ()
            counted = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("traceability", t))
                                       ).fetchone() for t in tables}
        sizes = {t: row[0] if row else 0 for t, row in counted.items()}
        print(f"traceability rows: {sizes}")
        for label, (p50, p99) in latencies.items():
            print(f"{label:<14} p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({args.queries} queries)")
    finally:
        broker.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
