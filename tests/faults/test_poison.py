"""Hostile input: one request or one Kafka message must never stop a stage. Over HTTP a value the storage or the
broker cannot carry is refused at the edge (422, nothing stored); on rx.inbound.<hospital> a message the intake
cannot process is rejected or dead-lettered and the intake keeps consuming (a good message after it is applied)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from events import topics
from services import simulate
from services.infra.kafka_admin import ensure_topics
from tests.faults.harness import (
    Cast,
    FaultStack,
    Traffic,
    check_end_state,
    domain_problems,
    insure_patients,
    register_cast,
    say,
    sign,
    visit_body,
)

pytestmark = pytest.mark.faults


def _events(stack: FaultStack) -> int:
    return int(domain_problems(stack.database_url)[1].get("events", 0))


def _quiet_events(stack: FaultStack, quiet_s: float = 3.0, timeout: float = 30.0) -> int:
    """The event count once nothing has been recorded for ``quiet_s`` (the workers' follow-ups of the good visit,
    e.g. its ConsultationSettled, are in), so what the poison requests stored is counted alone."""
    deadline = time.monotonic() + timeout
    count, since = _events(stack), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _events(stack)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return count


def _post(http: httpx.Client, cast: Cast, party: str, path: str, body: Any) -> httpx.Response:
    return http.post(path, content=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {cast.keys[party]}", "Content-Type": "application/json"})


def test_poison_http_refused_and_platform_keeps_going(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack()
    cast = register_cast(stack)
    patients = insure_patients(stack, 2)
    h = f"hospital:{cast.hospital}"
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=stack.api_url, timeout=60) as http:
        good_visit = visit_body(cast, patients[0])
        r = _post(http, cast, h, "/hospital/visits", good_visit)
        assert r.status_code == 201, r.text
        encounter = r.json()["aggregate_id"]
        before = _quiet_events(stack)

        fee = visit_body(cast, patients[1])
        fee["consultation_fee"] = "99999999999999.99"
        seen["consultation_fee 99999999999999.99"] = _post(http, cast, h, "/hospital/visits", fee).status_code

        # signed as the valid body, then poisoned (no signature can be made over an out-of-bounds body)
        qty = sign(cast, simulate.prescription_body(encounter), good_visit)
        qty["items"][0]["quantity"] = 2**31
        seen["quantity 2**31"] = _post(http, cast, h, "/hospital/prescriptions", qty).status_code

        long_name = sign(cast, simulate.prescription_body(encounter), good_visit)
        long_name["items"][0]["name"] = "x" * 1_100_000
        seen["item name 1.1 MB"] = _post(http, cast, h, "/hospital/prescriptions", long_name).status_code
    stored = _quiet_events(stack) - before
    say(f"poison over HTTP answered {seen}; events stored by them: {stored}")
    traffic = Traffic(stack, cast, clients=2, max_journeys=6, max_seconds=40, route_wait_s=20).start()
    stats = traffic.join(90)
    say(stats.line())
    state = check_end_state(stack, settle_timeout=45, extra={"poison_http": seen, "stored_by_poison": stored})
    assert seen == dict.fromkeys(seen, 422), seen
    assert stored == 0
    assert stats.journeys_done == stats.journeys_started, stats.errors[:3]
    assert state.ok, state.report()


async def _send(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> list[str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent = []
    try:
        for topic, key, value in messages:
            try:
                await (await producer.send(topic, value=value, key=key))
                sent.append(f"{key.decode()}: sent ({len(value):,} bytes)")
            except Exception as exc:  # the broker may refuse the 1.5 MB one itself: that is a refusal too
                sent.append(f"{key.decode()}: broker refused ({exc.__class__.__name__})")
    finally:
        await producer.stop()
    return sent


def test_poison_inbound_does_not_stop_intake(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack()
    cast = register_cast(stack)
    patients = insure_patients(stack, 2)
    topic = topics.inbound_topic(cast.hospital)
    ensure_topics(stack.bootstrap, [topic], 3)
    stack.kill("intake")  # restarted by the watcher: subscribes with the new topic in its metadata
    time.sleep(8)
    visits_before = int(domain_problems(stack.database_url)[1].get("visits", 0))
    good = {"kind": "record_follow_up_visit", "command_id": "good-after-poison", "hospital_id": cast.hospital,
            **visit_body(cast, patients[0], visit_ref="V-after-poison")}
    big = {"kind": "record_follow_up_visit", "command_id": "big", "hospital_id": cast.hospital,
           **visit_body(cast, patients[1], visit_ref="V-big")}
    big["diagnosis_name"] = "y" * 1_500_000
    sent = asyncio.run(_send(stack.bootstrap, [
        (topic, b"nested", b"[" * 100_000 + b"]" * 100_000),
        (topic, b"big", json.dumps(big).encode()),
        (topic, b"good", json.dumps(good).encode()),
    ]))
    say(f"inbound poison: {sent}")
    deadline = time.monotonic() + 45
    applied = False
    while time.monotonic() < deadline and not applied:
        applied = int(domain_problems(stack.database_url)[1].get("visits", 0)) > visits_before
        time.sleep(1)
    say(f"good message after the poison applied: {applied}; intake restarts by itself: "
        f"{stack.crashes().get('intake', 0)}")
    assert applied, f"the intake never applied the good message after {sent}"
