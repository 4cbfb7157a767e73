"""Whole trails through the command handlers on the real PostgreSQL event store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from events.prescription import (
    DeliveryArranged,
    PrescriptionDispensed,
    PrescriptionSettled,
    RoutingBasis,
    RuleFlagged,
)
from services.adapters.event_log import load_stream
from services.adapters.store import RxTrailStore, open_store
from services.application import RxTrail
from services.application import commands as c
from services.application.ids import trace_code_id_for
from services.domain.clock import FixedClock
from services.domain.prescription import Prescription, RxStatus, project_prescription
from services.domain.trace_code import TraceCode, project_trace_code
from services.integrity import verify_aggregate
from tests.support.cast import (
    AMLODIPINE,
    METFORMIN,
    Cast,
    item,
    line,
    ok,
    physician_command,
)


@pytest.fixture(scope="module")
def store(pg_url: str) -> Iterator[RxTrailStore]:
    s = open_store(pg_url, snapshot_interval=8)
    yield s
    s.close()


@pytest.fixture
def cast(app: RxTrail) -> Cast:
    return Cast(app).register()


def prescription(app: RxTrail, rx_id: object) -> Prescription:
    return app.store.repository.get(rx_id, projector_func=project_prescription)


def types(app: RxTrail, rx_id: object) -> list[str]:
    return [type(e).__name__ for e in load_stream(app.store, rx_id)]  # type: ignore[arg-type]


def test_full_happy_path(app: RxTrail, cast: Cast) -> None:
    visit = ok(app.handle(cast.visit()))
    encounter_id = visit.aggregate_id
    assert encounter_id is not None and [e.event_type for e in visit.events] == ["FollowUpVisitRecorded"]
    rx = ok(app.handle(cast.issue(encounter_id, item(METFORMIN, 4, "12.50"), item(AMLODIPINE, 2, "5.00")))).aggregate_id
    assert rx is not None
    ok(app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist)))
    ok(app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)))
    ok(app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.pharmacy)))
    dispensed = ok(cast.dispense(rx, line(METFORMIN, 4, "12.50", codes=4), line(AMLODIPINE, 2, "5.00", codes=2)))
    assert [e.event_type for e in dispensed.events].count("TraceCodeSold") == 6
    ok(app.handle(c.ArrangeDelivery(prescription_id=rx, delivery_enterprise_id="DE-1", delivery_fee=Decimal("8.00"),
                                    fee_disclosed=True)))
    ok(app.handle(c.MarkDelivered(prescription_id=rx, delivery_enterprise_id="DE-1")))
    ok(cast.settle(rx, fund="40.00", personal="10.00", self_pay="18.00", delivery_fee="8.00"))
    ok(app.handle(c.SettleConsultation(encounter_id=encounter_id, patient_ref=cast.patient_ref,
                                       verification_method="e_voucher", fund="7.00", personal_account="2.00",
                                       self_pay="1.00", policy_version="2025.1", policy_region="220100",
                                       settlement_ref="C-1")))  # R15: 10.00, 220100's tertiary consultation

    state = prescription(app, rx)
    assert state.status is RxStatus.SETTLED
    assert (state.total, state.fund, state.personal_account, state.self_pay) == (
        Decimal("68.00"), Decimal("40.00"), Decimal("10.00"), Decimal("18.00"))
    assert types(app, rx) == [
        "PrescriptionIssued", "PrescriptionApproved", "PrescriptionRouted", "PrescriptionAccepted",
        "PrescriptionDispensed", "DeliveryArranged", "PrescriptionDelivered", "PrescriptionSettled",
    ]
    assert verify_aggregate(app.store, rx) is None
    assert verify_aggregate(app.store, encounter_id) is None
    stream = load_stream(app.store, rx)
    assert all(e.business_type.value == "internet" for e in stream)  # type: ignore[attr-defined]
    settled = stream[-1]
    assert isinstance(settled, PrescriptionSettled) and settled.patient_ref == cast.patient_ref


def test_refused_command_records_nothing(app: RxTrail, cast: Cast) -> None:
    rx = cast.issued()
    before = types(app, rx)
    refused = app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy,
                                             basis=RoutingBasis.ROUTING_RULE))
    assert (refused.status, refused.error, refused.rule_id) == ("rejected", "RuleViolation", "R3")
    assert refused.events == () and types(app, rx) == before


def test_partial_dispensing_is_summed_and_r13_refuses_over_dispensing(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted(item(METFORMIN, 4))
    ok(cast.dispense(rx, line(METFORMIN, 3, codes=3)))
    assert prescription(app, rx).status is RxStatus.PARTIALLY_DISPENSED
    over = cast.dispense(rx, line(METFORMIN, 2, codes=2))
    assert (over.status, over.rule_id) == ("rejected", "R13")
    assert "exceed the prescribed 4" in (over.reason or "")
    ok(cast.dispense(rx, line(METFORMIN, 1, codes=1)))
    state = prescription(app, rx)
    assert state.status is RxStatus.DISPENSED and state.dispensed_quantities() == {METFORMIN: 4}
    dispenses = [e for e in load_stream(app.store, rx) if isinstance(e, PrescriptionDispensed)]
    assert [(d.dispense_no, d.complete) for d in dispenses] == [(1, False), (2, True)]
    again = cast.dispense(rx, line(METFORMIN, 1, codes=1))
    assert (again.status, again.error, again.rule_id) == ("rejected", "RuleViolation", "R13")
    assert again.reason == "prescription already dispensed in full"


def test_cancellation_after_routing(app: RxTrail, cast: Cast) -> None:
    rx = cast.routed()
    ok(app.handle(c.CancelPrescription(prescription_id=rx, reason="patient request", cancelled_by=cast.hospital)))
    assert prescription(app, rx).status is RxStatus.CANCELLED
    late = app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.pharmacy))
    assert (late.status, late.error) == ("rejected", "IllegalTransition")


def test_return_by_pharmacy_then_reroute(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted()
    ok(app.handle(c.ReturnPrescription(prescription_id=rx, dispenser_id=cast.pharmacy, reason="out of stock")))
    assert prescription(app, rx).status is RxStatus.APPROVED
    ok(app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.other_pharmacy,
                                      basis=RoutingBasis.ROUTING_RULE)))
    wrong = app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.pharmacy))
    assert (wrong.status, wrong.error) == ("rejected", "PartyNotEligible")
    ok(app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.other_pharmacy)))
    assert prescription(app, rx).dispenser_id == cast.other_pharmacy


def test_expiry(app: RxTrail, cast: Cast) -> None:
    rx = cast.approved()
    early = app.handle(c.ExpirePrescription(prescription_id=rx))
    assert (early.status, early.error) == ("rejected", "InvalidCommand")
    assert isinstance(app.clock, FixedClock)
    app.clock.advance(timedelta(days=4))
    late = app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy,
                                          basis=RoutingBasis.PATIENT_CHOICE))
    assert (late.status, late.error, late.rule_id) == ("rejected", "ValidityElapsed", "R19")
    ok(app.handle(c.ExpirePrescription(prescription_id=rx)))
    assert prescription(app, rx).status is RxStatus.EXPIRED


def test_withdrawal_returns_trace_codes_which_sell_again(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted()
    scanned = line(METFORMIN, 4, codes=4)
    ok(cast.dispense(rx, scanned))
    withdrawn = ok(app.handle(c.WithdrawDispense(prescription_id=rx, dispense_no=1, reason="wrong batch")))
    assert [e.event_type for e in withdrawn.events].count("TraceCodeReturned") == 4
    assert prescription(app, rx).status is RxStatus.ACCEPTED
    for code in scanned.trace_codes:
        tc = app.store.repository.get(trace_code_id_for(code), projector_func=project_trace_code)
        assert isinstance(tc, TraceCode) and not tc.sold

    other = cast.accepted()
    ok(cast.dispense(other, scanned))
    tc = app.store.repository.get(trace_code_id_for(scanned.trace_codes[0]), projector_func=project_trace_code)
    assert tc.sold and tc.prescription_id == other


def test_settlement_then_audit_refusal_and_clawback(app: RxTrail, cast: Cast) -> None:
    rx = cast.collected()
    ok(cast.settle(rx))
    ok(app.handle(c.RefuseFeesInAudit(prescription_id=rx, amount=Decimal("10.00"), reason="not reasonable",
                                      audit_ref="AU-1")))
    ok(app.handle(c.ClawBackFees(prescription_id=rx, amount=Decimal("5.00"), reason="violation", audit_ref="AU-2")))
    too_much = app.handle(c.ClawBackFees(prescription_id=rx, amount=Decimal("40.01"), reason="x", audit_ref="AU-3"))
    assert (too_much.status, too_much.error) == ("rejected", "InvalidCommand")
    state = prescription(app, rx)
    assert (state.refused, state.clawed_back) == (Decimal("10.00"), Decimal("5.00"))
    assert types(app, rx)[-2:] == ["FeesRefusedInAudit", "FeesClawedBack"]
    assert verify_aggregate(app.store, rx) is None


def test_settlement_refused_for_patient_suspended_for_fraud(app: RxTrail, cast: Cast) -> None:
    rx = cast.collected()
    ok(app.handle(c.SuspendPatientForFraud(changed_by=cast.authority, patient_ref=cast.patient_ref,
                                                reason="card lending")))
    refused = cast.settle(rx)
    assert (refused.status, refused.rule_id) == ("rejected", "R11")
    ok(cast.settle(rx, fund="0.00", personal="0.00", self_pay="50.00"))
    ok(app.handle(c.ReinstatePatient(changed_by=cast.authority, patient_ref=cast.patient_ref, reason="cleared")))


def test_suspended_physician_cannot_prescribe(app: RxTrail, cast: Cast) -> None:
    encounter_id = ok(app.handle(cast.visit())).aggregate_id
    assert encounter_id is not None
    ok(app.handle(c.SuspendPhysician(changed_by=cast.authority, physician_id=cast.physician, reason="licence review")))
    refused = app.handle(cast.issue(encounter_id))
    assert (refused.status, refused.rule_id) == ("rejected", "R2")
    ok(app.handle(c.ReinstatePhysician(changed_by=cast.authority, physician_id=cast.physician, reason="cleared")))
    ok(app.handle(cast.issue(encounter_id)))


def test_registries_and_derived_ids_refuse_duplicates(app: RxTrail, cast: Cast) -> None:
    again = app.handle(physician_command(cast.physician, cast.hospital, cast.region))
    assert (again.status, again.error) == ("rejected", "AlreadyExists")
    encounter_id = ok(app.handle(cast.visit())).aggregate_id
    assert encounter_id is not None
    issue = cast.issue(encounter_id)
    ok(app.handle(issue))
    twice = app.handle(issue)
    assert (twice.status, twice.error) == ("rejected", "AlreadyExists")
    ok(app.handle(c.SuspendPharmacyAgreement(changed_by=cast.authority, pharmacy_id=cast.pharmacy, reason="audit")))
    rx = cast.approved()
    refused = app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy,
                                             basis=RoutingBasis.PATIENT_CHOICE))
    assert (refused.status, refused.error) == ("rejected", "PartyNotEligible")
    missing = app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id="nobody"))
    assert (missing.error, missing.reason) == ("PharmacistNotFound", "pharmacist nobody not found")


def test_unknown_prescription_is_translated(app: RxTrail) -> None:
    from uuid import uuid4

    outcome = app.handle(c.CancelPrescription(prescription_id=uuid4(), reason="x", cancelled_by="y"))
    assert (outcome.status, outcome.error) == ("rejected", "PrescriptionNotFound")


def test_r5_flag_lets_the_prescription_through(app: RxTrail, cast: Cast) -> None:
    encounter_id = ok(app.handle(cast.visit())).aggregate_id
    assert encounter_id is not None
    issued = ok(app.handle(cast.issue(encounter_id, item(METFORMIN), first_visit_drug_codes=())))
    # R4: the patient's supply ledger of the generic drug is written with the prescription
    assert [e.event_type for e in issued.events] == ["PrescriptionIssued", "RuleFlagged", "SupplyReserved"]
    flag = load_stream(app.store, issued.aggregate_id)[-1]  # type: ignore[arg-type]
    assert isinstance(flag, RuleFlagged) and flag.rule_id == "R5"


def test_expected_version_refuses_stale_decisions(app: RxTrail, cast: Cast) -> None:
    rx = cast.issued()
    stale = app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist, expected_version=2))
    assert (stale.status, stale.error) == ("rejected", "StaleVersion")
    ok(app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist, expected_version=1)))


def test_long_stream_loads_from_a_snapshot(app: RxTrail, cast: Cast) -> None:
    rx = cast.collected()
    ok(cast.settle(rx))
    for n in range(12):
        ok(app.handle(c.RefuseFeesInAudit(prescription_id=rx, amount=Decimal("1.00"), reason="r",
                                          audit_ref=f"AU-{n}")))
    assert app.store.snapshots is not None
    snapshots = list(app.store.snapshots.get(rx))
    assert [s.originator_version for s in snapshots] == [8, 16]
    from_snapshot = prescription(app, rx)
    replayed = project_prescription(None, load_stream(app.store, rx))
    assert replayed is not None
    assert from_snapshot.model_dump() == replayed.model_dump() and from_snapshot.version == 19
    assert from_snapshot.refused == Decimal("12.00")
    assert verify_aggregate(app.store, rx) is None


def test_delivery_fee_must_be_disclosed(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted()
    ok(cast.dispense(rx))
    refused = app.handle(c.ArrangeDelivery(prescription_id=rx, delivery_enterprise_id="DE-1",
                                           delivery_fee=Decimal("8.00"), fee_disclosed=False))
    assert (refused.status, refused.rule_id) == ("rejected", "R6")
    assert not any(isinstance(e, DeliveryArranged) for e in load_stream(app.store, rx))
