"""The whole stack as `rxtrail up` launches it, driven by `rxtrail demo`.

`rxtrail up --detach` in a temporary data dir on free ports; `rxtrail demo --prescriptions 5`; then the effects
are checked where each service leaves them: the router's and the settlement worker's commands in the event
store (seen through the regulator's HTTP trail), the traceability projection's steps, the gateway's messages on
the pharmacy's feed topic, and `rxtrail verify`. `rxtrail down` always runs.
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


def test_demo_drives_every_service_of_the_stack(stack: dict[str, str]) -> None:
    started = time.monotonic()
    demo = subprocess.run([*CLI, "demo", "--prescriptions", "5"], env=stack, capture_output=True, text=True,
                          timeout=120)
    assert demo.returncode == 0, f"demo failed:\n{demo.stdout}\n{demo.stderr}"
    line = re.search(r"^demo run=(\S+) hospital=(\S+) pharmacist=(\S+) pharmacies=(\S+) trail=(\S+)$",
                     demo.stdout, re.MULTILINE)
    assert line, demo.stdout
    _run, hospital, _pharmacist, pharmacies, trail_rx = line.groups()
    assert "R4" in demo.stdout and "refused" in demo.stdout
    assert time.monotonic() - started < 60

    database_url = _database_url(stack)
    api = f"http://127.0.0.1:{stack['RXTRAIL_API_PORT']}"
    from services.adapters.api_keys import create_key, ensure_schema, parse_party

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        regulator = create_key(conn, parse_party("regulator:REG-E2E-DEMO"), datetime.now(UTC), label="e2e")
        hospital_key = create_key(conn, parse_party(f"hospital:{hospital}"), datetime.now(UTC), label="e2e")

    with httpx.Client(base_url=api, timeout=30) as http:
        def listed() -> dict[str, str] | None:  # lists are read side: wait until it lists the demo's five
            r = http.get("/hospital/prescriptions", params={"limit": 500},
                         headers={"Authorization": f"Bearer {hospital_key}"})
            assert r.status_code == 200, r.text
            found = {str(p["prescription_id"]): p["status"] for p in r.json()["items"]}
            return found if len(found) >= 5 else None

        statuses = _eventually("the hospital's list to show the demo's prescriptions", listed)
        assert sorted(statuses.values()) == ["rejected", "settled", "settled", "settled", "settled"], statuses
        settled = sorted(rx for rx, s in statuses.items() if s == "settled")
        assert trail_rx in settled

        trails: dict[str, list[dict[str, Any]]] = {}
        for rx in settled:
            def traced(rx: str = rx) -> Any:  # trails are read side: wait until it shows the settlement
                r = http.get(f"/regulator/prescriptions/{rx}/trail", headers={"Authorization": f"Bearer {regulator}"})
                assert r.status_code == 200, r.text
                body = r.json()
                return body if any(e["event_type"] == "PrescriptionSettled" for e in body["events"]) else None

            body = _eventually(f"the trail of {rx} to show its settlement", traced)
            assert body["verification"]["verified"] is True
            trails[rx] = body["events"]
    for rx, events in trails.items():
        types = [e["event_type"] for e in events if e["aggregate_type"] == "Prescription"]
        assert types[:4] == ["PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
                             "PrescriptionAccepted"], (rx, types)
        assert types[-1] == "PrescriptionSettled", (rx, types)
    bases = {next(e["data"]["basis"] for e in ev if e["event_type"] == "PrescriptionRouted") for ev in trails.values()}
    assert bases == {"patient_choice", "routing_rule"}, bases
    partial = [e for e in trails[trail_rx] if e["event_type"] == "PrescriptionDispensed"]
    assert len(partial) == 2  # the demo's partial dispense and its completion

    with psycopg.connect(database_url) as conn:
        # who recorded them: the router's commands are keyed "router:<event id>", the settlement worker's
        # "settle:<event id>" (no HTTP caller can use those ids: API command ids carry the party)
        by: dict[str, set[str]] = {}
        for command_id, aggregate_id, event_type in conn.execute(
                "SELECT o.command_id, e->>'aggregate_id', e->>'event_type' FROM rxtrail_command_outcomes o, "
                "jsonb_array_elements(o.outcome->'events') e WHERE o.outcome->>'aggregate_id' = ANY(%s)",
                (settled,)).fetchall():
            by.setdefault(event_type, set()).add(command_id.split(":", 1)[0] + ":" + aggregate_id)
        assert {f"router:{rx}" for rx in settled} <= by.get("PrescriptionRouted", set()), by
        assert {f"settle:{rx}" for rx in settled} <= by.get("PrescriptionSettled", set()), by

        # the traceability projection has the steps (it may trail the write side by a moment)
        from projections.traceability import queries

        def projected() -> list[str] | None:
            steps = [s.step for s in queries.trail(conn, "traceability", trail_rx)]
            conn.rollback()
            return steps if "PrescriptionSettled" in steps else None

        steps = _eventually("the traceability projection to show the settlement", projected)
    assert [s for s in steps if s != "ConsultationSettled"] == [
        "FollowUpVisitRecorded", "PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
        "PrescriptionAccepted", "PrescriptionDispensed", "PrescriptionDispensed", "DeliveryArranged",
        "PrescriptionDelivered", "PrescriptionSettled"], steps

    # the gateway published the demo's prescriptions to the patient-chosen pharmacy's feed topic
    chosen = pharmacies.split(",")[0]
    messages = _feed_messages(f"127.0.0.1:{stack['RXTRAIL_KAFKA_PORT']}", topics.pharmacy_topic(chosen), want=1)
    assert messages, f"nothing on {topics.pharmacy_topic(chosen)}"
    assert {m.key.decode() for m in messages} <= set(settled)

    verify = subprocess.run([*CLI, "verify"], env=stack, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "INTACT" in verify.stdout
