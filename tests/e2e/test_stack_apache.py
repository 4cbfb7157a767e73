"""The whole platform on a 3-broker Apache Kafka cluster, as `rxtrail up --kafka apache --brokers 3` starts it.

`rxtrail up --detach --kafka apache --brokers 3` in a temporary data dir on free ports (the Apache Kafka launcher
the fault tests use: KRaft, replication 3, min.insync.replicas 2); then a demo day (`rxtrail demo`), its trail in
the traceability projection, `rxtrail verify --kafka` INTACT, and `rx.events` read with Apache Kafka's own console
consumer (from the launcher's Maven jars, `java -cp`): every stored event is there once, keyed by its aggregate,
with the relay's headers; last, one broker SIGKILLed is restarted by the supervisor and a second demo day runs.
`rxtrail down` always runs. Slow (three JVMs): about 75 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from events import envelope, topics
from services.infra.apache_kafka import CONSOLE_CONSUMER, find_java, tools_classpath
from services.infra.ports import free_ports, retry_on_taken_port
from services.infra.settings import Settings
from tests.e2e.test_stack_demo import CLI, PLANT_LINE, _database_url, _eventually


@pytest.fixture(scope="module")
def apache_stack() -> Iterator[dict[str, str]]:
    try:
        find_java()
    except Exception as exc:
        pytest.fail(f"no Java runtime: the 3-broker stack test needs one (the CI image has it): {exc}")
    data = Path("/var/tmp") / f"rxtrail-apache-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ)
    for name in ("RXTRAIL_DATABASE_URL", "RXTRAIL_KAFKA_BOOTSTRAP", "RXTRAIL_PSEUDONYM_SECRET",
                 "RXTRAIL_KAFKA_LAUNCHER", "RXTRAIL_KAFKA_BROKERS"):
        env.pop(name, None)
    env.update({"RXTRAIL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
                "RXTRAIL_START_TIMEOUT_S": "150"})

    def up() -> None:
        postgres, kafka, api = free_ports(3)  # the other two brokers' ports: free ports the launcher picks
        env.update({"RXTRAIL_POSTGRES_PORT": str(postgres), "RXTRAIL_KAFKA_PORT": str(kafka),
                    "RXTRAIL_API_PORT": str(api)})
        r = subprocess.run([*CLI, "up", "--detach", "--kafka", "apache", "--brokers", "3"], env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise AssertionError(f"rxtrail up failed:\n{r.stdout}\n{' '.join(r.stderr.split())}")

    try:
        retry_on_taken_port(up)
        env["BOOTSTRAP"] = json.loads((data / "stack.json").read_text())["kafka"]
        yield env
    finally:
        down = subprocess.run([*CLI, "down"], env=env, capture_output=True, text=True, timeout=90)
        shutil.rmtree(data, ignore_errors=True)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def demo_day(apache_stack: dict[str, str]) -> dict[str, str]:
    demo = subprocess.run([*CLI, "demo", "--seed", "3", "--size", "10"], env=apache_stack, capture_output=True,
                          text=True, timeout=400)
    assert demo.returncode == 0, f"demo failed:\n{demo.stdout}\n{demo.stderr}"
    line = re.search(r"^demo day=(\S+) hospitals=(\S+) pharmacies=(\d+) trail=(\S+) pharmacy=(\S+)$",
                     demo.stdout, re.MULTILINE)
    assert line, demo.stdout
    assert "R4" in demo.stdout and "refused" in demo.stdout
    run, hospitals, _count, trail, pharmacy = line.groups()
    # the demo shows the trail of a settled doctor-shopping prescription (X-SHOP-1 or X-SHOP-2 of plan_day): a Jinan
    # patient's follow-up visit, no collection planned, so delivered through the day's (Jinan) delivery enterprise
    plants = {m[0]: m[1:] for m in PLANT_LINE.findall(demo.stdout)}
    assert trail in plants["doctor_shopping"][2].split(","), (trail, plants.get("doctor_shopping"), demo.stdout)
    return {"run": run, "hospital": hospitals.split(",")[0], "pharmacies": pharmacy, "trail": trail}


def _describe(bootstrap: str, names: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def run() -> tuple[list[dict[str, Any]], dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(names)
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n, {"min.insync.replicas": None}) for n in names])
        finally:
            await admin.close()
        isr = {r["resource_name"]: e["config_value"] for resp in configs for r in resp.to_object()["resources"]
               for e in r["config_entries"] if e["config_names"] == "min.insync.replicas"}
        return described, isr

    return asyncio.run(run())


def test_three_brokers_replication_3_min_insync_2(apache_stack: dict[str, str], demo_day: dict[str, str]) -> None:
    bootstrap = apache_stack["BOOTSTRAP"]
    assert len(bootstrap.split(",")) == 3, bootstrap
    feed = topics.pharmacy_topic(demo_day["pharmacies"].split(",")[0])  # created by the gateway, not by `up`
    names = [*topics.CORE_TOPICS, feed]
    described, min_isr = _describe(bootstrap, names)
    partitions = Settings(_env_file=None).partitions  # type: ignore[call-arg]
    for topic in described:
        assert topic["error_code"] == 0, topic
        replicas = {len(p["replicas"]) for p in topic["partitions"]}
        assert replicas == {3}, (topic["topic"], replicas)
        if topic["topic"] != feed:
            assert len(topic["partitions"]) == partitions, topic["topic"]
    assert min_isr == dict.fromkeys(names, "2"), min_isr
    relay_log = (Path(apache_stack["RXTRAIL_DATA_DIR"]) / "logs" / "relay.log").read_text()
    assert "(idempotent producer: True)" in relay_log, "the relay runs an idempotent acks=all producer here"


def test_demo_day_on_three_brokers(apache_stack: dict[str, str], demo_day: dict[str, str]) -> None:
    trail_rx = demo_day["trail"]
    with psycopg.connect(_database_url(apache_stack)) as conn:
        from projections.traceability import queries

        def projected() -> list[str] | None:
            steps = [s.step for s in queries.trail(conn, "traceability", trail_rx)]
            conn.rollback()
            return steps if {"PrescriptionSettled", "ConsultationSettled"} <= set(steps) else None

        steps = _eventually("the traceability projection to show both settlements", projected, timeout_s=60)
    # the demo dispenses all packs at once (one trace code per pack: one PrescriptionDispensed), then delivers
    assert [s for s in steps if s != "ConsultationSettled"] == [
        "FollowUpVisitRecorded", "PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
        "PrescriptionAccepted", "PrescriptionDispensed", "DeliveryArranged", "PrescriptionDelivered",
        "PrescriptionSettled"], steps
    assert steps.count("ConsultationSettled") == 1, steps  # R15: the visit settled on its approved prescription

    def intact() -> str | None:
        verify = subprocess.run([*CLI, "verify", "--kafka"], env=apache_stack, capture_output=True, text=True,
                                timeout=120)
        assert verify.returncode in (0, 1), verify.stdout + verify.stderr
        return verify.stdout if verify.returncode == 0 and "INTACT" in verify.stdout else None

    out = _eventually("rxtrail verify --kafka to find the store and rx.events INTACT", intact, timeout_s=60)
    assert "0 not yet relayed" in out, out
    # every stage ran through the day on the 3-broker bootstrap list without a restart (the intake once could not
    # read "a:1,b:2,c:3" and exited every few seconds while the demo, which does not use it, still passed)
    state = json.loads((Path(apache_stack["RXTRAIL_DATA_DIR"]) / "stack.json").read_text())
    assert set(state["restarts"].values()) == {0}, (state["restarts"], state.get("last_exit"))


def _stored(database_url: str) -> set[tuple[str, int, str]]:
    """(aggregate id, version, event type) of every event in the store's event tables."""
    from services.adapters.event_log import discover_logs

    with psycopg.connect(database_url) as conn:
        rows: set[tuple[str, int, str]] = set()
        for log in discover_logs(conn):
            rows |= {(str(a), int(v), envelope.event_type_of(t)) for a, v, t in conn.execute(
                f'SELECT originator_id, originator_version, topic FROM "{log}"').fetchall()}
    return rows


def test_console_consumer_reads_keys_and_headers(apache_stack: dict[str, str], demo_day: dict[str, str]) -> None:
    """Apache Kafka's kafka-console-consumer (print.key, print.headers) reads every stored event from rx.events,
    keyed by its aggregate id, with the relay's headers (event id, aggregate, version, type, log)."""
    stored = _stored(_database_url(apache_stack))
    assert any(a == demo_day["trail"] for a, _, _ in stored)
    classpath = tools_classpath()

    def consume() -> list[str] | None:
        r = subprocess.run(
            [find_java(), "-Xmx256m", "-cp", classpath, CONSOLE_CONSUMER, "--bootstrap-server", apache_stack["BOOTSTRAP"],
             "--topic", topics.EVENTS, "--from-beginning", "--max-messages", str(len(stored)), "--timeout-ms", "15000",
             "--formatter-property", "print.key=true", "--formatter-property", "print.headers=true",
             "--formatter-property", "print.partition=true", "--formatter-property", "print.value=false"],
            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("Partition:")]
        assert r.returncode == 0 or len(lines) < len(stored), r.stderr[-2000:]
        return lines if len(lines) == len(stored) else None  # the relay may still be publishing the last ones

    lines = _eventually(f"the console consumer to read {len(stored)} events from {topics.EVENTS}", consume,
                        timeout_s=90)
    seen: set[tuple[str, int, str]] = set()
    partition_of: dict[str, str] = {}
    for line in lines:
        partition, headers_text, key = line.split("\t")
        headers = dict(h.split(":", 1) for h in headers_text.split(","))
        assert key == headers[envelope.AGGREGATE_ID], line
        version = int(headers[envelope.AGGREGATE_VERSION])
        assert headers[envelope.EVENT_ID] == envelope.event_id(key, version), line
        assert headers[envelope.LOG] and int(headers[envelope.NOTIFICATION_ID]) > 0, line
        assert partition_of.setdefault(key, partition) == partition, f"{key}: one aggregate, one partition"
        seen.add((key, version, headers[envelope.EVENT_TYPE]))
    assert seen == stored, (sorted(stored - seen)[:5], sorted(seen - stored)[:5])
    trail = sorted((v, t) for a, v, t in seen if a == demo_day["trail"])
    assert [t for _, t in trail][:4] == ["PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
                                         "PrescriptionAccepted"], trail
    assert trail[-1][1] == "PrescriptionSettled", trail


def test_a_killed_broker_is_restarted_and_the_platform_goes_on(apache_stack: dict[str, str],
                                                               demo_day: dict[str, str]) -> None:
    """Last in this module (it disturbs the cluster): SIGKILL one broker; the supervisor starts it again on its
    ports and data, the cluster reports three brokers, and a second demo day runs through every stage."""
    import signal

    from services.infra.apache_kafka import metadata_broker_ids

    pids_file = Path(apache_stack["RXTRAIL_DATA_DIR"]) / "apache-kafka.pids"
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3
    os.killpg(pids[1], signal.SIGKILL)

    def restarted() -> list[int] | None:
        now = [int(p) for p in pids_file.read_text().split()]
        return now if len(now) == 3 and now[1] != pids[1] and now[0] == pids[0] and now[2] == pids[2] else None

    _eventually("the supervisor to start the killed broker again", restarted, timeout_s=90)
    host, port = apache_stack["BOOTSTRAP"].split(",")[1].split(":")

    def three() -> list[int] | None:
        try:
            ids = metadata_broker_ids(host, int(port))
        except OSError:
            return None
        return ids if len(ids) == 3 else None

    _eventually("the restarted broker to answer with three brokers", three, timeout_s=90)
    demo = subprocess.run([*CLI, "demo", "--seed", "4", "--size", "8"], env=apache_stack, capture_output=True,
                          text=True, timeout=400)
    assert demo.returncode == 0, f"demo after the broker restart failed:\n{demo.stdout}\n{demo.stderr}"

    def all_running() -> dict[str, Any] | None:  # a stage that exited meanwhile is back after its backoff
        state: dict[str, Any] = json.loads((Path(apache_stack["RXTRAIL_DATA_DIR"]) / "stack.json").read_text())
        return state if all(pid is not None for pid in state["services"].values()) else None

    state = _eventually("every stage to run", all_running, timeout_s=60)
    print(f"restarts during the broker outage: {state['restarts']}; last exits: {state.get('last_exit', {})}")
