"""Pharmacy feeds on real PostgreSQL + Kafka: commands → relay → router → gateway → rx.pharmacy.<id>.

Each feed holds only its pharmacy's prescriptions, with the dispensing details and the patient's pseudonym
only; later changes (cancellation, return, withdrawn dispense, expiry) reach the pharmacy concerned; a
redelivered batch publishes nothing new.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import psycopg

from events.contracts import FeedMessage
from events.prescription import DispensedLine, PrescriptionIssued, RoutingBasis
from services.application import commands as c
from services.bootstrap import build_application
from services.domain.clock import FixedClock
from services.infra.settings import Settings
from services.workers.gateway import run_gateway
from tests.support import unique_id
from tests.support.cast import AMLODIPINE, METFORMIN, VITAMIN, Cast, ok
from tests.support.kafka import header, read_all, topic_exists
from tests.support.pipeline import (
    SECRET,
    Pipeline,
    feed_messages,
    item,
    kinds,
    new_pipeline,
    routes,
    stream,
    wait_consumed,
    wait_feed,
    wait_for,
    wait_relayed,
    wait_routed,
)

DRUGS = (METFORMIN, AMLODIPINE, VITAMIN)


async def _three_pharmacies(p: Pipeline, cast: Cast) -> list[str]:
    ids = [unique_id("PH") for _ in range(3)]
    for pharmacy_id in ids:
        await p.call(cast.designate, pharmacy_id, drugs=DRUGS)
    return ids


async def test_each_feed_holds_only_its_own_prescriptions(make_database: Callable[[], str],
                                                          kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start()
    try:
        cast = await p.call(p.cast().register)
        pharmacies = await _three_pharmacies(p, cast)
        idle = await p.call(cast.designate, unique_id("PH"))  # no list, never chosen: gets nothing
        choices = [pharmacies[0], pharmacies[1], pharmacies[2], pharmacies[0], None, None, None]
        rxs = [await p.call(cast.approved, item(METFORMIN), item(AMLODIPINE, quantity=3), preferred=choice)
               for choice in choices]
        expected: dict[str, set[UUID]] = {pharmacy_id: set() for pharmacy_id in pharmacies}
        for rx in rxs:
            (route,) = await wait_routed(p, rx)
            expected[route.dispenser_id].add(rx)
        for pharmacy_id, mine in expected.items():
            records = await wait_feed(p, pharmacy_id, lambda ms, mine=mine: {m.prescription_id for m in ms} >= mine)
            messages = feed_messages(records)
            assert {m.prescription_id for m in messages} == mine, pharmacy_id
            assert all(m.pharmacy_id == pharmacy_id and m.message_type == "routed" for m in messages)
            for record, message in zip(records, messages, strict=True):
                assert record.key == str(message.prescription_id).encode()
                assert header(record, "event_id") == message.event_id
                assert header(record, "message_type") == "routed"
                _check_routed_message(p, cast, record.value, message.prescription_id)
        assert not await topic_exists(p.bootstrap, p.feed(idle))
    finally:
        await p.close()
        p.app.close()


def _check_routed_message(p: Pipeline, cast: Cast, raw: bytes, rx: UUID) -> None:
    issued = stream(p.app, rx)[0]
    assert isinstance(issued, PrescriptionIssued)
    (route,) = routes(p.app, rx)
    message = FeedMessage.model_validate_json(raw)
    shown = message.prescription
    assert shown is not None and message.basis in (RoutingBasis.PATIENT_CHOICE, RoutingBasis.ROUTING_RULE)
    assert message.basis == route.basis
    assert shown.patient_ref == issued.patient_ref == p.app.vault.patient_ref(cast.national_ids[rx])
    assert (shown.hospital_id, shown.diagnosis_code, shown.valid_until, shown.business_type) == (
        issued.hospital_id, issued.diagnosis_code, issued.valid_until, issued.business_type)
    assert [(i.drug_code, i.name, i.spec, i.quantity, i.days_supply, i.unit_price) for i in shown.items] == [
        (i.drug_code, i.name, i.spec, i.quantity, i.days_supply, i.unit_price) for i in issued.items]
    text = raw.decode()
    for secret in ("patient_sealed", cast.national_ids[rx], "张三", "13800138000", "physician", "insured"):
        assert secret not in text, secret


async def test_later_changes_reach_the_pharmacy_concerned(make_database: Callable[[], str],
                                                          kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start()
    try:
        cast = await p.call(p.cast().register)
        first = (await _three_pharmacies(p, cast))[0]
        cancelled, returned, withdrawn, expired = [await p.call(cast.approved, item(METFORMIN), preferred=first)
                                                   for _ in range(4)]
        for rx in (cancelled, returned, withdrawn, expired):
            await wait_routed(p, rx)
        ok(await p.call(p.app.handle, c.CancelPrescription(prescription_id=cancelled, reason="patient request",
                                                           cancelled_by=cast.hospital)))
        ok(await p.call(p.app.handle, c.ReturnPrescription(prescription_id=returned, dispenser_id=first,
                                                           reason="out of stock")))
        ok(await p.call(p.app.handle, c.AcceptPrescription(prescription_id=withdrawn, dispenser_id=first)))
        codes = tuple(f"{secrets.randbelow(10**20):020d}" for _ in range(2))
        lines = (DispensedLine(drug_code=METFORMIN, quantity=2, unit_price=Decimal("12.50"), trace_codes=codes),)
        ok(await p.call(p.app.handle, c.DispensePrescription(prescription_id=withdrawn, dispenser_id=first,
                                                             lines=lines)))
        ok(await p.call(p.app.handle, c.WithdrawDispense(prescription_id=withdrawn, dispense_no=1,
                                                         reason="wrong pack")))
        later = build_application(Settings(database_url=p.database_url, pseudonym_secret=SECRET),
                                  clock=FixedClock(stream(p.app, expired)[0].timestamp + timedelta(days=4)))
        try:
            ok(await p.call(later.handle, c.ExpirePrescription(prescription_id=expired)))
        finally:
            later.close()
        rerouted = (await wait_routed(p, returned, n=2))[1].dispenser_id
        assert rerouted != first

        records = await wait_feed(p, first, lambda ms: len(ms) >= 8)
        messages = feed_messages(records)
        assert kinds(messages, cancelled) == ["routed", "cancelled"]
        assert kinds(messages, returned) == ["routed", "returned"]
        assert kinds(messages, withdrawn) == ["routed", "dispense_withdrawn"]
        assert kinds(messages, expired) == ["routed", "expired"]
        by_type = {m.message_type: m for m in messages}
        assert by_type["cancelled"].reason == "patient request" and by_type["cancelled"].remainder_only is False
        assert by_type["dispense_withdrawn"].dispense_no == 1
        assert all(m.prescription is None for m in messages if m.message_type != "routed")
        elsewhere = feed_messages(await wait_feed(p, rerouted, lambda ms: returned in {m.prescription_id for m in ms}))
        assert [(m.prescription_id, m.message_type) for m in elsewhere] == [(returned, "routed")]
    finally:
        await p.close()
        p.app.close()


async def test_redelivery_publishes_nothing_new(make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start()
    try:
        cast = await p.call(p.cast().register)
        pharmacy_id = (await _three_pharmacies(p, cast))[0]
        rxs = [await p.call(cast.approved, item(METFORMIN), preferred=pharmacy_id) for _ in range(3)]
        await wait_routed(p, rxs[0])
        ok(await p.call(p.app.handle, c.CancelPrescription(prescription_id=rxs[0], reason="duplicate",
                                                           cancelled_by=cast.hospital)))
        await wait_feed(p, pharmacy_id, lambda ms: len(ms) >= 4)
        assert p.gateway is not None
        await wait_for(lambda: p.gateway.stats.recorded >= 4, p, what="the gateway's commit")  # type: ignore[union-attr]
        await wait_relayed(p)
        await wait_consumed(p, "gateway")  # every event applied and its offset stored
    finally:
        await p.close()
    try:
        before = await read_all(p.bootstrap, p.feed(pharmacy_id))
        assert sorted(kinds(feed_messages(before), rxs[0])) == ["cancelled", "routed"]
        # a fresh consumer group: the loop seeks to the offsets stored with the state, nothing is applied again
        same = await run_gateway(p.gateway_config(), asyncio.Event(), idle_timeout_s=3)
        assert same.stats.recorded == 0
        # offsets and per-aggregate versions wiped: every event is applied again, the published record holds
        with psycopg.connect(p.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM gateway.kafka_offsets")
            conn.execute("DELETE FROM gateway.stream_versions")
        again = await run_gateway(p.gateway_config(), asyncio.Event(), idle_timeout_s=3)
        assert again.stats.recorded == 0 and again.stats.replayed >= 4
        after = await read_all(p.bootstrap, p.feed(pharmacy_id))
        assert [(r.key, r.value) for r in after] == [(r.key, r.value) for r in before]
    finally:
        p.app.close()
