"""Prescription: the state machine of issue → review → routing → dispensing → delivery → settlement → audit.

处方状态机。每条命令先检查状态与规则，再记录事件；被拒绝的命令不记录任何事件。
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

from pydantic import Field, model_validator

from events.base import ZERO, BusinessType, InsuranceType, Ownership, RealNameMethod, to_money
from events.prescription import (
    DeliveryArranged,
    DispensedLine,
    DispenserKind,
    DispenseWithdrawn,
    FeesClawedBack,
    FeesRefusedInAudit,
    PacksReturned,
    PrescriptionAccepted,
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionCollected,
    PrescriptionDelivered,
    PrescriptionDispensed,
    PrescriptionExpired,
    PrescriptionIssued,
    PrescriptionItem,
    PrescriptionRejected,
    PrescriptionReturned,
    PrescriptionRouted,
    PrescriptionSettled,
    PrescriptionValidityExtended,
    RoutingBasis,
    RuleFlagged,
)
from services.domain.aggregate import Aggregate, make_projector, new_id
from services.domain.clock import Clock
from services.domain.encounter import Encounter, check_split
from services.domain.errors import (
    IllegalTransition,
    InvalidCommand,
    PartyNotEligible,
    RuleViolation,
    TraceCodeNotFound,
)
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.registries import (
    ChronicDiseaseList,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    generic_code_of,
)
from services.domain.rules import (
    check_r1_follow_up,
    check_r2_physician,
    check_r2_signature,
    check_r3_approved,
    check_r4_long_prescription,
    check_r6_fee_disclosed,
    check_r6_fee_self_pay,
    check_r7_not_above_cap,
    check_r7_within_caps,
    check_r8_one_code_per_pack,
    check_r8_scanned_once,
    check_r9_same_person,
    check_r10_consent,
    check_r10_self_pay_lines,
    check_r11_not_suspended,
    check_r12_catalog_region,
    check_r12_policy_region,
    check_r13_not_dispensed_in_full,
    check_r13_on_prescription,
    check_r13_within_prescribed,
    check_r16_diagnosed_offline,
    check_r17_institution_active,
    check_r17_patient_choice,
    check_r17_pharmacy_lists,
    check_r17_registered,
    check_r17_request_agrees,
    check_r18_may_review,
    check_r19_extension,
    check_r19_valid,
    flag_r5_beyond_first_visit,
    flag_r7_above_cap,
    r4_supply_limit,
)
from services.domain.signature import prescription_content
from services.domain.supply import SupplyLedger
from services.domain.trace_code import TraceCode


class RxStatus(StrEnum):
    ISSUED = "issued"
    APPROVED = "approved"
    REJECTED = "rejected"
    ROUTED = "routed"
    ACCEPTED = "accepted"
    PARTIALLY_DISPENSED = "partially_dispensed"
    DISPENSED = "dispensed"
    DELIVERY_ARRANGED = "delivery_arranged"
    DELIVERED = "delivered"
    COLLECTED = "collected"
    SETTLED = "settled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


S = RxStatus


class Lines(StrEnum):
    ALL = "all"
    SELF_PAY_ONLY = "self_pay_only"
    INSURABLE = "insurable"


def _actual(line: DispensedLine) -> Decimal:
    return line.unit_price


def _capped(line: DispensedLine) -> Decimal:
    """R7: insurance pays on min(actual, payment standard, cap) of the registry's values recorded at the dispense."""
    return line.settlement_price


NOT_APPROVED = frozenset({S.ISSUED, S.REJECTED})
ENDED = frozenset({S.REJECTED, S.CANCELLED, S.EXPIRED})
"""Ended before being dispensed in full: the days of supply not dispensed go back to the patient's ledger (R4)."""
BEFORE_DISPENSE = frozenset({S.ISSUED, S.APPROVED, S.ROUTED, S.ACCEPTED})


class Prescription(Aggregate):
    """电子处方。"""

    creation_event = PrescriptionIssued

    status: RxStatus
    business_type: BusinessType
    encounter_id: UUID
    hospital_id: str
    physical_institution_id: str
    institution_ownership: Ownership
    pooling_region: str
    insured_region: str
    insurance_type: InsuranceType
    patient_ref: str
    physician_id: str
    items: tuple[PrescriptionItem, ...]
    valid_until: datetime
    issued_at: datetime
    emergency_declared: bool = False
    chronic_listed: bool | None = None
    pharmacist_id: str | None = None
    dispenser_kind: DispenserKind | None = None
    dispenser_id: str | None = None
    dispenser_ownership: Ownership | None = None
    dispenses: dict[int, tuple[DispensedLine, ...]] = Field(default_factory=dict)
    last_dispense_no: int = 0
    remainder_closed_as: RxStatus | None = None
    preferred_pharmacy_id: str | None = None
    returned_by: frozenset[str] = frozenset()
    delivery_enterprise_id: str | None = None
    delivery_fee: Decimal = ZERO
    total: Decimal | None = None
    fund: Decimal | None = None
    personal_account: Decimal | None = None
    self_pay: Decimal | None = None
    refused: Decimal = ZERO
    clawed_back: Decimal = ZERO
    flags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _issued_at_of_old_snapshots(cls, data: Any) -> Any:
        """A snapshot taken before ``issued_at`` was kept: every prescription was then valid ``validity_days`` (the
        default) from its issue."""
        if isinstance(data, dict) and "issued_at" not in data and "valid_until" in data:
            until = data["valid_until"]
            until = datetime.fromisoformat(until) if isinstance(until, str) else until
            data = {**data, "issued_at": until - timedelta(days=DEFAULT_RULES.validity_days)}
        return data

    # --- issue ----------------------------------------------------------------------------------
    @classmethod
    def issue(
        cls,
        *,
        clock: Clock,
        encounter: Encounter,
        hospital: Institution | None,
        physical: Institution | None,
        original_institution: Institution | None,
        physician: Physician | None,
        physician_signature: str,
        prescription_ref: str,
        items: Sequence[PrescriptionItem],
        first_visit_drug_codes: Collection[str],
        chronic_list: ChronicDiseaseList | None,
        emergencies: EmergencyDeclarations | None,
        justification: str | None = None,
        patient_sealed: str | None = None,
        preferred_pharmacy_id: str | None = None,
        rules: RuleConfig = DEFAULT_RULES,
        prescription_id: UUID | None = None,
    ) -> Self:
        """Issue a prescription from a follow-up visit with the registries' facts of the issue day (R17): the
        hospital and its physical institution still under agreement; R1 and R16 again on this day; R2 the physician
        registered, active, of this hospital, and the signature verifying over the content; R4 the chronic disease
        list and the declared emergency of the region (the running supply per generic drug is the ledger's, see
        :meth:`reserve_supply`); R10 reject; R5 flags.

        ``first_visit_drug_codes`` are the drugs of the first-visit (offline) prescription for R5;
        ``preferred_pharmacy_id`` is the patient's chosen pharmacy, checked only when the prescription is routed.
        """
        if not items:
            raise InvalidCommand("a prescription needs at least one item", encounter_id=encounter.id)
        codes = [item.drug_code for item in items]
        duplicated = [code for code, n in Counter(codes).items() if n > 1]
        if duplicated:
            raise InvalidCommand("each drug appears once per prescription", drug_code=duplicated[0])
        today = rules.local_date(clock.now())
        check_r17_institution_active(hospital, physical, encounter.hospital_id, today)
        check_r1_follow_up(
            diagnosis_code=encounter.diagnosis_code,
            original_diagnosis_code=encounter.original_diagnosis_code,
            original_diagnosis_date=encounter.original_diagnosis_date or today,
            today=today,
            rules=rules,
        )
        check_r16_diagnosed_offline(original_institution, encounter.original_institution_id, encounter.hospital_id)
        physician = check_r2_physician(physician, encounter.physician_id, encounter.hospital_id, physician_signature)
        justification = justification.strip() if justification and justification.strip() else None
        content = prescription_content(
            hospital_id=encounter.hospital_id, prescription_ref=prescription_ref, encounter_id=encounter.id,
            physician_id=encounter.physician_id, diagnosis_code=encounter.diagnosis_code, items=items,
            justification=justification, preferred_pharmacy_id=preferred_pharmacy_id,
        )
        check_r2_signature(physician, physician_signature, content, encounter_id=encounter.id)
        chronic_listed = chronic_list is not None and chronic_list.covers(encounter.diagnosis_code, today)
        emergency_declared = emergencies is not None and emergencies.declared_on(today)
        check_r4_long_prescription(
            items, diagnosis_code=encounter.diagnosis_code, chronic_listed=chronic_listed,
            emergency_declared=emergency_declared, rules=rules, encounter_id=encounter.id,
        )
        for item in items:
            check_r10_consent(
                item.self_pay_only,
                item.patient_consent,
                "out-of-catalog or out-of-indication drug needs recorded patient consent (self-pay)",
                drug_code=item.drug_code,
                encounter_id=encounter.id,
            )
        now = clock.now()
        prescription = cls._create(
            PrescriptionIssued,
            clock,
            prescription_id or new_id(),
            prescription_ref=prescription_ref,
            business_type=encounter.business_type,
            encounter_id=encounter.id,
            hospital_id=encounter.hospital_id,
            physical_institution_id=encounter.physical_institution_id,
            institution_ownership=encounter.institution_ownership,
            pooling_region=encounter.pooling_region,
            insured_region=encounter.insured_region,
            insurance_type=encounter.insurance_type,
            patient_ref=encounter.patient_ref,
            patient_sealed=patient_sealed,
            physician_id=encounter.physician_id,
            physician_signature=physician_signature,
            diagnosis_code=encounter.diagnosis_code,
            diagnosis_name=encounter.diagnosis_name,
            items=tuple(items),
            valid_until=now + timedelta(days=rules.validity_days),
            emergency_declared=emergency_declared,
            chronic_listed=chronic_listed,
            justification=justification,
            preferred_pharmacy_id=preferred_pharmacy_id,
        )
        if finding := flag_r5_beyond_first_visit(codes, first_visit_drug_codes, justification):
            prescription.record_flag(clock=clock, violation=finding)
        return prescription

    # --- R4 supply per patient and generic drug -------------------------------------------------
    def supply_days(self, generic_of: Mapping[str, str]) -> dict[str, int]:
        """Days of supply this prescription holds per generic drug (items of one generic add up; a drug missing
        from ``generic_of`` counts as the generic its national code names)."""
        days: Counter[str] = Counter()
        for item in self.items:
            days[generic_of.get(item.drug_code) or generic_code_of(item.drug_code)] += item.days_supply
        return dict(days)

    def reserve_supply(
        self,
        *,
        clock: Clock,
        generic_of: Mapping[str, str],
        ledgers: Mapping[str, SupplyLedger | None],
        rules: RuleConfig = DEFAULT_RULES,
    ) -> list[SupplyLedger]:
        """R4 across prescriptions: reserve this prescription's days on the patient's ledger of each generic drug
        (``ledgers``: generic code -> the repository's ledger or None). Returns the ledgers to save with it."""
        limit = r4_supply_limit(chronic_listed=bool(self.chronic_listed), emergency_declared=self.emergency_declared,
                                rules=rules)
        today = rules.local_date(self.issued_at)
        drug_of = {generic_of.get(i.drug_code) or generic_code_of(i.drug_code): i.drug_code for i in self.items}
        return [
            SupplyLedger.reserve(
                ledgers.get(generic), clock=clock, today=today, patient_ref=self.patient_ref, generic_code=generic,
                prescription_id=self.id, drug_code=drug_of[generic], days=days, limit=limit,
            )
            for generic, days in self.supply_days(generic_of).items()
        ]

    def release_supply(
        self, *, clock: Clock, generic_of: Mapping[str, str], ledgers: Mapping[str, SupplyLedger | None], reason: str
    ) -> list[SupplyLedger]:
        """Give back the days not dispensed once the prescription ended (rejected, cancelled, expired, or its
        remainder closed): a partly dispensed item keeps its share of days (rounded up). Returns changed ledgers."""
        if self.status not in ENDED and self.remainder_closed_as is None:
            return []
        dispensed = self.dispensed_quantities()
        keep: Counter[str] = Counter()
        for item in self.items:
            generic = generic_of.get(item.drug_code) or generic_code_of(item.drug_code)
            keep[generic] += -(-item.days_supply * min(dispensed.get(item.drug_code, 0), item.quantity) // item.quantity)
        changed = []
        for generic in self.supply_days(generic_of):
            ledger = ledgers.get(generic)
            if ledger is not None and ledger.release(clock=clock, prescription_id=self.id, keep_days=keep[generic],
                                                     reason=reason):
                changed.append(ledger)
        return changed

    # --- review ---------------------------------------------------------------------------------
    def approve(self, *, clock: Clock, pharmacist: Pharmacist) -> None:
        self._require("approve", S.ISSUED)
        self._require_reviewer(pharmacist)
        self._trigger(
            PrescriptionApproved,
            clock,
            business_type=self.business_type,
            pharmacist_id=pharmacist.pharmacist_id,
        )

    def reject(self, *, clock: Clock, pharmacist: Pharmacist, reasons: Sequence[str]) -> None:
        self._require("reject", S.ISSUED)
        self._require_reviewer(pharmacist)
        cleaned = tuple(r.strip() for r in reasons if r.strip())
        if not cleaned:
            raise InvalidCommand("a rejection needs at least one reason", prescription_id=self.id)
        self._trigger(
            PrescriptionRejected,
            clock,
            business_type=self.business_type,
            pharmacist_id=pharmacist.pharmacist_id,
            reasons=cleaned,
        )

    # --- routing --------------------------------------------------------------------------------
    def route(
        self, *, clock: Clock, pharmacy: Pharmacy | None, basis: RoutingBasis, chosen: Pharmacy | None = None
    ) -> None:
        """Route to a designated pharmacy of the pooling region; ``pharmacy=None`` means the hospital dispenses.

        The patient's recorded choice (``preferred_pharmacy_id``; ``chosen``: its registry record, None if it is not
        registered) is honoured: while that pharmacy can take the prescription (registered, not returned by it,
        agreement active, in the region), routing it anywhere else is refused (R17), whatever basis the request
        states."""
        self._require_approved("route")
        self._require("route", S.APPROVED)
        self._require_valid(clock)
        target = self.hospital_id if pharmacy is None else pharmacy.pharmacy_id
        preferred = self.preferred_pharmacy_id
        if preferred is not None and target != preferred:
            chosen_can_take = (
                preferred not in self.returned_by
                and chosen is not None
                and chosen.agreement_active
                and chosen.pooling_region == self.pooling_region
            )
            check_r17_patient_choice(preferred, target, chosen_can_take, prescription_id=self.id)
        if pharmacy is None:
            kind, dispenser_id, ownership = (
                DispenserKind.HOSPITAL,
                self.hospital_id,
                self.institution_ownership,
            )
        else:
            if not pharmacy.agreement_active:
                raise PartyNotEligible("pharmacy", pharmacy.pharmacy_id, "agreement suspended")
            if pharmacy.pooling_region != self.pooling_region:
                raise PartyNotEligible(
                    "pharmacy", pharmacy.pharmacy_id, f"not in pooling region {self.pooling_region}"
                )
            kind, dispenser_id, ownership = DispenserKind.PHARMACY, pharmacy.pharmacy_id, pharmacy.ownership
        self._trigger(
            PrescriptionRouted,
            clock,
            business_type=self.business_type,
            dispenser_kind=kind,
            dispenser_id=dispenser_id,
            dispenser_ownership=ownership,
            basis=basis,
        )

    def accept(self, *, clock: Clock, dispenser_id: str) -> None:
        self._require_approved("accept")
        self._require("accept", S.ROUTED)
        self._require_dispenser(dispenser_id)
        self._trigger(
            PrescriptionAccepted, clock, business_type=self.business_type, dispenser_id=dispenser_id
        )

    def decline(self, *, clock: Clock, dispenser_id: str, reason: str) -> None:
        """The pharmacy declines; the prescription can be routed again."""
        self._require("decline", S.ROUTED, S.ACCEPTED)
        self._require_dispenser(dispenser_id)
        self._trigger(
            PrescriptionReturned,
            clock,
            business_type=self.business_type,
            dispenser_id=dispenser_id,
            reason=reason,
        )

    # --- dispensing -----------------------------------------------------------------------------
    def dispense(
        self,
        *,
        clock: Clock,
        dispenser_id: str,
        lines: Sequence[DispensedLine],
        trace_codes: Mapping[str, TraceCode | None],
        listings: Mapping[str, DrugListing | None],
        pharmacy: Pharmacy | None = None,
        rules: RuleConfig = DEFAULT_RULES,
    ) -> list[TraceCode]:
        """Dispense (partially or in full): R3, R13, R19, R8, R7 and R17 reject; R7 flags a pharmacy above the cap.

        ``trace_codes`` maps every scanned code to its aggregate from the repository (None if never seen);
        ``listings`` maps every drug dispensed to its registry listing (None if not listed); ``pharmacy`` is the
        dispensing pharmacy's registry record (None when the hospital dispenses). R8: exactly one 20-digit code per
        pack (a split-pack sale: the opened pack's code and the units). R7/R17: the cap and payment standard are the
        registry's on this (China) day, recorded on the event; an internet hospital selling above its cap is refused.
        Returns the trace-code aggregates to save in the same transaction: ``app.save(rx, *codes)``.
        On R8 nothing is recorded; the application then calls ``record_flag(violation=...)``.
        """
        self._require_approved("dispense")
        prescribed = {item.drug_code: item.quantity for item in self.items}
        already = self.dispensed_quantities()
        check_r13_not_dispensed_in_full(already, prescribed, prescription_id=self.id)
        self._require("dispense", S.ACCEPTED, S.PARTIALLY_DISPENSED)
        self._require_dispenser(dispenser_id)
        self._require_valid(clock)
        if not lines:
            raise InvalidCommand("nothing to dispense", prescription_id=self.id)
        by_hospital = self.dispenser_kind is DispenserKind.HOSPITAL
        institution = self.physical_institution_id if by_hospital else dispenser_id
        day = rules.local_date(clock.now())
        self_pay_only = {item.drug_code for item in self.items if item.self_pay_only}
        now_qty: Counter[str] = Counter()
        recorded: list[DispensedLine] = []
        for line in lines:
            check_r13_on_prescription(line.drug_code, prescribed, prescription_id=self.id)
            check_r8_one_code_per_pack(line, prescription_id=self.id)
            if pharmacy is not None:
                check_r17_pharmacy_lists(pharmacy.drug_codes, line.drug_code, pharmacy.pharmacy_id)
            listing = listings.get(line.drug_code)
            if line.drug_code not in self_pay_only:
                check_r17_registered(listing, "drug listing", drug_code=line.drug_code)
            cap = None if listing is None else listing.price_cap_on(self.pooling_region, institution, day)
            standard = None if listing is None else listing.payment_standard_on(self.pooling_region, day)
            check_r17_request_agrees("price_cap", line.price_cap, cap, drug_code=line.drug_code)
            check_r17_request_agrees("payment_standard", line.payment_standard, standard, drug_code=line.drug_code)
            priced = line.model_copy(update={"price_cap": cap, "payment_standard": standard})
            if by_hospital:
                check_r7_not_above_cap(priced, prescription_id=self.id, institution_id=institution)
            recorded.append(priced)
            now_qty[line.drug_code] += line.quantity
        check_r13_within_prescribed(now_qty, already, prescribed, prescription_id=self.id)
        scanned = [(code, line) for line in recorded for code in line.trace_codes]
        check_r8_scanned_once((code for code, _ in scanned), attempted_for=self.id)
        for code, line in scanned:
            if code not in trace_codes:
                raise InvalidCommand("trace code aggregate (or None) not supplied", trace_code=code)
            TraceCode.check_sellable(
                trace_codes[code],
                code=code,
                drug_code=line.drug_code,
                business_type=self.business_type,
                prescription_id=self.id,
                split=line.split,
            )

        complete = all(already.get(c, 0) + now_qty.get(c, 0) == q for c, q in prescribed.items())
        self._trigger(
            PrescriptionDispensed,
            clock,
            business_type=self.business_type,
            dispenser_id=dispenser_id,
            dispense_no=self.last_dispense_no + 1,
            lines=tuple(recorded),
            complete=complete,
        )
        if not by_hospital:
            for finding in flag_r7_above_cap(recorded):
                self.record_flag(clock=clock, violation=finding)
        return [
            TraceCode.sell(
                trace_codes[code],
                clock=clock,
                code=code,
                drug_code=line.drug_code,
                seller_id=dispenser_id,
                business_type=self.business_type,
                prescription_id=self.id,
                patient_ref=self.patient_ref,
                split=line.split,
            )
            for code, line in scanned
        ]

    def withdraw_dispense(
        self, *, clock: Clock, dispense_no: int, reason: str, trace_codes: Mapping[str, TraceCode]
    ) -> list[TraceCode]:
        """Undo one dispense before delivery/collection; its trace codes go back to stock (returned)."""
        self._require("withdraw_dispense", S.PARTIALLY_DISPENSED, S.DISPENSED)
        if dispense_no not in self.dispenses:
            raise InvalidCommand("no such dispense", prescription_id=self.id, dispense_no=dispense_no)
        codes = [code for line in self.dispenses[dispense_no] for code in line.trace_codes]
        missing = [code for code in codes if code not in trace_codes]
        if missing:
            raise TraceCodeNotFound(missing[0])
        for code in codes:
            if not trace_codes[code].sold_for(self.id):
                raise InvalidCommand("trace code is not sold for this prescription", trace_code=code)
        self._trigger(
            DispenseWithdrawn,
            clock,
            business_type=self.business_type,
            dispense_no=dispense_no,
            reason=reason,
            trace_codes=tuple(codes),
        )
        returned = []
        for code in codes:
            tc = trace_codes[code]
            tc.return_to_stock(
                clock=clock, business_type=self.business_type, prescription_id=self.id, reason=reason
            )
            returned.append(tc)
        return returned

    def return_packs(
        self, *, clock: Clock, dispenser_id: str, codes: Sequence[str], reason: str,
        trace_codes: Mapping[str, TraceCode],
    ) -> list[TraceCode]:
        """Packs handed back before delivery or collection (unsold, or returned at the counter): an event on the
        prescription per dispense they were part of, and each code released to stock (R8: it may be sold again).
        The lines lose those packs (a split-pack line its units); a dispense left empty disappears."""
        self._require("return_packs", S.PARTIALLY_DISPENSED, S.DISPENSED)
        self._require_dispenser(dispenser_id)
        wanted = list(dict.fromkeys(codes))
        if not wanted:
            raise InvalidCommand("no trace codes to return", prescription_id=self.id)
        where = {code: no for no, lines in self.dispenses.items() for line in lines for code in line.trace_codes}
        for code in wanted:
            if code not in where:
                raise InvalidCommand("trace code is not dispensed on this prescription", trace_code=code)
            if code not in trace_codes:
                raise TraceCodeNotFound(code)
            if not trace_codes[code].sold_for(self.id):
                raise InvalidCommand("trace code is not sold for this prescription", trace_code=code)
        for dispense_no in sorted({where[code] for code in wanted}):
            self._trigger(
                PacksReturned,
                clock,
                business_type=self.business_type,
                dispense_no=dispense_no,
                trace_codes=tuple(code for code in wanted if where[code] == dispense_no),
                reason=reason,
            )
        released = []
        for code in wanted:
            tc = trace_codes[code]
            tc.return_to_stock(clock=clock, business_type=self.business_type, prescription_id=self.id, reason=reason)
            released.append(tc)
        return released

    # --- validity -------------------------------------------------------------------------------
    def extend_validity(
        self, *, clock: Clock, physician_id: str, valid_until: datetime, reason: str,
        rules: RuleConfig = DEFAULT_RULES,
    ) -> None:
        """R19: the prescribing physician extends a still-valid prescription to at most validity_days after issue."""
        self._require("extend_validity", *BEFORE_DISPENSE, S.PARTIALLY_DISPENSED)
        self._require_valid(clock)
        check_r19_extension(
            issued_at=self.issued_at, valid_until=self.valid_until, requested=valid_until,
            physician_id=physician_id, prescriber_id=self.physician_id, rules=rules, prescription_id=self.id,
        )
        self._trigger(
            PrescriptionValidityExtended,
            clock,
            business_type=self.business_type,
            physician_id=physician_id,
            valid_until=valid_until,
            reason=reason,
        )

    # --- hand-over ------------------------------------------------------------------------------
    def arrange_delivery(
        self, *, clock: Clock, delivery_enterprise_id: str, delivery_fee: Decimal | str, fee_disclosed: bool,
        address_ref: str | None = None,
    ) -> None:
        """R6: the delivery fee is stated to the patient in advance and is always self-pay."""
        self._require("arrange_delivery", S.DISPENSED)
        fee = to_money(delivery_fee)
        if fee < ZERO:
            raise InvalidCommand("delivery fee must not be negative", delivery_fee=fee)
        check_r6_fee_disclosed(fee_disclosed, prescription_id=self.id)
        self._trigger(
            DeliveryArranged,
            clock,
            business_type=self.business_type,
            delivery_enterprise_id=delivery_enterprise_id,
            delivery_fee=fee,
            address_ref=address_ref,
        )

    def deliver(self, *, clock: Clock, delivery_enterprise_id: str) -> None:
        self._require("deliver", S.DELIVERY_ARRANGED)
        if delivery_enterprise_id != self.delivery_enterprise_id:
            raise PartyNotEligible(
                "delivery enterprise", delivery_enterprise_id, "not the arranged enterprise"
            )
        self._trigger(
            PrescriptionDelivered,
            clock,
            business_type=self.business_type,
            delivery_enterprise_id=delivery_enterprise_id,
        )

    def collect(self, *, clock: Clock, verification_method: RealNameMethod) -> None:
        self._require("collect", S.DISPENSED)
        self._trigger(
            PrescriptionCollected,
            clock,
            business_type=self.business_type,
            verification_method=verification_method,
        )

    # --- settlement -----------------------------------------------------------------------------
    def settle(
        self,
        *,
        clock: Clock,
        patient: PatientStatus | None,
        patient_ref: str,
        verification_method: RealNameMethod,
        fund: Decimal | str,
        personal_account: Decimal | str,
        self_pay: Decimal | str,
        delivery_fee: Decimal | str,
        policy_version: str,
        policy_region: str,
        catalog_region: str,
        settlement_ref: str,
        rules: RuleConfig = DEFAULT_RULES,
        payee_id: str | None = None,
        deductible_applied: Decimal | str = ZERO,
        fund_cap_applied: Decimal | str = ZERO,
    ) -> None:
        """Record a split computed elsewhere: R3, R6, R7, R9, R10, R11, R12 and the split adding up.

        ``payee_id`` (money helper): whom the agency pays — the dispenser, or for a pharmacy the delivery enterprise
        that delivered (the region's policy, 004 §六); ``deductible_applied`` / ``fund_cap_applied``: what the
        deductible and the annual cap took (year-to-date figures rebuild from these)."""
        self._require_approved("settle")
        self._require("settle", S.DELIVERED, S.COLLECTED)
        fund_, personal_, self_pay_ = to_money(fund), to_money(personal_account), to_money(self_pay)
        fee = to_money(delivery_fee)
        if fee != self.delivery_fee:
            raise InvalidCommand(
                f"delivery fee {fee} differs from the arranged {self.delivery_fee}", prescription_id=self.id
            )
        drugs_total = self.dispensed_total()
        total = drugs_total + fee
        check_split(total, fund=fund_, personal_account=personal_, self_pay=self_pay_)
        check_r9_same_person(self.patient_ref, patient_ref, prescription_id=self.id)
        insured = fund_ + personal_
        check_r6_fee_self_pay(insured=insured, drugs_total=drugs_total, delivery_fee=fee, prescription_id=self.id)
        self_pay_only = self._lines_total(_actual, Lines.SELF_PAY_ONLY)
        check_r10_self_pay_lines(
            insured=insured, insurable_total=drugs_total - self_pay_only, prescription_id=self.id,
            self_pay_only=self_pay_only,
        )
        check_r7_within_caps(fund=fund_, capped=self._lines_total(_capped, Lines.INSURABLE), prescription_id=self.id)
        check_r12_policy_region(self.business_type, self.insured_region, self.pooling_region, policy_region)
        check_r12_catalog_region(catalog_region, self.pooling_region)
        check_r11_not_suspended(patient, self.patient_ref, fund_, personal_, clock, rules)
        if self.dispenser_kind is DispenserKind.PHARMACY and self.dispenser_id is not None:
            settled_with, kind = self.dispenser_id, DispenserKind.PHARMACY
        else:
            settled_with, kind = self.physical_institution_id, DispenserKind.HOSPITAL
        if payee_id is not None and payee_id not in (settled_with, self.delivery_enterprise_id):
            raise InvalidCommand("the payee is neither the dispenser nor the delivery enterprise",
                                 prescription_id=self.id, payee_id=payee_id)
        self._trigger(
            PrescriptionSettled,
            clock,
            business_type=self.business_type,
            settled_with=settled_with,
            settled_with_kind=kind,
            patient_ref=patient_ref,
            verification_method=verification_method,
            total=total,
            fund=fund_,
            personal_account=personal_,
            self_pay=self_pay_,
            delivery_fee=fee,
            policy_version=policy_version,
            policy_region=policy_region,
            catalog_region=catalog_region,
            settlement_ref=settlement_ref,
            payee_id=payee_id or settled_with,
            deductible_applied=to_money(deductible_applied),
            fund_cap_applied=to_money(fund_cap_applied),
        )

    # --- ending early ---------------------------------------------------------------------------
    def cancel(self, *, clock: Clock, reason: str, cancelled_by: str) -> None:
        """Cancel until fully dispensed; after a partial dispense only the remainder is cancelled."""
        self._require("cancel", *BEFORE_DISPENSE, S.PARTIALLY_DISPENSED)
        self._trigger(
            PrescriptionCancelled,
            clock,
            business_type=self.business_type,
            reason=reason,
            cancelled_by=cancelled_by,
            remainder_only=self.status is S.PARTIALLY_DISPENSED,
        )

    def expire(self, *, clock: Clock) -> None:
        """Expire after the validity; after a partial dispense only the remainder expires."""
        self._require("expire", *BEFORE_DISPENSE, S.PARTIALLY_DISPENSED)
        if clock.now() <= self.valid_until:
            raise InvalidCommand(f"still valid until {self.valid_until.isoformat()}", prescription_id=self.id)
        self._trigger(
            PrescriptionExpired,
            clock,
            business_type=self.business_type,
            valid_until=self.valid_until,
            remainder_only=self.status is S.PARTIALLY_DISPENSED,
        )

    # --- audit ----------------------------------------------------------------------------------
    def refuse_fees(self, *, clock: Clock, amount: Decimal | str, reason: str, audit_ref: str,
                  acted_by: str | None = None, also_taken: Decimal = ZERO) -> None:
        """Audit refuses insurance-paid fees (deducted from the month's statement)."""
        self._require("refuse_fees", S.SETTLED)
        self._trigger(
            FeesRefusedInAudit,
            clock,
            business_type=self.business_type,
            amount=self._audit_amount(amount, also_taken),
            reason=reason,
            audit_ref=audit_ref,
            acted_by=acted_by,
        )

    def claw_back(self, *, clock: Clock, amount: Decimal | str, reason: str, audit_ref: str,
                  acted_by: str | None = None, also_taken: Decimal = ZERO) -> None:
        """Fees already paid for a violation are recovered."""
        self._require("claw_back", S.SETTLED)
        self._trigger(
            FeesClawedBack,
            clock,
            business_type=self.business_type,
            amount=self._audit_amount(amount, also_taken),
            reason=reason,
            audit_ref=audit_ref,
            acted_by=acted_by,
        )

    def record_flag(self, *, clock: Clock, violation: RuleViolation) -> None:
        """Record a rule finding for auditors: a ``flag_*`` check's result, or a refused attempt (R8)."""
        self._trigger(
            RuleFlagged,
            clock,
            business_type=self.business_type,
            rule_id=violation.rule_id,
            reason=violation.reason,
            details=dict(violation.ids),
        )

    # --- queries --------------------------------------------------------------------------------
    @property
    def approved(self) -> bool:
        return self.pharmacist_id is not None and self.status is not S.REJECTED

    def dispensed_quantities(self) -> dict[str, int]:
        qty: Counter[str] = Counter()
        for lines in self.dispenses.values():
            for line in lines:
                qty[line.drug_code] += line.quantity
        return dict(qty)

    def dispensed_total(self) -> Decimal:
        return self._lines_total(_actual, Lines.ALL)

    @property
    def trace_codes(self) -> tuple[str, ...]:
        return tuple(code for lines in self.dispenses.values() for line in lines for code in line.trace_codes)

    # --- helpers --------------------------------------------------------------------------------
    def _lines_total(self, price: Callable[[DispensedLine], Decimal], which: Lines) -> Decimal:
        self_pay_only = {item.drug_code for item in self.items if item.self_pay_only}
        total = ZERO
        for lines in self.dispenses.values():
            for line in lines:
                if which is Lines.SELF_PAY_ONLY and line.drug_code not in self_pay_only:
                    continue
                if which is Lines.INSURABLE and line.drug_code in self_pay_only:
                    continue
                total += price(line) * line.quantity
        return total

    def _audit_amount(self, amount: Decimal | str, also_taken: Decimal = ZERO) -> Decimal:
        """Refused + clawed back (+ ``also_taken``: reversed, from the settlement case) never exceed fund + account."""
        value = to_money(amount)
        if value <= ZERO:
            raise InvalidCommand("amount must be positive", prescription_id=self.id)
        paid = (self.fund or ZERO) + (self.personal_account or ZERO)
        if self.refused + self.clawed_back + also_taken + value > paid:
            raise InvalidCommand(
                f"refused and clawed back would exceed the insurance-paid {paid}", prescription_id=self.id
            )
        return value

    def _require(self, command: str, *allowed: RxStatus) -> None:
        if self.status not in allowed:
            raise IllegalTransition(self.status.value, command, prescription_id=self.id)

    def _require_approved(self, command: str) -> None:
        check_r3_approved(self.status not in NOT_APPROVED, command, prescription_id=self.id)

    def _require_reviewer(self, pharmacist: Pharmacist) -> None:
        check_r18_may_review(pharmacist, self.hospital_id, self.physical_institution_id)

    def reviewable_by(self, pharmacist: Pharmacist) -> bool:
        """R18: the pharmacist may review (and see) this prescription."""
        try:
            self._require_reviewer(pharmacist)
        except RuleViolation:
            return False
        return True

    def _require_valid(self, clock: Clock) -> None:
        check_r19_valid(clock.now(), self.valid_until, self.id)

    def _require_dispenser(self, dispenser_id: str) -> None:
        if dispenser_id != self.dispenser_id:
            raise PartyNotEligible("dispenser", dispenser_id, "prescription is not routed to it")

    # --- state ----------------------------------------------------------------------------------
    @classmethod
    def _created(cls, event: PrescriptionIssued) -> Self:
        return cls(
            id=event.originator_id,
            status=S.ISSUED,
            business_type=event.business_type,
            encounter_id=event.encounter_id,
            hospital_id=event.hospital_id,
            physical_institution_id=event.physical_institution_id,
            institution_ownership=event.institution_ownership,
            pooling_region=event.pooling_region,
            insured_region=event.insured_region,
            insurance_type=event.insurance_type,
            patient_ref=event.patient_ref,
            physician_id=event.physician_id,
            items=event.items,
            valid_until=event.valid_until,
            issued_at=event.timestamp,
            preferred_pharmacy_id=event.preferred_pharmacy_id,
            emergency_declared=event.emergency_declared,
            chronic_listed=event.chronic_listed,
        )

    def _apply(self, event: object) -> None:
        match event:
            case PrescriptionApproved():
                self.status = S.APPROVED
                self.pharmacist_id = event.pharmacist_id
            case PrescriptionRejected():
                self.status = S.REJECTED
                self.pharmacist_id = event.pharmacist_id
            case PrescriptionRouted():
                self.status = S.ROUTED
                self.dispenser_kind = event.dispenser_kind
                self.dispenser_id = event.dispenser_id
                self.dispenser_ownership = event.dispenser_ownership
            case PrescriptionAccepted():
                self.status = S.ACCEPTED
            case PrescriptionReturned():
                self.status = S.APPROVED
                self.returned_by = self.returned_by | {event.dispenser_id}
                self.dispenser_kind = self.dispenser_id = self.dispenser_ownership = None
            case PrescriptionDispensed():
                self.dispenses = {**self.dispenses, event.dispense_no: event.lines}
                self.last_dispense_no = event.dispense_no
                complete = event.complete or self.remainder_closed_as is not None
                self.status = S.DISPENSED if complete else S.PARTIALLY_DISPENSED
            case DispenseWithdrawn():
                self.dispenses = {n: ls for n, ls in self.dispenses.items() if n != event.dispense_no}
                if not self.dispenses:
                    self.status = self.remainder_closed_as or S.ACCEPTED
                elif self.remainder_closed_as is None:
                    self.status = S.PARTIALLY_DISPENSED
            case PacksReturned():
                gone = set(event.trace_codes)
                kept = tuple(
                    line.model_copy(update={
                        "quantity": line.quantity - len(gone & set(line.trace_codes)),
                        "trace_codes": tuple(c for c in line.trace_codes if c not in gone),
                    })
                    for line in self.dispenses.get(event.dispense_no, ())
                    if not (line.split is not None and gone & set(line.trace_codes))
                    and line.quantity > len(gone & set(line.trace_codes))
                )
                others = {n: ls for n, ls in self.dispenses.items() if n != event.dispense_no}
                self.dispenses = {**others, event.dispense_no: kept} if kept else others
                if not self.dispenses:
                    self.status = self.remainder_closed_as or S.ACCEPTED
                elif self.remainder_closed_as is None:
                    self.status = S.PARTIALLY_DISPENSED
            case PrescriptionValidityExtended():
                self.valid_until = event.valid_until
            case DeliveryArranged():
                self.status = S.DELIVERY_ARRANGED
                self.delivery_enterprise_id = event.delivery_enterprise_id
                self.delivery_fee = event.delivery_fee
            case PrescriptionDelivered():
                self.status = S.DELIVERED
            case PrescriptionCollected():
                self.status = S.COLLECTED
            case PrescriptionSettled():
                self.status = S.SETTLED
                self.total = event.total
                self.fund = event.fund
                self.personal_account = event.personal_account
                self.self_pay = event.self_pay
            case PrescriptionCancelled() | PrescriptionExpired():
                closed = S.CANCELLED if isinstance(event, PrescriptionCancelled) else S.EXPIRED
                if event.remainder_only:
                    self.remainder_closed_as = closed
                    self.status = S.DISPENSED
                else:
                    self.status = closed
            case FeesRefusedInAudit():
                self.refused += event.amount
            case FeesClawedBack():
                self.clawed_back += event.amount
            case RuleFlagged():
                self.flags = [*self.flags, event.rule_id]


project_prescription = make_projector(Prescription)
