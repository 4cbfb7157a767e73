"""The settlement record written as events (money helper, issue 14): what the settlement worker and the agency
record — visits, consultations settled, prescriptions routed and settled, audit refusals and clawbacks, settlement
cases — straight into the event store, so statement tests exercise the statements and projections, not the issue
and dispense rules (those have their own suites)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from events.base import BusinessType, CatalogCategory, DomainEvent, InsuranceType, Ownership, RealNameMethod
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.prescription import (
    DeliveryArranged,
    DispenserKind,
    FeesClawedBack,
    FeesRefusedInAudit,
    PrescriptionIssued,
    PrescriptionItem,
    PrescriptionRouted,
    PrescriptionSettled,
    RoutingBasis,
)
from events.registries import PharmacyDesignated
from events.statement import SubjectKind
from services.application import RxTrail
from services.domain.clock import FixedClock
from services.domain.settlement_case import SettlementCase
from services.replay import replay
from services.simulate import Chain
from tests.support import unique_id

D = Decimal
DRUG = "XA10BAA001A001030101"


@dataclass
class SettlementRecord:
    """Settlement events of one test world, written to the application's event store by :meth:`save`."""

    app: RxTrail
    db: str
    patient_ref: str = field(default_factory=lambda: f"pt-{unique_id('M')}")
    events: list[DomainEvent] = field(default_factory=list)
    chains: dict[UUID, Chain] = field(default_factory=dict)
    issued: dict[UUID, PrescriptionIssued] = field(default_factory=dict)

    def save(self) -> None:
        if self.events:
            self.app.store.save(*self.events)
            self.events = []

    def pharmacy(self, pharmacy_id: str, region: str, when: datetime) -> None:
        self.events.append(Chain().add(
            PharmacyDesignated, when, changed_by=f"agency:{region}",
            effective_from=date(2020, 1, 1), pharmacy_id=pharmacy_id, name="Yikang", pooling_region=region,
            agreement_no=unique_id("A")))

    def visit(self, region: str, hospital: str, institution: str, when: datetime, *, fee: str = "10.00") -> UUID:
        chain = Chain()
        self.chains[chain.id] = chain
        self.events.append(chain.add(
            FollowUpVisitRecorded, when, business_type=BusinessType.INTERNET, hospital_id=hospital,
            physical_institution_id=institution, institution_ownership=Ownership.PUBLIC, pooling_region=region,
            insured_region=region, insurance_type=InsuranceType.EMPLOYEE, patient_ref=self.patient_ref,
            physician_id="PHY-1", physician_signature="sig", diagnosis_code="I10", diagnosis_name="hypertension",
            original_diagnosis_code="I10", original_diagnosis_date=when.date() - timedelta(days=30),
            original_institution_id=institution, verification_method=RealNameMethod.E_VOUCHER,
            consultation_fee=D(fee)))
        return chain.id

    def consultation(self, visit: UUID, when: datetime, fund: str, personal: str, self_pay: str,
                     institution: str) -> None:
        self.events.append(self.chains[visit].add(
            ConsultationSettled, when, business_type=BusinessType.INTERNET, settled_with=institution,
            patient_ref=self.patient_ref, verification_method=RealNameMethod.E_VOUCHER, fund=D(fund),
            personal_account=D(personal), self_pay=D(self_pay), policy_version="2026.1",
            settlement_ref=unique_id("S")))

    def settled_rx(self, region: str, hospital: str, institution: str, when: datetime, fund: str, personal: str,
                   self_pay: str = "10.00", *, pharmacy: str | None = None, enterprise: str | None = None,
                   payee: str | None = None) -> UUID:
        """A prescription of the visit's hospital, routed to ``pharmacy`` (or dispensed by the hospital), settled."""
        visit = self.visit(region, hospital, institution, when)
        chain = Chain()
        self.chains[chain.id] = chain
        total = D(fund) + D(personal) + D(self_pay)
        issued = chain.add(
            PrescriptionIssued, when, business_type=BusinessType.INTERNET, encounter_id=visit, hospital_id=hospital,
            physical_institution_id=institution, institution_ownership=Ownership.PUBLIC, pooling_region=region,
            insured_region=region, insurance_type=InsuranceType.EMPLOYEE, patient_ref=self.patient_ref,
            physician_id="PHY-1", physician_signature="sig-rx", diagnosis_code="I10", diagnosis_name="hypertension",
            items=(PrescriptionItem(drug_code=DRUG, name="metformin", spec="0.5g*30", quantity=1, days_supply=28,
                                    unit_price=total, category=CatalogCategory.A),),
            valid_until=when + timedelta(days=3))
        self.issued[chain.id] = issued
        self.events.append(issued)
        kind = DispenserKind.PHARMACY if pharmacy else DispenserKind.HOSPITAL
        self.events.append(chain.add(PrescriptionRouted, when, business_type=BusinessType.INTERNET,
                                     dispenser_kind=kind, dispenser_id=pharmacy or hospital,
                                     dispenser_ownership=Ownership.PUBLIC, basis=RoutingBasis.PATIENT_CHOICE))
        if enterprise:
            self.events.append(chain.add(DeliveryArranged, when, business_type=BusinessType.INTERNET,
                                         delivery_enterprise_id=enterprise, delivery_fee=D("0.00")))
        self.events.append(chain.add(
            PrescriptionSettled, when + timedelta(minutes=5), business_type=BusinessType.INTERNET,
            settled_with=pharmacy or institution, settled_with_kind=kind, patient_ref=self.patient_ref,
            verification_method=RealNameMethod.E_VOUCHER, total=total, fund=D(fund), personal_account=D(personal),
            self_pay=D(self_pay), delivery_fee=D("0.00"), policy_version="2026.1", policy_region=region,
            catalog_region=region, settlement_ref=unique_id("S"), payee_id=payee or pharmacy or institution))
        return chain.id

    def refuse(self, rx: UUID, amount: str, when: datetime) -> None:
        self.events.append(self.chains[rx].add(
            FeesRefusedInAudit, when, business_type=BusinessType.INTERNET, amount=D(amount), reason="over-supply",
            audit_ref=unique_id("AU"), acted_by=f"agency:{self.issued[rx].pooling_region}"))

    def claw_back(self, rx: UUID, amount: str, when: datetime) -> None:
        self.events.append(self.chains[rx].add(
            FeesClawedBack, when, business_type=BusinessType.INTERNET, amount=D(amount), reason="violation",
            audit_ref=unique_id("CB"), acted_by=f"agency:{self.issued[rx].pooling_region}"))

    def case(self, kind: SubjectKind, subject: UUID, when: datetime) -> SettlementCase:
        issued = self.issued[subject]
        return SettlementCase.open(clock=FixedClock(when), business_type=BusinessType.INTERNET, subject_kind=kind,
                                   subject_id=subject, pooling_region=issued.pooling_region,
                                   hospital_id=issued.hospital_id,
                                   physical_institution_id=issued.physical_institution_id)

    def rebuild(self) -> None:
        """Save, and rebuild the settlement projections from the event store (their own code)."""
        self.save()
        for name in ("hospital_settlement", "pharmacy_settlement"):
            replay(name, self.db, None, from_store=True, progress=False)
