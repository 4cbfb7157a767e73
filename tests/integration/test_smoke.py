"""The parts are real: a keyed message with headers survives a consumer-group restart; a table round-trips."""

from __future__ import annotations

from decimal import Decimal

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.infra.kafka_admin import ensure_topics_async
from tests.support import unique_id, unique_topic


async def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    return consumer


async def test_keyed_message_with_headers_resumes_after_manual_commit(kafka_bootstrap: str) -> None:
    topic, group = unique_topic("smoke"), unique_id("group")
    await ensure_topics_async(kafka_bootstrap, [topic], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(
                topic, value=f"v{i}".encode(), key=b"rx-1",
                headers=[("event_type", b"PrescriptionIssued"), ("seq", str(i).encode())],
            )
    finally:
        await producer.stop()

    first = await _consumer(kafka_bootstrap, topic, group)
    try:
        seen = []
        while len(seen) < 2:
            msg = await first.getone()
            seen.append(msg)
        assert [m.value for m in seen] == [b"v0", b"v1"]
        assert seen[0].key == b"rx-1"
        assert dict(seen[1].headers) == {"event_type": b"PrescriptionIssued", "seq": b"1"}
        tp = TopicPartition(topic, seen[1].partition)
        await first.commit({tp: seen[1].offset + 1})
    finally:
        await first.stop()

    second = await _consumer(kafka_bootstrap, topic, group)
    try:
        msg = await second.getone()
        assert (msg.key, msg.value, dict(msg.headers)["seq"]) == (b"rx-1", b"v2", b"2")
        assert await second.committed(TopicPartition(topic, msg.partition)) == 2
    finally:
        await second.stop()


def test_table_round_trips_through_postgres(pg_url: str) -> None:
    table = unique_id("smoke").replace("-", "_")
    with psycopg.connect(pg_url) as conn:
        conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, amount numeric(12,2), at timestamptz)")
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s, now())", ("rx-1", Decimal("12.34")))
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(f"SELECT id, amount, at IS NOT NULL FROM {table}").fetchone()
        server = conn.execute("SHOW server_version").fetchone()
        conn.execute(f"DROP TABLE {table}")
    assert row == ("rx-1", Decimal("12.34"), True)
    assert server is not None and int(server[0].split(".")[0]) >= 15
