"""The event catalogue: money, time, JSON round trip of every type, upcasting, JSON Schema export."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from events import (
    EVENT_TYPES,
    Envelope,
    Snapshot,
    UnknownEventType,
    event_hash,
    from_json,
    to_json,
    type_name,
    upcast,
    write_schemas,
)
from events.base import GENESIS_HASH, BusinessType, RealNameMethod, to_money
from events.prescription import PrescriptionRejected, RoutingBasis
from events.statement import DepositReleased, FailureResolution, PartyKind, StatementIssued, SubjectKind
from services.domain import PatientStatus, verify_stream
from services.domain.settlement_case import SettlementCase
from tests.support.domain import PATIENT, PHARMACY, T0, World, item, line
from tests.support.registries import BY, registry_samples


def sample_events() -> dict[str, Envelope]:
    """At least one event of every catalogued type, produced by the aggregates where they exist."""
    w = World()
    out: list[Envelope] = [*w.physician.collect_events(), *w.pharmacist.collect_events()]
    w.physician.suspend(clock=w.clock, changed_by=BY, reason="review")
    w.physician.reinstate(clock=w.clock, changed_by=BY, reason="cleared")
    w.pharmacy.suspend_agreement(clock=w.clock, changed_by=BY, reason="audit")
    out += w.physician.collect_events() + w.pharmacy.collect_events()
    w = World()
    patient = PatientStatus.suspend_for_fraud(None, clock=w.clock, changed_by=BY, patient_ref=PATIENT, reason="fraud")
    patient.reinstate(clock=w.clock, changed_by=BY, reason="appeal")
    out += patient.collect_events()
    out += registry_samples(w.clock)

    enc = w.encounter()
    enc.settle_consultation(
        clock=w.clock,
        patient=None,
        patient_ref=PATIENT,
        verification_method=RealNameMethod.E_VOUCHER,
        fund="15.00",
        personal_account="5.00",
        self_pay="0.00",
        policy_version="2025.1",
        policy_region="220100",
        settlement_ref="C-1",
    )
    out += enc.collect_events()

    rx = w.issued(item(), item("XC08CAA001A001010101"), first_visit_drug_codes=[])
    rx.approve(clock=w.clock, pharmacist=w.pharmacist)
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    rx.decline(clock=w.clock, dispenser_id=PHARMACY, reason="no stock")
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    rx.accept(clock=w.clock, dispenser_id=PHARMACY)
    codes = w.dispense(rx, line(quantity=1, codes=1))
    codes = rx.withdraw_dispense(
        clock=w.clock, dispense_no=1, reason="damaged", trace_codes={c.code: c for c in codes}
    )
    out += [e for c in codes for e in c.collect_events()]
    w.dispense(rx, line(quantity=4, unit_price="13.00"), line("XC08CAA001A001010101", 4))
    rx.arrange_delivery(clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="5.00", fee_disclosed=True)
    rx.deliver(clock=w.clock, delivery_enterprise_id="D-1")
    w.settle(rx, fund="80.00", personal="22.00", self_pay="5.00", delivery_fee="5.00")
    rx.refuse_fees(clock=w.clock, amount="1.00", reason="x", audit_ref="A-1")
    rx.claw_back(clock=w.clock, amount="1.00", reason="x", audit_ref="A-2")
    out += rx.collect_events()
    returning = w.accepted()
    [sold, _] = w.dispense(returning, line(quantity=2))
    returning.return_packs(clock=w.clock, dispenser_id=PHARMACY, codes=[sold.code], reason="unsold",
                           trace_codes={sold.code: sold})
    extended = w.approved()
    extended.valid_until = extended.issued_at + timedelta(hours=12)  # as if valid on the day of issue
    extended.extend_validity(clock=w.clock, physician_id=extended.physician_id,
                             valid_until=extended.issued_at + timedelta(days=2), reason="patient travels")
    out += returning.collect_events()[-1:] + extended.collect_events()[-1:]
    cancelled, expired, rejected = w.approved(), w.approved(), w.issued()
    cancelled.cancel(clock=w.clock, reason="duplicate", cancelled_by="DR-001")
    rejected.reject(clock=w.clock, pharmacist=w.pharmacist, reasons=["dose", "interaction"])
    w.clock.advance(timedelta(days=4))
    expired.expire(clock=w.clock)
    out += [agg.collect_events()[-1] for agg in (cancelled, expired, rejected)]
    collected = w.collected()
    out += collected.collect_events()[-1:]

    out.append(
        StatementIssued(
            originator_id=uuid4(),
            originator_version=1,
            timestamp=T0,
            prev_hash=GENESIS_HASH,
            business_type=BusinessType.INTERNET,
            party_id="H-CC-001",
            party_kind=PartyKind.HOSPITAL,
            pooling_region="220100",
            month="2025-02",
            gross="1000.00",
            refused="100.00",
            clawed_back="0.00",
            withheld_deposit="45.00",
            payable="855.00",
            policy_version="2025.1",
        )
    )
    out.append(
        DepositReleased(
            originator_id=uuid4(),
            originator_version=2,
            timestamp=T0,
            prev_hash="a" * 64,
            business_type=BusinessType.INTERNET,
            party_id="H-CC-001",
            year=2025,
            amount="45.00",
            assessment_ref="Y-2025",
        )
    )
    case = SettlementCase.open(clock=w.clock, business_type=BusinessType.INTERNET,
                               subject_kind=SubjectKind.CONSULTATION, subject_id=enc.id, pooling_region="220100",
                               hospital_id="H-CC-001", physical_institution_id="P-CC-001")
    case.fail(clock=w.clock, rule_id="R12", error="PolicyNotFound", reason="no policy", trigger="settle:e-1")
    case.resolve(clock=w.clock, resolution=FailureResolution.RETRIED, reason="fixed", resolved_by="agency:220100")
    case.refuse_consultation(clock=w.clock, paid=to_money("20.00"), amount="1.00", reason="x", audit_ref="A-3",
                             acted_by="agency:220100")
    case.claw_back_consultation(clock=w.clock, paid=to_money("20.00"), amount="1.00", reason="x", audit_ref="A-4",
                                acted_by="agency:220100")
    case.reverse(clock=w.clock, party_id="P-CC-001", party_kind=PartyKind.PHYSICAL_INSTITUTION,
                 paid_fund=to_money("15.00"), paid_personal_account=to_money("5.00"), taken_elsewhere=to_money("0.00"),
                 fund="10.00", personal_account="0.00", self_pay_refund="0.00", reason="error",
                 reversed_by="agency:220100", reversal_ref="RV-1")
    out += case.collect_events()
    out.append(Snapshot.take(rx))
    supplied = w.issued(item(days_supply=28))
    [ledger] = supplied.reserve_supply(clock=w.clock, generic_of={}, ledgers={})
    supplied.cancel(clock=w.clock, reason="duplicate", cancelled_by="DR-001")
    supplied.release_supply(clock=w.clock, generic_of={}, ledgers={ledger.generic_code: ledger}, reason="cancelled")
    out += ledger.collect_events()  # SupplyReserved, SupplyReleased (R4)
    return {type_name(e): e for e in out}


SAMPLES = sample_events()


def test_samples_cover_every_event_type() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_round_trip_to_json_from_json(name: str) -> None:
    event = SAMPLES[name]
    data = to_json(event)
    assert isinstance(data, bytes)
    back = from_json(name, data)
    assert back == event and type(back) is type(event)
    assert to_json(back) == data
    assert from_json(name, json.loads(data)) == event


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_events_are_frozen_and_versioned(name: str) -> None:
    event = SAMPLES[name]
    with pytest.raises(ValidationError):
        event.originator_version = 99  # type: ignore[misc]
    assert event.schema_version >= 1 and event.timestamp.tzinfo is not None


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownEventType):
        from_json("PrescriptionTeleported", b"{}")


def test_patient_identity_is_only_a_pseudonym_in_events() -> None:
    for name, event in SAMPLES.items():
        fields = set(type(event).model_fields)
        assert not fields & {"name_of_patient", "id_number", "phone", "patient_name"}, name
    issued = SAMPLES["PrescriptionIssued"]
    assert {"patient_ref", "patient_sealed"} <= set(type(issued).model_fields)


# --- money ------------------------------------------------------------------------------------------


def test_money_is_two_place_decimal_serialised_as_string() -> None:
    settled = SAMPLES["PrescriptionSettled"]
    data = json.loads(to_json(settled))
    assert data["fund"] == "80.00" and isinstance(settled.fund, Decimal)  # type: ignore[attr-defined]
    assert to_money(12) == Decimal("12.00") and str(to_money("3.5")) == "3.50"


@pytest.mark.parametrize("bad", [1.1, "1.001", "abc", "NaN", "Infinity", True, None])
def test_money_refuses_floats_extra_places_and_junk(bad: object) -> None:
    with pytest.raises(ValueError):
        to_money(bad)


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_money_round_trips_any_two_place_amount(amount: Decimal) -> None:
    event = SAMPLES["FeesRefusedInAudit"].model_copy(update={"amount": amount})
    back = from_json("FeesRefusedInAudit", to_json(event))
    assert back.amount == amount  # type: ignore[attr-defined]


def test_naive_timestamps_are_refused_and_others_become_utc() -> None:
    data = json.loads(to_json(SAMPLES["PhysicianSuspended"]))
    with pytest.raises(ValidationError):
        from_json("PhysicianSuspended", {**data, "timestamp": "2025-03-10T10:00:00"})
    event = from_json("PhysicianSuspended", {**data, "timestamp": "2025-03-10T10:00:00+08:00"})
    assert event.timestamp == datetime(2025, 3, 10, 2, tzinfo=UTC) and event.timestamp.tzinfo is UTC


def test_statement_payable_must_add_up() -> None:
    data = json.loads(to_json(SAMPLES["StatementIssued"]))
    with pytest.raises(ValidationError, match="payable"):
        from_json("StatementIssued", {**data, "payable": "900.00"})


# --- upcasting --------------------------------------------------------------------------------------


def _stored_v1_rejection() -> dict[str, object]:
    """A PrescriptionRejected as version 1 wrote it (a single ``reason``), hashed as written."""
    data = json.loads(to_json(SAMPLES["PrescriptionApproved"]))
    data.pop("pharmacist_id")
    data.update(schema_version=1, pharmacist_id="RPH-001", reason="interaction with warfarin", hash="")

    payload = {"event_type": "PrescriptionRejected", **{k: v for k, v in data.items() if k != "hash"}}
    data["hash"] = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    return data


def test_upcaster_v1_to_v2_turns_reason_into_reasons() -> None:
    v1 = _stored_v1_rejection()
    assert upcast("PrescriptionRejected", 1, v1)["reasons"] == ["interaction with warfarin"]
    event = from_json("PrescriptionRejected", v1)
    assert isinstance(event, PrescriptionRejected)
    assert event.schema_version == 2 and event.reasons == ("interaction with warfarin",)


def test_upcast_event_still_verifies_against_its_stored_hash() -> None:
    event = from_json("PrescriptionRejected", _stored_v1_rejection())
    assert event_hash(event) == event.hash
    assert verify_stream([event]) is None
    tampered = event.model_copy(update={"reasons": ("no reason",)})
    assert event_hash(tampered) != tampered.hash


def test_current_events_cannot_claim_an_old_schema_version() -> None:
    data = json.loads(to_json(SAMPLES["PrescriptionRejected"]))
    with pytest.raises(ValidationError, match="schema_version"):
        PrescriptionRejected.model_validate({**data, "schema_version": 1})
    with pytest.raises(ValueError, match="newer"):
        from_json("PrescriptionRejected", {**data, "schema_version": 3})


# --- JSON Schema ----------------------------------------------------------------------------------


def test_write_schemas_writes_one_schema_per_event(tmp_path: Path) -> None:
    written = write_schemas(tmp_path / "schemas")
    assert {p.name.split(".v")[0] for p in written} == set(EVENT_TYPES)
    rejected = json.loads((tmp_path / "schemas" / "PrescriptionRejected.v2.json").read_text())
    assert rejected["$id"] == "urn:rxtrail:event:PrescriptionRejected:v2"
    assert {"originator_id", "originator_version", "timestamp", "prev_hash", "reasons"} <= set(
        rejected["properties"]
    )
    settled = json.loads((tmp_path / "schemas" / "PrescriptionSettled.v1.json").read_text())
    assert settled["properties"]["fund"]["type"] == "string"
    assert "business_type" in settled["required"] or "business_type" in settled["properties"]
