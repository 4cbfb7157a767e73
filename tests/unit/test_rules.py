"""The enforced rules of the catalogue (services.domain.rules; DOMAIN.md): for each, a passing case, a refused
or flagged case, and the boundary."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from events.base import BusinessType, CatalogCategory, RealNameMethod
from events.encounter import FollowUpVisitRecorded
from events.prescription import PrescriptionDispensed, PrescriptionSettled, RoutingBasis, RuleFlagged
from services.domain import (
    Encounter,
    IllegalTransition,
    PatientStatus,
    Physician,
    Prescription,
    RuleConfig,
    RuleViolation,
    TraceCode,
    ValidityElapsed,
)
from tests.support.domain import (
    AMLODIPINE,
    CHANGCHUN,
    HOSPITAL,
    JINAN,
    METFORMIN,
    PATIENT,
    PHARMACY,
    TODAY,
    VITAMIN,
    World,
    item,
    line,
    trace_codes,
)


@pytest.fixture
def w() -> World:
    return World()


def refused(rule_id: str) -> pytest.RaisesExc[RuleViolation]:
    return pytest.raises(RuleViolation, match=rf"^{rule_id}:")


def flags(rx: Prescription) -> list[RuleFlagged]:
    return [e for e in rx.pending_events if isinstance(e, RuleFlagged)]


def _settled(rx: Prescription) -> PrescriptionSettled:
    [settled] = [e for e in rx.pending_events if isinstance(e, PrescriptionSettled)]
    return settled


def _paid(rx: Prescription) -> tuple[str, str, str]:
    """Fund, personal account and self-pay of the recorded settlement."""
    s = _settled(rx)
    return str(s.fund), str(s.personal_account), str(s.self_pay)


# --- R1 follow-up of the same disease diagnosed offline within 3 months ------------------------------


def test_r1_allows_follow_up_of_same_disease_category(w: World) -> None:
    enc = w.encounter(original_code="E11.65", diagnosis_code="E11.9")
    assert enc.diagnosis_code == "E11.9"


def test_r1_allows_offline_diagnosis_exactly_3_months_ago(w: World) -> None:
    enc = w.encounter(original_date=date(2024, 12, 10))
    [visit] = enc.pending_events
    assert isinstance(visit, FollowUpVisitRecorded) and visit.original_diagnosis_date == date(2024, 12, 10)


def test_r1_rejects_offline_diagnosis_3_months_and_a_day_ago(w: World) -> None:
    with refused("R1") as exc:
        w.encounter(original_date=date(2024, 12, 9))
    assert exc.value.ids["earliest"] == "2024-12-10"


def test_r1_rejects_a_different_disease(w: World) -> None:
    with refused("R1"):
        w.encounter(original_code="I10", diagnosis_code="E11.9")


def test_r1_rejects_offline_diagnosis_in_the_future(w: World) -> None:
    with refused("R1"):
        w.encounter(original_date=TODAY + timedelta(days=1))


def test_r1_window_uses_china_calendar_date(w: World) -> None:
    w.clock.set(w.clock.now().replace(hour=17))  # 01:00 next day in China
    assert w.encounter(original_date=date(2024, 12, 11)).pending_events
    with refused("R1"):
        w.encounter(original_date=date(2024, 12, 10))


def test_r1_window_is_configurable(w: World) -> None:
    rules = RuleConfig(follow_up_window_months=6)
    enc = Encounter.record(**{**_visit_args(w), "original_diagnosis_date": date(2024, 9, 10), "rules": rules})
    assert [type(e).__name__ for e in enc.pending_events] == ["FollowUpVisitRecorded"]
    with refused("R1"):
        Encounter.record(**{**_visit_args(w), "original_diagnosis_date": date(2024, 9, 9), "rules": rules})


def _visit_args(w: World) -> dict[str, object]:
    enc = w.encounter()
    return {
        "clock": w.clock,
        "hospital_id": enc.hospital_id,
        "physical_institution_id": enc.physical_institution_id,
        "institution_ownership": enc.institution_ownership,
        "pooling_region": enc.pooling_region,
        "insured_region": enc.insured_region,
        "insurance_type": enc.insurance_type,
        "patient_ref": enc.patient_ref,
        "physician_id": "DR-001",
        "physician": w.physician,
        "physician_signature": "sig:DR-001",
        "diagnosis_code": "E11.9",
        "diagnosis_name": "type 2 diabetes",
        "original_diagnosis_code": "E11.9",
        "original_diagnosis_date": TODAY,
        "original_institution_id": enc.physical_institution_id,
        "verification_method": RealNameMethod.E_VOUCHER,
        "consultation_fee": "20.00",
    }


# --- R2 physician e-signature, registered, not suspended ---------------------------------------------


def test_r2_allows_registered_physician_with_signature(w: World) -> None:
    rx = w.issued()
    assert rx.physician_id == "DR-001"


def test_r2_rejects_unregistered_physician(w: World) -> None:
    with refused("R2"):
        Prescription.issue(
            clock=w.clock,
            encounter=w.encounter(),
            physician=None,
            physician_signature="sig",
            items=[item()],
            first_visit_drug_codes=[METFORMIN],
        )
    with refused("R2"):
        Encounter.record(**{**_visit_args(w), "physician": None})


def test_r2_rejects_missing_signature(w: World) -> None:
    with refused("R2"):
        Prescription.issue(
            clock=w.clock,
            encounter=w.encounter(),
            physician=w.physician,
            physician_signature=" ",
            items=[item()],
            first_visit_drug_codes=[METFORMIN],
        )


def test_r2_rejects_suspended_physician_and_allows_after_reinstatement(w: World) -> None:
    enc = w.encounter()
    w.physician.suspend(clock=w.clock, changed_by="agency:220100", reason="licence under review")
    with refused("R2"):
        w.issued(encounter=enc)
    with refused("R2"):
        w.encounter()
    w.physician.reinstate(clock=w.clock, changed_by="agency:220100", reason="cleared")
    rx = w.issued(encounter=enc)
    assert rx.status == "issued" and rx.physician_id == "DR-001"


def test_r2_rejects_physician_registered_at_another_hospital(w: World) -> None:
    other = Physician.register(
        clock=w.clock, changed_by="agency:220100", physician_id="DR-001", hospital_id="H-OTHER",
        name="Dr Li", qualification_no="Q-1"
    )
    with refused("R2"):
        Encounter.record(**{**_visit_args(w), "physician": other})


# --- R3 no routing, dispensing or settlement before approval -----------------------------------------


def test_r3_allows_routing_after_approval(w: World) -> None:
    rx = w.approved()
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    assert rx.status == "routed"


@pytest.mark.parametrize("command", ["route", "dispense", "settle"])
def test_r3_rejects_before_approval(w: World, command: str) -> None:
    rx = w.issued()
    with refused("R3"):
        _run(w, rx, command)
    assert len(rx.pending_events) == 1


def test_r3_rejects_routing_a_rejected_prescription(w: World) -> None:
    rx = w.issued()
    rx.reject(clock=w.clock, pharmacist=w.pharmacist, reasons=["dose too high"])
    with refused("R3"):
        rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)


def _run(w: World, rx: Prescription, command: str) -> None:
    if command == "route":
        rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    elif command == "dispense":
        w.dispense(rx)
    else:
        w.settle(rx)


# --- R4 long prescriptions: 56 days, 84 in a declared emergency --------------------------------------


def test_r4_allows_56_days_supply(w: World) -> None:
    rx = w.issued(item(days_supply=56))
    assert rx.status == "issued" and [i.days_supply for i in rx.items] == [56]


def test_r4_rejects_57_days_supply(w: World) -> None:
    with refused("R4"):
        w.issued(item(days_supply=57))


def test_r4_allows_84_days_in_emergency(w: World) -> None:
    rx = w.issued(item(days_supply=84), emergency_declared=True)
    assert rx.emergency_declared


def test_r4_rejects_85_days_in_emergency(w: World) -> None:
    with refused("R4"):
        w.issued(item(days_supply=85), emergency_declared=True)


def test_r4_limits_are_configurable(w: World) -> None:
    rx = w.issued(item(days_supply=30), rules=RuleConfig(long_rx_max_days=30))
    assert rx.status == "issued"
    with refused("R4"):
        w.issued(item(days_supply=31), rules=RuleConfig(long_rx_max_days=30))


# --- R5 follow-up drugs within the first visit's drugs unless justified (flag) -----------------------


def test_r5_no_flag_when_drugs_within_first_visit(w: World) -> None:
    rx = w.issued(item(METFORMIN), first_visit_drug_codes=[METFORMIN, AMLODIPINE])
    assert flags(rx) == []


def test_r5_flags_added_drug_without_justification(w: World) -> None:
    rx = w.issued(item(METFORMIN), item(AMLODIPINE), first_visit_drug_codes=[METFORMIN])
    [flag] = flags(rx)
    assert flag.rule_id == "R5" and flag.details["drug_codes"] == AMLODIPINE
    assert rx.status == "issued" and rx.flags == ["R5"]


def test_r5_no_flag_when_physician_records_justification(w: World) -> None:
    rx = w.issued(
        item(METFORMIN),
        item(AMLODIPINE),
        first_visit_drug_codes=[METFORMIN],
        justification="blood pressure rose; added per guideline",
    )
    assert flags(rx) == []


def test_r5_blank_justification_still_flags(w: World) -> None:
    rx = w.issued(item(METFORMIN), item(AMLODIPINE), first_visit_drug_codes=[METFORMIN], justification="  ")
    assert [f.rule_id for f in flags(rx)] == ["R5"]


# --- R6 delivery fee stated in advance, never fund or personal account -------------------------------


def test_r6_allows_delivery_fee_paid_self(w: World) -> None:
    rx = w.dispensed()
    rx.arrange_delivery(clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="8.00", fee_disclosed=True)
    rx.deliver(clock=w.clock, delivery_enterprise_id="D-1")
    w.settle(rx, fund="40.00", personal="10.00", self_pay="8.00", delivery_fee="8.00")
    assert rx.status == "settled"


def test_r6_rejects_delivery_fee_in_fund_or_personal_account(w: World) -> None:
    rx = w.dispensed()
    rx.arrange_delivery(clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="8.00", fee_disclosed=True)
    rx.deliver(clock=w.clock, delivery_enterprise_id="D-1")
    with refused("R6"):
        w.settle(rx, fund="40.00", personal="10.01", self_pay="7.99", delivery_fee="8.00")


def test_r6_rejects_undisclosed_delivery_fee(w: World) -> None:
    rx = w.dispensed()
    with refused("R6"):
        rx.arrange_delivery(
            clock=w.clock, delivery_enterprise_id="D-1", delivery_fee="8.00", fee_disclosed=False
        )


# --- R7 price caps: settle on min(actual, cap); excess via personal account only if non-public -------


def _over_cap(w: World, *, in_house: bool) -> Prescription:
    rx = w.approved(item(unit_price="12.50"))
    if in_house:
        rx.route(clock=w.clock, pharmacy=None, basis=RoutingBasis.ROUTING_RULE)
        rx.accept(clock=w.clock, dispenser_id=HOSPITAL)
        rx.dispense(clock=w.clock, dispenser_id=HOSPITAL, lines=[line(cap="10.00")], trace_codes={})
    else:
        rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
        rx.accept(clock=w.clock, dispenser_id=PHARMACY)
        w.dispense(rx, line(cap="10.00"))
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    return rx


def test_r7_flags_price_above_cap_at_dispense(w: World) -> None:
    rx = _over_cap(w, in_house=False)
    [flag] = flags(rx)
    assert flag.rule_id == "R7" and flag.details["price_cap"] == "10.00"


def test_r7_no_flag_at_the_cap(w: World) -> None:
    rx = w.dispensed()
    assert flags(rx) == []


def test_r7_allows_fund_up_to_capped_amount_and_personal_excess_non_public(w: World) -> None:
    rx = _over_cap(w, in_house=False)
    w.settle(rx, fund="40.00", personal="10.00", self_pay="0.00")
    assert _paid(rx) == ("40.00", "10.00", "0.00")


def test_r7_rejects_fund_above_capped_amount(w: World) -> None:
    rx = _over_cap(w, in_house=False)
    with refused("R7"):
        w.settle(rx, fund="40.01", personal="9.99", self_pay="0.00")


def test_r7_rejects_personal_account_paying_excess_at_public_institution(w: World) -> None:
    rx = _over_cap(w, in_house=True)
    w.settle(rx, fund="30.00", personal="10.00", self_pay="10.00")
    rx2 = _over_cap(w, in_house=True)
    with refused("R7"):
        w.settle(rx2, fund="30.00", personal="10.01", self_pay="9.99")


# --- R8 each trace code sold once ----------------------------------------------------------------------


def test_r8_first_sale_creates_the_code_aggregate(w: World) -> None:
    rx = w.accepted()
    sold = w.dispense(rx, line(codes=2))
    assert [tc.id for tc in sold] == [TraceCode.id_for(c) for c in rx.trace_codes]
    assert all(tc.sold and tc.prescription_id == rx.id for tc in sold)


def test_r8_rejects_second_sale_and_flags_the_attempt(w: World) -> None:
    first = w.accepted()
    [tc] = w.dispense(first, line(quantity=1, codes=1))
    second = w.accepted()
    before = len(second.pending_events)
    with refused("R8") as exc:
        second.dispense(
            clock=w.clock,
            dispenser_id=PHARMACY,
            lines=[line(quantity=1, codes=0).model_copy(update={"trace_codes": (tc.code,)})],
            trace_codes={tc.code: tc},
        )
    assert len(second.pending_events) == before
    assert exc.value.ids["sold_for"] == str(first.id)
    second.record_flag(clock=w.clock, violation=exc.value)
    [flag] = flags(second)
    assert flag.rule_id == "R8" and flag.details["trace_code"] == tc.code
    assert second.status == "accepted"


def test_r8_rejects_same_code_twice_in_one_dispense(w: World) -> None:
    rx = w.accepted()
    [code] = trace_codes(1)
    doubled = line(quantity=2).model_copy(update={"trace_codes": (code, code)})
    with refused("R8"):
        rx.dispense(clock=w.clock, dispenser_id=PHARMACY, lines=[doubled], trace_codes={code: None})


def test_r8_rejects_online_sale_of_code_sold_offline(w: World) -> None:
    [code] = trace_codes(1)
    walk_in = w.sell(code, seller_id="PH-X", business_type=BusinessType.OFFLINE)
    with refused("R8"):
        w.sell(code, walk_in)


def test_r8_allows_resale_after_return_to_stock(w: World) -> None:
    rx = w.accepted()
    [tc] = w.dispense(rx, line(quantity=1, codes=1))
    [back] = rx.withdraw_dispense(
        clock=w.clock, dispense_no=1, reason="wrong pack", trace_codes={tc.code: tc}
    )
    assert not back.sold
    again = w.sell(tc.code, back, prescription_id=rx.id)
    assert again.sold and again.sales == 2


def test_r8_rejects_code_scanned_as_another_drug(w: World) -> None:
    [code] = trace_codes(1)
    tc = w.sell(code, business_type=BusinessType.OFFLINE)
    tc.return_to_stock(clock=w.clock, business_type=BusinessType.OFFLINE, prescription_id=None, reason="void")
    with refused("R8"):
        w.sell(code, tc, drug_code=AMLODIPINE, business_type=BusinessType.OFFLINE)


# --- R9 the person served is the person settling ------------------------------------------------------


def test_r9_allows_the_patient_served(w: World) -> None:
    rx = w.collected()
    w.settle(rx, patient_ref=PATIENT)
    assert rx.status == "settled" and _settled(rx).patient_ref == PATIENT


def test_r9_rejects_another_person_settling(w: World) -> None:
    rx = w.collected()
    with refused("R9"):
        w.settle(rx, patient_ref="q" * 64)
    enc = w.encounter()
    with refused("R9"):
        enc.settle_consultation(
            clock=w.clock,
            patient=None,
            patient_ref="q" * 64,
            verification_method=RealNameMethod.FACE_RECOGNITION,
            fund="15.00",
            personal_account="5.00",
            self_pay="0.00",
            policy_version="2025.1",
            policy_region=CHANGCHUN,
            settlement_ref="C-1",
        )


def test_r9_records_real_name_verification(w: World) -> None:
    rx = w.collected()
    w.settle(rx)
    settled = rx.pending_events[-1]
    assert settled.verification_method is RealNameMethod.E_VOUCHER  # type: ignore[attr-defined]


# --- R10 out-of-catalog / out-of-indication: self-pay with consent -------------------------------------


def test_r10_rejects_out_of_catalog_without_consent(w: World) -> None:
    with refused("R10"):
        w.issued(item(VITAMIN, category=CatalogCategory.NONE))


def test_r10_rejects_category_c_without_consent(w: World) -> None:
    """丙类 drugs are outside the basic catalog's payment: self-pay, so consent is recorded first."""
    with refused("R10"):
        w.issued(item(VITAMIN, category=CatalogCategory.C))


def test_r10_rejects_off_indication_without_consent(w: World) -> None:
    with refused("R10"):
        w.issued(item(off_indication=True))


def test_r10_allows_self_pay_drug_with_consent_and_self_pay_settlement(w: World) -> None:
    rx = w.collected(
        item(METFORMIN),
        item(VITAMIN, quantity=2, unit_price="15.00", category=CatalogCategory.NONE, patient_consent=True),
    )
    w.settle(rx, fund="40.00", personal="10.00", self_pay="30.00")
    assert _paid(rx) == ("40.00", "10.00", "30.00")


def test_r10_rejects_insurance_paying_for_self_pay_drug(w: World) -> None:
    rx = w.collected(
        item(METFORMIN),
        item(VITAMIN, quantity=2, unit_price="15.00", category=CatalogCategory.NONE, patient_consent=True),
    )
    with refused("R10"):
        w.settle(rx, fund="40.00", personal="10.01", self_pay="29.99")


# --- R11 patient suspended for fraud: no insurance payment --------------------------------------------


def _suspended(w: World, until: date | None = None) -> PatientStatus:
    return PatientStatus.suspend_for_fraud(
        None, clock=w.clock, changed_by="agency:220100", patient_ref=PATIENT, reason="forged receipts", until=until
    )


def test_r11_allows_self_pay_only_for_suspended_patient(w: World) -> None:
    rx = w.collected()
    w.settle(rx, fund="0.00", personal="0.00", self_pay="50.00", patient=_suspended(w))
    assert _paid(rx) == ("0.00", "0.00", "50.00")


def test_r11_rejects_fund_or_personal_account_for_suspended_patient(w: World) -> None:
    patient = _suspended(w)
    with refused("R11"):
        w.settle(w.collected(), fund="0.01", personal="0.00", self_pay="49.99", patient=patient)
    with refused("R11"):
        w.settle(w.collected(), fund="0.00", personal="0.01", self_pay="49.99", patient=patient)


def test_r11_applies_to_consultation_fees(w: World) -> None:
    enc = w.encounter()
    with refused("R11"):
        enc.settle_consultation(
            clock=w.clock,
            patient=_suspended(w),
            patient_ref=PATIENT,
            verification_method=RealNameMethod.E_VOUCHER,
            fund="15.00",
            personal_account="5.00",
            self_pay="0.00",
            policy_version="2025.1",
            policy_region=CHANGCHUN,
            settlement_ref="C-1",
        )


def test_r11_suspension_ends_with_reinstatement_or_after_until_date(w: World) -> None:
    patient = _suspended(w)
    patient.reinstate(clock=w.clock, changed_by="agency:220100", reason="appeal upheld")
    after_reinstatement, after_until = w.collected(), w.collected()
    w.settle(after_reinstatement, patient=patient)
    w.settle(after_until, patient=_suspended(w, until=TODAY - timedelta(days=1)))
    assert _paid(after_reinstatement) == _paid(after_until) == ("35.00", "10.00", "5.00")
    with refused("R11"):
        w.settle(w.collected(), patient=_suspended(w, until=TODAY))


# --- R12 off-site: insured region's policy, treatment region's catalog ---------------------------------


def _off_site(w: World) -> Prescription:
    rx = w.issued(encounter=w.encounter(insured_region=JINAN))
    rx.approve(clock=w.clock, pharmacist=w.pharmacist)
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    rx.accept(clock=w.clock, dispenser_id=PHARMACY)
    w.dispense(rx)
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    return rx


def test_r12_off_site_settles_on_insured_region_policy_and_local_catalog(w: World) -> None:
    rx = _off_site(w)
    w.settle(rx, policy_region=JINAN, catalog_region=CHANGCHUN)
    settled = _settled(rx)
    assert (settled.policy_region, settled.catalog_region) == (JINAN, CHANGCHUN)


def test_r12_rejects_off_site_settlement_on_treatment_region_policy(w: World) -> None:
    with refused("R12"):
        w.settle(_off_site(w), policy_region=CHANGCHUN)


def test_r12_rejects_off_site_settlement_on_insured_region_catalog(w: World) -> None:
    with refused("R12"):
        w.settle(_off_site(w), policy_region=JINAN, catalog_region=JINAN)


def test_r12_rejects_local_settlement_on_another_region_policy(w: World) -> None:
    with refused("R12"):
        w.settle(w.collected(), policy_region=JINAN)


# --- R13 dispensed never exceeds prescribed; partial dispenses summed ----------------------------------


def test_r13_allows_partial_dispenses_summing_to_prescribed(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    w.dispense(rx, line(quantity=3))
    assert rx.status == "partially_dispensed"
    w.dispense(rx, line(quantity=1))
    assert rx.status == "dispensed" and rx.dispensed_quantities() == {METFORMIN: 4}


def test_r13_rejects_dispensing_beyond_prescribed(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    with refused("R13"):
        w.dispense(rx, line(quantity=5))
    w.dispense(rx, line(quantity=3))
    with refused("R13"):
        w.dispense(rx, line(quantity=2))


def test_r13_rejects_same_drug_split_over_lines_beyond_prescribed(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    with refused("R13"):
        w.dispense(rx, line(quantity=2), line(quantity=3))


def test_r13_rejects_drug_not_on_prescription(w: World) -> None:
    rx = w.accepted(item(METFORMIN))
    with refused("R13"):
        w.dispense(rx, line(AMLODIPINE, quantity=1))


@pytest.mark.parametrize("stage", ["dispensed", "collected", "settled"])
def test_r13_rejects_dispensing_again_after_a_full_dispense(w: World, stage: str) -> None:
    rx = getattr(w, stage)()
    state, before = rx.status, len(rx.pending_events)
    with refused("R13") as exc:
        w.dispense(rx, line(quantity=1))
    assert exc.value.reason == "prescription already dispensed in full"
    assert exc.value.ids == {"prescription_id": str(rx.id)}
    assert len(rx.pending_events) == before and rx.status == state


def test_r13_full_dispense_is_by_quantities_so_a_closed_remainder_stays_a_state_error(w: World) -> None:
    rx = w.accepted(item(quantity=4))
    w.dispense(rx, line(quantity=3))
    rx.cancel(clock=w.clock, reason="patient request", cancelled_by=HOSPITAL)
    assert rx.status == "dispensed"
    with pytest.raises(IllegalTransition):
        w.dispense(rx, line(quantity=1))


# --- R14 internet / offline / off-site always distinguishable -----------------------------------------


def test_r14_local_visit_is_internet_business_on_every_event(w: World) -> None:
    rx = w.settled()
    assert {e.business_type for e in rx.pending_events} == {BusinessType.INTERNET}  # type: ignore[attr-defined]


def test_r14_visit_outside_insured_region_is_off_site(w: World) -> None:
    rx = _off_site(w)
    assert rx.business_type is BusinessType.OFF_SITE
    assert {e.business_type for e in rx.pending_events} == {BusinessType.OFF_SITE}  # type: ignore[attr-defined]


def test_r14_rejects_offline_sale_tied_to_online_prescription(w: World) -> None:
    rx = w.accepted()
    [code] = trace_codes(1)
    with refused("R14"):
        w.sell(code, business_type=BusinessType.OFFLINE, prescription_id=rx.id)


def test_r14_trace_code_sold_online_carries_prescription_business_type(w: World) -> None:
    rx = w.accepted()
    [tc] = w.dispense(rx, line(quantity=1, codes=1))
    [sold] = tc.pending_events
    assert sold.business_type is BusinessType.INTERNET  # type: ignore[attr-defined]
    assert CHANGCHUN == rx.pooling_region


# --- R19 validity --------------------------------------------------------------------------------------


def test_r19_allows_routing_and_dispensing_until_the_last_instant_of_validity(w: World) -> None:
    rx = w.approved()
    w.clock.set(rx.valid_until)
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    rx.accept(clock=w.clock, dispenser_id=PHARMACY)
    w.dispense(rx, line(quantity=1))
    dispensed = rx.pending_events[-1]
    assert isinstance(dispensed, PrescriptionDispensed) and dispensed.timestamp == rx.valid_until
    assert rx.status == "partially_dispensed"


@pytest.mark.parametrize("command", ["route", "dispense"])
def test_r19_rejects_after_the_validity_with_the_rule_id(w: World, command: str) -> None:
    rx = w.approved() if command == "route" else w.accepted()
    w.clock.set(rx.valid_until + timedelta(microseconds=1))
    with refused("R19") as exc:
        if command == "route":
            rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
        else:
            w.dispense(rx, line(quantity=1))
    assert isinstance(exc.value, ValidityElapsed) and exc.value.rule_id == "R19"
    assert exc.value.reason == f"prescription {rx.id} expired at {rx.valid_until.isoformat()}"
    assert exc.value.ids == {"prescription_id": str(rx.id), "valid_until": rx.valid_until.isoformat()}


def test_r19_validity_is_configurable(w: World) -> None:
    rx = w.issued(rules=RuleConfig(validity_days=5))
    assert rx.valid_until == w.clock.now() + timedelta(days=5)
