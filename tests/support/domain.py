"""Builders for domain unit tests: a registered cast and a prescription walked to any state."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from events.base import BusinessType, CatalogCategory, InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from services.domain import (
    Encounter,
    FixedClock,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    Prescription,
    TraceCode,
)

T0 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # 10:00 China time
TODAY = date(2025, 3, 10)
CHANGCHUN = "220100"
JINAN = "370100"
HOSPITAL = "H-CC-001"
PHYSICAL = "P-CC-001"
PHARMACY = "PH-CC-001"
PATIENT = "p" * 64

METFORMIN = "XA10BAA001A001010101"
AMLODIPINE = "XC08CAA001A001010101"
VITAMIN = "XA11HAX001A001010101"

# 20-digit trace codes from a random start: unique within a session, apart between sessions sharing a database.
_codes = itertools.count(random.randrange(10**19, 9 * 10**19))


def trace_codes(n: int) -> tuple[str, ...]:
    return tuple(str(next(_codes)) for _ in range(n))


def item(
    drug_code: str = METFORMIN,
    quantity: int = 4,
    unit_price: str = "12.50",
    *,
    days_supply: int = 28,
    category: CatalogCategory = CatalogCategory.A,
    off_indication: bool = False,
    patient_consent: bool = False,
) -> PrescriptionItem:
    return PrescriptionItem(
        drug_code=drug_code,
        name=f"drug {drug_code[-6:]}",
        spec="0.5g*30",
        quantity=quantity,
        days_supply=days_supply,
        unit_price=Decimal(unit_price),
        category=category,
        off_indication=off_indication,
        patient_consent=patient_consent,
    )


def line(
    drug_code: str = METFORMIN,
    quantity: int = 4,
    unit_price: str = "12.50",
    cap: str | None = None,
    codes: int | tuple[str, ...] = 0,
) -> DispensedLine:
    """A dispensed line; ``cap`` defaults to the unit price; ``codes``: how many new trace codes, or the codes."""
    return DispensedLine(
        drug_code=drug_code,
        quantity=quantity,
        unit_price=Decimal(unit_price),
        price_cap=Decimal(cap if cap is not None else unit_price),
        trace_codes=trace_codes(codes) if isinstance(codes, int) else codes,
    )


@dataclass
class World:
    clock: FixedClock = field(default_factory=lambda: FixedClock(T0))

    def __post_init__(self) -> None:
        self.physician = Physician.register(
            clock=self.clock,
            changed_by="agency:220100",
            physician_id="DR-001",
            hospital_id=HOSPITAL,
            name="Dr Li",
            qualification_no="Q-1",
        )
        self.pharmacist = Pharmacist.register(
            clock=self.clock,
            changed_by="agency:220100",
            pharmacist_id="RPH-001",
            employer_id=HOSPITAL,
            name="Wang",
            qualification_no="Q-2",
        )
        self.pharmacy = Pharmacy.designate(
            clock=self.clock,
            changed_by="agency:220100",
            pharmacy_id=PHARMACY,
            name="Kangda",
            pooling_region=CHANGCHUN,
            agreement_no="A-1",
        )

    def encounter(
        self,
        *,
        insured_region: str = CHANGCHUN,
        original_date: date = TODAY - timedelta(days=30),
        original_code: str = "E11.9",
        diagnosis_code: str = "E11.9",
        ownership: Ownership = Ownership.PUBLIC,
    ) -> Encounter:
        return Encounter.record(
            clock=self.clock,
            hospital_id=HOSPITAL,
            physical_institution_id=PHYSICAL,
            institution_ownership=ownership,
            pooling_region=CHANGCHUN,
            insured_region=insured_region,
            insurance_type=InsuranceType.EMPLOYEE,
            patient_ref=PATIENT,
            physician_id="DR-001",
            physician=self.physician,
            physician_signature="sig:DR-001",
            diagnosis_code=diagnosis_code,
            diagnosis_name="type 2 diabetes",
            original_diagnosis_code=original_code,
            original_diagnosis_date=original_date,
            original_institution_id=PHYSICAL,
            verification_method=RealNameMethod.E_VOUCHER,
            consultation_fee="20.00",
        )

    def issued(
        self, *items: PrescriptionItem, encounter: Encounter | None = None, **kw: object
    ) -> Prescription:
        chosen = items or (item(),)
        kw.setdefault("first_visit_drug_codes", [i.drug_code for i in chosen])
        return Prescription.issue(
            clock=self.clock,
            encounter=encounter or self.encounter(),
            physician=self.physician,
            physician_signature="sig:DR-001",
            items=list(chosen),
            **kw,  # type: ignore[arg-type]
        )

    def approved(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.issued(*items, **kw)  # type: ignore[arg-type]
        rx.approve(clock=self.clock, pharmacist=self.pharmacist)
        return rx

    def accepted(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.approved(*items, **kw)
        rx.route(clock=self.clock, pharmacy=self.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
        rx.accept(clock=self.clock, dispenser_id=PHARMACY)
        return rx

    def dispense(self, rx: Prescription, *lines: DispensedLine) -> list[TraceCode]:
        chosen = lines or (line(),)
        codes = {c: None for ln in chosen for c in ln.trace_codes}
        return rx.dispense(clock=self.clock, dispenser_id=PHARMACY, lines=list(chosen), trace_codes=codes)

    def sell(self, code: str, previous: TraceCode | None = None, *, drug_code: str = METFORMIN,
             seller_id: str = PHARMACY, business_type: BusinessType = BusinessType.INTERNET,
             prescription_id: UUID | None = None) -> TraceCode:
        """A sale of the trace code ``code`` (``previous``: its aggregate, if it was sold before)."""
        return TraceCode.sell(previous, clock=self.clock, code=code, drug_code=drug_code, seller_id=seller_id,
                              business_type=business_type, prescription_id=prescription_id)

    def dispensed(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.accepted(*items, **kw)
        self.dispense(
            rx, *[line(i.drug_code, i.quantity, str(i.unit_price), str(i.unit_price)) for i in rx.items]
        )
        return rx

    def collected(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.dispensed(*items, **kw)
        rx.collect(clock=self.clock, verification_method=RealNameMethod.FACE_RECOGNITION)
        return rx

    def settle(
        self,
        rx: Prescription,
        *,
        fund: str = "35.00",
        personal: str = "10.00",
        self_pay: str = "5.00",
        delivery_fee: str = "0.00",
        patient: PatientStatus | None = None,
        patient_ref: str = PATIENT,
        policy_region: str | None = None,
        catalog_region: str = CHANGCHUN,
    ) -> None:
        rx.settle(
            clock=self.clock,
            patient=patient,
            patient_ref=patient_ref,
            verification_method=RealNameMethod.E_VOUCHER,
            fund=fund,
            personal_account=personal,
            self_pay=self_pay,
            delivery_fee=delivery_fee,
            policy_version="2025.1",
            policy_region=policy_region or rx.pooling_region,
            catalog_region=catalog_region,
            settlement_ref="S-1",
        )

    def settled(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.collected(*items, **kw)
        self.settle(rx)
        return rx
