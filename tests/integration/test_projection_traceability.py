"""Traceability projection on real Kafka + PostgreSQL: whole trails, indexes, and no personal data."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from events.envelope import event_id
from events.prescription import PrescriptionDispensed
from projections import registry
from projections.traceability import (
    by_patient,
    by_pharmacy,
    by_physician,
    by_trace_code,
    prescription,
    trail,
    visits_by_patient,
)
from tests.support.trails import Published, publish_and_build_reference

SCHEMA = "traceability"


@pytest.fixture(scope="module")
async def published(make_database: Callable[[], str], kafka_bootstrap: str) -> Published:
    return await publish_and_build_reference(make_database, kafka_bootstrap, n=12, seed=11)


async def test_trail_runs_from_the_visit_to_the_clawback(published: Published) -> None:
    t = published.trails[0]
    with psycopg.connect(published.reference_db) as conn:
        steps = trail(conn, SCHEMA, t.prescription_id)
    assert [s.step for s in steps] == [
        "FollowUpVisitRecorded", "PrescriptionIssued", "ConsultationSettled", "PrescriptionApproved",
        "PrescriptionRouted", "PrescriptionAccepted", "PrescriptionDispensed", "PrescriptionDispensed",
        "DeliveryArranged", "PrescriptionDelivered", "PrescriptionSettled", "FeesRefusedInAudit", "FeesClawedBack"]
    assert steps == sorted(steps, key=lambda s: s.at)
    visit = steps[0]
    assert visit.details["original_diagnosis_code"] == "I10" and visit.details["original_diagnosis_date"]
    assert visit.actor == t.physician_id
    assert [s.actor for s in steps[3:6]] == ["PHA-1", f"patient:{t.patient_ref}", t.pharmacy_id]
    assert steps[-3].actor == steps[-1].actor == "agency:370100"
    own = [e for e in t.events if e.originator_id in (t.prescription_id, t.encounter_id)]
    assert {s.event_id for s in steps} == {event_id(str(e.originator_id), e.originator_version) for e in own}
    assert {s.hash for s in steps} == {e.hash for e in own}
    dispensed = [s for s in steps if s.step == "PrescriptionDispensed"]
    scanned = [c for s in dispensed for line in s.details["lines"] for c in line["trace_codes"]]
    assert scanned == t.trace_codes
    assert [s.details["complete"] for s in dispensed] == [False, True]


async def test_hospital_dispensed_trail_ends_in_collection(published: Published) -> None:
    t = next(t for t in published.trails if t.pharmacy_id is None)
    with psycopg.connect(published.reference_db) as conn:
        steps = trail(conn, SCHEMA, t.prescription_id)
        summary = prescription(conn, SCHEMA, t.prescription_id)
    assert "PrescriptionCollected" in [s.step for s in steps]
    assert "DeliveryArranged" not in [s.step for s in steps]
    assert summary is not None and summary["dispenser_kind"] == "hospital" and summary["status"] == "settled"


async def test_indexes_by_patient_physician_pharmacy_and_trace_code(published: Published) -> None:
    trails = published.trails
    with psycopg.connect(published.reference_db) as conn:
        patient = trails[0].patient_ref
        got = by_patient(conn, SCHEMA, patient)
        assert {r["prescription_id"] for r in got} == {t.prescription_id for t in trails if t.patient_ref == patient}
        assert all(r["patient_ref"] == patient for r in got)
        assert len(visits_by_patient(conn, SCHEMA, patient)) == len(got)
        physician = trails[1].physician_id
        assert {r["prescription_id"] for r in by_physician(conn, SCHEMA, physician)} == {
            t.prescription_id for t in trails if t.physician_id == physician}
        pharmacy = trails[0].pharmacy_id
        assert pharmacy is not None
        routed = by_pharmacy(conn, SCHEMA, pharmacy)
        assert {r["prescription_id"] for r in routed} == {t.prescription_id for t in trails if t.pharmacy_id == pharmacy}
        assert all(r["status"] == "settled" for r in routed)
        code = trails[2].trace_codes[3]
        sales = by_trace_code(conn, SCHEMA, code)
        assert {(s["source"], s["prescription_id"]) for s in sales} == {
            ("dispensed", trails[2].prescription_id), ("TraceCodeSold", trails[2].prescription_id)}
        dispensed = next(s for s in sales if s["source"] == "dispensed")
        assert dispensed["dispense_no"] == 2 and dispensed["patient_ref"] == trails[2].patient_ref
        assert dispensed["withdrawn_at"] is None
        assert by_trace_code(conn, SCHEMA, "0" * 20) == []
        assert trail(conn, SCHEMA, "00000000-0000-0000-0000-000000000000") == []


async def test_queries_use_indexes(published: Published) -> None:
    t = published.trails[0]
    with psycopg.connect(published.reference_db) as conn:
        conn.execute("SET enable_seqscan = off")  # tiny tables: make the planner show whether an index can serve
        for query, arg in (
            ("SELECT * FROM traceability.steps WHERE stream_id = %s", t.prescription_id),
            ("SELECT * FROM traceability.prescriptions WHERE patient_ref = %s", t.patient_ref),
            ("SELECT * FROM traceability.prescriptions WHERE physician_id = %s", t.physician_id),
            ("SELECT * FROM traceability.routings WHERE dispenser_id = %s", t.pharmacy_id),
            ("SELECT * FROM traceability.trace_code_uses WHERE code = %s", t.trace_codes[0]),
            ("SELECT * FROM traceability.trace_code_events WHERE code = %s", t.trace_codes[0]),
        ):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, (arg,)))
            assert "Index" in plan and "Seq Scan" not in plan, plan


async def test_no_sealed_personal_fields_anywhere(published: Published) -> None:
    with psycopg.connect(published.reference_db) as conn:
        for schema in (registry.get(name).schema for name in registry.NAMES):  # every projection
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
            for table in tables:
                text = conn.execute(f'SELECT coalesce(string_agg(t::text, \'\'), \'\') FROM "{schema}"."{table}" t'
                                    ).fetchone()
                assert text is not None
                assert "sealed" not in text[0] and "c2VhbGVkLXNlY3JldA" not in text[0], (schema, table)
    assert any(isinstance(e, PrescriptionDispensed) for e in published.events)
