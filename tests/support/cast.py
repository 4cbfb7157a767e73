"""The one cast builder (no tests here): parties registered through the application, commands for a whole
trail and a prescription walked to any state.

Every id comes from ``unique_id`` / random trace codes so tests never collide on the shared session database.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from events.base import CatalogCategory, InsuranceType, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from events.registries import InstitutionKind, InstitutionLevel
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

    ``register()`` registers through the registry commands, as the agency of ``region`` would (issue 13): the
    hospital (an internet hospital on its physical institution ``P-<hospital>``) with its physician (Ed25519 key:
    ``signing_key(physician_id)``) and its own pharmacist; another hospital with its physician; a third-party
    pharmacist with a cooperation agreement with the hospital (R18); two designated pharmacies of ``region``
    (unless ``with_pharmacies=False``: router and gateway tests designate their own); a delivery enterprise; the
    patient's insurance (insured in ``region``, employee, chronic entitlements E11 and I10); an off-site patient
    insured in ``other_region`` with a 长期异地就医备案 for ``region`` (``offsite_national_id``) and one without
    (``unfiled_national_id``); the region's chronic-disease list (E11, I10); the test drugs in the catalog with the
    region's price caps and payment standards (``DRUG_FACTS``). One patient (``national_id``) for every prescription,
    or a new (registered) patient per visit with ``patient_per_visit=True`` (``national_ids`` maps each prescription
    to its patient).
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
    delivery_enterprise: str = field(default_factory=lambda: unique_id("DE"))
    national_id: str = ""
    offsite_national_id: str = ""
    unfiled_national_id: str = ""
    with_pharmacies: bool = True
    patient_per_visit: bool = False
    national_ids: dict[UUID, str] = field(default_factory=dict)
    insured: set[str] = field(default_factory=set)
    regional: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.national_id = self.national_id or new_national_id(self.region)
        self.offsite_national_id = self.offsite_national_id or new_national_id(self.other_region)
        self.unfiled_national_id = self.unfiled_national_id or new_national_id(self.other_region)

    @property
    def authority(self) -> str:
        """Who registers the cast: the agency of its region."""
        return f"agency:{self.region}"

    @property
    def other_region(self) -> str:
        return JINAN if self.region != JINAN else CHANGCHUN

    @staticmethod
    def physical_of(hospital: str) -> str:
        return f"P-{hospital}"

    @staticmethod
    def signing_key(physician_id: str) -> Ed25519PrivateKey:
        """The physician's Ed25519 key (deterministic per physician id); its public half is the registered one."""
        return signing_key(physician_id)

    def register(self) -> Cast:
        by = {"changed_by": self.authority}
        list_drugs(self.app, self.region)
        commands: list[c.Command] = []
        for hospital in (self.hospital, self.other_hospital):
            commands += hospital_commands(hospital, self.region)
        commands += [
            physician_command(self.physician, self.hospital, self.region),
            physician_command(self.other_physician, self.other_hospital, self.region),
            c.RegisterPharmacist(**by, pharmacist_id=self.pharmacist, employer_id=self.hospital, name="Wang",
                                 qualification_no="Q-2"),
            c.RegisterPharmacist(**by, pharmacist_id=self.third_party_pharmacist, third_party=True,
                                 company_id="REVIEW-CO", region=self.region, name="Chen", qualification_no="Q-5"),
            c.RecordCooperationAgreement(**by, pharmacist_id=self.third_party_pharmacist, hospital_id=self.hospital,
                                         agreement_no=unique_id("CA")),
            c.RegisterDeliveryEnterprise(**by, enterprise_id=self.delivery_enterprise, name="Express Drugs",
                                         region=self.region, gsp_qualified=True, gsp_certificate_no="GSP-1"),
            *patient_commands(self.national_id, self.region),
        ]
        if self.with_pharmacies:
            commands += [c.DesignatePharmacy(**by, pharmacy_id=pharmacy, name="Kangda", pooling_region=self.region,
                                             agreement_no=unique_id("A"))
                         for pharmacy in (self.pharmacy, self.other_pharmacy)]
        other = {"changed_by": f"agency:{self.other_region}"}
        commands += [
            *patient_commands(self.offsite_national_id, self.other_region),
            c.RecordOffSiteFiling(**other, patient_national_id=self.offsite_national_id, filing_no=unique_id("BA"),
                                  region=self.region, valid_from=date(2024, 1, 1)),
            *patient_commands(self.unfiled_national_id, self.other_region),
        ]
        for outcome in self.app.apply_batch(commands):
            ok(outcome)
        self.insured |= {self.national_id, self.offsite_national_id, self.unfiled_national_id}
        return self

    def insure(self, national_id: str, region: str | None = None, *,
               insurance_type: InsuranceType = InsuranceType.EMPLOYEE, chronic: tuple[str, ...] = ("E11", "I10")) -> str:
        """Register one more patient's insurance (insured in ``region``, default the cast's; chronic entitlements
        ``chronic``); returns the national id."""
        commands = patient_commands(national_id, region or self.region, insurance_type=insurance_type, chronic=chronic)
        for outcome in self.app.apply_batch(commands):
            ok(outcome)
        self.insured.add(national_id)
        return national_id

    def designate(self, pharmacy_id: str, *, region: str | None = None, drugs: tuple[str, ...] | None = None) -> str:
        """Designate one more pharmacy (in the cast's region unless told), carrying ``drugs`` (None: no list)."""
        chosen = region or self.region
        ok(self.app.handle(c.DesignatePharmacy(changed_by=f"agency:{chosen}", pharmacy_id=pharmacy_id,
                                               name=f"pharmacy {pharmacy_id}", pooling_region=chosen,
                                               agreement_no=unique_id("AG"), drug_codes=drugs)))
        return pharmacy_id

    @property
    def patient_ref(self) -> str:
        return self.app.vault.patient_ref(self.national_id)

    def visit(self, **kw: object) -> c.RecordFollowUpVisit:
        """A follow-up visit command of the cast's patient (a new one with ``patient_per_visit``) in its region, at
        the cast's hospital (in another ``pooling_region``: a hospital of that region, ``hospital_in``), priced at
        the region's consultation fee (R15). A patient given in ``patient`` is registered as insured in
        ``insured_region`` first, unless the cast registered it already."""
        today = self.app.clock.now().date()
        region = str(kw.get("pooling_region", self.region))
        hospital, physician = (self.hospital, self.physician) if region == self.region else self.hospital_in(region)
        national_id = self.insure(new_national_id(self.region)) if self.patient_per_visit else self.national_id
        given = kw.get("patient")
        if isinstance(given, c.PatientIdentity) and given.national_id not in self.insured:
            self.insure(given.national_id, str(kw.get("insured_region", region)))
        fields: dict[str, object] = {
            "hospital_id": hospital, "visit_ref": unique_id("V"), "physical_institution_id": self.physical_of(hospital),
            "institution_ownership": Ownership.PUBLIC, "pooling_region": region, "insured_region": region,
            "insurance_type": InsuranceType.EMPLOYEE,
            "patient": c.PatientIdentity(national_id=national_id, name="张三", phone="13800138000"),
            "physician_id": physician, "physician_signature": f"sig:{physician}", "diagnosis_code": "E11.9",
            "diagnosis_name": "type 2 diabetes", "original_diagnosis_code": "E11.9",
            "original_diagnosis_date": today - timedelta(days=30), "original_institution_id": self.physical_of(hospital),
            "verification_method": RealNameMethod.E_VOUCHER, "consultation_fee": consultation_fee(region),
        }
        fields.update(kw)
        return c.RecordFollowUpVisit.model_validate(fields)

    def hospital_in(self, region: str) -> tuple[str, str]:
        """An internet hospital of ``region`` (on its physical institution) with a physician of its own, registered
        by that region's agency the first time it is asked for (with the region's drug facts and chronic list)."""
        if region not in self.regional:
            hospital, physician = unique_id("H"), unique_id("DR")
            list_drugs(self.app, region)
            for outcome in self.app.apply_batch([*hospital_commands(hospital, region),
                                                 physician_command(physician, hospital, region)]):
                ok(outcome)
            self.regional[region] = (hospital, physician)
        return self.regional[region]

    def issue(self, encounter_id: UUID, *items: PrescriptionItem, **kw: object) -> c.IssuePrescription:
        """An IssuePrescription for the visit, signed by the visit's physician (R2) unless ``physician_signature``
        is given."""
        chosen = items or (item(),)
        fields: dict[str, object] = {
            "hospital_id": self.hospital, "prescription_ref": unique_id("RX"), "encounter_id": encounter_id,
            "items": chosen, "first_visit_drug_codes": tuple(i.drug_code for i in chosen),
        }
        [visit, *_] = self.app.history(encounter_id) or [None]
        fields["hospital_id"] = getattr(visit, "hospital_id", self.hospital)  # the visit's hospital prescribes
        fields.update(kw)
        if "physician_signature" not in fields:
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


# --- registry facts -------------------------------------------------------------------------------------------

REGULATOR = "regulator:NHSA-TEST"
CHRONIC_DISEASES = (("E11", "type 2 diabetes"), ("I10", "hypertension"))
DRUG_FACTS: dict[str, tuple[str, CatalogCategory, str, str]] = {
    METFORMIN: ("metformin", CatalogCategory.A, "30.00", "30.00"),
    AMLODIPINE: ("amlodipine", CatalogCategory.A, "30.00", "30.00"),
    VITAMIN: ("vitamin", CatalogCategory.A, "30.00", "30.00"),
    # the reference catalog's metformin the HTTP bodies prescribe (services.simulate.CATALOG_METFORMIN), with the
    # reference cap (services/reference/data: 11.25) as the region's cap and payment standard
    "XA10BAA001A001030101": ("metformin", CatalogCategory.A, "11.25", "11.25"),
}
"""The test drugs: name, catalog category, the price cap and the payment standard of each region (per box)."""


def signing_key(physician_id: str) -> Ed25519PrivateKey:
    """A physician's Ed25519 key for tests, derived from its id (the registered public key is its public half)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"rxtrail-test-key:{physician_id}".encode()).digest())


def public_key_of(physician_id: str) -> str:
    return signing_key(physician_id).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def hospital_commands(hospital: str, region: str, *, ownership: Ownership = Ownership.PUBLIC) -> list[c.Command]:
    """An internet hospital and its physical institution ``P-<hospital>``."""
    by = {"changed_by": f"agency:{region}", "ownership": ownership, "level": InstitutionLevel.TERTIARY,
          "region": region}
    return [
        c.RegisterInstitution(**by, institution_id=f"P-{hospital}", name=f"People's Hospital {hospital}",  # type: ignore[arg-type]
                              institution_kind=InstitutionKind.PHYSICAL, agreement_no=unique_id("AG")),
        c.RegisterInstitution(**by, institution_id=hospital, name=f"Internet Hospital {hospital}",  # type: ignore[arg-type]
                              institution_kind=InstitutionKind.INTERNET, physical_institution_id=f"P-{hospital}",
                              agreement_no=unique_id("AG")),
    ]


def physician_command(physician: str, hospital: str, region: str) -> c.RegisterPhysician:
    return c.RegisterPhysician(changed_by=f"agency:{region}", physician_id=physician, hospital_id=hospital,
                               name="Dr Li", qualification_no=f"Q-{physician}", physician_code=f"D-{physician}",
                               public_key=public_key_of(physician))


def patient_commands(national_id: str, region: str, *, insurance_type: InsuranceType = InsuranceType.EMPLOYEE,
                     chronic: tuple[str, ...] = ("E11", "I10")) -> list[c.Command]:
    by = {"changed_by": f"agency:{region}", "patient_national_id": national_id}
    return [c.RegisterPatientInsurance(**by, insured_region=region, insurance_type=insurance_type),
            *[c.GrantChronicEntitlement(**by, disease_code=code) for code in chronic]]


def list_drugs(app: RxTrail, region: str) -> None:
    """The test drugs in the catalog and the region's caps, standards and chronic-disease list, once per store."""
    listed = app.apply_batch([c.ListDrug(changed_by=REGULATOR, drug_code=code, name=name, category=category,
                                         chronic_list=True, effective_from=date(2024, 1, 1))
                              for code, (name, category, _, _) in DRUG_FACTS.items()])
    for outcome in listed:
        if not outcome.ok and outcome.error != "AlreadyExists":
            ok(outcome)
    chronic = app.apply_batch([c.AddChronicDisease(changed_by=f"agency:{region}", region=region, disease_code=code,
                                                   name=name, effective_from=date(2024, 1, 1))
                               for code, name in CHRONIC_DISEASES])
    if not chronic[0].ok:  # the region's list and the drugs' facts in it are there already
        return
    facts: list[c.Command] = []
    for code, (_, _, cap, standard) in DRUG_FACTS.items():
        facts += [c.SetPriceCap(changed_by=f"agency:{region}", drug_code=code, region=region, cap=Decimal(cap),
                                effective_from=date(2024, 1, 1)),
                  c.SetPaymentStandard(changed_by=f"agency:{region}", drug_code=code, region=region,
                                       amount=Decimal(standard), effective_from=date(2024, 1, 1))]
    for outcome in app.apply_batch(facts):
        ok(outcome)


def consultation_fee(region: str, level: str = "tertiary") -> Decimal:
    """The region's price of an ordinary outpatient consultation at an institution of ``level`` (R15)."""
    from services.reference.policies import load_policy

    fees = load_policy(region).consultation_fee
    return next(Decimal(fee) for lvl, fee in fees.items() if str(lvl) == level)


def new_app(store: RxTrailStore, vault: PatientVault, *, at: datetime = T0) -> RxTrail:
    return RxTrail(store, vault, clock=FixedClock(at))


def today() -> date:
    return T0.date()


__all__ = ["AMLODIPINE", "CHANGCHUN", "DRUG_FACTS", "JINAN", "METFORMIN", "REGULATOR", "SECRET", "T0", "VITAMIN", "Cast",
           "consultation_fee", "hospital_commands", "item", "line", "list_drugs", "new_app", "new_national_id", "ok",
           "patient_commands", "physician_command", "public_key_of", "signing_key", "today", "trace_codes"]
