"""Builders for the application tests (no tests here): a registered cast and commands for a whole trail.

Every id comes from ``unique_id`` / random trace codes so tests never collide on the shared session database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from events.base import CatalogCategory, InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from services.application import RxTrail, RxTrailStore
from services.application import commands as c
from services.application.outcomes import Outcome
from services.application.privacy import PatientVault
from services.domain.clock import FixedClock
from tests.support import unique_id

T0 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # 10:00 China time
CHANGCHUN = "220100"
SECRET = b"rxtrail-test-pseudonym-secret-0123456789"
METFORMIN = "XA10BAA001A001010101"
AMLODIPINE = "XC08CAA001A001010101"


def trace_codes(n: int) -> tuple[str, ...]:
    return tuple(f"{secrets.randbelow(10**20):020d}" for _ in range(n))


def item(drug_code: str = METFORMIN, quantity: int = 4, unit_price: str = "12.50") -> PrescriptionItem:
    return PrescriptionItem(
        drug_code=drug_code, name=f"drug {drug_code[-6:]}", spec="0.5g*30", quantity=quantity, days_supply=28,
        unit_price=Decimal(unit_price), category=CatalogCategory.A,
    )


def line(drug_code: str = METFORMIN, quantity: int = 4, unit_price: str = "12.50", codes: int | tuple[str, ...] = 0
         ) -> DispensedLine:
    scanned = trace_codes(codes) if isinstance(codes, int) else codes
    return DispensedLine(drug_code=drug_code, quantity=quantity, unit_price=Decimal(unit_price),
                         price_cap=Decimal(unit_price), trace_codes=scanned)


def ok(outcome: Outcome) -> Outcome:
    if not outcome.ok:
        raise AssertionError(f"expected ok, got {outcome.error} {outcome.rule_id}: {outcome.reason}")
    return outcome


@dataclass
class Cast:
    """A hospital with a registered physician and pharmacist, and two designated pharmacies."""

    app: RxTrail
    hospital: str = field(default_factory=lambda: unique_id("H"))
    physician: str = field(default_factory=lambda: unique_id("DR"))
    pharmacist: str = field(default_factory=lambda: unique_id("RPH"))
    pharmacy: str = field(default_factory=lambda: unique_id("PH"))
    other_pharmacy: str = field(default_factory=lambda: unique_id("PH"))
    national_id: str = field(default_factory=lambda: f"2201{secrets.randbelow(10**14):014d}")

    def register(self) -> Cast:
        ok(self.app.handle(c.RegisterPhysician(physician_id=self.physician, hospital_id=self.hospital,
                                               name="Dr Li", qualification_no="Q-1")))
        ok(self.app.handle(c.RegisterPharmacist(pharmacist_id=self.pharmacist, employer_id=self.hospital,
                                                name="Wang", qualification_no="Q-2")))
        for pharmacy in (self.pharmacy, self.other_pharmacy):
            ok(self.app.handle(c.DesignatePharmacy(pharmacy_id=pharmacy, name="Kangda", pooling_region=CHANGCHUN,
                                                   agreement_no=unique_id("A"))))
        return self

    @property
    def patient_ref(self) -> str:
        return self.app.vault.patient_ref(self.national_id)

    def visit(self, **kw: object) -> c.RecordFollowUpVisit:
        today = T0.date()
        fields: dict[str, object] = {
            "hospital_id": self.hospital, "visit_ref": unique_id("V"), "physical_institution_id": f"P-{self.hospital}",
            "institution_ownership": Ownership.PUBLIC, "pooling_region": CHANGCHUN, "insured_region": CHANGCHUN,
            "insurance_type": InsuranceType.EMPLOYEE,
            "patient": c.PatientIdentity(national_id=self.national_id, name="张三", phone="13800138000"),
            "physician_id": self.physician, "physician_signature": f"sig:{self.physician}", "diagnosis_code": "E11.9",
            "diagnosis_name": "type 2 diabetes", "original_diagnosis_code": "E11.9",
            "original_diagnosis_date": today - timedelta(days=30), "original_institution_id": f"P-{self.hospital}",
            "verification_method": RealNameMethod.E_VOUCHER, "consultation_fee": Decimal("20.00"),
        }
        fields.update(kw)
        return c.RecordFollowUpVisit.model_validate(fields)

    def issue(self, encounter_id: UUID, *items: PrescriptionItem, **kw: object) -> c.IssuePrescription:
        chosen = items or (item(),)
        fields: dict[str, object] = {
            "hospital_id": self.hospital, "prescription_ref": unique_id("RX"), "encounter_id": encounter_id,
            "physician_signature": f"sig:{self.physician}", "items": chosen,
            "first_visit_drug_codes": tuple(i.drug_code for i in chosen),
        }
        fields.update(kw)
        return c.IssuePrescription.model_validate(fields)

    # --- a prescription walked to a state ---------------------------------------------------------
    def issued(self, *items: PrescriptionItem) -> UUID:
        encounter_id = ok(self.app.handle(self.visit())).aggregate_id
        assert encounter_id is not None
        rx = ok(self.app.handle(self.issue(encounter_id, *items))).aggregate_id
        assert rx is not None
        return rx

    def approved(self, *items: PrescriptionItem) -> UUID:
        rx = self.issued(*items)
        ok(self.app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=self.pharmacist)))
        return rx

    def routed(self, *items: PrescriptionItem, pharmacy: str | None = None) -> UUID:
        rx = self.approved(*items)
        ok(self.app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=pharmacy or self.pharmacy,
                                               basis=RoutingBasis.PATIENT_CHOICE)))
        return rx

    def accepted(self, *items: PrescriptionItem) -> UUID:
        rx = self.routed(*items)
        ok(self.app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=self.pharmacy)))
        return rx

    def dispense(self, rx: UUID, *lines: DispensedLine, **kw: object) -> Outcome:
        return self.app.handle(c.DispensePrescription(prescription_id=rx, dispenser_id=self.pharmacy,
                                                      lines=lines or (line(codes=4),), **kw))  # type: ignore[arg-type]

    def collected(self, *items: PrescriptionItem) -> UUID:
        rx = self.accepted(*items)
        ok(self.dispense(rx))
        ok(self.app.handle(c.MarkCollected(prescription_id=rx, verification_method=RealNameMethod.FACE_RECOGNITION)))
        return rx

    def settle(self, rx: UUID, *, fund: str = "35.00", personal: str = "10.00", self_pay: str = "5.00",
               delivery_fee: str = "0.00", **kw: object) -> Outcome:
        fields: dict[str, object] = {
            "prescription_id": rx, "patient_national_id": self.national_id, "verification_method": RealNameMethod.E_VOUCHER,
            "fund": fund, "personal_account": personal, "self_pay": self_pay, "delivery_fee": delivery_fee,
            "policy_version": "2025.1", "policy_region": CHANGCHUN, "catalog_region": CHANGCHUN,
            "settlement_ref": unique_id("S"),
        }
        fields.update(kw)
        return self.app.handle(c.SettlePrescription.model_validate(fields))


def new_app(store: RxTrailStore, vault: PatientVault, *, at: datetime = T0) -> RxTrail:
    return RxTrail(store, vault, clock=FixedClock(at))


def today() -> date:
    return T0.date()
