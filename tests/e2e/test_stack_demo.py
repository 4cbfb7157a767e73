"""The whole stack as `rxtrail up` launches it, driven by `rxtrail demo --seed 7 --size 12` (the demo test).

`rxtrail up --detach` in a temporary data dir on free ports; the demo day registers its cast through the registry
API and drives visits and prescriptions over HTTP and the Kafka intake; then: every planted misbehaviour is refused
with its rule id or appears as a flag or finding, nothing honest is flagged as doctor shopping, and the effects are
checked where each service leaves them (the router's and the settlement worker's commands in the event store, the
traceability projection's steps, the gateway's messages on the pharmacy's feed topic, the dashboard, `rxtrail
verify`). `rxtrail down` always runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from events import topics
from services.infra.ports import free_ports, retry_on_taken_port
from tests.support import wait_until

CLI = [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    data = Path("/var/tmp") / f"rxtrail-demo-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ)
    for name in ("RXTRAIL_DATABASE_URL", "RXTRAIL_KAFKA_BOOTSTRAP", "RXTRAIL_PSEUDONYM_SECRET"):
        env.pop(name, None)
    env.update({"RXTRAIL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})

    def up() -> None:
        postgres, kafka, api = free_ports(3)  # distinct; chosen again if one is taken before the stack binds it
        env.update({"RXTRAIL_POSTGRES_PORT": str(postgres), "RXTRAIL_KAFKA_PORT": str(kafka),
                    "RXTRAIL_API_PORT": str(api)})
        r = subprocess.run([*CLI, "up", "--detach"], env=env, capture_output=True, text=True, timeout=90)
        if r.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise AssertionError(f"rxtrail up failed:\n{r.stdout}\n{' '.join(r.stderr.split())}")

    try:
        retry_on_taken_port(up)
        yield env
    finally:
        down = subprocess.run([*CLI, "down"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def _database_url(env: dict[str, str]) -> str:
    return f"postgresql://postgres@127.0.0.1:{env['RXTRAIL_POSTGRES_PORT']}/rxtrail"


def _eventually(what: str, check: Callable[[], Any], timeout_s: float = 30) -> Any:
    return wait_until(check, timeout=timeout_s, interval=0.2, what=what)


def _feed_messages(bootstrap: str, topic: str, want: int, timeout_s: float = 20) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        got: list[Any] = []
        try:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while len(got) < want and asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(records)
        finally:
            await consumer.stop()
        return got

    return asyncio.run(read())


SEED, SIZE = 7, 12
PLANT_LINE = re.compile(r"^plant (\S+) expected=(\S+) ok=(yes|no) prescriptions=(\S+)$", re.MULTILINE)


def test_demo_day_drives_every_service_and_catches_every_planted_misbehaviour(stack: dict[str, str]) -> None:
    """`rxtrail demo --seed 7 --size 12`: every planted misbehaviour is refused with its rule id or shows up as a flag
    or a finding, nothing honest is flagged as doctor shopping, and every service left its mark."""
    from services.simulate import PLANTS, plan_day

    demo = subprocess.run([*CLI, "demo", "--seed", str(SEED), "--size", str(SIZE)], env=stack, capture_output=True,
                          text=True, timeout=400)
    assert demo.returncode == 0, f"demo failed:\n{demo.stdout}\n{demo.stderr}"
    line = re.search(r"^demo day=(\S+) hospitals=(\S+) pharmacies=(\d+) trail=(\S+) pharmacy=(\S+)$", demo.stdout,
                     re.MULTILINE)
    assert line, demo.stdout
    tag, hospitals, _pharmacies, trail_rx, _pharmacy = line.groups()
    plan = plan_day(SEED, SIZE)
    assert tag == plan.tag and hospitals.split(",") == [h.hospital_id for h in plan.hospitals]
    assert "registered via=http" in demo.stdout  # the cast went through the registry API (POST /registry/...)
    plants = {m[0]: m[1:] for m in PLANT_LINE.findall(demo.stdout)}
    assert set(plants) == set(PLANTS), demo.stdout
    for name, (how, what, expect) in PLANTS.items():
        expected, ok, _ids = plants[name]
        assert expected == f"{what}:{expect}", (name, expected)
        assert ok == "yes", f"{name} ({how}) was not caught as {what} {expect}:\n{demo.stdout}"
    shopping = set(plants["doctor_shopping"][2].split(","))

    database_url = _database_url(stack)
    api = f"http://127.0.0.1:{stack['RXTRAIL_API_PORT']}"
    from services.adapters.api_keys import create_key, ensure_schema, parse_party

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        regulator = create_key(conn, parse_party("regulator:REG-E2E-DEMO"), datetime.now(UTC), label="e2e")
    reg = {"Authorization": f"Bearer {regulator}"}
    with httpx.Client(base_url=api, timeout=30) as http:
        # nothing honest is flagged as doctor shopping: every such finding is about the planted prescriptions
        r = http.get("/regulator/findings", params={"pattern": "FR-DOCTOR-SHOP", "limit": 500}, headers=reg)
        assert r.status_code == 200, r.text
        found = r.json()["items"]
        assert found, "the planted doctor shopping was not found"
        for finding in found:
            assert {str(i) for i in finding["prescription_ids"]} <= shopping, finding

        body = _eventually(f"the trail of {trail_rx} to show its settlement", lambda: (lambda b: b if any(
            e["event_type"] == "PrescriptionSettled" for e in b["events"]) else None)(
            http.get(f"/regulator/prescriptions/{trail_rx}/trail", headers=reg).json()))
        assert body["verification"]["verified"] is True
        types = [e["event_type"] for e in body["events"] if e["aggregate_type"] == "Prescription"]
        assert types[:4] == ["PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
                             "PrescriptionAccepted"], types
        assert "PrescriptionSettled" in types
        dashboard = http.get("/regulator/dashboard", params={"days": 1}, headers=reg).json()["days"]
        assert {d["region"] for d in dashboard} == {"370100", "220100"}, dashboard
        assert sum(d["settled"] for d in dashboard) >= SIZE // 2

    with psycopg.connect(database_url) as conn:
        # the router's and the settlement worker's commands: keyed "router:<event id>" and "settle:<event id>"
        by: dict[str, set[str]] = {}
        for command_id, event_type in conn.execute(
                "SELECT o.command_id, e->>'event_type' FROM rxtrail_command_outcomes o, "
                "jsonb_array_elements(o.outcome->'events') e WHERE o.outcome->>'aggregate_id' = %s",
                (trail_rx,)).fetchall():
            by.setdefault(event_type, set()).add(command_id.split(":", 1)[0])
        assert "router" in by.get("PrescriptionRouted", set()), by
        assert "settle" in by.get("PrescriptionSettled", set()), by

        from projections.traceability import queries

        def projected() -> list[str] | None:
            steps = [s.step for s in queries.trail(conn, "traceability", trail_rx)]
            conn.rollback()
            return steps if "PrescriptionSettled" in steps else None

        steps = _eventually("the traceability projection to show the settlement", projected)
    assert steps[0] == "FollowUpVisitRecorded" and "PrescriptionDispensed" in steps, steps

    # the gateway published to the pharmacies' feed topics: the trail's pharmacy got its prescription
    pharmacy = next(e["data"]["dispenser_id"] for e in body["events"] if e["event_type"] == "PrescriptionRouted")
    messages = _feed_messages(f"127.0.0.1:{stack['RXTRAIL_KAFKA_PORT']}", topics.pharmacy_topic(pharmacy), want=1)
    assert trail_rx in {m.key.decode() for m in messages}

    verify = subprocess.run([*CLI, "verify"], env=stack, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "INTACT" in verify.stdout

    again = subprocess.run([sys.executable, "-c", f"from services.simulate import plan_day; "
                            f"a, b = plan_day({SEED}, {SIZE}), plan_day({SEED}, {SIZE}); "
                            "assert a.patients == b.patients and [r.__dict__ for r in a.prescriptions] == "
                            "[r.__dict__ for r in b.prescriptions]"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # the same seed gives the same day
