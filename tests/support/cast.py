"""The one cast builder (no tests here): parties registered through the application, commands for a whole
trail and a prescription walked to any state.

Every id comes from ``unique_id`` / random trace codes so tests never collide on the shared session database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from events.base import InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from services.adapters.store import RxTrailStore
from services.application import RxTrail
from services.application import commands as c
from services.application.outcomes import Outcome
from services.application.privacy import PatientVault
from services.domain.clock import FixedClock
from tests.support import unique_id
from tests.support.domain import AMLODIPINE, METFORMIN, VITAMIN, item, line, sign, trace_codes

T0 = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)  # 10:00 China time
CHANGCHUN = "220100"  # pharmacies are paid directly
JINAN = "370100"  # the delivery enterprise is paid
SECRET = b"rxtrail-test-pseudonym-secret-0123456789"


def new_national_id(region: str = CHANGCHUN) -> str:
    return f"{region[:4]}{secrets.randbelow(10**14):014d}"


def ok(outcome: Outcome) -> Outcome:
    if not outcome.ok:
        raise AssertionError(f"expected ok, got {outcome.error} {outcome.rule_id}: {outcome.reason}")
    return outcome


@dataclass
class Cast:
    """The one cast of parties for tests that go through the application (in process, over HTTP or Kafka).

    ``register()`` registers a hospital with its physician and pharmacist, two designated pharmacies of ``region``
    (unless ``with_pharmacies=False``: router and gateway tests designate their own), and strangers: another
    hospital's physician and a third-party pharmacist. One patient (``national_id``) for every prescription, or
    a new patient per visit with ``patient_per_visit=True`` (``national_ids`` maps each prescription to its patient).
    """

    app: RxTrail
    region: str = CHANGCHUN
    hospital: str = field(default_factory=lambda: unique_id("H"))
    physician: str = field(default_factory=lambda: unique_id("DR"))
    pharmacist: str = field(default_factory=lambda: unique_id("RPH"))
    pharmacy: str = field(default_factory=lambda: unique_id("PH"))
    other_pharmacy: str = field(default_factory=lambda: unique_id("PH"))
    other_hospital: str = field(default_factory=lambda: unique_id("H"))
    other_physician: str = field(default_factory=lambda: unique_id("DR"))
    third_party_pharmacist: str = field(default_factory=lambda: unique_id("RPH3"))
    national_id: str = ""
    with_pharmacies: bool = True
    patient_per_visit: bool = False
    national_ids: dict[UUID, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.national_id = self.national_id or new_national_id(self.region)

    def register(self) -> Cast:
        commands: list[c.Command] = [
            c.RegisterPhysician(physician_id=self.physician, hospital_id=self.hospital, name="Dr Li",
                                qualification_no="Q-1"),
            c.RegisterPhysician(physician_id=self.other_physician, hospital_id=self.other_hospital, name="Dr Zhao",
                                qualification_no="Q-3"),
            c.RegisterPharmacist(pharmacist_id=self.pharmacist, employer_id=self.hospital, name="Wang",
                                 qualification_no="Q-2"),
            c.RegisterPharmacist(pharmacist_id=self.third_party_pharmacist, employer_id="REVIEW-CO", name="Chen",
                                 qualification_no="Q-5", third_party=True),
        ]
        if self.with_pharmacies:
            commands += [c.DesignatePharmacy(pharmacy_id=pharmacy, name="Kangda", pooling_region=self.region,
                                             agreement_no=unique_id("A"))
                         for pharmacy in (self.pharmacy, self.other_pharmacy)]
        for outcome in self.app.apply_batch(commands):
            ok(outcome)
        return self

    def designate(self, pharmacy_id: str, *, region: str | None = None, drugs: tuple[str, ...] | None = None) -> str:
        """Designate one more pharmacy (in the cast's region unless told), carrying ``drugs`` (None: no list)."""
        ok(self.app.handle(c.DesignatePharmacy(pharmacy_id=pharmacy_id, name=f"pharmacy {pharmacy_id}",
                                               pooling_region=region or self.region, agreement_no=unique_id("AG"),
                                               drug_codes=drugs)))
        return pharmacy_id

    @property
    def patient_ref(self) -> str:
        return self.app.vault.patient_ref(self.national_id)

    def visit(self, **kw: object) -> c.RecordFollowUpVisit:
        """A follow-up visit command of the cast's patient (a new one with ``patient_per_visit``) in its region."""
        today = self.app.clock.now().date()
        national_id = new_national_id(self.region) if self.patient_per_visit else self.national_id
        fields: dict[str, object] = {
            "hospital_id": self.hospital, "visit_ref": unique_id("V"), "physical_institution_id": f"P-{self.hospital}",
            "institution_ownership": Ownership.PUBLIC, "pooling_region": self.region, "insured_region": self.region,
            "insurance_type": InsuranceType.EMPLOYEE,
            "patient": c.PatientIdentity(national_id=national_id, name="张三", phone="13800138000"),
            "physician_id": self.physician, "physician_signature": f"sig:{self.physician}", "diagnosis_code": "E11.9",
            "diagnosis_name": "type 2 diabetes", "original_diagnosis_code": "E11.9",
            "original_diagnosis_date": today - timedelta(days=30), "original_institution_id": f"P-{self.hospital}",
            "verification_method": RealNameMethod.E_VOUCHER, "consultation_fee": Decimal("20.00"),
        }
        fields.update(kw)
        return c.RecordFollowUpVisit.model_validate(fields)

    def issue(self, encounter_id: UUID, *items: PrescriptionItem, **kw: object) -> c.IssuePrescription:
        """An IssuePrescription for the visit, signed by the visit's physician (R2) unless ``physician_signature``
        is given."""
        chosen = items or (item(),)
        fields: dict[str, object] = {
            "hospital_id": self.hospital, "prescription_ref": unique_id("RX"), "encounter_id": encounter_id,
            "items": chosen, "first_visit_drug_codes": tuple(i.drug_code for i in chosen),
        }
        fields.update(kw)
        if "physician_signature" not in fields:
            [visit, *_] = self.app.history(encounter_id) or [None]
            fields["physician_signature"] = sign(
                getattr(visit, "physician_id", self.physician), hospital_id=fields["hospital_id"],
                prescription_ref=fields["prescription_ref"], encounter_id=encounter_id,
                physician_id=getattr(visit, "physician_id", self.physician),
                diagnosis_code=getattr(visit, "diagnosis_code", "E11.9"), items=fields["items"],
                justification=fields.get("justification"), preferred_pharmacy_id=fields.get("preferred_pharmacy_id"))
        return c.IssuePrescription.model_validate(fields)

    # --- a prescription walked to a state ---------------------------------------------------------
    def issued(self, *items: PrescriptionItem, region: str | None = None, preferred: str | None = None,
               **issue: object) -> UUID:
        """A visit (in ``region`` if given) and a prescription of ``items`` (the patient's choice of pharmacy:
        ``preferred``; more IssuePrescription fields in ``issue``); returns the prescription id."""
        visit = self.visit(**({"pooling_region": region, "insured_region": region} if region else {}))
        encounter_id = ok(self.app.handle(visit)).aggregate_id
        assert encounter_id is not None
        if preferred is not None:
            issue["preferred_pharmacy_id"] = preferred
        rx = ok(self.app.handle(self.issue(encounter_id, *items, **issue))).aggregate_id
        assert rx is not None
        self.national_ids[rx] = visit.patient.national_id
        return rx

    def approved(self, *items: PrescriptionItem, **kw: object) -> UUID:
        return self.approve(self.issued(*items, **kw))  # type: ignore[arg-type]

    def routed(self, *items: PrescriptionItem, pharmacy: str | None = None) -> UUID:
        return self.route(self.approved(*items), pharmacy)

    def accepted(self, *items: PrescriptionItem) -> UUID:
        return self.accept(self.routed(*items))

    # --- one step of a given prescription ------------------------------------------------------------
    def approve(self, rx: UUID) -> UUID:
        ok(self.app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=self.pharmacist)))
        return rx

    def route(self, rx: UUID, pharmacy: str | None = None) -> UUID:
        """The patient's choice of ``pharmacy`` (the cast's own unless told)."""
        ok(self.app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=pharmacy or self.pharmacy,
                                               basis=RoutingBasis.PATIENT_CHOICE)))
        return rx

    def accept(self, rx: UUID) -> UUID:
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
            "prescription_id": rx, "patient_national_id": self.national_ids.get(rx, self.national_id),
            "verification_method": RealNameMethod.E_VOUCHER, "fund": fund, "personal_account": personal,
            "self_pay": self_pay, "delivery_fee": delivery_fee, "policy_version": "2025.1", "policy_region": self.region,
            "catalog_region": self.region,
            "settlement_ref": unique_id("S"),
        }
        fields.update(kw)
        return self.app.handle(c.SettlePrescription.model_validate(fields))


def new_app(store: RxTrailStore, vault: PatientVault, *, at: datetime = T0) -> RxTrail:
    return RxTrail(store, vault, clock=FixedClock(at))


def today() -> date:
    return T0.date()


__all__ = ["AMLODIPINE", "CHANGCHUN", "JINAN", "METFORMIN", "SECRET", "T0", "VITAMIN", "Cast", "item", "line", "new_app",
           "new_national_id", "ok", "today", "trace_codes"]
