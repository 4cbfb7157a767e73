"""Relay throughput against a raw aiokafka producer sending the same bytes, and save → broker-ack latency.

    .venv/bin/python bench/relay.py [--events 20000] [--size 1024] [--rate 300]

Starts embedded PostgreSQL and Tansu in a temp dir unless RXTRAIL_DATABASE_URL / RXTRAIL_KAFKA_BOOTSTRAP are set.
Same run, same machine, same topic layout (12 partitions), same batch size (500, send all then await all acks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent

from events.envelope import record_headers
from services.infra.kafka_admin import ensure_topics_async
from services.infra.runtime import configure_logging
from services.infra.settings import eventsourcing_env
from services.relay import RelayConfig, RelayStats, run_relay

BATCH = 500
PARTITIONS = 12


class BenchStore(Application):  # type: ignore[type-arg]
    name = "RelayBench"


def make_events(count: int, size: int, aggregates: int) -> list[StoredEvent]:
    ids = [uuid.uuid4() for _ in range(aggregates)]
    versions = dict.fromkeys(ids, 0)
    filler = "x" * max(0, size - 330)
    out = []
    for i in range(count):
        a = ids[i % aggregates]
        versions[a] += 1
        doc = {"originator_id": str(a), "originator_version": versions[a], "timestamp": "2026-11-24T08:00:00Z",
               "schema_version": 1, "business_type": "internet", "prev_hash": "0" * 64, "hash": "1" * 64,
               "note": filler}
        out.append(StoredEvent(originator_id=a, originator_version=versions[a],
                               topic="bench.relay:Noted", state=json.dumps(doc).encode()))
    return out


async def raw_producer(bootstrap: str, topic: str, rows: list[tuple[int, str, int, str, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=512 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            futures = [await producer.send(topic, value=s, key=a.encode(),
                                           headers=record_headers(n, a, v, t, s, "relaybench_events"))
                       for n, a, v, t, s in rows[i:i + BATCH]]
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def bench(database_url: str, bootstrap: str, count: int, size: int, rate: int) -> None:
    app = BenchStore(env=eventsourcing_env(database_url))
    recorder = app.recorder
    events = make_events(count, size, aggregates=max(1, count // 20))
    t0 = time.perf_counter()
    for i in range(0, len(events), 1000):
        recorder.insert_events(events[i:i + 1000])
    store_s = time.perf_counter() - t0
    notifications = recorder.select_notifications(0, count + 10, inclusive_of_start=False)
    rows = [(n.id, str(n.originator_id), n.originator_version, n.topic, n.state) for n in notifications]

    # 1. relay throughput over a backlog
    relay_topic, raw_topic = f"bench.relay.{uuid.uuid4().hex[:6]}", f"bench.raw.{uuid.uuid4().hex[:6]}"
    await ensure_topics_async(bootstrap, [relay_topic, raw_topic], PARTITIONS)
    config = RelayConfig(database_url=database_url, bootstrap=bootstrap, topic=relay_topic, partitions=PARTITIONS,
                         batch_size=BATCH, poll_interval_s=0.5, logs=("relaybench_events",), name="bench")
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config, stop, stats))
    while stats.idempotent is None:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    while stats.published < count:
        await asyncio.sleep(0.005)
    relay_s = time.perf_counter() - started

    # 2. the same bytes through a bare producer, same batching
    raw_s = await raw_producer(bootstrap, raw_topic, rows)

    # 3. latency: single-event saves at a steady rate while the relay is idle-waiting on LISTEN/NOTIFY
    saved_at: dict[int, float] = {}
    latencies: list[float] = []

    def on_ack(batch: object, acked_at: float) -> None:
        for _log, n, _v in batch:  # type: ignore[attr-defined]
            if n in saved_at:
                latencies.append(acked_at - saved_at.pop(n))

    stats.on_ack = on_ack
    extra = make_events(max(200, rate * 5), size, aggregates=50)
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for e in extra:
        ids = await asyncio.to_thread(recorder.insert_events, [e])
        saved_at[ids[0]] = time.time()  # type: ignore[index]
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    deadline = time.monotonic() + 20
    while saved_at and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    app.close()

    lat = sorted(latencies)

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    relay_rate, raw_rate = count / relay_s, count / raw_s
    print(f"events: {count} × ~{len(rows[0][4])} B, {PARTITIONS} partitions, batch {BATCH}, "
          f"idempotent producer: {stats.idempotent}")
    print(f"store (setup, insert_events 1000/tx): {count / store_s:,.0f} events/s")
    print(f"relay   (read log → send → acks → position): {relay_rate:,.0f} events/s ({relay_s:.2f} s)")
    print(f"raw aiokafka producer, same bytes/headers:  {raw_rate:,.0f} events/s ({raw_s:.2f} s)")
    print(f"ratio relay/raw: {relay_rate / raw_rate:.2f}")
    print(f"save → broker ack at {rate} saves/s ({len(lat)} events): p50 {p(0.50):.1f} ms, p99 {p(0.99):.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rate", type=int, default=300, help="saves per second for the latency phase")
    args = parser.parse_args()
    configure_logging(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    database_url, bootstrap = os.environ.get("RXTRAIL_DATABASE_URL"), os.environ.get("RXTRAIL_KAFKA_BOOTSTRAP")
    tmp = Path(tempfile.mkdtemp(prefix="rxtrail-bench-", dir="/var/tmp"))
    pg = broker = None
    try:
        from services.infra.embedded import EmbeddedPostgres, Tansu
        from services.infra.ports import free_port

        if not database_url:
            pg = EmbeddedPostgres(tmp / "pg", free_port())
            database_url = pg.start()
        if not bootstrap:
            broker = Tansu(tmp / "tansu", free_port())
            bootstrap = broker.start()
        asyncio.run(bench(database_url, bootstrap, args.events, args.size, args.rate))
    finally:
        if broker:
            broker.stop()
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
