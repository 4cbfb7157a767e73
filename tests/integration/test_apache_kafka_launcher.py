"""The Apache Kafka launcher against real brokers (jars from Maven Central, the machine's Java)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.infra.apache_kafka import ApacheKafka, ensure_jars, metadata_broker_ids
from services.infra.errors import InfraError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17+ for Apache Kafka"),
]


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    with ApacheKafka().start(brokers=1, base_dir=tmp_path_factory.mktemp("kafka1"), partitions=3) as k:
        yield k


HEADERS = [("event-type", b"PrescriptionIssued"), ("v", b"1")]


async def _round_trip(bootstrap: str, topic: str, value: bytes, acks: int | str = 1) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"rx-1", headers=HEADERS)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while (msg := await consumer.getone()).value != value:
                pass
    finally:
        await consumer.stop()
    assert (msg.partition, msg.offset) == (meta.partition, meta.offset)
    assert msg.key == b"rx-1" and list(msg.headers) == HEADERS


async def test_single_broker_round_trips_a_keyed_message_with_headers(kafka: ApacheKafka) -> None:
    assert kafka.bootstrap == f"127.0.0.1:{kafka.ports[0]}"
    assert metadata_broker_ids("127.0.0.1", kafka.ports[0]) == [1]
    await _round_trip(kafka.bootstrap, f"t-{uuid.uuid4().hex[:8]}", b'{"n": 1}')


def test_taken_port_is_named(kafka: ApacheKafka) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InfraError, match=f"port 127.0.0.1:{port} is already taken"):
            ApacheKafka().start(ports=[port])
    with pytest.raises(InfraError, match=f"port 127.0.0.1:{kafka.ports[0]} is already taken"):
        ApacheKafka().start(ports=[kafka.ports[0]])


def test_missing_java_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(InfraError, match="Java not found: install a JDK 17"):
        ApacheKafka().start()
    with pytest.raises(InfraError, match="Java not found"):
        ensure_jars(tmp_path / "cache")


def test_failed_mvn_shows_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = shutil.which("java")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    fake_mvn = bin_dir / "mvn"
    fake_mvn.write_text("#!/bin/sh\necho 'Could not resolve dependencies: no route to repo' >&2\nexit 1\n")
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(InfraError, match=r"mvn failed .*exit 1\):\nCould not resolve dependencies"):
        ensure_jars(tmp_path / "cache")


def test_broker_dying_at_startup_shows_the_cause(tmp_path: Path) -> None:
    # the storage tool accepts this; only the broker loads reporter classes, so the JVM exits while starting
    with pytest.raises(
        InfraError, match=r"(?s)exited with code 1 during startup.*ClassNotFoundException: no\.such"
    ):
        ApacheKafka().start(base_dir=tmp_path, config={"metric.reporters": "no.such.Reporter"})
    assert _no_java_under(tmp_path)


def _no_java_under(base: Path) -> bool:
    """No JVM still has this data dir on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline and str(base).encode() in cmdline:
            return False
    return True


async def test_three_brokers_replicate_and_survive_one_loss(tmp_path: Path) -> None:
    # fence a dead broker in 3 s rather than 9 s so leadership moves quickly
    fast = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
    k = ApacheKafka().start(brokers=3, base_dir=tmp_path, partitions=3, timeout_s=60, config=fast)
    try:
        assert len(k.bootstrap.split(",")) == 3
        assert sorted(metadata_broker_ids("127.0.0.1", k.ports[2])) == [1, 2, 3]
        await _round_trip(k.bootstrap, "replicated", b"before", acks="all")
        k.kill_broker(2)
        assert _no_java_under(tmp_path / "node-3") and not _no_java_under(tmp_path / "node-1")
        await _round_trip(",".join(k.bootstrap.split(",")[:2]), "replicated", b"after", acks="all")
        k.restart_broker(2)
        assert sorted(metadata_broker_ids("127.0.0.1", k.ports[0])) == [1, 2, 3]
    finally:
        k.stop()
    assert _no_java_under(tmp_path)
