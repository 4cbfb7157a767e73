"""HTTP API against the real PostgreSQL: the flow, errors users can act on, idempotency, regulator records."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.api import create_app
from services.application import RxTrail
from tests.support.flows import (
    OTHER_REGION,
    Actors,
    Cast,
    api_keys,
    auth,
    dispense_body,
    prescription_body,
    trace_codes,
    visit_body,
)
from tests.support.read_side import read_side, wait_caught_up


@pytest.fixture(scope="module")
def keys(database: str, cast: Cast) -> dict[str, str]:
    return api_keys(database, f"hospital:{cast.hospital}", f"hospital:{cast.other_hospital}",
                    f"pharmacist:{cast.pharmacist}", f"pharmacist:{cast.third_party_pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"pharmacy:{cast.other_pharmacy}", f"agency:{cast.region}",
                    f"agency:{OTHER_REGION}", "regulator:REG1")


@pytest.fixture(scope="module")
def client(database: str, kafka_bootstrap: str, application: RxTrail) -> Iterator[TestClient]:
    with read_side(database, kafka_bootstrap) as settings, \
            TestClient(create_app(settings, application=application)) as client:
        yield client


@pytest.fixture(scope="module")
def caught_up(database: str) -> Callable[[], None]:
    """Wait until the read side (lists, search, flags, trails, the feed) shows every write made so far."""
    return lambda: wait_caught_up(database)


@pytest.fixture(scope="module")
def actors(client: TestClient, cast: Cast, keys: dict[str, str]) -> Actors:
    return Actors(client, cast, keys)


def test_issue_approve_route_dispense_deliver_over_http(actors: Actors, caught_up: Callable[[], None]) -> None:
    rx = actors.accepted()
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(2))
    assert r.status_code == 201, r.text
    assert actors.get(actors.pharmacy, f"/pharmacy/prescriptions/{rx}").json()["status"] == "partially_dispensed"
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(2))
    assert r.status_code == 201, r.text
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/delivery",
                    {"delivery_enterprise_id": "DE1", "delivery_fee": "8.00", "fee_disclosed": True})
    assert r.status_code == 200, r.text
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/delivered", {"delivery_enterprise_id": "DE1"})
    assert r.status_code == 200, r.text
    body = actors.get(actors.hospital, f"/hospital/prescriptions/{rx}").json()
    assert body["status"] == "delivered" and body["delivery_fee"] == "8.00" and len(body["dispenses"]) == 2
    caught_up()
    listed = actors.get(actors.hospital, "/hospital/prescriptions", limit=500).json()["items"]
    assert rx in {p["prescription_id"] for p in listed}


def test_rule_violation_is_409_with_rule_and_ids(actors: Actors) -> None:
    r = actors.post(actors.hospital, "/hospital/prescriptions", prescription_body(actors.visit(), cast=actors.cast, days=90))
    assert r.status_code == 409
    body = r.json()
    assert body["rule"] == "R4" and body["error"] == "RuleViolation" and "exceeds" in body["reason"]
    assert body["drug_code"]


def test_illegal_transition_is_409_with_state(actors: Actors) -> None:
    rx = actors.issue()
    r = actors.post(actors.hospital, f"/hospital/prescriptions/{rx}/routing",
                    {"pharmacy_id": actors.cast.pharmacy, "basis": "patient_choice"})
    assert r.status_code == 409 and r.json()["rule"] == "R3"
    rx = actors.approved()
    r = actors.post(actors.pharmacist, f"/pharmacist/prescriptions/{rx}/approval", {})
    assert r.status_code == 409
    assert r.json()["error"] == "IllegalTransition" and r.json()["state"] == "approved"


def test_invalid_input_is_422_naming_the_field(actors: Actors) -> None:
    body = prescription_body(actors.visit(), cast=actors.cast)
    body["items"][0]["quantity"] = 0
    r = actors.post(actors.hospital, "/hospital/prescriptions", body)
    assert r.status_code == 422
    assert r.json()["fields"][0]["field"] == "body.items.0.quantity"
    r = actors.post(actors.hospital, "/hospital/visits", {**visit_body(actors.cast), "consultation_fee": 20.5})
    assert r.status_code == 422 and "consultation_fee" in r.json()["reason"]
    r = actors.client.post("/hospital/visits", content=b"{not json", headers={**auth(actors.hospital),
                                                                              "content-type": "application/json"})
    assert r.status_code == 422
    assert actors.get(actors.hospital, "/hospital/prescriptions/not-a-uuid").status_code == 422


def test_unknown_ids_are_404(actors: Actors) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert actors.get(actors.hospital, f"/hospital/prescriptions/{missing}").status_code == 404
    r = actors.post(actors.hospital, "/hospital/prescriptions", prescription_body(missing, cast=actors.cast))
    assert r.status_code == 404 and r.json()["error"] == "EncounterNotFound"
    assert actors.post(actors.pharmacist, f"/pharmacist/prescriptions/{missing}/approval", {}).status_code == 404


def test_idempotency_key_returns_the_first_outcome(actors: Actors) -> None:
    rx = actors.accepted()
    body = dispense_body(4)
    first = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", body, key="disp-1")
    again = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", body, key="disp-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["events"] == again.json()["events"] and again.json()["replayed"] is True
    state = actors.get(actors.pharmacy, f"/pharmacy/prescriptions/{rx}").json()
    assert len(state["dispenses"]) == 1 and state["status"] == "dispensed"
    # a refusal is replayed too, with the same status and body
    r1 = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(1), key="disp-2")
    r2 = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(1), key="disp-2")
    assert r1.status_code == r2.status_code == 409 and r1.json() == r2.json()
    assert (r1.json()["error"], r1.json()["rule"]) == ("RuleViolation", "R13")


def test_second_sale_of_a_trace_code_is_r8(actors: Actors, caught_up: Callable[[], None]) -> None:
    codes = trace_codes(1)
    a, b = actors.accepted(), actors.accepted()
    assert actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{a}/dispenses",
                       dispense_body(1, codes)).status_code == 201
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{b}/dispenses", dispense_body(1, codes))
    assert r.status_code == 409 and r.json()["rule"] == "R8"
    caught_up()
    flags = actors.get(actors.regulator, "/regulator/flags", rule="R8", limit=500).json()["items"]
    assert b in {f["prescription_id"] for f in flags}
    found = actors.get(actors.regulator, "/regulator/prescriptions", trace_code=codes[0]).json()["items"]
    assert [p["prescription_id"] for p in found] == [a]


def test_pharmacy_feed_is_resumable_and_only_its_own(actors: Actors, caught_up: Callable[[], None]) -> None:
    caught_up()
    start = actors.get(actors.pharmacy, "/pharmacy/feed", after=0, limit=500)
    assert start.status_code == 200
    cursor = start.json()["cursor"]
    while True:  # catch up with what earlier tests routed
        page = actors.get(actors.pharmacy, "/pharmacy/feed", after=cursor, limit=500).json()
        if page["cursor"] == cursor:
            break
        cursor = page["cursor"]
    rx = actors.routed()
    caught_up()
    page = actors.get(actors.pharmacy, "/pharmacy/feed", after=cursor, wait=5).json()
    routed = [i for i in page["items"] if i["event_type"] == "PrescriptionRouted"]
    assert [i["prescription_id"] for i in routed] == [rx]
    details = routed[0]["prescription"]
    assert details["items"][0]["drug_code"] and len(details["patient_ref"]) == 64
    assert "patient_sealed" not in details and "patient_sealed" not in routed[0]["data"]
    other = actors.get(actors.other_pharmacy, "/pharmacy/feed", after=cursor).json()
    assert rx not in {i["prescription_id"] for i in other["items"]}
    assert actors.get(actors.pharmacy, "/pharmacy/feed", after=page["cursor"]).json()["items"] == []


def test_review_queue_shows_what_the_pharmacist_may_review(actors: Actors, caught_up: Callable[[], None]) -> None:
    rx = actors.issue()
    caught_up()
    queue = actors.get(actors.pharmacist, "/pharmacist/review-queue", limit=500).json()["items"]
    assert rx in {i["prescription_id"] for i in queue}
    assert actors.post(actors.pharmacist, f"/pharmacist/prescriptions/{rx}/rejection",
                       {"reasons": ["dose too high"]}).status_code == 200
    caught_up()
    queue = actors.get(actors.pharmacist, "/pharmacist/review-queue", limit=500).json()["items"]
    assert rx not in {i["prescription_id"] for i in queue}


def test_regulator_trail_and_query_record(actors: Actors, caught_up: Callable[[], None]) -> None:
    rx = actors.accepted()
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(4))
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/collection", {"verification_method": "e_voucher"})
    caught_up()
    r = actors.get(actors.regulator, f"/regulator/prescriptions/{rx}/trail")
    assert r.status_code == 200, r.text
    trail = r.json()
    kinds = [e["event_type"] for e in trail["events"]]
    assert kinds[:6] == ["FollowUpVisitRecorded", "PrescriptionIssued", "PrescriptionApproved",
                         "PrescriptionRouted", "PrescriptionAccepted", "PrescriptionDispensed"]
    assert "PrescriptionCollected" in kinds and kinds.count("TraceCodeSold") == 4
    assert trail["verification"]["verified"] is True
    recorded = actors.get(actors.regulator, "/regulator/queries", regulator_id="REG1", limit=5).json()
    assert recorded[0]["path"] == "/regulator/queries"
    assert recorded[1]["path"] == f"/regulator/prescriptions/{rx}/trail"
    assert recorded[0]["regulator_id"] == "REG1"


def test_agency_refuses_and_claws_back_in_its_region_only(actors: Actors, application: RxTrail) -> None:
    from tests.support.flows import settle_command

    rx = actors.accepted()
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(4))
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/collection", {"verification_method": "e_voucher"})
    patient = actors.get(actors.hospital, f"/hospital/prescriptions/{rx}").json()["patient_ref"]
    assert application.handle(settle_command(rx, patient)).ok
    body = {"amount": "5.00", "reason": "over-prescribed", "audit_ref": "A-1"}
    assert actors.post(actors.agency, f"/agency/prescriptions/{rx}/audit-refusals", body).status_code == 201
    assert actors.post(actors.agency, f"/agency/prescriptions/{rx}/clawbacks", body).status_code == 201
    other_region = actors.keys[f"agency:{OTHER_REGION}"]
    assert actors.post(other_region, f"/agency/prescriptions/{rx}/clawbacks", body).status_code == 404
    r = actors.post(actors.agency, f"/agency/prescriptions/{rx}/clawbacks", {**body, "amount": "100.00"})
    assert r.status_code == 422 and r.json()["error"] == "InvalidCommand"
    statements = actors.get(actors.agency, "/agency/statements")
    assert statements.status_code == 200 and statements.json()["pooling_region"] == actors.cast.region


def test_search_and_lists_come_from_the_read_side_and_page_by_cursor(actors: Actors,
                                                                      caught_up: Callable[[], None]) -> None:
    a, b = actors.routed(), actors.routed()
    patient = actors.get(actors.hospital, f"/hospital/prescriptions/{a}").json()["patient_ref"]
    caught_up()

    def search(**params: str) -> list[dict[str, object]]:
        r = actors.get(actors.regulator, "/regulator/prescriptions", limit=500, **params)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    assert {a, b} <= {p["prescription_id"] for p in search(pharmacy_id=actors.cast.pharmacy)}
    both = search(pharmacy_id=actors.cast.pharmacy, hospital_id=actors.cast.hospital, patient_ref=patient)
    assert a in {p["prescription_id"] for p in both}
    assert all(p["patient_ref"] == patient and p["hospital_id"] == actors.cast.hospital for p in both)
    assert a not in {p["prescription_id"] for p in search(pharmacy_id=actors.cast.other_pharmacy)}
    assert search(hospital_id=actors.cast.other_hospital, patient_ref=patient) == []

    everything = [p["prescription_id"] for p in actors.get(actors.hospital, "/hospital/prescriptions",
                                                           limit=500).json()["items"]]
    paged, cursor = [], 0
    while True:
        page = actors.get(actors.hospital, "/hospital/prescriptions", after=cursor, limit=2).json()
        paged += [p["prescription_id"] for p in page["items"]]
        if page["next_cursor"] is None:
            break
        assert page["next_cursor"] > cursor
        cursor = page["next_cursor"]
    assert paged == everything and {a, b} <= set(paged)
