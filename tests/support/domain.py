"""Builders for domain unit tests: a registered cast and a prescription walked to any state."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.base import BusinessType, CatalogCategory, InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, DispenserKind, PrescriptionItem, RoutingBasis, SplitPack
from events.registries import InstitutionKind, InstitutionLevel
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
from services.domain.registries import ChronicDiseaseList, DrugListing, EmergencyDeclarations, Institution, PatientInsurance
from services.domain.signature import public_key_hex, sign_prescription

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
_refs = itertools.count(1)


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
    codes: int | tuple[str, ...] | None = None,
    *,
    standard: str | None = None,
    split: SplitPack | None = None,
) -> DispensedLine:
    """A dispense request line. ``cap`` / ``standard``: declared (the request repeats the registry's, R17; unset: not
    declared, as clients send it); ``World.dispense`` registers them (the cap defaulting to the unit price) as the
    drug's listing. ``codes``: how many new trace codes (default one per pack, R8), or the codes."""
    count = (1 if split is not None else quantity) if codes is None else codes
    return DispensedLine(
        drug_code=drug_code,
        quantity=quantity,
        unit_price=Decimal(unit_price),
        price_cap=None if cap is None else Decimal(cap),
        payment_standard=None if standard is None else Decimal(standard),
        trace_codes=trace_codes(count) if isinstance(count, int) else count,
        split=split,
    )


def signing_key(physician_id: str) -> Ed25519PrivateKey:
    """A physician's Ed25519 key for tests, derived from its id (the registered public key is its public half)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rxtrail-test-key:{physician_id}".encode()).digest())


def sign(signer: str, **content: object) -> str:
    """``signer``'s signature over a prescription's canonical content (``services.domain.signature``)."""
    return sign_prescription(signing_key(signer), **content)


AUTHORITY = "agency:220100"
OFFLINE = "P-OFFLINE-001"  # another physical institution where patients were first diagnosed


@dataclass
class World:
    """The registries as the authority holds them (institutions, physician with its key, pharmacist, pharmacy, the
    patient's insurance, the region's chronic disease list) and builders for a prescription in any state."""

    clock: FixedClock = field(default_factory=lambda: FixedClock(T0))

    def __post_init__(self) -> None:
        by: dict[str, Any] = {"clock": self.clock, "changed_by": AUTHORITY}
        self.physicals = {
            ownership: Institution.register(
                **by, institution_id=PHYSICAL if ownership is Ownership.PUBLIC else f"{PHYSICAL}-{ownership.value}",
                name="People's Hospital", kind=InstitutionKind.PHYSICAL, ownership=ownership,
                level=InstitutionLevel.TERTIARY, region=CHANGCHUN, agreement_no="AG-P")
            for ownership in Ownership
        }
        self.physical = self.physicals[Ownership.PUBLIC]
        self.hospital = Institution.register(
            **by, institution_id=HOSPITAL, name="People's Internet Hospital", kind=InstitutionKind.INTERNET,
            ownership=Ownership.PUBLIC, level=InstitutionLevel.TERTIARY, region=CHANGCHUN, agreement_no="AG-H",
            physical=self.physical)
        self.offline = Institution.register(
            **by, institution_id=OFFLINE, name="District Hospital", kind=InstitutionKind.PHYSICAL,
            ownership=Ownership.PUBLIC, level=InstitutionLevel.SECONDARY, region=CHANGCHUN, agreement_no="AG-O")
        self.physician = Physician.register(
            **by, physician_id="DR-001", hospital_id=HOSPITAL, name="Dr Li", qualification_no="Q-1",
            public_key=public_key_hex(signing_key("DR-001")))
        self.pharmacist = Pharmacist.register(
            **by, pharmacist_id="RPH-001", employer_id=HOSPITAL, name="Wang", qualification_no="Q-2")
        self.pharmacy = Pharmacy.designate(
            **by, pharmacy_id=PHARMACY, name="Kangda", pooling_region=CHANGCHUN, agreement_no="A-1")
        self.insurance = {
            region: PatientInsurance.register(**by, patient_ref=PATIENT, insured_region=region,
                                              insurance_type=InsuranceType.EMPLOYEE)
            for region in (CHANGCHUN, JINAN)
        }
        self.chronic_list: ChronicDiseaseList | None = None
        for code, name in (("E11", "type 2 diabetes"), ("I10", "hypertension")):
            self.chronic_list = ChronicDiseaseList.add(
                self.chronic_list, **by, region=CHANGCHUN, disease_code=code, name=name,
                effective_from=date(2024, 1, 1))
        self.emergencies: EmergencyDeclarations | None = None

    def declare_emergency(self, valid_from: date = TODAY, valid_until: date | None = None) -> None:
        self.emergencies = EmergencyDeclarations.declare(
            self.emergencies, clock=self.clock, changed_by=AUTHORITY, region=CHANGCHUN,
            declaration_no=f"EM-{valid_from}", title="public-health emergency", valid_from=valid_from,
            valid_until=valid_until)

    def encounter(self, **kw: object) -> Encounter:
        """A recorded follow-up visit (``visit_args`` overrides)."""
        return Encounter.record(**self.visit_args(**kw))  # type: ignore[arg-type]

    def visit_args(
        self,
        *,
        insured_region: str = CHANGCHUN,
        original_date: date = TODAY - timedelta(days=30),
        original_code: str = "E11.9",
        diagnosis_code: str = "E11.9",
        ownership: Ownership = Ownership.PUBLIC,
        **kw: object,
    ) -> dict[str, object]:
        """Keyword arguments of ``Encounter.record``: the registries' facts and a follow-up of an offline diagnosis."""
        physical = self.physicals[ownership]
        hospital = self.hospital if ownership is Ownership.PUBLIC else self.hospital.model_copy(
            update={"physical_institution_id": physical.institution_id})
        args: dict[str, object] = {
            "clock": self.clock,
            "hospital_id": HOSPITAL,
            "hospital": hospital,
            "physical": physical,
            "original_institution": self.offline,
            "insurance": self.insurance[insured_region],
            "patient_ref": PATIENT,
            "physician_id": "DR-001",
            "physician": self.physician,
            "physician_signature": "sig:DR-001",
            "diagnosis_code": diagnosis_code,
            "diagnosis_name": "type 2 diabetes",
            "original_diagnosis_code": original_code,
            "original_diagnosis_date": original_date,
            "original_institution_id": OFFLINE,
            "verification_method": RealNameMethod.E_VOUCHER,
            "consultation_fee": "20.00",
        }
        args.update(kw)
        return args

    def issue_args(self, *items: PrescriptionItem, encounter: Encounter | None = None,
                   **kw: object) -> dict[str, object]:
        """Keyword arguments of ``Prescription.issue`` (signed by the physician unless ``physician_signature``)."""
        chosen = items or (item(),)
        enc = encounter or self.encounter()
        args: dict[str, object] = {
            "clock": self.clock,
            "encounter": enc,
            "hospital": self.hospital,
            "physical": self.physical,
            "original_institution": self.offline,
            "physician": self.physician,
            "prescription_ref": f"RX-{next(_refs)}",
            "items": list(chosen),
            "first_visit_drug_codes": [i.drug_code for i in chosen],
            "chronic_list": self.chronic_list,
            "emergencies": self.emergencies,
        }
        args.update(kw)
        if "physician_signature" not in args:
            args["physician_signature"] = sign(
                enc.physician_id, hospital_id=enc.hospital_id, prescription_ref=args["prescription_ref"],
                encounter_id=enc.id, physician_id=enc.physician_id, diagnosis_code=enc.diagnosis_code,
                items=args["items"], justification=args.get("justification"),
                preferred_pharmacy_id=args.get("preferred_pharmacy_id"))
        return args

    def issued(
        self, *items: PrescriptionItem, encounter: Encounter | None = None, **kw: object
    ) -> Prescription:
        return Prescription.issue(**self.issue_args(*items, encounter=encounter, **kw))  # type: ignore[arg-type]

    def approved(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.issued(*items, **kw)  # type: ignore[arg-type]
        rx.approve(clock=self.clock, pharmacist=self.pharmacist)
        return rx

    def accepted(self, *items: PrescriptionItem, **kw: object) -> Prescription:
        rx = self.approved(*items, **kw)
        rx.route(clock=self.clock, pharmacy=self.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
        rx.accept(clock=self.clock, dispenser_id=PHARMACY)
        return rx

    def listing(self, drug_code: str, *, region: str = CHANGCHUN, cap: Decimal | str | None = None,
                standard: Decimal | str | None = None, institution_id: str | None = None,
                category: CatalogCategory = CatalogCategory.A) -> DrugListing:
        """The authority's catalog entry of a drug, with the region's (or an institution's) cap and standard."""
        listing = DrugListing.list_drug(clock=self.clock, changed_by=AUTHORITY, drug_code=drug_code,
                                        name=f"drug {drug_code[-6:]}", category=category)
        if cap is not None:
            listing.set_price_cap(clock=self.clock, changed_by=AUTHORITY, region=region, cap=Decimal(cap),
                                  institution_id=institution_id)
        if standard is not None:
            listing.set_payment_standard(clock=self.clock, changed_by=AUTHORITY, region=region,
                                         amount=Decimal(standard))
        return listing

    def dispense(self, rx: Prescription, *lines: DispensedLine,
                 listings: dict[str, DrugListing | None] | None = None,
                 held: dict[str, TraceCode] | None = None) -> list[TraceCode]:
        """Dispense as the dispenser the prescription is routed to; ``listings`` default: the registry holds for each
        drug the cap its first line declares (else its unit price) and the standard it declares; ``held``: trace-code
        aggregates sold before (the others are new)."""
        chosen = lines or (line(),)
        codes = {c: (held or {}).get(c) for ln in chosen for c in ln.trace_codes}
        if listings is None:
            listings = {}
            for ln in chosen:
                cap = ln.unit_price if ln.price_cap is None else ln.price_cap
                listings.setdefault(ln.drug_code, self.listing(ln.drug_code, region=rx.pooling_region, cap=cap,
                                                               standard=ln.payment_standard))
        by_pharmacy = rx.dispenser_kind is None or rx.dispenser_kind is DispenserKind.PHARMACY
        return rx.dispense(clock=self.clock, dispenser_id=rx.dispenser_id or PHARMACY, lines=list(chosen),
                           trace_codes=codes, listings=listings, pharmacy=self.pharmacy if by_pharmacy else None)

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
