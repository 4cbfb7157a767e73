"""Registries: physicians (R2), pharmacists (review), designated pharmacies (routing), patient status (R11)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Self
from uuid import UUID

from events.base import Ownership
from events.registries import (
    PatientReinstated,
    PatientSuspendedForFraud,
    PharmacistRegistered,
    PharmacyAgreementSuspended,
    PharmacyDesignated,
    PhysicianRegistered,
    PhysicianReinstated,
    PhysicianSuspended,
)
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition
from services.domain.policy import DEFAULT_RULES, RuleConfig


class Physician(Aggregate):
    """互联网医师（实名备案，可被暂停）。"""

    creation_event = PhysicianRegistered

    physician_id: str
    hospital_id: str
    name: str
    suspended: bool = False

    @staticmethod
    def id_for(physician_id: str) -> UUID:
        return natural_id("physician", physician_id)

    @classmethod
    def register(
        cls, *, clock: Clock, physician_id: str, hospital_id: str, name: str, qualification_no: str
    ) -> Self:
        return cls._create(
            PhysicianRegistered,
            clock,
            cls.id_for(physician_id),
            physician_id=physician_id,
            hospital_id=hospital_id,
            name=name,
            qualification_no=qualification_no,
        )

    def suspend(self, *, clock: Clock, reason: str) -> None:
        if self.suspended:
            raise IllegalTransition("suspended", "suspend", physician_id=self.physician_id)
        self._trigger(PhysicianSuspended, clock, reason=reason)

    def reinstate(self, *, clock: Clock, reason: str) -> None:
        if not self.suspended:
            raise IllegalTransition("active", "reinstate", physician_id=self.physician_id)
        self._trigger(PhysicianReinstated, clock, reason=reason)

    @classmethod
    def _created(cls, event: PhysicianRegistered) -> Self:
        return cls(
            id=event.originator_id,
            physician_id=event.physician_id,
            hospital_id=event.hospital_id,
            name=event.name,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, PhysicianSuspended):
            self.suspended = True
        elif isinstance(event, PhysicianReinstated):
            self.suspended = False


class Pharmacist(Aggregate):
    """审方药师。"""

    creation_event = PharmacistRegistered

    pharmacist_id: str
    employer_id: str
    third_party: bool

    @staticmethod
    def id_for(pharmacist_id: str) -> UUID:
        return natural_id("pharmacist", pharmacist_id)

    @classmethod
    def register(
        cls,
        *,
        clock: Clock,
        pharmacist_id: str,
        employer_id: str,
        name: str,
        qualification_no: str,
        third_party: bool = False,
    ) -> Self:
        return cls._create(
            PharmacistRegistered,
            clock,
            cls.id_for(pharmacist_id),
            pharmacist_id=pharmacist_id,
            employer_id=employer_id,
            third_party=third_party,
            name=name,
            qualification_no=qualification_no,
        )

    @classmethod
    def _created(cls, event: PharmacistRegistered) -> Self:
        return cls(
            id=event.originator_id,
            pharmacist_id=event.pharmacist_id,
            employer_id=event.employer_id,
            third_party=event.third_party,
        )

    def _apply(self, event: object) -> None:
        return None


class Pharmacy(Aggregate):
    """定点零售药店：所属统筹区与协议状态。"""

    creation_event = PharmacyDesignated

    pharmacy_id: str
    pooling_region: str
    ownership: Ownership
    agreement_active: bool = True

    @staticmethod
    def id_for(pharmacy_id: str) -> UUID:
        return natural_id("pharmacy", pharmacy_id)

    @classmethod
    def designate(
        cls,
        *,
        clock: Clock,
        pharmacy_id: str,
        name: str,
        pooling_region: str,
        agreement_no: str,
        ownership: Ownership = Ownership.NON_PUBLIC,
        drug_codes: Sequence[str] | None = None,
    ) -> Self:
        """``drug_codes``: the drugs it declares it carries (rule-based routing); None = not declared."""
        return cls._create(
            PharmacyDesignated,
            clock,
            cls.id_for(pharmacy_id),
            pharmacy_id=pharmacy_id,
            name=name,
            pooling_region=pooling_region,
            agreement_no=agreement_no,
            ownership=ownership,
            drug_codes=None if drug_codes is None else tuple(drug_codes),
        )

    def suspend_agreement(self, *, clock: Clock, reason: str) -> None:
        if not self.agreement_active:
            raise IllegalTransition("agreement_suspended", "suspend_agreement", pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyAgreementSuspended, clock, reason=reason)

    @classmethod
    def _created(cls, event: PharmacyDesignated) -> Self:
        return cls(
            id=event.originator_id,
            pharmacy_id=event.pharmacy_id,
            pooling_region=event.pooling_region,
            ownership=event.ownership,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, PharmacyAgreementSuspended):
            self.agreement_active = False


class PatientStatus(Aggregate):
    """参保人状态：因欺诈骗保被暂停线上医保支付（R11）。以假名 patient_ref 为键。"""

    creation_event = PatientSuspendedForFraud

    patient_ref: str
    suspended: bool = True
    until: date | None = None

    @staticmethod
    def id_for(patient_ref: str) -> UUID:
        return natural_id("patient", patient_ref)

    @classmethod
    def suspend_for_fraud(
        cls,
        existing: PatientStatus | None,
        *,
        clock: Clock,
        patient_ref: str,
        reason: str,
        until: date | None = None,
    ) -> PatientStatus:
        """``existing`` is what the repository holds for ``id_for(patient_ref)``, or None."""
        if existing is None:
            return cls._create(
                PatientSuspendedForFraud,
                clock,
                cls.id_for(patient_ref),
                patient_ref=patient_ref,
                reason=reason,
                until=until,
            )
        if existing.suspended:
            raise IllegalTransition("suspended", "suspend_for_fraud", patient_ref=patient_ref)
        existing._trigger(
            PatientSuspendedForFraud, clock, patient_ref=patient_ref, reason=reason, until=until
        )
        return existing

    def reinstate(self, *, clock: Clock, reason: str) -> None:
        if not self.suspended:
            raise IllegalTransition("active", "reinstate", patient_ref=self.patient_ref)
        self._trigger(PatientReinstated, clock, reason=reason)

    def is_suspended(self, at: datetime, rules: RuleConfig = DEFAULT_RULES) -> bool:
        if not self.suspended:
            return False
        return self.until is None or rules.local_date(at) <= self.until

    @classmethod
    def _created(cls, event: PatientSuspendedForFraud) -> Self:
        return cls(id=event.originator_id, patient_ref=event.patient_ref, until=event.until)

    def _apply(self, event: object) -> None:
        if isinstance(event, PatientSuspendedForFraud):
            self.suspended = True
            self.until = event.until
        elif isinstance(event, PatientReinstated):
            self.suspended = False
            self.until = None


project_physician = make_projector(Physician)
project_pharmacist = make_projector(Pharmacist)
project_pharmacy = make_projector(Pharmacy)
project_patient_status = make_projector(PatientStatus)
