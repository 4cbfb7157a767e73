"""The testcontainers path: the official images answer as the fixtures use them (runs where a Docker engine answers;
skipped elsewhere with the reason, e.g. "no Docker engine: `docker` is not on PATH").

The session fixtures take this path on their own when Docker answers (tests/conftest.py); this test checks the
containers directly, whatever the session's parts are: PostgreSQL takes a table and a row, Apache Kafka takes an
idempotent acks=all producer (Tansu refuses one) and gives a record back with its key and headers.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.support.containers import apache_kafka_container, docker_unavailable, postgres_container

pytestmark = pytest.mark.skipif(docker_unavailable() is not None, reason=str(docker_unavailable()))


def test_postgres_image() -> None:
    with postgres_container() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (7)")
        assert conn.execute("SELECT x FROM t").fetchone() == (7,)
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("16")  # type: ignore[index]


def test_apache_kafka_image() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def round_trip(bootstrap: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("rx.tc", b"{}", key=b"k1", headers=[("event_type", b"Probe")])
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("rx.tc", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        return record.key, list(record.headers)

    with apache_kafka_container() as bootstrap:
        key, headers = asyncio.run(round_trip(bootstrap))
    assert key == b"k1" and headers == [("event_type", b"Probe")]
