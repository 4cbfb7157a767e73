"""The enforced rules of the catalogue (services.domain.rules; DOMAIN.md): for each, a passing case, a refused
or flagged case, and the boundary."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from events.base import BusinessType, CatalogCategory, Ownership, RealNameMethod
from events.encounter import FollowUpVisitRecorded
from events.prescription import (
    DispensedLine,
    PrescriptionDispensed,
    PrescriptionItem,
    PrescriptionSettled,
    RoutingBasis,
    RuleFlagged,
    SplitPack,
)
from services.application.commands import IssuePrescription
from services.domain import (
    DrugListing,
    Encounter,
    IllegalTransition,
    InvalidCommand,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    Prescription,
    RuleConfig,
    RuleViolation,
    TraceCode,
    ValidityElapsed,
)
from services.domain.signature import prescription_content
from services.domain.supply import SupplyLedger
from tests.support.domain import (
    AMLODIPINE,
    AUTHORITY,
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
    sign,
    trace_codes,
)

METFORMIN_XR = "XA10BAA001A002010101"  # metformin of another maker and spec: the same generic drug


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


def _dispensed(rx: Prescription) -> PrescriptionDispensed:
    """The latest dispense recorded."""
    return [e for e in rx.pending_events if isinstance(e, PrescriptionDispensed)][-1]


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
    return w.visit_args(original_diagnosis_date=TODAY)


# --- R2 physician e-signature, registered, not suspended ---------------------------------------------


def test_r2_allows_registered_physician_with_signature(w: World) -> None:
    rx = w.issued()
    assert rx.physician_id == "DR-001"


def test_r2_rejects_unregistered_physician(w: World) -> None:
    with refused("R2"):
        w.issued(physician=None, physician_signature="sig")
    with refused("R2"):
        Encounter.record(**{**_visit_args(w), "physician": None})


def test_r2_rejects_missing_signature(w: World) -> None:
    with refused("R2"):
        w.issued(physician_signature=" ")


def test_r2_rejects_suspended_physician_and_allows_after_reinstatement(w: World) -> None:
    enc = w.encounter()
    w.physician.suspend(clock=w.clock, changed_by=AUTHORITY, reason="licence under review")
    with refused("R2"):
        w.issued(encounter=enc)
    with refused("R2"):
        w.encounter()
    w.physician.reinstate(clock=w.clock, changed_by=AUTHORITY, reason="cleared")
    rx = w.issued(encounter=enc)
    assert rx.status == "issued" and rx.physician_id == "DR-001"


def test_r2_rejects_physician_registered_at_another_hospital(w: World) -> None:
    other = Physician.register(
        clock=w.clock, changed_by=AUTHORITY, physician_id="DR-001", hospital_id="H-OTHER", name="Dr Li",
        qualification_no="Q-1", public_key=w.physician.public_key,
    )
    with refused("R2"):
        Encounter.record(**{**_visit_args(w), "physician": other})
    with refused("R2"):
        w.issued(physician=other)


def test_r2_rejects_a_free_text_signature(w: World) -> None:
    """Counter-example: any non-blank text was accepted as the physician's e-signature."""
    with refused("R2") as exc:
        w.issued(physician_signature="sig:DR-001")
    assert "does not verify" in exc.value.reason


def test_r2_rejects_a_signature_by_another_key(w: World) -> None:
    args = w.issue_args()
    enc = args["encounter"]
    assert isinstance(enc, Encounter)
    forged = sign("DR-OTHER", hospital_id=HOSPITAL, prescription_ref=args["prescription_ref"], encounter_id=enc.id,
                  physician_id="DR-001", diagnosis_code=enc.diagnosis_code, items=args["items"])
    with refused("R2"):
        Prescription.issue(**{**args, "physician_signature": forged})  # type: ignore[arg-type]


def test_r2_signature_is_bound_to_the_content(w: World) -> None:
    """A signature over 4 boxes of 28 days does not sign 8 boxes, another prescription number or another visit."""
    args = w.issue_args(item(quantity=4))
    assert Prescription.issue(**args).status == "issued"  # type: ignore[arg-type]
    for change in ({"items": [item(quantity=8)]}, {"prescription_ref": "RX-OTHER"},
                   {"encounter": w.encounter()}):
        with refused("R2"):
            Prescription.issue(**{**args, **change})  # type: ignore[arg-type]


def test_r2_rejects_a_physician_without_a_registered_key(w: World) -> None:
    keyless = Physician.register(clock=w.clock, changed_by=AUTHORITY, physician_id="DR-001", hospital_id=HOSPITAL,
                                 name="Dr Li", qualification_no="Q-1")
    with refused("R2") as exc:
        w.issued(physician=keyless)
    assert "no e-signature public key" in exc.value.reason


def test_r2_signature_content_is_canonical() -> None:
    content = prescription_content(hospital_id="H", prescription_ref="RX", encounter_id="e", physician_id="D",
                                   diagnosis_code="E11.9", items=[item()], justification="  ")
    again = prescription_content(hospital_id="H", prescription_ref="RX", encounter_id="e", physician_id="D",
                                 diagnosis_code="E11.9", items=[item()], justification=None)
    assert content == again and content.startswith(b'{"diagnosis_code":"E11.9"')
    assert b"rxtrail/prescription/v1" in content


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


# --- R4 long prescriptions: listed chronic disease, 56 days, 90 in a declared emergency, per generic drug -


def test_r4_allows_56_days_supply(w: World) -> None:
    rx = w.issued(item(days_supply=56))
    assert rx.status == "issued" and [i.days_supply for i in rx.items] == [56]
    assert rx.chronic_listed is True and rx.emergency_declared is False


def test_r4_rejects_57_days_supply(w: World) -> None:
    with refused("R4"):
        w.issued(item(days_supply=57))


def test_r4_rejects_a_long_prescription_for_a_cold(w: World) -> None:
    """Counter-example: J06.9 (a cold) with 56 days was accepted; only the region's chronic list qualifies."""
    cold = w.encounter(diagnosis_code="J06.9", original_code="J06.9")
    with refused("R4") as exc:
        w.issued(item(days_supply=56), encounter=cold)
    assert exc.value.ids["diagnosis_code"] == "J06.9"
    with refused("R4"):
        w.issued(item(days_supply=8), encounter=cold)
    assert w.issued(item(days_supply=7), encounter=cold).chronic_listed is False


def test_r4_a_disease_removed_from_the_list_no_longer_qualifies(w: World) -> None:
    assert w.chronic_list is not None
    w.chronic_list.remove(clock=w.clock, changed_by=AUTHORITY, disease_code="E11", reason="list revised",
                          effective_from=TODAY)
    with refused("R4"):
        w.issued(item(days_supply=28))


def test_r4_without_a_declared_emergency_90_days_are_refused(w: World) -> None:
    """Counter-example: the emergency was a boolean the hospital set on its own prescription."""
    with refused("R4"):
        w.issued(item(days_supply=90))
    assert "emergency_declared" not in IssuePrescription.model_fields
    with pytest.raises(ValidationError):
        IssuePrescription.model_validate({
            "hospital_id": HOSPITAL, "prescription_ref": "RX-1", "encounter_id": w.encounter().id,
            "physician_signature": "x", "items": [item(days_supply=90)], "emergency_declared": True})


def test_r4_allows_90_days_while_the_authority_declares_an_emergency(w: World) -> None:
    w.declare_emergency(valid_from=TODAY, valid_until=TODAY)
    rx = w.issued(item(days_supply=90))
    assert rx.emergency_declared
    with refused("R4"):
        w.issued(item(days_supply=91))
    w.clock.advance(timedelta(days=1))  # the declaration's last day has passed
    with refused("R4"):
        w.issued(item(days_supply=90), encounter=w.encounter())


def test_r4_limits_are_configurable(w: World) -> None:
    rx = w.issued(item(days_supply=30), rules=RuleConfig(long_rx_max_days=30))
    assert rx.status == "issued"
    with refused("R4"):
        w.issued(item(days_supply=31), rules=RuleConfig(long_rx_max_days=30))


def _reserve(w: World, rx: Prescription, ledgers: dict[str, SupplyLedger | None]) -> None:
    for ledger in rx.reserve_supply(clock=w.clock, generic_of=GENERIC, ledgers=ledgers):
        ledgers[ledger.generic_code] = ledger


GENERIC = {METFORMIN: "XA10BAA001", METFORMIN_XR: "XA10BAA001", AMLODIPINE: "XC08CAA001"}


def test_r4_counts_supply_per_patient_and_generic_across_prescriptions(w: World) -> None:
    """Counter-example: one visit, three metformin prescriptions of 56 days each were all accepted (168 days)."""
    enc = w.encounter()
    ledgers: dict[str, SupplyLedger | None] = {}
    _reserve(w, w.issued(item(days_supply=56), encounter=enc), ledgers)
    with refused("R4") as exc:
        _reserve(w, w.issued(item(days_supply=56), encounter=enc), ledgers)
    assert exc.value.ids["running_days"] == "56" and exc.value.ids["generic_code"] == "XA10BAA001"
    with refused("R4"):  # another maker's metformin is the same generic drug
        _reserve(w, w.issued(item(METFORMIN_XR, days_supply=1), encounter=enc), ledgers)
    _reserve(w, w.issued(item(AMLODIPINE, days_supply=56), encounter=enc), ledgers)  # another generic


def test_r4_counts_only_the_days_still_running(w: World) -> None:
    ledgers: dict[str, SupplyLedger | None] = {}
    _reserve(w, w.issued(item(days_supply=56)), ledgers)
    w.clock.advance(timedelta(days=30))  # 26 days left
    enc = w.encounter()
    with refused("R4"):
        _reserve(w, w.issued(item(days_supply=31), encounter=enc), ledgers)
    _reserve(w, w.issued(item(days_supply=30), encounter=enc), ledgers)
    ledger = ledgers["XA10BAA001"]
    assert ledger is not None and ledger.running_days(w.clock.now().date()) == 56


@pytest.mark.parametrize("ending", ["rejected", "cancelled", "expired"])
def test_r4_a_prescription_that_ended_releases_its_supply(w: World, ending: str) -> None:
    ledgers: dict[str, SupplyLedger | None] = {}
    rx = w.issued(item(days_supply=56))
    _reserve(w, rx, ledgers)
    if ending == "rejected":
        rx.reject(clock=w.clock, pharmacist=w.pharmacist, reasons=["dose"])
    elif ending == "cancelled":
        rx.cancel(clock=w.clock, reason="patient request", cancelled_by=HOSPITAL)
    else:
        w.clock.advance(timedelta(days=4))
        rx.expire(clock=w.clock)
    [released] = rx.release_supply(clock=w.clock, generic_of=GENERIC, ledgers=ledgers, reason=ending)
    assert released.running_days(w.clock.now().date()) == 0
    _reserve(w, w.issued(item(days_supply=56), encounter=w.encounter()), ledgers)


def test_r4_a_closed_remainder_keeps_the_dispensed_share(w: World) -> None:
    ledgers: dict[str, SupplyLedger | None] = {}
    rx = w.accepted(item(quantity=4, days_supply=56))
    _reserve(w, rx, ledgers)
    w.dispense(rx, line(quantity=1, codes=1))
    rx.cancel(clock=w.clock, reason="patient request", cancelled_by=HOSPITAL)
    [ledger] = rx.release_supply(clock=w.clock, generic_of=GENERIC, ledgers=ledgers, reason="cancelled")
    assert ledger.running_days(TODAY) == 14
    assert rx.release_supply(clock=w.clock, generic_of=GENERIC, ledgers=ledgers, reason="again") == []


def test_r4_running_prescriptions_release_nothing(w: World) -> None:
    ledgers: dict[str, SupplyLedger | None] = {}
    rx = w.approved(item(days_supply=56))
    _reserve(w, rx, ledgers)
    assert rx.release_supply(clock=w.clock, generic_of=GENERIC, ledgers=ledgers, reason="x") == []


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


# --- R7 price caps and payment standards from the registry on the day of the dispense (R17) ----------------


def _over_cap(w: World) -> Prescription:
    """A retail pharmacy sells 4 packs at 12.50 where the registry caps the drug at 10.00."""
    rx = w.approved(item(unit_price="12.50"))
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    rx.accept(clock=w.clock, dispenser_id=PHARMACY)
    w.dispense(rx, line(cap="10.00"))
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    return rx


def _in_house(w: World, *items: PrescriptionItem) -> Prescription:
    rx = w.approved(*(items or (item(unit_price="12.50"),)))
    rx.route(clock=w.clock, pharmacy=None, basis=RoutingBasis.ROUTING_RULE)
    rx.accept(clock=w.clock, dispenser_id=HOSPITAL)
    return rx


def _registry(w: World, cap: str | None = "12.50", standard: str | None = None) -> dict[str, DrugListing | None]:
    return {METFORMIN: w.listing(METFORMIN, cap=cap, standard=standard)}


def _request(quantity: int = 4, unit_price: str = "12.50", codes: int | None = None) -> DispensedLine:
    """A dispense request line as a dispenser sends it: no cap, no standard (the registry holds them)."""
    return line(quantity=quantity, unit_price=unit_price, codes=codes)


def test_r7_flags_price_above_cap_at_dispense(w: World) -> None:
    rx = _over_cap(w)
    [flag] = flags(rx)
    assert flag.rule_id == "R7" and flag.details["price_cap"] == "10.00"


def test_r7_no_flag_at_the_cap(w: World) -> None:
    rx = w.dispensed()
    assert flags(rx) == []


def test_r7_cap_and_standard_are_the_registrys_on_the_day_recorded_on_the_event(w: World) -> None:
    rx = w.accepted()
    w.dispense(rx, _request(unit_price="15.00"), listings=_registry(w, cap="11.25", standard="11.00"))
    [recorded] = _dispensed(rx).lines
    assert (recorded.price_cap, recorded.payment_standard) == (Decimal("11.25"), Decimal("11.00"))
    assert recorded.settlement_price == Decimal("11.00")


def test_r7_institution_cap_wins_over_the_regions(w: World) -> None:
    rx = _in_house(w, item(unit_price="9.00"))
    listing = w.listing(METFORMIN, cap="11.25")
    listing.set_price_cap(clock=w.clock, changed_by=AUTHORITY, region=CHANGCHUN, cap=Decimal("8.50"),
                          institution_id=rx.physical_institution_id)
    with refused("R7") as exc:
        w.dispense(rx, _request(unit_price="9.00"), listings={METFORMIN: listing})
    assert exc.value.ids["price_cap"] == "8.50"


def test_r7_internet_hospital_selling_above_its_cap_is_refused(w: World) -> None:
    rx = _in_house(w)
    before = len(rx.pending_events)
    with refused("R7"):
        w.dispense(rx, _request(), listings=_registry(w, cap="10.00"))
    assert len(rx.pending_events) == before and rx.status == "accepted"
    w.dispense(rx, _request(unit_price="10.00"), listings=_registry(w, cap="10.00"))
    assert rx.status == "dispensed" and flags(rx) == []


def test_r7_a_declared_cap_that_disagrees_with_the_registry_is_refused(w: World) -> None:
    """The issue's counter-example: metformin capped at 11.25, the pharmacy declares 15.00 to settle on 15.00."""
    rx = w.accepted()
    declared = _request(unit_price="15.00").model_copy(update={"price_cap": Decimal("15.00")})
    with refused("R17") as exc:
        w.dispense(rx, declared, listings=_registry(w, cap="11.25"))
    assert exc.value.ids["registered"] == "11.25"
    agreeing = _request(unit_price="15.00").model_copy(update={"price_cap": Decimal("11.25")})
    w.dispense(rx, agreeing, listings=_registry(w, cap="11.25"))
    assert _dispensed(rx).lines[0].price_cap == Decimal("11.25")


def test_r7_the_fund_never_pays_above_the_registrys_cap_whatever_the_sale_price(w: World) -> None:
    """100 packs at 15.00 where the registry caps metformin at 11.25: the fund pays on at most 1,125.00."""
    rx = w.accepted(item(quantity=100, unit_price="15.00"))
    w.dispense(rx, _request(quantity=100, unit_price="15.00"), listings=_registry(w, cap="11.25"))
    rx.collect(clock=w.clock, verification_method=RealNameMethod.E_VOUCHER)
    with refused("R7"):
        w.settle(rx, fund="1125.01", personal="0.00", self_pay="374.99")
    w.settle(rx, fund="900.00", personal="225.00", self_pay="375.00")
    assert _paid(rx) == ("900.00", "225.00", "375.00")


def test_r7_an_insurable_drug_the_registry_does_not_list_is_refused(w: World) -> None:
    rx = w.accepted()
    with refused("R17"):
        w.dispense(rx, _request(), listings={METFORMIN: None})


def test_r7_allows_fund_up_to_capped_amount_and_the_excess_to_personal_account_or_self_pay(w: World) -> None:
    rx = _over_cap(w)
    w.settle(rx, fund="40.00", personal="10.00", self_pay="0.00")
    assert _paid(rx) == ("40.00", "10.00", "0.00")


def test_r7_rejects_fund_above_capped_amount(w: World) -> None:
    rx = _over_cap(w)
    with refused("R7"):
        w.settle(rx, fund="40.01", personal="9.99", self_pay="0.00")


# --- R8 one 20-digit trace code per pack, each sold once ------------------------------------------------


def test_r8_first_sale_creates_the_code_aggregate(w: World) -> None:
    rx = w.accepted()
    sold = w.dispense(rx, line(quantity=2, codes=2))
    assert [tc.id for tc in sold] == [TraceCode.id_for(c) for c in rx.trace_codes]
    assert all(tc.sold and tc.prescription_id == rx.id for tc in sold)


@pytest.mark.parametrize("codes", [0, 3, 5], ids=["no-code", "fewer", "more"])
def test_r8_pack_count_must_match_the_codes(w: World, codes: int) -> None:
    """``trace_codes: []`` (or any count but one per pack) is refused, whatever was refused before."""
    rx = w.accepted()
    with refused("R8") as exc:
        w.dispense(rx, line(quantity=4, codes=codes))
    assert exc.value.ids["quantity"] == "4" and rx.status == "accepted"


def test_r8_the_code_format_is_validated_naming_r8(w: World) -> None:
    with pytest.raises(ValidationError, match="R8: a drug traceability code is the 20-digit"):
        line(quantity=1, codes=("1234",))
    with refused("R8"):
        TraceCode.check_format("1234567890123456789X")


def test_r8_the_pharmacy_must_list_the_drug_where_the_registry_holds_its_list(w: World) -> None:
    rx = w.accepted()
    w.pharmacy.list_drugs(clock=w.clock, changed_by=AUTHORITY, drug_codes=[AMLODIPINE])
    with refused("R17"):
        w.dispense(rx)
    w.pharmacy.list_drugs(clock=w.clock, changed_by=AUTHORITY, drug_codes=[METFORMIN])
    w.dispense(rx)
    assert rx.status == "dispensed"


def test_r8_split_pack_sale_records_the_pack_code_and_the_units(w: World) -> None:
    first = w.accepted(item(quantity=1))
    split = SplitPack(units=10, pack_units=30)
    [tc] = w.dispense(first, line(quantity=1, unit_price="4.00", split=split))
    [recorded] = _dispensed(first).lines
    assert recorded.split == split and len(recorded.trace_codes) == 1
    assert not tc.sold and tc.units_sold == 10
    second = w.accepted(item(quantity=1))
    again = w.dispense(second, line(quantity=1, unit_price="8.00", codes=(tc.code,),
                                    split=SplitPack(units=20, pack_units=30)), held={tc.code: tc})
    assert again == [tc] and tc.sold and tc.units_sold == 30
    third = w.accepted(item(quantity=1))
    with refused("R8"):
        w.dispense(third, line(quantity=1, codes=(tc.code,), split=SplitPack(units=1, pack_units=30)),
                   held={tc.code: tc})


def test_r8_an_opened_pack_is_never_sold_whole_nor_beyond_what_it_holds(w: World) -> None:
    rx = w.accepted(item(quantity=1))
    [tc] = w.dispense(rx, line(quantity=1, unit_price="4.00", split=SplitPack(units=10, pack_units=30)))
    other = w.accepted(item(quantity=1))
    with refused("R8"):
        w.dispense(other, line(quantity=1, codes=(tc.code,)), held={tc.code: tc})
    with refused("R8"):
        w.dispense(other, line(quantity=1, codes=(tc.code,), split=SplitPack(units=21, pack_units=30)),
                   held={tc.code: tc})


def test_r8_split_sale_is_quantity_one_with_one_code(w: World) -> None:
    rx = w.accepted()
    with refused("R8"):
        w.dispense(rx, line(quantity=2, codes=1, split=SplitPack(units=10, pack_units=30)))
    with pytest.raises(ValidationError, match="part of a pack"):
        SplitPack(units=30, pack_units=30)


def test_r8_rejects_second_sale_and_flags_the_attempt(w: World) -> None:
    first = w.accepted()
    [tc] = w.dispense(first, line(quantity=1, codes=1))
    second = w.accepted()
    before = len(second.pending_events)
    with refused("R8") as exc:
        w.dispense(second, line(quantity=1, codes=(tc.code,)), held={tc.code: tc})
    assert len(second.pending_events) == before
    assert exc.value.ids["sold_for"] == str(first.id)
    second.record_flag(clock=w.clock, violation=exc.value)
    [flag] = flags(second)
    assert flag.rule_id == "R8" and flag.details["trace_code"] == tc.code
    assert second.status == "accepted"


def test_r8_rejects_same_code_twice_in_one_dispense(w: World) -> None:
    rx = w.accepted()
    [code] = trace_codes(1)
    with refused("R8"):
        w.dispense(rx, line(quantity=2, codes=(code, code)))


def test_r8_returned_packs_release_their_codes_and_leave_the_rest(w: World) -> None:
    rx = w.accepted()
    sold = w.dispense(rx, line(quantity=4))
    held = {tc.code: tc for tc in sold}
    back, kept = rx.trace_codes[:2], rx.trace_codes[2:]
    released = rx.return_packs(clock=w.clock, dispenser_id=PHARMACY, codes=back, reason="unsold: pack damaged",
                               trace_codes=held)
    assert [tc.code for tc in released] == list(back) and not any(tc.sold for tc in released)
    assert rx.status == "partially_dispensed" and rx.trace_codes == kept
    assert rx.dispensed_quantities() == {METFORMIN: 2}
    again = w.accepted()
    w.dispense(again, line(quantity=1, codes=(back[0],)), held={back[0]: held[back[0]]})
    with pytest.raises(InvalidCommand):
        rx.return_packs(clock=w.clock, dispenser_id=PHARMACY, codes=[back[0]], reason="again", trace_codes=held)


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
        None, clock=w.clock, changed_by=AUTHORITY, patient_ref=PATIENT, reason="forged receipts", until=until
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
    patient.reinstate(clock=w.clock, changed_by=AUTHORITY, reason="appeal upheld")
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


# --- R15 consultation fee at most the region's outpatient consultation price (public institutions) -------


def test_r15_allows_a_fee_at_the_regions_price(w: World) -> None:
    assert w.encounter(consultation_fee="20.00", consultation_standard=Decimal("20.00")).consultation_fee == 20


def test_r15_rejects_a_public_institution_charging_above_the_regions_price(w: World) -> None:
    with refused("R15") as exc:
        w.encounter(consultation_fee="20.01", consultation_standard=Decimal("20.00"))
    assert exc.value.ids["standard"] == "20.00"


def test_r15_a_non_public_institution_may_charge_above_it(w: World) -> None:
    enc = w.encounter(ownership=Ownership.NON_PUBLIC, consultation_fee="30.00", consultation_standard=Decimal("20.00"))
    assert enc.institution_ownership is Ownership.NON_PUBLIC


# --- R16 / R1 on the issue day: the original diagnosis was made offline, within the window -------------


def test_r16_allows_a_diagnosis_made_at_a_registered_physical_institution(w: World) -> None:
    enc = w.encounter()
    assert enc.original_institution_id == "P-OFFLINE-001" != enc.hospital_id


def test_r16_rejects_a_diagnosis_made_at_the_internet_hospital_itself(w: World) -> None:
    """Counter-example: the "offline" institution could be the internet hospital itself."""
    with refused("R16") as exc:
        w.encounter(original_institution_id=HOSPITAL, original_institution=w.hospital)
    assert exc.value.ids == {"original_institution_id": HOSPITAL}


def test_r16_rejects_an_unregistered_or_internet_original_institution(w: World) -> None:
    with refused("R16"):
        w.encounter(original_institution_id="CLINIC-NOBODY-KNOWS", original_institution=None)
    other_internet = w.hospital.model_copy(update={"institution_id": "H-OTHER-ONLINE"})
    with refused("R16"):
        w.encounter(original_institution_id="H-OTHER-ONLINE", original_institution=other_internet)


def test_r16_is_checked_again_when_the_prescription_is_issued(w: World) -> None:
    enc = w.encounter()
    with refused("R16"):
        w.issued(encounter=enc, original_institution=None)


def test_r1_rejects_a_prescription_issued_after_the_window_of_the_original_diagnosis(w: World) -> None:
    """Counter-example: a prescription issued 200 days after its visit (original diagnosis 280 days old) was
    accepted because R1 was checked only at the visit."""
    enc = w.encounter(original_date=TODAY - timedelta(days=80))
    assert w.issued(encounter=enc).status == "issued"
    w.clock.advance(timedelta(days=200))
    with refused("R1") as exc:
        w.issued(encounter=enc)
    assert exc.value.ids["original_diagnosis_date"] == str(TODAY - timedelta(days=80))


def test_r1_on_the_issue_day_boundary(w: World) -> None:
    enc = w.encounter(original_date=date(2024, 12, 11))
    w.clock.advance(timedelta(days=1))  # 11 March: the diagnosis is exactly 3 months old
    assert w.issued(encounter=enc).status == "issued"
    w.clock.advance(timedelta(days=1))
    with refused("R1"):
        w.issued(encounter=enc)


# --- R17 registry facts: institutions under agreement, the patient's insurance --------------------------


def test_r17_visit_takes_institution_and_insurance_facts_from_the_registry(w: World) -> None:
    [visit] = w.encounter().pending_events
    assert isinstance(visit, FollowUpVisitRecorded)
    assert (visit.physical_institution_id, visit.institution_ownership, visit.pooling_region, visit.insured_region,
            visit.insurance_type) == ("P-CC-001", "public", CHANGCHUN, CHANGCHUN, "employee")


@pytest.mark.parametrize(("field", "value"), [
    ("insured_region", JINAN), ("insurance_type", "resident"), ("pooling_region", JINAN),
    ("physical_institution_id", "P-ELSEWHERE"), ("institution_ownership", "non_public"),
])
def test_r17_rejects_a_visit_whose_request_contradicts_the_registry(w: World, field: str, value: str) -> None:
    """Counter-example: insured region and insurance type were whatever the hospital declared on the visit."""
    with refused("R17") as exc:
        w.encounter(declared={field: value})
    assert exc.value.ids["field"] == field


def test_r17_a_request_repeating_the_registry_is_accepted(w: World) -> None:
    enc = w.encounter(declared={"insured_region": CHANGCHUN, "insurance_type": "employee", "pooling_region": None})
    assert enc.insured_region == CHANGCHUN


def test_r17_rejects_a_patient_without_registered_insurance(w: World) -> None:
    with refused("R17"):
        w.encounter(insurance=None)


def test_r17_rejects_an_unregistered_hospital_or_one_that_is_not_an_internet_hospital(w: World) -> None:
    with refused("R17"):
        w.encounter(hospital=None)
    with refused("R17"):
        w.encounter(hospital=w.physical)


@pytest.mark.parametrize("suspended", ["hospital", "physical"])
def test_r17_rejects_visit_and_issue_when_an_agreement_is_suspended(w: World, suspended: str) -> None:
    enc = w.encounter()
    institution = w.hospital if suspended == "hospital" else w.physical
    institution.suspend_agreement(clock=w.clock, changed_by=AUTHORITY, reason="audit")
    with refused("R17"):
        w.encounter()
    with refused("R17"):
        w.issued(encounter=enc)


# --- R18 reviewing pharmacists: the hospital's own, or a third party under a cooperation agreement -----


def _third_party(w: World, *hospitals: str) -> Pharmacist:
    third = Pharmacist.register(clock=w.clock, changed_by=AUTHORITY, pharmacist_id="RPH-3", name="Sun",
                                qualification_no="Q", third_party=True, company_id="ReviewCo")
    for n, hospital in enumerate(hospitals):
        third.record_agreement(clock=w.clock, changed_by=AUTHORITY, hospital_id=hospital, agreement_no=f"CA-{n}")
    return third


def test_r18_rejects_a_third_party_pharmacist_without_agreement(w: World) -> None:
    """Counter-example: any third-party pharmacist approved any hospital's prescriptions."""
    rx = w.issued()
    with refused("R18"):
        rx.approve(clock=w.clock, pharmacist=_third_party(w, "H-OTHER"))
    with refused("R18"):
        rx.reject(clock=w.clock, pharmacist=_third_party(w), reasons=["dose"])
    assert rx.status == "issued"


def test_r18_allows_a_third_party_pharmacist_with_a_cooperation_agreement(w: World) -> None:
    rx = w.issued()
    rx.approve(clock=w.clock, pharmacist=_third_party(w, HOSPITAL))
    assert rx.status == "approved"


def test_r18_agreement_ended_or_pharmacist_suspended(w: World) -> None:
    third = _third_party(w, HOSPITAL)
    third.end_agreement(clock=w.clock, changed_by=AUTHORITY, hospital_id=HOSPITAL, reason="ended")
    with refused("R18"):
        w.issued().approve(clock=w.clock, pharmacist=third)
    w.pharmacist.suspend(clock=w.clock, changed_by=AUTHORITY, reason="review")
    with refused("R18"):
        w.issued().approve(clock=w.clock, pharmacist=w.pharmacist)


def test_r18_employed_pharmacist_reviews_only_for_its_employer(w: World) -> None:
    outsider = Pharmacist.register(clock=w.clock, changed_by=AUTHORITY, pharmacist_id="RPH-9", employer_id="H-OTHER",
                                   name="Zhao", qualification_no="Q")
    with refused("R18"):
        w.issued().approve(clock=w.clock, pharmacist=outsider)
    physical_staff = Pharmacist.register(clock=w.clock, changed_by=AUTHORITY, pharmacist_id="RPH-P",
                                         employer_id="P-CC-001", name="Qian", qualification_no="Q")
    rx = w.issued()
    rx.approve(clock=w.clock, pharmacist=physical_staff)  # the internet hospital's physical institution
    assert rx.status == "approved"


# --- R12 off-site: the long-term off-site registration on the visit day -----------------------------------


def _visit_event(enc: Encounter) -> FollowUpVisitRecorded:
    [visit] = [e for e in enc.pending_events if isinstance(e, FollowUpVisitRecorded)]
    return visit


def test_r12_off_site_visit_without_filing_records_it(w: World) -> None:
    """Counter-example: off-site patients settled with fund money with no 备案 at all: the visit now records
    whether one was valid (the settlement reads ``offsite_filing_valid``)."""
    visit = _visit_event(w.encounter(insured_region=JINAN))
    assert visit.business_type is BusinessType.OFF_SITE and visit.offsite_filing_valid is False


def test_r12_off_site_visit_with_a_filing_valid_on_the_day(w: World) -> None:
    w.insurance[JINAN].record_filing(clock=w.clock, changed_by="agency:370100", filing_no="F-1", region=CHANGCHUN,
                                     valid_from=TODAY, valid_until=TODAY)
    assert _visit_event(w.encounter(insured_region=JINAN)).offsite_filing_valid is True
    w.clock.advance(timedelta(days=1))
    assert _visit_event(w.encounter(insured_region=JINAN)).offsite_filing_valid is False


def test_r12_filing_for_another_region_does_not_count(w: World) -> None:
    w.insurance[JINAN].record_filing(clock=w.clock, changed_by="agency:370100", filing_no="F-2", region="532300",
                                     valid_from=TODAY)
    assert _visit_event(w.encounter(insured_region=JINAN)).offsite_filing_valid is False


def test_r12_local_visit_records_no_filing(w: World) -> None:
    assert _visit_event(w.encounter()).offsite_filing_valid is None


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


def test_r19_the_prescribing_physician_extends_to_at_most_three_days_after_issue(w: World) -> None:
    rx = w.approved()
    rx.valid_until = rx.issued_at + timedelta(hours=14)  # as if valid on the day of issue only
    latest = rx.issued_at + timedelta(days=3)
    with refused("R19"):
        rx.extend_validity(clock=w.clock, physician_id="DR-OTHER", valid_until=latest, reason="patient travels")
    with refused("R19"):
        rx.extend_validity(clock=w.clock, physician_id=rx.physician_id, valid_until=latest + timedelta(seconds=1),
                           reason="patient travels")
    rx.extend_validity(clock=w.clock, physician_id=rx.physician_id, valid_until=latest, reason="patient travels")
    assert rx.valid_until == latest
    w.clock.set(latest)
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)


def test_r19_an_elapsed_prescription_is_not_extended(w: World) -> None:
    rx = w.approved()
    rx.valid_until = rx.issued_at + timedelta(hours=1)
    w.clock.set(rx.valid_until + timedelta(seconds=1))
    with refused("R19"):
        rx.extend_validity(clock=w.clock, physician_id=rx.physician_id,
                           valid_until=rx.issued_at + timedelta(days=2), reason="late")


# --- routing by the patient's choice (R17: the recorded choice, not the request) ------------------------


def test_routing_patient_choice_refuses_another_pharmacy(w: World) -> None:
    rx = w.approved(preferred_pharmacy_id=PHARMACY)
    other = Pharmacy.designate(clock=w.clock, changed_by=AUTHORITY, pharmacy_id="PH-CC-002", name="Yida",
                               pooling_region=CHANGCHUN, agreement_no="A-2")
    for basis in RoutingBasis:
        with refused("R17") as exc:
            rx.route(clock=w.clock, pharmacy=other, basis=basis, chosen=w.pharmacy)
        assert exc.value.ids["preferred_pharmacy_id"] == PHARMACY
    with refused("R17"):
        rx.route(clock=w.clock, pharmacy=None, basis=RoutingBasis.PATIENT_CHOICE, chosen=w.pharmacy)
    rx.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    assert rx.dispenser_id == PHARMACY


def test_routing_patient_choice_falls_back_once_the_chosen_pharmacy_cannot_take_it(w: World) -> None:
    other = Pharmacy.designate(clock=w.clock, changed_by=AUTHORITY, pharmacy_id="PH-CC-002", name="Yida",
                               pooling_region=CHANGCHUN, agreement_no="A-2")
    returned = w.approved(preferred_pharmacy_id=PHARMACY)
    returned.route(clock=w.clock, pharmacy=w.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    returned.decline(clock=w.clock, dispenser_id=PHARMACY, reason="out of stock")
    returned.route(clock=w.clock, pharmacy=other, basis=RoutingBasis.ROUTING_RULE, chosen=w.pharmacy)
    unregistered = w.approved(preferred_pharmacy_id="PH-NOBODY")
    unregistered.route(clock=w.clock, pharmacy=other, basis=RoutingBasis.ROUTING_RULE, chosen=None)
    suspended = w.approved(preferred_pharmacy_id=PHARMACY)
    w.pharmacy.suspend_agreement(clock=w.clock, changed_by=AUTHORITY, reason="audit")
    suspended.route(clock=w.clock, pharmacy=other, basis=RoutingBasis.ROUTING_RULE, chosen=w.pharmacy)
    assert {returned.dispenser_id, unregistered.dispenser_id, suspended.dispenser_id} == {"PH-CC-002"}
