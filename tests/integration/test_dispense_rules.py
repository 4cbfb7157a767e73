"""Issue 13 items 2-4 over HTTP against the real PostgreSQL (and Kafka for the settlement and the feed): R7 caps and
payment standards from the registry, R8 one code per pack (split packs, returned packs), a hospital dispensing its own
prescriptions, R19 extension and expiry seen in the pharmacy's feed, the patient's choice of pharmacy, and money
validated at the edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from events import topics
from events.base import CatalogCategory
from events.prescription import PrescriptionDispensed
from services.api import create_app
from services.application import RxTrail
from services.application import commands as c
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import Settings
from tests.support import unique_id, unique_topic, wait_until_async
from tests.support.cast import new_national_id
from tests.support.flows import (
    METFORMIN,
    Actors,
    Cast,
    api_keys,
    dispense_body,
    prescription_body,
    register_cast,
    sign_body,
    trace_codes,
)

CAP = Decimal("11.25")  # the reference cap of metformin XA10BAA001A001030101 in the registry


@pytest.fixture(scope="module")
def cast(application: RxTrail) -> Cast:
    """The standard cast, and the registry fact these tests rely on, stated here: the reference metformin
    XA10BAA001A001030101 in the catalog with the region's cap and payment standard of 11.25 (as the authority
    seeds it from services/reference)."""
    registered = register_cast(application)
    by = {"changed_by": f"agency:{registered.region}", "effective_from": date(2024, 1, 1)}
    facts = [c.ListDrug(changed_by="regulator:REG-CATALOG", effective_from=date(2024, 1, 1), drug_code=METFORMIN,
                        name="metformin", category=CatalogCategory.A, chronic_list=True),
             c.SetPriceCap(**by, drug_code=METFORMIN, region=registered.region, cap=CAP),
             c.SetPaymentStandard(**by, drug_code=METFORMIN, region=registered.region, amount=CAP)]
    for command in facts:
        outcome = application.handle(command)
        assert outcome.ok or outcome.error == "AlreadyExists", outcome
    return registered


def _visit_body(cast: Cast, national_id: str) -> dict[str, Any]:
    """A follow-up visit at the cast's hospital of ``national_id`` (registered as insured first), with no registry
    facts in the request (R17: the platform reads them) and a fee below any region's consultation price (R15)."""
    if national_id != cast.national_id and national_id not in getattr(cast, "insured", ()):
        cast.insure(national_id)
    return {"visit_ref": unique_id("V"), "patient": {"national_id": national_id, "name": "张三"},
            "physician_id": cast.physician, "physician_signature": f"sig:{cast.physician}",
            "diagnosis_code": "E11.9", "diagnosis_name": "type 2 diabetes", "original_diagnosis_code": "E11.9",
            "original_diagnosis_date": (date.today() - timedelta(days=30)).isoformat(),
            "original_institution_id": f"P-{cast.hospital}", "verification_method": "e_voucher",
            "consultation_fee": "5.00"}


def _visit(a: Actors) -> str:
    """A visit of a newly insured patient (R17: insurance from the registry; one patient per visit so R4's running
    supply per patient never adds up across these tests)."""
    r = a.post(a.hospital, "/hospital/visits", _visit_body(a.cast, new_national_id(a.cast.region)))
    assert r.status_code == 201, r.text
    return str(r.json()["aggregate_id"])


def _approved(a: Actors, quantity: int = 4) -> str:
    r = a.post(a.hospital, "/hospital/prescriptions", prescription_body(_visit(a), cast=a.cast, quantity=quantity))
    assert r.status_code == 201, r.text
    rx = str(r.json()["aggregate_id"])
    assert a.post(a.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {}).status_code == 200
    return rx


def _own_accepted(a: Actors) -> str:
    """Approved, routed by the hospital to itself (pharmacy_id null) and accepted by it, over HTTP."""
    rx = _approved(a)
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/routing", {"pharmacy_id": None, "basis": "routing_rule"})
    assert r.status_code == 200, r.text
    assert a.post(a.hospital, f"/hospital/prescriptions/{rx}/acceptance", {}).status_code == 200
    return rx


@pytest.fixture(scope="module")
def actors(database: str, application: RxTrail, cast: Cast) -> Iterator[Actors]:
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"pharmacy:{cast.other_pharmacy}", f"agency:{cast.region}",
                    "regulator:REG-DISPENSE")
    with TestClient(create_app(Settings(database_url=database), application=application)) as client:
        yield Actors(client, cast, keys)


def _dispensed(application: RxTrail, rx: str) -> PrescriptionDispensed:
    return [e for e in application.history(UUID(rx)) if isinstance(e, PrescriptionDispensed)][-1]


def _accepted(a: Actors, quantity: int) -> str:
    """A prescription of ``quantity`` packs of metformin routed to the cast's pharmacy and accepted."""
    rx = _approved(a, quantity)
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/routing",
               {"pharmacy_id": a.cast.pharmacy, "basis": "patient_choice"})
    assert r.status_code == 200, r.text
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/acceptance", {}).status_code == 200
    return rx


# --- R7 ----------------------------------------------------------------------------------------------------


def test_r7_a_declared_cap_is_refused_and_the_registrys_cap_is_recorded(actors: Actors,
                                                                        application: RxTrail) -> None:
    """The issue's counter-example: 100 packs at 15.00 with ``price_cap: "15.00"``."""
    a = actors
    rx = _accepted(a, 100)
    body = dispense_body(100, unit_price="15.00")
    body["lines"][0]["price_cap"] = "15.00"
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", body)
    assert r.status_code == 409, r.text
    assert r.json()["rule"] == "R17" and r.json()["registered"] == str(CAP)
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(100, unit_price="15.00"))
    assert r.status_code == 201, r.text
    [line] = _dispensed(application, rx).lines
    assert line.price_cap == CAP and line.settlement_price <= CAP
    flags = a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()["flags"]
    assert flags == ["R7"]


def test_r7_an_internet_hospital_selling_above_its_cap_is_refused(actors: Actors) -> None:
    a = actors
    rx = _own_accepted(a)
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/dispenses", dispense_body(4, unit_price="15.00"))
    assert r.status_code == 409, r.text
    assert r.json()["rule"] == "R7" and r.json()["price_cap"] == str(CAP)
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/dispenses", dispense_body(4, unit_price="11.00"))
    assert r.status_code == 201, r.text


# --- R8 ----------------------------------------------------------------------------------------------------


def test_r8_empty_trace_codes_are_refused_and_flagged(actors: Actors) -> None:
    a = actors
    rx = _accepted(a, 4)
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(4, codes=[]))
    assert r.status_code == 409, r.text
    assert r.json()["rule"] == "R8" and "one per pack" in r.json()["reason"]
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(4, codes=trace_codes(3)))
    assert r.status_code == 409 and r.json()["rule"] == "R8", r.text
    body = a.get(a.pharmacy, f"/pharmacy/prescriptions/{rx}").json()
    assert body["status"] == "accepted" and body["flags"] == ["R8", "R8"]


def test_r8_a_code_that_is_not_20_digits_is_422_naming_r8(actors: Actors) -> None:
    a = actors
    rx = _accepted(a, 1)
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(1, codes=["12345"]))
    assert r.status_code == 422, r.text
    assert r.json()["rule"] == "R8" and "20-digit" in r.json()["reason"]
    assert r.json()["fields"][0]["field"].endswith("trace_codes.0")


def test_r8_split_pack_and_pack_return_over_http(actors: Actors) -> None:
    a = actors
    first, second = _accepted(a, 1), _accepted(a, 1)
    [pack] = trace_codes(1)
    split = {"lines": [{"drug_code": METFORMIN, "quantity": 1, "unit_price": "3.50", "trace_codes": [pack],
                        "split": {"units": 10, "pack_units": 30}}]}
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{first}/dispenses", split).status_code == 201
    over = {"lines": [{**split["lines"][0], "split": {"units": 21, "pack_units": 30}}]}
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{second}/dispenses", over)
    assert r.status_code == 409 and r.json()["rule"] == "R8", r.text
    whole = dispense_body(1, codes=[pack])
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{second}/dispenses", whole)
    assert r.status_code == 409 and r.json()["rule"] == "R8", r.text
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{first}/pack-returns",
               {"trace_codes": [pack], "reason": "returned at the counter"})
    assert r.status_code == 200, r.text
    assert a.get(a.pharmacy, f"/pharmacy/prescriptions/{first}").json()["status"] == "accepted"
    assert a.post(a.pharmacy, f"/pharmacy/prescriptions/{second}/dispenses", whole).status_code == 201


# --- the hospital dispenses its own; R19 extension ----------------------------------------------------------


def test_a_hospital_dispenses_its_own_prescription_over_http(actors: Actors) -> None:
    a = actors
    rx = _own_accepted(a)
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/dispenses", dispense_body(4))
    assert r.status_code == 201, r.text
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/collection", {"verification_method": "face_recognition"})
    assert r.status_code == 200, r.text
    body = a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()
    assert body["status"] == "collected" and body["dispenser_kind"] == "hospital"
    routed_elsewhere = _accepted(a, 1)
    r = a.post(a.hospital, f"/hospital/prescriptions/{routed_elsewhere}/dispenses", dispense_body(1))
    assert r.status_code == 403, r.text


def test_r19_the_physician_extends_the_validity_at_most_three_days_after_issue_over_http(actors: Actors) -> None:
    a = actors
    rx = _approved(a)
    valid_until = datetime.fromisoformat(a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()["valid_until"])
    issued = valid_until - timedelta(days=3)  # RuleConfig.validity_days: issue() grants the longest validity
    too_late = (issued + timedelta(days=3, minutes=1)).astimezone(UTC).isoformat()
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/validity",
               {"physician_id": a.cast.physician, "valid_until": too_late, "reason": "patient travelling"})
    assert r.status_code == 409 and r.json()["rule"] == "R19", r.text
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/validity",
               {"physician_id": "DR-SOMEONE-ELSE", "valid_until": valid_until.isoformat(), "reason": "x"})
    assert r.status_code == 409 and r.json()["rule"] == "R19", r.text


# --- routing by the patient's choice ------------------------------------------------------------------------


def test_routing_patient_choice_refuses_another_pharmacy_over_http(actors: Actors) -> None:
    a = actors
    body = prescription_body(_visit(a), cast=a.cast)
    body["preferred_pharmacy_id"] = a.cast.pharmacy
    r = a.post(a.hospital, "/hospital/prescriptions", sign_body(body, a.cast))
    assert r.status_code == 201, r.text
    rx = r.json()["aggregate_id"]
    assert a.post(a.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {}).status_code == 200
    for basis in ("patient_choice", "routing_rule"):
        r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/routing",
                   {"pharmacy_id": a.cast.other_pharmacy, "basis": basis})
        assert r.status_code == 409 and r.json()["rule"] == "R17", r.text
    r = a.post(a.hospital, f"/hospital/prescriptions/{rx}/routing",
               {"pharmacy_id": a.cast.pharmacy, "basis": "patient_choice"})
    assert r.status_code == 200, r.text


# --- money at the edge --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fee", ["-10.00", "1e1", "10", "+10.00", " 10.00", "10.001"])
def test_money_consultation_fee_outside_the_pattern_is_422_naming_the_field(actors: Actors, fee: str) -> None:
    body = _visit_body(actors.cast, actors.cast.national_id)
    body["consultation_fee"] = fee
    r = actors.post(actors.hospital, "/hospital/visits", body)
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "body.consultation_fee"


@pytest.mark.parametrize("price", ["-24.50", "1e1", "24.5", 24.5, 24])
def test_money_unit_price_outside_the_pattern_is_422_naming_the_field(actors: Actors, price: Any) -> None:
    body = prescription_body(_visit(actors), cast=actors.cast)
    body["items"][0]["unit_price"] = price
    r = actors.post(actors.hospital, "/hospital/prescriptions", body)
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "body.items.0.unit_price"
    rx = _accepted(actors, 1)
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses",
                    {"lines": [{**dispense_body(1)["lines"][0], "unit_price": price}]})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "body.lines.0.unit_price", r.text


def test_money_pattern_is_declared_in_the_openapi(actors: Actors) -> None:
    schema = actors.client.get("/openapi.json").json()["components"]["schemas"]
    fee = schema["VisitCreate"]["properties"]["consultation_fee"]
    assert fee["pattern"] == r"^\d{1,5}\.\d{2}$"


# --- end to end with Kafka: the fund settles on the registry's cap; the feed shows an expiry ----------------


@pytest.fixture
async def pipeline(database: str, kafka_bootstrap: str, application: RxTrail) -> AsyncIterator[str]:
    """The relay and the settlement worker on an events topic of this test."""
    from services.bootstrap import build_settlement
    from services.relay.core import run_relay

    events_topic = unique_topic("dispense.events")
    await ensure_topics_async(kafka_bootstrap, [events_topic, topics.DLQ], 3)
    stop = asyncio.Event()
    settlement = build_settlement(Settings(database_url=database, kafka_bootstrap=kafka_bootstrap,
                                           events_topic=events_topic), application, group_id=unique_id("settle"))
    settlement.session_timeout_ms = 6000
    tasks = [
        asyncio.create_task(run_relay((database, kafka_bootstrap), stop, topic=events_topic, partitions=3,
                                      poll_interval_s=0.2, name=unique_id("relay"))),
        asyncio.create_task(settlement.run(stop)),
    ]
    yield events_topic
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def eventually(check: Callable[[], Any], timeout_s: float = 60) -> Any:
    return await wait_until_async(check, timeout=timeout_s, interval=0.2, in_thread=True)


async def test_r7_metformin_100_packs_at_15_never_settles_the_fund_on_15(actors: Actors, application: RxTrail,
                                                                        pipeline: str) -> None:
    """Metformin capped at 11.25: 100 packs sold at 15.00 by a retail pharmacy; the settlement worker's split pays
    the fund on at most 1,125.00 of the 1,500.00 (before: on 1,500.00, 728.00 instead of 428.00)."""
    a = actors
    rx = await asyncio.to_thread(_accepted, a, 100)
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(100, unit_price="15.00"))
    assert r.status_code == 201, r.text
    r = a.post(a.pharmacy, f"/pharmacy/prescriptions/{rx}/collection", {"verification_method": "e_voucher"})
    assert r.status_code == 200, r.text
    await eventually(lambda: a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()["status"] == "settled")
    body = a.get(a.hospital, f"/hospital/prescriptions/{rx}").json()
    fund, personal = Decimal(body["fund"]), Decimal(body["personal_account"])
    assert Decimal(body["total"]) == Decimal("1500.00")
    assert fund <= CAP * 100
    assert _dispensed(application, rx).lines[0].settlement_price == CAP  # the claim's base: 100 x 11.25
    assert fund + personal + Decimal(body["self_pay"]) == Decimal("1500.00")
