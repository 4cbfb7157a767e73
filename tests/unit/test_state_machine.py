"""The prescription state machine: legal paths, and every family of illegal transition refused by name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from events.base import RealNameMethod
from events.prescription import PrescriptionCancelled, PrescriptionExpired, RoutingBasis
from services.domain import (
    IllegalTransition,
    InvalidCommand,
    PartyNotEligible,
    Pharmacist,
    Pharmacy,
    Prescription,
    RuleViolation,
    ValidityElapsed,
)
from tests.support.domain import AUTHORITY, HOSPITAL, METFORMIN, PHARMACY, World, item, line


@pytest.fixture
def w() -> World:
    return World()


# --- legal paths ----------------------------------------------------------------------------------------


def test_full_path_with_delivery(w: World) -> None:
    rx = w.dispensed()
    rx.arrange_delivery(clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="6.00", fee_disclosed=True)
    rx.deliver(clock=w.clock, delivery_enterprise_id="D-1")
    w.settle(rx, fund="40.00", personal="10.00", self_pay="6.00", delivery_fee="6.00")
    assert rx.status == "settled" and rx.total == rx.fund + rx.personal_account + rx.self_pay  # type: ignore[operator]


def test_declined_prescription_can_be_routed_again(w: World) -> None:
    rx = w.accepted()
    rx.decline(clock=w.clock, dispenser_id=PHARMACY, reason="out of stock")
    assert rx.status == "approved" and rx.dispenser_id is None
    other = Pharmacy.designate(
        clock=w.clock, changed_by=AUTHORITY, pharmacy_id="PH-CC-002", name="Yida", pooling_region="220100", agreement_no="A-2"
    )
    rx.route(clock=w.clock, pharmacy=other, basis=RoutingBasis.ROUTING_RULE)
    rx.accept(clock=w.clock, dispenser_id="PH-CC-002")
    assert rx.dispenser_id == "PH-CC-002"


def test_in_house_dispensing_settles_with_physical_institution(w: World) -> None:
    rx = w.approved()
    rx.route(clock=w.clock, pharmacy=None, basis=RoutingBasis.PATIENT_CHOICE)
    rx.accept(clock=w.clock, dispenser_id=rx.hospital_id)
    w.dispense(rx)
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    w.settle(rx)
    assert rx.pending_events[-1].settled_with == rx.physical_institution_id  # type: ignore[attr-defined]


def test_cancel_after_partial_dispense_cancels_only_the_remainder(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    w.dispense(rx, line(quantity=1))
    rx.cancel(clock=w.clock, reason="patient changed mind", cancelled_by="patient")
    event = rx.pending_events[-1]
    assert isinstance(event, PrescriptionCancelled) and event.remainder_only
    assert rx.status == "dispensed"
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    w.settle(rx, fund="10.00", personal="2.50", self_pay="0.00")


def test_cancel_before_dispensing_ends_the_prescription(w: World) -> None:
    rx = w.accepted()
    rx.cancel(clock=w.clock, reason="duplicate", cancelled_by="DR-001")
    assert rx.status == "cancelled"


def test_expiry_after_validity(w: World) -> None:
    rx = w.approved()
    w.clock.advance(timedelta(days=3))
    with pytest.raises(InvalidCommand):
        rx.expire(clock=w.clock)
    w.clock.advance(timedelta(seconds=1))
    rx.expire(clock=w.clock)
    assert rx.status == "expired"


def test_partial_dispense_then_expiry_expires_the_remainder(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    w.dispense(rx, line(quantity=2))
    w.clock.advance(timedelta(days=4))
    rx.expire(clock=w.clock)
    event = rx.pending_events[-1]
    assert isinstance(event, PrescriptionExpired) and event.remainder_only and rx.status == "dispensed"


def test_validity_default_is_three_days(w: World) -> None:
    rx = w.approved()
    assert rx.valid_until == w.clock.now() + timedelta(days=3)
    w.clock.advance(timedelta(days=3, seconds=1))
    with pytest.raises(ValidityElapsed, match=r"^R19:"):
        rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)


def test_dispense_withdrawal_returns_trace_codes_and_reopens_dispensing(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    first = w.dispense(rx, line(quantity=2, codes=2))
    w.dispense(rx, line(quantity=2))
    assert rx.status == "dispensed"
    returned = rx.withdraw_dispense(
        clock=w.clock, dispense_no=1, reason="damaged packs", trace_codes={tc.code: tc for tc in first}
    )
    assert rx.status == "partially_dispensed" and rx.dispensed_quantities() == {METFORMIN: 2}
    assert all(not tc.sold for tc in returned)
    w.dispense(rx, line(quantity=2))
    assert rx.status == "dispensed" and rx.last_dispense_no == 3


def test_withdrawing_the_only_dispense_returns_to_accepted(w: World) -> None:
    rx = w.accepted()
    sold = w.dispense(rx)
    rx.withdraw_dispense(clock=w.clock, dispense_no=1, reason="wrong patient",
                         trace_codes={tc.code: tc for tc in sold})
    assert rx.status == "accepted"


def test_withdrawal_after_remainder_cancelled_leaves_it_cancelled(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    [tc] = w.dispense(rx, line(quantity=1))
    rx.cancel(clock=w.clock, reason="stop", cancelled_by="DR-001")
    rx.withdraw_dispense(clock=w.clock, dispense_no=1, reason="returned", trace_codes={tc.code: tc})
    assert rx.status == "cancelled"


def test_audit_refusal_and_clawback_bounded_by_insurance_paid(w: World) -> None:
    rx = w.settled()  # fund 35 + personal 10
    rx.refuse_fees(clock=w.clock, amount="20.00", reason="not indicated", audit_ref="AU-1")
    rx.claw_back(clock=w.clock, amount="25.00", reason="fraud confirmed", audit_ref="AU-2")
    assert rx.refused + rx.clawed_back == rx.fund + rx.personal_account  # type: ignore[operator]
    with pytest.raises(InvalidCommand):
        rx.claw_back(clock=w.clock, amount="0.01", reason="again", audit_ref="AU-3")


# --- illegal transitions ------------------------------------------------------------------------------

Command = Callable[[World, Prescription], object]


def _approve(w: World, rx: Prescription) -> object:
    return rx.approve(clock=w.clock, pharmacist=w.pharmacist)


def _reject(w: World, rx: Prescription) -> object:
    return rx.reject(clock=w.clock, pharmacist=w.pharmacist, reasons=["x"])


def _route(w: World, rx: Prescription) -> object:
    return rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)


def _accept(w: World, rx: Prescription) -> object:
    return rx.accept(clock=w.clock, dispenser_id=PHARMACY)


def _decline(w: World, rx: Prescription) -> object:
    return rx.decline(clock=w.clock, dispenser_id=PHARMACY, reason="x")


def _dispense(w: World, rx: Prescription) -> object:
    return w.dispense(rx, line(quantity=1))


def _withdraw(w: World, rx: Prescription) -> object:
    return rx.withdraw_dispense(clock=w.clock, dispense_no=1, reason="x", trace_codes={})


def _arrange(w: World, rx: Prescription) -> object:
    return rx.arrange_delivery(
        clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="5.00", fee_disclosed=True
    )


def _deliver(w: World, rx: Prescription) -> object:
    return rx.deliver(clock=w.clock, delivery_enterprise_id="D-1")


def _collect(w: World, rx: Prescription) -> object:
    return rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)


def _settle(w: World, rx: Prescription) -> object:
    return w.settle(rx)


def _cancel(w: World, rx: Prescription) -> object:
    return rx.cancel(clock=w.clock, reason="x", cancelled_by="x")


def _expire(w: World, rx: Prescription) -> object:
    w.clock.advance(timedelta(days=10))
    return rx.expire(clock=w.clock)


def _refuse(w: World, rx: Prescription) -> object:
    return rx.refuse_fees(clock=w.clock, amount="1.00", reason="x", audit_ref="A")


def _claw_back(w: World, rx: Prescription) -> object:
    return rx.claw_back(clock=w.clock, amount="1.00", reason="x", audit_ref="A")


def _cancelled(w: World) -> Prescription:
    rx = w.approved()
    _cancel(w, rx)
    return rx


def _rejected(w: World) -> Prescription:
    rx = w.issued()
    _reject(w, rx)
    return rx


def _routed(w: World) -> Prescription:
    rx = w.approved()
    _route(w, rx)
    return rx


def _expired(w: World) -> Prescription:
    rx = w.approved()
    _expire(w, rx)
    return rx


def _arranged(w: World) -> Prescription:
    rx = w.dispensed()
    _arrange(w, rx)
    return rx


ILLEGAL: list[tuple[str, Callable[[World], Prescription], Command]] = [
    ("review twice: approve approved", lambda w: w.approved(), _approve),
    ("review twice: reject approved", lambda w: w.approved(), _reject),
    ("review twice: approve rejected", _rejected, _approve),
    ("route twice", _routed, _route),
    ("accept before routing", lambda w: w.approved(), _accept),
    ("accept twice", lambda w: w.accepted(), _accept),
    ("decline before routing", lambda w: w.approved(), _decline),
    ("decline after dispensing", lambda w: w.dispensed(), _decline),
    ("dispense before acceptance", _routed, _dispense),
    ("dispense cancelled", _cancelled, _dispense),
    ("dispense expired", _expired, _dispense),
    ("withdraw before dispensing", lambda w: w.accepted(), _withdraw),
    ("withdraw after collection", lambda w: w.collected(), _withdraw),
    ("arrange delivery before full dispense", lambda w: w.accepted(), _arrange),
    ("arrange delivery after collection", lambda w: w.collected(), _arrange),
    ("deliver without arrangement", lambda w: w.dispensed(), _deliver),
    ("collect when delivery arranged", _arranged, _collect),
    ("collect before dispensing", lambda w: w.accepted(), _collect),
    ("settle before hand-over", lambda w: w.dispensed(), _settle),
    ("settle twice", lambda w: w.settled(), _settle),
    ("settle cancelled", _cancelled, _settle),
    ("cancel after full dispense", lambda w: w.dispensed(), _cancel),
    ("cancel settled", lambda w: w.settled(), _cancel),
    ("cancel twice", _cancelled, _cancel),
    ("cancel rejected", _rejected, _cancel),
    ("expire settled", lambda w: w.settled(), _expire),
    ("expire cancelled", _cancelled, _expire),
    ("refuse fees before settlement", lambda w: w.collected(), _refuse),
    ("claw back before settlement", lambda w: w.collected(), _claw_back),
]


@pytest.mark.parametrize(("family", "build", "command"), ILLEGAL, ids=[f for f, _, _ in ILLEGAL])
def test_illegal_transition_is_refused_and_records_nothing(
    w: World, family: str, build: Callable[[World], Prescription], command: Command
) -> None:
    rx = build(w)
    state, before = rx.status, len(rx.pending_events)
    with pytest.raises(IllegalTransition) as exc:
        command(w, rx)
    assert exc.value.from_state == state.value
    assert exc.value.command in str(exc.value)
    assert len(rx.pending_events) == before and rx.status == state


def test_wrong_pharmacy_cannot_accept_or_dispense(w: World) -> None:
    rx = _routed(w)
    with pytest.raises(PartyNotEligible):
        rx.accept(clock=w.clock, dispenser_id="PH-OTHER")
    _accept(w, rx)
    with pytest.raises(PartyNotEligible):
        rx.dispense(clock=w.clock, dispenser_id="PH-OTHER", lines=[line()], trace_codes={}, listings={})


def test_routing_refuses_suspended_or_out_of_region_pharmacy(w: World) -> None:
    rx = w.approved()
    far = Pharmacy.designate(
        clock=w.clock, changed_by=AUTHORITY, pharmacy_id="PH-JN", name="Jinan", pooling_region="370100", agreement_no="A-9"
    )
    with pytest.raises(PartyNotEligible, match="pooling region"):
        rx.route(clock=w.clock, pharmacy=far, basis=RoutingBasis.PATIENT_CHOICE)
    w.pharmacy.suspend_agreement(clock=w.clock, changed_by=AUTHORITY, reason="audit")
    with pytest.raises(PartyNotEligible, match="agreement"):
        _route(w, rx)


def test_review_needs_hospital_or_third_party_pharmacist(w: World) -> None:
    """R18 (DOMAIN.md): an employed pharmacist reviews for its employer; a third party only for hospitals it has a
    recorded cooperation agreement with (before, any third party reviewed for any hospital)."""
    outsider = Pharmacist.register(
        clock=w.clock, changed_by=AUTHORITY, pharmacist_id="RPH-9", employer_id="H-OTHER", name="Zhao",
        qualification_no="Q"
    )
    rx = w.issued()
    with pytest.raises(RuleViolation, match=r"^R18:"):
        rx.approve(clock=w.clock, pharmacist=outsider)
    third = Pharmacist.register(
        clock=w.clock,
        changed_by=AUTHORITY,
        pharmacist_id="RPH-3",
        company_id="Platform",
        name="Sun",
        qualification_no="Q",
        third_party=True,
    )
    with pytest.raises(RuleViolation, match=r"^R18:"):
        rx.approve(clock=w.clock, pharmacist=third)
    third.record_agreement(clock=w.clock, changed_by=AUTHORITY, hospital_id=HOSPITAL, agreement_no="CA-1")
    rx.approve(clock=w.clock, pharmacist=third)


def test_split_must_add_up_to_total(w: World) -> None:
    rx = w.collected()
    with pytest.raises(InvalidCommand):
        w.settle(rx, fund="35.00", personal="10.00", self_pay="4.99")
    with pytest.raises(InvalidCommand):
        w.settle(rx, fund="-1.00", personal="46.00", self_pay="5.00")


def test_refused_dispense_leaves_trace_code_aggregates_untouched(w: World) -> None:
    rx = w.accepted(item(quantity=2))
    [tc] = w.dispense(w.accepted(), line(quantity=1, codes=1))
    fresh = line(quantity=1, codes=1)
    mixed = [fresh, line(quantity=1).model_copy(update={"trace_codes": (tc.code,)})]
    with pytest.raises(RuleViolation):
        w.dispense(rx, *mixed, held={tc.code: tc})
    assert len(tc.pending_events) == 1 and rx.status == "accepted"
