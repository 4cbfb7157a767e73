"""The testcontainers path of the fixtures: the official images, used when a Docker engine answers.

- PostgreSQL: ``postgres:16-alpine`` (testcontainers' ``PostgresContainer``).
- Kafka: ``apache/kafka:4.4.0`` (the Apache Software Foundation's image, the same version as the launcher's jars),
  one KRaft node. testcontainers' ``KafkaContainer`` only knows Confluent's images, so the container is a plain
  ``DockerContainer`` configured by the image's ``KAFKA_*`` variables and advertising its mapped host port.

``docker_unavailable()`` says why the path is not taken (None when it is); the session header shows it.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_IMAGE = "postgres:16-alpine"
APACHE_KAFKA_IMAGE = "apache/kafka:4.4.0"


@functools.cache
def docker_unavailable() -> str | None:
    """None when a Docker engine answers ``docker info``; else why not (for the session header and skips)."""
    if shutil.which("docker") is None:
        return "no Docker engine: `docker` is not on PATH"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Docker engine: `docker info` failed ({exc})"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine: `docker info` exit {r.returncode} ({last})"
    return None


@contextmanager
def postgres_container(image: str = POSTGRES_IMAGE) -> Iterator[str]:
    """A PostgreSQL container; yields its URL (postgresql://...)."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(image, driver=None) as pg:
        yield pg.get_connection_url()


@contextmanager
def apache_kafka_container(image: str = APACHE_KAFKA_IMAGE, partitions: int = 12) -> Iterator[str]:
    """One Apache Kafka KRaft node (broker + controller) in a container; yields its bootstrap address."""
    from testcontainers.core.container import DockerContainer

    from services.infra.kafka_admin import wait_for_kafka
    from services.infra.ports import free_ports

    port = free_ports(1)[0]  # bound on the host and advertised: the broker must name the address clients use
    container = DockerContainer(image)
    host = container.get_docker_client().host()
    env = {
        "CLUSTER_ID": "4L6g3nShT-eMCtK--X86sw",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": str(partitions),
    }
    for name, value in env.items():
        container.with_env(name, value)
    container.with_bind_ports(9092, port)
    with container:
        bootstrap = f"{host}:{port}"
        wait_for_kafka(bootstrap, 90)
        yield bootstrap
