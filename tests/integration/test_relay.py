"""The relay publishes every stored event to Kafka, in per-aggregate order, at least once, through kills,
database disconnects, republish requests and a broker that forgets everything."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent

from events import GENESIS_HASH, topics
from events.envelope import event_id
from services.infra.settings import eventsourcing_env
from services.integrity.chain import stored_event_hash
from services.relay import RelayConfig, RelayStats, republish, run_relay
from tests.support import unique_topic, wait_until_async

TEST_TOPIC = "tests.relay:TrailNoted"


class TrailStore:
    """Writes hash-chained JSON events through eventsourcing's PostgreSQL application recorder."""

    def __init__(self, database_url: str, name: str = "RelayTest") -> None:
        app_class = type(name, (Application,), {"name": name})
        self.url = database_url
        self.app = app_class(env=eventsourcing_env(database_url))
        self.recorder = self.app.recorder
        self.heads: dict[uuid.UUID, tuple[int, str]] = {}
        self.table = f"{name.lower()}_events"

    def event(self, aggregate_id: uuid.UUID, version: int, prev: str, note: str) -> StoredEvent:
        doc = {
            "originator_id": str(aggregate_id), "originator_version": version,
            "timestamp": datetime.now(UTC).isoformat(), "schema_version": 1, "business_type": "internet",
            "prev_hash": prev, "note": note,
        }
        doc["hash"] = stored_event_hash("TrailNoted", doc)
        return StoredEvent(originator_id=aggregate_id, originator_version=version, topic=TEST_TOPIC,
                           state=json.dumps(doc, ensure_ascii=False).encode())

    def append(self, aggregate_id: uuid.UUID, count: int = 1) -> list[int]:
        version, prev = self.heads.get(aggregate_id, (0, GENESIS_HASH))
        events = []
        for i in range(count):
            e = self.event(aggregate_id, version + i + 1, prev, f"note {version + i + 1} 处方")
            prev = json.loads(e.state)["hash"]
            events.append(e)
        ids = self.recorder.insert_events(events)
        self.heads[aggregate_id] = (version + count, prev)
        return list(ids or [])

    def make_gap(self, aggregate_id: uuid.UUID) -> None:
        """A save that conflicts (same version twice) rolls back after taking a notification id."""
        version, prev = self.heads[aggregate_id]
        with pytest.raises(IntegrityError):
            self.recorder.insert_events([self.event(aggregate_id, version + 1, prev, "new"),
                                         self.event(aggregate_id, version, prev, "dup")])

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def store(make_database: Callable[[], str]) -> Iterator[TrailStore]:
    s = TrailStore(make_database())
    yield s
    s.close()


async def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool], timeout_s: float = 40.0) -> list:
    """Every message of every partition from the beginning, until ``until(messages)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                metadata_max_age_ms=1000)
    await consumer.start()
    messages: list = []
    try:
        deadline = time.monotonic() + timeout_s
        assigned: set[TopicPartition] = set()
        while time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = {TopicPartition(topic, p) for p in parts}
            if tps != assigned:
                consumer.assign(sorted(tps))
                await consumer.seek_to_beginning(*tps)
                assigned, messages = tps, []
            if assigned:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    messages.extend(records)
                if until(messages):
                    return messages
            else:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
        raise AssertionError(f"timed out reading {topic}: {len(messages)} messages")
    finally:
        await consumer.stop()


def distinct_ids(messages: list) -> set[bytes]:
    return {dict(m.headers)["event_id"] for m in messages}


def has_all(n: int) -> Callable[[list], bool]:
    return lambda messages: len(distinct_ids(messages)) >= n


def config(database_url: str, bootstrap: str, topic: str, **kw: object) -> RelayConfig:
    defaults: dict[str, object] = {"partitions": 4, "poll_interval_s": 5.0, "check_interval_s": 2.0,
                                   "max_backoff_s": 1.0}
    defaults.update(kw)
    return RelayConfig(database_url=database_url, bootstrap=bootstrap, topic=topic, **defaults)  # type: ignore[arg-type]


async def wait_published(stats: RelayStats, n: int, timeout_s: float = 30.0) -> None:
    await wait_until_async(lambda: stats.published >= n, timeout=timeout_s, interval=0.05,
                           what=lambda: f"the relay to publish {n} (published {stats.published})")


def position(database_url: str, name: str = "relay") -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT log, position FROM relay_position WHERE name = %s", (name,)).fetchall()
    return dict(rows)


async def test_every_event_arrives_in_per_key_order_with_headers(
    store: TrailStore, kafka_bootstrap: str, broker_supports_idempotence: bool
) -> None:
    topic = unique_topic(topics.EVENTS)
    aggregates = [uuid.uuid4() for _ in range(20)]
    for round_ in range(5):
        for a in aggregates:
            store.append(a, 2)
        if round_ == 2:
            store.make_gap(aggregates[0])
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, kafka_bootstrap, topic, batch_size=37), stop, stats))
    try:
        await wait_published(stats, 200)
        # a save after the relay caught up arrives via LISTEN/NOTIFY, well before the 5 s poll
        saved = time.monotonic()
        store.append(aggregates[1], 1)
        await wait_published(stats, 201, timeout_s=4.0)
        woke_after = time.monotonic() - saved
        messages = await read_topic(kafka_bootstrap, topic, has_all(201))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)

    assert woke_after < 2.0
    assert stats.idempotent is broker_supports_idempotence
    assert len(messages) == 201  # nothing was sent twice in a clean run
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        h = dict(m.headers)
        assert m.key == h["aggregate_id"]
        assert h["event_id"] == event_id(m.key.decode(), int(h["aggregate_version"])).encode()
        assert h["event_type"] == b"TrailNoted" and h["business_type"] == b"internet"
        assert h["schema_version"] == b"1" and int(h["notification_id"]) > 0
        assert m.value.decode().startswith("{") and "处方" in m.value.decode()
        by_key[m.key].append(int(h["aggregate_version"]))
    assert sorted(by_key) == sorted(str(a).encode() for a in aggregates)
    for key, versions in by_key.items():
        expected = 11 if key == str(aggregates[1]).encode() else 10
        assert versions == list(range(1, expected + 1)), key
    with psycopg.connect(store.url) as conn:
        max_id = conn.execute(f"SELECT max(notification_id) FROM {store.table}").fetchone()[0]
    assert position(store.url) == {store.table: max_id}



def start_relay_process(database_url: str, bootstrap: str, topic: str, log_file: Path, **relay: object
                        ) -> subprocess.Popen[bytes]:
    """``rxtrail run relay`` as the stack starts it; ``relay``: settings of its section (batch_size=...)."""
    env = {**os.environ, "RXTRAIL_DATABASE_URL": database_url, "RXTRAIL_KAFKA_BOOTSTRAP": bootstrap,
           "RXTRAIL_EVENTS_TOPIC": topic, "RXTRAIL_PARTITIONS": "4", "RXTRAIL_RELAY__POLL_INTERVAL_S": "0.5",
           "RXTRAIL_RELAY__MAX_BACKOFF_S": "1", **{f"RXTRAIL_RELAY__{k.upper()}": str(v) for k, v in relay.items()}}
    argv = [sys.executable, "-m", "services.cli", "run", "relay"]
    with open(log_file, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2], env=env)


async def test_relay_killed_mid_batch_loses_nothing(store: TrailStore, kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique_topic(topics.EVENTS)
    aggregates = [uuid.uuid4() for _ in range(50)]
    for _ in range(4):
        for a in aggregates:
            store.append(a, 5)
    total = 1000
    log_file = tmp_path / "relay.log"
    # The first run waits 30 s between the broker's ack and the position commit: killing it inside that window
    # is exactly "acknowledged by the broker, not yet recorded".
    first = start_relay_process(store.url, kafka_bootstrap, topic, log_file, batch_size=300, commit_delay_s=30)
    try:
        acked = await read_topic(kafka_bootstrap, topic, lambda m: len(m) >= 300, timeout_s=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert position(store.url).get(store.table, 0) == 0  # nothing committed: the whole batch will be re-sent

    second = start_relay_process(store.url, kafka_bootstrap, topic, log_file, batch_size=300)
    try:
        store.append(aggregates[0], 1)  # written while the relay was down
        messages = await read_topic(kafka_bootstrap, topic, has_all(total + 1), timeout_s=40)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    assert second.returncode == 0, log_file.read_text()[-3000:]
    ids = [dict(m.headers)["event_id"] for m in messages]
    assert len(set(ids)) == total + 1
    assert len(ids) >= total + 1 + len(acked) - 1  # the acknowledged-but-unrecorded batch came again
    first_seen: dict[bytes, list[int]] = defaultdict(list)
    seen: set[bytes] = set()
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        h = dict(m.headers)
        if h["event_id"] not in seen:
            seen.add(h["event_id"])
            first_seen[m.key].append(int(h["aggregate_version"]))
    for key, versions in first_seen.items():
        assert versions == sorted(versions), key


async def test_broker_restart_that_loses_everything_ends_republished(
    store: TrailStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.infra.embedded import Tansu
    from services.infra.ports import free_port

    caplog.set_level(logging.INFO, logger="rxtrail.relay")
    port = free_port()
    broker = Tansu(tmp_path / "tansu-a", port)
    bootstrap = broker.start()
    topic = topics.EVENTS
    aggregates = [uuid.uuid4() for _ in range(30)]
    for a in aggregates:
        store.append(a, 10)
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, bootstrap, topic, poll_interval_s=0.5,
                                                check_interval_s=1.0), stop, stats))
    second: Tansu | None = None
    try:
        await wait_published(stats, 300)
        before = await read_topic(bootstrap, topic, has_all(300))
        assert len(before) == 300
        broker.stop()
        for a in aggregates[:10]:
            store.append(a, 2)  # saved while the broker is away
        second = Tansu(tmp_path / "tansu-b", port)
        second.start()
        after = await read_topic(bootstrap, topic, has_all(320), timeout_s=45)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if second is not None:
            second.stop()
        broker.stop()
    assert stats.resets >= 1
    assert distinct_ids(after) == {event_id(str(a), v).encode() for a in aggregates
                                   for v in range(1, 13 if a in aggregates[:10] else 11)}
    assert {m.partition for m in after} == {0, 1, 2, 3}  # recreated with its partitions, not auto-created
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("BROKER LOST DATA" in w and topic in w for w in warnings), warnings


async def test_a_relay_reading_its_records_back_never_takes_them_for_a_loss(store: TrailStore,
                                                                           kafka_bootstrap: str) -> None:
    """The broker checks read the relay's own records back (several relays on one topic: region shards). On a
    broker that lost nothing, checks after every few batches, while it publishes and while it idles, find every
    record in place: no reset, and the records they confirmed are kept as the relay's checked marks."""
    topic = unique_topic(topics.EVENTS)
    aggregates = [uuid.uuid4() for _ in range(24)]
    for a in aggregates:
        store.append(a, 10)
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, kafka_bootstrap, topic, batch_size=20, poll_interval_s=0.1,
                                                check_interval_s=0.2), stop, stats))
    try:
        await wait_published(stats, 240)
        for a in aggregates[:12]:
            store.append(a, 5)
        await wait_published(stats, 300)
        checks = stats.checks
        await wait_until_async(lambda: stats.checks >= checks + 5, timeout=30, what="five more checks")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert stats.resets == 0 and stats.sessions == 1
    with psycopg.connect(store.url) as conn:
        row = conn.execute("SELECT next_offsets, marks FROM relay_broker WHERE name = 'relay'").fetchone()
    assert row is not None
    floors = {p: v[0] for p, v in row[0].items()}
    assert row[1]["checked"] == {p: [floor, row[1]["floor"][p]] for p, floor in floors.items()}
    assert len(floors) == 4


async def test_republish_from_a_notification_id_while_running(store: TrailStore, kafka_bootstrap: str) -> None:
    topic = unique_topic(topics.EVENTS)
    a = uuid.uuid4()
    ids = store.append(a, 40)
    stop, stats = asyncio.Event(), RelayStats()
    cfg = config(store.url, kafka_bootstrap, topic, poll_interval_s=5.0)
    task = asyncio.create_task(run_relay(cfg, stop, stats))
    try:
        await wait_published(stats, 40)
        await republish(cfg, from_notification_id=ids[29])  # the last 10 again; NOTIFY wakes the relay
        await wait_published(stats, 50, timeout_s=4.0)
        messages = await read_topic(kafka_bootstrap, topic, lambda m: len(m) >= 50)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    versions = [int(dict(m.headers)["aggregate_version"]) for m in sorted(messages, key=lambda m: m.offset)]
    assert versions == list(range(1, 41)) + list(range(31, 41))


async def test_database_connections_killed_are_survived(
    store: TrailStore, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rxtrail.relay")
    topic = unique_topic(topics.EVENTS)
    a = uuid.uuid4()
    store.append(a, 10)
    stop, stats = asyncio.Event(), RelayStats()
    task = asyncio.create_task(run_relay(config(store.url, kafka_bootstrap, topic, poll_interval_s=0.3), stop,
                                         stats))
    try:
        await wait_published(stats, 10)
        with psycopg.connect(store.url, autocommit=True) as conn:
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  " WHERE application_name LIKE 'rxtrail-relay:%%' AND datname = current_database()"
                                  ).fetchone()[0]
        assert killed == 2
        store.append(a, 10)
        await wait_published(stats, 20, timeout_s=15)
        messages = await read_topic(kafka_bootstrap, topic, has_all(20))
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert len(distinct_ids(messages)) == 20
    assert stats.sessions >= 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("database unavailable" in w for w in warnings), warnings
    assert not any("BROKER LOST DATA" in w for w in warnings), warnings
