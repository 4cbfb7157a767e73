"""End to end on the real path: HTTP (and then Kafka intake) → event store → relay → Kafka → settlement worker and
pharmacy-settlement projection → back to HTTP (feed, trail, statements).

issue → approve → route (the patient's choice, by the hospital) → the pharmacy sees it in its feed → accept →
dispense (two partial dispenses) → arrange delivery → delivered → settled by the settlement worker → the
regulator's trail shows every step, verified. The same prescription journey sent as Kafka commands gives the
same trail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from events import topics
from services.api import create_app
from services.application import RxTrail
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import Settings
from services.workers.intake import create_intake
from tests.support import unique_id, unique_topic, wait_until_async
from tests.support.flows import (
    Actors,
    Cast,
    api_keys,
    dispense_body,
    prescription_body,
    visit_body,
)
from tests.support.read_side import wait_caught_up

STEPS = ["FollowUpVisitRecorded", "PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted",
         "PrescriptionAccepted", "PrescriptionDispensed", "PrescriptionDispensed", "DeliveryArranged",
         "PrescriptionDelivered", "PrescriptionSettled"]


@pytest.fixture(scope="module")
def actors(database: str, application: RxTrail, cast: Cast) -> Iterator[Actors]:
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"agency:{cast.region}", "regulator:REG-E2E")
    with TestClient(create_app(Settings(database_url=database), application=application)) as client:
        yield Actors(client, cast, {**keys, "db": database})


@pytest.fixture
async def pipeline(database: str, kafka_bootstrap: str, application: RxTrail) -> AsyncIterator[dict[str, Any]]:
    """The relay, the settlement worker, the pharmacy-settlement projection and the read side the API serves from
    (traceability projection, gateway) on an events topic of this test."""
    from projections.base import ProjectionConsumer
    from projections.pharmacy_settlement.projection import PharmacySettlement
    from projections.traceability.projection import Traceability
    from services.bootstrap import build_settlement, gateway_config
    from services.relay.core import run_relay
    from services.workers.gateway import run_gateway

    events_topic = unique_topic("e2e.events")
    await ensure_topics_async(kafka_bootstrap, [events_topic, topics.DLQ], 3)
    stop = asyncio.Event()
    settlement = build_settlement(Settings(database_url=database, kafka_bootstrap=kafka_bootstrap,
                                           events_topic=events_topic), application, group_id=unique_id("settle"))
    settlement.session_timeout_ms = 6000
    statements = ProjectionConsumer(PharmacySettlement(), database, kafka_bootstrap, topic=events_topic,
                                    group_id=unique_id("pharmacy-settlement"))
    trails = ProjectionConsumer(Traceability(), database, kafka_bootstrap, topic=events_topic,
                                group_id=unique_id("traceability"))
    feeds = gateway_config(Settings(database_url=database, kafka_bootstrap=kafka_bootstrap, events_topic=events_topic,
                                    partitions=3), group_id=unique_id("gateway"),
                           feed_prefix=unique_topic("e2e.pharmacy") + ".")
    tasks = [
        asyncio.create_task(run_relay((database, kafka_bootstrap), stop, topic=events_topic, partitions=3,
                                      poll_interval_s=0.2, name=unique_id("relay"))),
        asyncio.create_task(settlement.run(stop)),
        asyncio.create_task(statements.run(stop)),
        asyncio.create_task(trails.run(stop)),
        asyncio.create_task(run_gateway(feeds, stop)),
    ]
    yield {"topic": events_topic, "tasks": tasks, "settlement": settlement, "statements": statements}
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def eventually(check: Callable[[], Any], timeout_s: float = 60) -> Any:
    return await wait_until_async(check, timeout=timeout_s, interval=0.2, in_thread=True)


def trail_steps(actors: Actors, rx: str) -> list[str]:
    """The trail's visit and prescription steps (the consultation's settlement interleaves by timing)."""
    r = actors.get(actors.regulator, f"/regulator/prescriptions/{rx}/trail")
    assert r.status_code == 200, r.text
    trail = r.json()
    assert trail["verification"]["verified"] is True
    assert [e["event_type"] for e in trail["events"] if e["aggregate_type"] == "Encounter"] == [
        "FollowUpVisitRecorded", "ConsultationSettled"]
    assert sum(e["event_type"] == "TraceCodeSold" for e in trail["events"]) == 4
    assert [e["at"] for e in trail["events"]] == sorted(e["at"] for e in trail["events"])
    return [e["event_type"] for e in trail["events"] if e["aggregate_type"] != "TraceCode"
            and e["event_type"] != "ConsultationSettled"]


def feed_until(actors: Actors, rx: str, cursor: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for _ in range(50):
        page = actors.get(actors.pharmacy, "/pharmacy/feed", after=cursor, limit=500, wait=2).json()
        seen += [i for i in page["items"] if i["prescription_id"] == rx]
        cursor = page["cursor"]
        if any(i["event_type"] == "PrescriptionRouted" for i in seen):
            return seen
    raise AssertionError("the routed prescription never reached the pharmacy feed")


async def test_http_journey_is_traced_and_settled(actors: Actors, pipeline: dict[str, Any]) -> None:
    a = actors
    visit = a.post(a.hospital, "/hospital/visits", visit_body(a.cast), key="v1")
    assert visit.status_code == 201, visit.text
    issued = a.post(a.hospital, "/hospital/prescriptions", prescription_body(visit.json()["aggregate_id"], cast=a.cast), key="p1")
    assert issued.status_code == 201, issued.text
    rx = issued.json()["aggregate_id"]
    await asyncio.to_thread(wait_caught_up, a.keys["db"])  # the queue is read side: let it catch up
    assert rx in {i["prescription_id"] for i in a.get(a.pharmacist, "/pharmacist/review-queue", limit=500)
                  .json()["items"]}
    assert a.post(a.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {}).status_code == 200
    assert a.post(a.hospital, f"/hospital/prescriptions/{rx}/routing",
                  {"pharmacy_id": a.cast.pharmacy, "basis": "patient_choice"}).status_code == 200
    feed = await asyncio.to_thread(feed_until, a, rx, 0)
    assert feed[0]["prescription"]["items"][0]["quantity"] == 4
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/acceptance", {}).status_code == 200
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(1)).status_code == 201
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(3)).status_code == 201
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/delivery", {
        "delivery_enterprise_id": "DE-1", "delivery_fee": "6.00", "fee_disclosed": True}).status_code == 200
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/delivered",
                  {"delivery_enterprise_id": "DE-1"}).status_code == 200

    try:
        await eventually(lambda: a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()["status"] == "settled")
    except AssertionError:
        import psycopg

        with psycopg.connect(a.keys["db"]) as conn:
            rows = conn.execute("SELECT command_id, outcome::text FROM rxtrail_command_outcomes "
                                "WHERE command_id LIKE 'settle%'").fetchall()
            rows += conn.execute("SELECT * FROM settlement_worker.skipped").fetchall()
        raise AssertionError(f"not settled; worker {pipeline['settlement'].stats}; outcomes {rows}; "
                             f"tasks {[t.done() and t.exception() for t in pipeline['tasks']]}") from None
    await asyncio.to_thread(wait_caught_up, a.keys["db"])  # the trail is read side: let it catch up
    assert trail_steps(a, rx) == STEPS
    statement = await eventually(lambda: [s for s in a.get(a.agency, "/agency/statements").json()["items"]
                                          if s["party_id"] == a.cast.pharmacy])
    assert statement[0]["party_kind"] == "pharmacy" and statement[0]["figures"]["prescriptions"] == 1


async def test_kafka_journey_gives_the_same_trail(database: str, kafka_bootstrap: str, actors: Actors,
                                                  application: RxTrail, pipeline: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    a, cast = actors, actors.cast
    hospital_topic = topics.inbound_topic(cast.hospital)
    await ensure_topics_async(kafka_bootstrap, [hospital_topic, topics.INBOUND_PHARMACY, topics.REJECTIONS], 3)
    intake = create_intake(application, kafka_bootstrap,
                           group_id=unique_id("intake"), session_timeout_ms=6000, heartbeat_interval_ms=1000,
                           pattern=rf"rx\.inbound\.({cast.hospital}|pharmacy)")
    await intake.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()

    async def send(topic: str, body: dict[str, Any], key: str) -> None:
        # commands that depend on each other share a key: one partition keeps their order
        await producer.send_and_wait(topic, json.dumps(body).encode(), key=key.encode())

    try:
        visit_ref, rx_ref = unique_id("V"), unique_id("RX")
        from services.application.ids import encounter_id_for, prescription_id_for

        encounter = str(encounter_id_for(cast.hospital, visit_ref))
        rx = str(prescription_id_for(cast.hospital, rx_ref))
        await send(hospital_topic, {"kind": "record_follow_up_visit", "command_id": "k-v", "hospital_id": cast.hospital,
                                    **visit_body(cast, visit_ref=visit_ref)}, visit_ref)
        await send(hospital_topic, {"kind": "issue_prescription", "command_id": "k-p", "hospital_id": cast.hospital,
                                    **prescription_body(encounter, cast=cast, prescription_ref=rx_ref)}, visit_ref)
        try:
            await eventually(lambda: a.get(a.pharmacist, f"/pharmacist/prescriptions/{rx}").status_code == 200, 30)
        except AssertionError:
            raise AssertionError(f"intake {intake.intake.stats}") from None
        assert a.post(a.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {}).status_code == 200
        await send(hospital_topic, {"kind": "route_prescription", "command_id": "k-r", "prescription_id": rx,
                                    "pharmacy_id": cast.pharmacy, "basis": "patient_choice"}, visit_ref)
        await asyncio.to_thread(feed_until, a, rx, 0)  # the intake shares this event loop: never block it
        pharmacy = {"prescription_id": rx}
        await send(topics.INBOUND_PHARMACY, {"kind": "accept_prescription", "command_id": "k-a", **pharmacy,
                                             "dispenser_id": cast.pharmacy}, rx)
        for n, qty in (("1", 1), ("2", 3)):
            await send(topics.INBOUND_PHARMACY, {"kind": "dispense_prescription", "command_id": f"k-d{n}", **pharmacy,
                                                 "dispenser_id": cast.pharmacy, **dispense_body(qty)}, rx)
        await eventually(lambda: a.get(a.pharmacy, f"/pharmacy/prescriptions/{rx}").json()["status"] == "dispensed")
        headers = [("pharmacy_id", cast.pharmacy.encode())]
        for body in ({"kind": "arrange_delivery", "command_id": "k-ad", **pharmacy, "delivery_enterprise_id": "DE-1",
                      "delivery_fee": "6.00", "fee_disclosed": True},
                     {"kind": "mark_delivered", "command_id": "k-md", **pharmacy, "delivery_enterprise_id": "DE-1"}):
            await producer.send_and_wait(topics.INBOUND_PHARMACY, json.dumps(body).encode(),
                                         key=rx.encode(), headers=headers)
        await eventually(lambda: a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()["status"] == "settled")
        await asyncio.to_thread(wait_caught_up, a.keys["db"])  # the trail is read side: let it catch up
        assert trail_steps(a, rx) == STEPS
        # (other tests' messages on the shared rx.inbound.pharmacy may be refused here: they name other databases)
        ours = [f"hospital:{cast.hospital}:k-{n}" for n in ("v", "p", "r")] + [
            f"pharmacy:{cast.pharmacy}:k-{n}" for n in ("a", "d1", "d2", "ad", "md")]
        outcomes = application.recorded_outcomes(ours)
        assert len(outcomes) == len(ours) and all(o.ok for o in outcomes.values())
    finally:
        await producer.stop()
        await intake.stop()
