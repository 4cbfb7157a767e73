"""Registries: the authority's facts every rule and settlement reads (R17; /work/coord/REGISTRY_API.md).

Aggregates with natural ids (``Cls.id_for(key)``): institutions (physical and internet), physicians (R2),
pharmacists (R3, R18), designated pharmacies, delivery enterprises, patients' insurance facts (R12) and fraud status
(R11), emergency declarations (R4), the drug catalog with payment standards and price caps (R7, R10), the chronic
disease lists (R4). Every change is an event recording ``changed_by`` and ``effective_from``; facts with effective
dates answer "as of day D" (China time: ``RuleConfig.local_date``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from events.base import CatalogCategory, InsuranceType, Ownership
from events.registries import (
    ChronicDiseaseDelisted,
    ChronicDiseaseListed,
    ChronicEntitlementGranted,
    ChronicEntitlementRevoked,
    CooperationAgreementEnded,
    CooperationAgreementRecorded,
    DeliveryEnterpriseGspChanged,
    DeliveryEnterpriseRegistered,
    DrugListed,
    DrugListingChanged,
    EmergencyDeclared,
    EmergencyEnded,
    InstitutionAgreementReinstated,
    InstitutionAgreementSuspended,
    InstitutionChanged,
    InstitutionKind,
    InstitutionLevel,
    InstitutionRegistered,
    OffSiteFilingEnded,
    OffSiteFilingRecorded,
    PatientInsuranceChanged,
    PatientInsuranceRegistered,
    PatientReinstated,
    PatientSuspendedForFraud,
    PaymentStandardSet,
    PharmacistRegistered,
    PharmacistReinstated,
    PharmacistSuspended,
    PharmacyAgreementReinstated,
    PharmacyAgreementSuspended,
    PharmacyChronicQualificationChanged,
    PharmacyDesignated,
    PharmacyDrugsDelisted,
    PharmacyDrugsListed,
    PharmacyPayeeChanged,
    PhysicianKeyChanged,
    PhysicianRegistered,
    PhysicianReinstated,
    PhysicianSuspended,
    PriceCapSet,
)
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand
from services.domain.policy import DEFAULT_RULES, RuleConfig

__all__ = [
    "ChronicDiseaseList",
    "DeliveryEnterprise",
    "DrugListing",
    "EmergencyDeclarations",
    "Institution",
    "InstitutionKind",
    "InstitutionLevel",
    "PatientInsurance",
    "PatientStatus",
    "Pharmacist",
    "Pharmacy",
    "Physician",
    "generic_code_of",
    "today",
]


def today(clock: Clock, rules: RuleConfig = DEFAULT_RULES) -> date:
    """The China-time day of ``clock`` (the day facts are read "as of")."""
    return rules.local_date(clock.now())


def _from(clock: Clock, effective_from: date | None) -> date:
    return effective_from if effective_from is not None else today(clock)


class _Dated(BaseModel):
    """One value of an effective-dated fact (None: withdrawn), held from ``effective_from``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effective_from: date
    value: Decimal | None
    recorded: int
    """The version that recorded it: of two values from the same day the later recording wins."""


def _as_of(entries: Iterable[_Dated], day: date) -> _Dated | None:
    held = [e for e in entries if e.effective_from <= day]
    return max(held, key=lambda e: (e.effective_from, e.recorded)) if held else None


# --- institutions -----------------------------------------------------------------------------------------------


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    effective_from: date
    active: bool
    recorded: int


class Institution(Aggregate):
    """定点医疗机构: a physical institution, or an internet hospital backed by one (``physical_institution_id``).

    Suspending the physical institution's agreement suspends its internet hospitals: the rules check both
    (``active_on(day, physical=...)``)."""

    creation_event = InstitutionRegistered

    institution_id: str
    name: str
    kind: InstitutionKind
    physical_institution_id: str | None = None
    ownership: Ownership
    level: InstitutionLevel
    region: str
    agreement_no: str
    agreement_active: bool = True
    statuses: tuple[_Status, ...] = ()

    @staticmethod
    def id_for(institution_id: str) -> UUID:
        return natural_id("institution", institution_id)

    @classmethod
    def register(
        cls,
        *,
        clock: Clock,
        changed_by: str,
        institution_id: str,
        name: str,
        kind: InstitutionKind,
        ownership: Ownership,
        level: InstitutionLevel,
        region: str,
        agreement_no: str,
        physical: Institution | None = None,
        effective_from: date | None = None,
    ) -> Self:
        """``physical``: an internet hospital's physical institution (registered, physical, same region)."""
        if kind is InstitutionKind.INTERNET:
            if physical is None:
                raise InvalidCommand("an internet hospital names its registered physical institution",
                                     institution_id=institution_id)
            if physical.kind is not InstitutionKind.PHYSICAL:
                raise InvalidCommand("an internet hospital is backed by a physical institution, not an internet one",
                                     physical_institution_id=physical.institution_id)
            if physical.region != region:
                raise InvalidCommand("an internet hospital is in its physical institution's pooling region",
                                     physical_institution_id=physical.institution_id, region=physical.region)
        elif physical is not None:
            raise InvalidCommand("a physical institution is not backed by another", institution_id=institution_id)
        return cls._create(
            InstitutionRegistered,
            clock,
            cls.id_for(institution_id),
            changed_by=changed_by,
            effective_from=_from(clock, effective_from),
            institution_id=institution_id,
            name=name,
            kind=kind,
            physical_institution_id=None if physical is None else physical.institution_id,
            ownership=ownership,
            level=level,
            region=region,
            agreement_no=agreement_no,
        )

    def change(
        self,
        *,
        clock: Clock,
        changed_by: str,
        name: str | None = None,
        ownership: Ownership | None = None,
        level: InstitutionLevel | None = None,
        effective_from: date | None = None,
    ) -> None:
        if name is None and ownership is None and level is None:
            raise InvalidCommand("nothing to change", institution_id=self.institution_id)
        self._trigger(InstitutionChanged, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      name=name, ownership=ownership, level=level)

    def suspend_agreement(self, *, clock: Clock, changed_by: str, reason: str,
                          effective_from: date | None = None) -> None:
        if not self.agreement_active:
            raise IllegalTransition("agreement_suspended", "suspend_agreement", institution_id=self.institution_id)
        self._trigger(InstitutionAgreementSuspended, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), reason=reason)

    def reinstate_agreement(self, *, clock: Clock, changed_by: str, reason: str,
                            effective_from: date | None = None) -> None:
        if self.agreement_active:
            raise IllegalTransition("agreement_active", "reinstate_agreement", institution_id=self.institution_id)
        self._trigger(InstitutionAgreementReinstated, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), reason=reason)

    @property
    def is_internet(self) -> bool:
        return self.kind is InstitutionKind.INTERNET

    def agreement_active_on(self, day: date) -> bool:
        """This institution's own agreement on ``day``."""
        latest = max((s for s in self.statuses if s.effective_from <= day),
                     key=lambda s: (s.effective_from, s.recorded), default=None)
        return True if latest is None else latest.active

    def active_on(self, day: date, physical: Institution | None = None) -> bool:
        """Agreement in force on ``day`` — for an internet hospital, also its physical institution's (give it as
        ``physical``; an internet hospital without it is not active)."""
        if not self.agreement_active_on(day):
            return False
        if self.kind is InstitutionKind.PHYSICAL:
            return True
        if physical is None or physical.institution_id != self.physical_institution_id:
            return False
        return physical.agreement_active_on(day)

    @classmethod
    def _created(cls, event: InstitutionRegistered) -> Self:
        return cls(
            id=event.originator_id,
            institution_id=event.institution_id,
            name=event.name,
            kind=event.kind,
            physical_institution_id=event.physical_institution_id,
            ownership=event.ownership,
            level=event.level,
            region=event.region,
            agreement_no=event.agreement_no,
            statuses=(_Status(effective_from=event.effective_from, active=True, recorded=1),),
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, InstitutionChanged):
            self.name = event.name or self.name
            self.ownership = event.ownership or self.ownership
            self.level = event.level or self.level
        elif isinstance(event, InstitutionAgreementSuspended | InstitutionAgreementReinstated):
            active = isinstance(event, InstitutionAgreementReinstated)
            self.agreement_active = active
            self.statuses = (*self.statuses, _Status(effective_from=event.effective_from, active=active,
                                                     recorded=event.originator_version))


# --- physicians -------------------------------------------------------------------------------------------------


class Physician(Aggregate):
    """互联网医师（实名备案，医保医师代码，电子签名公钥，可被暂停）。"""

    creation_event = PhysicianRegistered

    physician_id: str
    hospital_id: str
    name: str
    physician_code: str | None = None
    public_key: str | None = None
    suspended: bool = False

    @staticmethod
    def id_for(physician_id: str) -> UUID:
        return natural_id("physician", physician_id)

    @classmethod
    def register(
        cls,
        *,
        clock: Clock,
        changed_by: str,
        physician_id: str,
        hospital_id: str,
        name: str,
        qualification_no: str,
        physician_code: str | None = None,
        public_key: str | None = None,
        effective_from: date | None = None,
    ) -> Self:
        return cls._create(
            PhysicianRegistered,
            clock,
            cls.id_for(physician_id),
            changed_by=changed_by,
            effective_from=_from(clock, effective_from),
            physician_id=physician_id,
            hospital_id=hospital_id,
            name=name,
            qualification_no=qualification_no,
            physician_code=physician_code,
            public_key=public_key,
        )

    def suspend(self, *, clock: Clock, changed_by: str, reason: str, effective_from: date | None = None) -> None:
        if self.suspended:
            raise IllegalTransition("suspended", "suspend", physician_id=self.physician_id)
        self._trigger(PhysicianSuspended, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      reason=reason)

    def reinstate(self, *, clock: Clock, changed_by: str, reason: str, effective_from: date | None = None) -> None:
        if not self.suspended:
            raise IllegalTransition("active", "reinstate", physician_id=self.physician_id)
        self._trigger(PhysicianReinstated, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      reason=reason)

    def change_key(self, *, clock: Clock, changed_by: str, public_key: str, effective_from: date | None = None) -> None:
        if public_key == self.public_key:
            raise InvalidCommand("the key is already the registered one", physician_id=self.physician_id)
        self._trigger(PhysicianKeyChanged, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      public_key=public_key)

    @classmethod
    def _created(cls, event: PhysicianRegistered) -> Self:
        return cls(
            id=event.originator_id,
            physician_id=event.physician_id,
            hospital_id=event.hospital_id,
            name=event.name,
            physician_code=event.physician_code,
            public_key=event.public_key,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, PhysicianSuspended):
            self.suspended = True
        elif isinstance(event, PhysicianReinstated):
            self.suspended = False
        elif isinstance(event, PhysicianKeyChanged):
            self.public_key = event.public_key


# --- pharmacists ------------------------------------------------------------------------------------------------


class Pharmacist(Aggregate):
    """审方药师：a hospital's own (``employer_id``) or a qualified third party's (``third_party``, reviewing only for
    hospitals it has a recorded cooperation agreement with, R18)."""

    creation_event = PharmacistRegistered

    pharmacist_id: str
    employer_id: str | None = None
    third_party: bool = False
    company_id: str | None = None
    region: str | None = None
    agreements: frozenset[str] = frozenset()
    suspended: bool = False

    @staticmethod
    def id_for(pharmacist_id: str) -> UUID:
        return natural_id("pharmacist", pharmacist_id)

    @classmethod
    def register(
        cls,
        *,
        clock: Clock,
        changed_by: str,
        pharmacist_id: str,
        name: str,
        qualification_no: str,
        employer_id: str | None = None,
        third_party: bool = False,
        company_id: str | None = None,
        region: str | None = None,
        effective_from: date | None = None,
    ) -> Self:
        if third_party == (employer_id is not None):
            raise InvalidCommand("a pharmacist is either employed by a hospital (employer_id) or a third party",
                                 pharmacist_id=pharmacist_id)
        if company_id is not None and not third_party:
            raise InvalidCommand("company_id is for third-party pharmacists", pharmacist_id=pharmacist_id)
        return cls._create(
            PharmacistRegistered,
            clock,
            cls.id_for(pharmacist_id),
            changed_by=changed_by,
            effective_from=_from(clock, effective_from),
            pharmacist_id=pharmacist_id,
            employer_id=employer_id,
            third_party=third_party,
            company_id=company_id,
            region=region,
            name=name,
            qualification_no=qualification_no,
        )

    def record_agreement(self, *, clock: Clock, changed_by: str, hospital_id: str, agreement_no: str,
                         effective_from: date | None = None) -> None:
        if not self.third_party:
            raise InvalidCommand("cooperation agreements are for third-party pharmacists",
                                 pharmacist_id=self.pharmacist_id)
        if hospital_id in self.agreements:
            raise IllegalTransition("agreement_recorded", "record_agreement", pharmacist_id=self.pharmacist_id,
                                    hospital_id=hospital_id)
        self._trigger(CooperationAgreementRecorded, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), hospital_id=hospital_id, agreement_no=agreement_no)

    def end_agreement(self, *, clock: Clock, changed_by: str, hospital_id: str, reason: str,
                      effective_from: date | None = None) -> None:
        if hospital_id not in self.agreements:
            raise IllegalTransition("no_agreement", "end_agreement", pharmacist_id=self.pharmacist_id,
                                    hospital_id=hospital_id)
        self._trigger(CooperationAgreementEnded, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), hospital_id=hospital_id, reason=reason)

    def suspend(self, *, clock: Clock, changed_by: str, reason: str, effective_from: date | None = None) -> None:
        if self.suspended:
            raise IllegalTransition("suspended", "suspend", pharmacist_id=self.pharmacist_id)
        self._trigger(PharmacistSuspended, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      reason=reason)

    def reinstate(self, *, clock: Clock, changed_by: str, reason: str, effective_from: date | None = None) -> None:
        if not self.suspended:
            raise IllegalTransition("active", "reinstate", pharmacist_id=self.pharmacist_id)
        self._trigger(PharmacistReinstated, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      reason=reason)

    def may_review_for(self, hospital_id: str) -> bool:
        """Not suspended, and employed by the hospital or (third party) with a recorded agreement with it (R18)."""
        if self.suspended:
            return False
        return self.employer_id == hospital_id or (self.third_party and hospital_id in self.agreements)

    @classmethod
    def _created(cls, event: PharmacistRegistered) -> Self:
        return cls(
            id=event.originator_id,
            pharmacist_id=event.pharmacist_id,
            employer_id=event.employer_id,
            third_party=event.third_party,
            company_id=event.company_id,
            region=event.region,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, CooperationAgreementRecorded):
            self.agreements = self.agreements | {event.hospital_id}
        elif isinstance(event, CooperationAgreementEnded):
            self.agreements = self.agreements - {event.hospital_id}
        elif isinstance(event, PharmacistSuspended):
            self.suspended = True
        elif isinstance(event, PharmacistReinstated):
            self.suspended = False


# --- designated pharmacies --------------------------------------------------------------------------------------


class Pharmacy(Aggregate):
    """定点零售药店：统筹区、协议状态、经营药品、特慢病资质、收款方。"""

    creation_event = PharmacyDesignated

    pharmacy_id: str
    pooling_region: str
    ownership: Ownership
    agreement_active: bool = True
    drug_codes: frozenset[str] | None = None
    chronic_qualified: bool = False
    payee_id: str | None = None

    @staticmethod
    def id_for(pharmacy_id: str) -> UUID:
        return natural_id("pharmacy", pharmacy_id)

    @property
    def region(self) -> str:
        return self.pooling_region

    @property
    def suspended(self) -> bool:
        return not self.agreement_active

    @classmethod
    def designate(
        cls,
        *,
        clock: Clock,
        changed_by: str,
        pharmacy_id: str,
        name: str,
        pooling_region: str,
        agreement_no: str,
        ownership: Ownership = Ownership.NON_PUBLIC,
        drug_codes: Sequence[str] | None = None,
        chronic_qualified: bool = False,
        payee_id: str | None = None,
        effective_from: date | None = None,
    ) -> Self:
        """``drug_codes``: the drugs it declares it carries (rule-based routing); None = not declared."""
        return cls._create(
            PharmacyDesignated,
            clock,
            cls.id_for(pharmacy_id),
            changed_by=changed_by,
            effective_from=_from(clock, effective_from),
            pharmacy_id=pharmacy_id,
            name=name,
            pooling_region=pooling_region,
            agreement_no=agreement_no,
            ownership=ownership,
            drug_codes=None if drug_codes is None else tuple(drug_codes),
            chronic_qualified=chronic_qualified,
            payee_id=payee_id,
        )

    def suspend_agreement(self, *, clock: Clock, changed_by: str, reason: str,
                          effective_from: date | None = None) -> None:
        if not self.agreement_active:
            raise IllegalTransition("agreement_suspended", "suspend_agreement", pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyAgreementSuspended, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), reason=reason)

    def reinstate_agreement(self, *, clock: Clock, changed_by: str, reason: str,
                            effective_from: date | None = None) -> None:
        if self.agreement_active:
            raise IllegalTransition("agreement_active", "reinstate_agreement", pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyAgreementReinstated, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), reason=reason)

    def list_drugs(self, *, clock: Clock, changed_by: str, drug_codes: Sequence[str],
                   effective_from: date | None = None) -> None:
        new = tuple(dict.fromkeys(code for code in drug_codes if code not in (self.drug_codes or ())))
        if not new:
            raise InvalidCommand("every drug given is already on the pharmacy's list", pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyDrugsListed, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      drug_codes=new)

    def delist_drugs(self, *, clock: Clock, changed_by: str, drug_codes: Sequence[str],
                     effective_from: date | None = None) -> None:
        held = self.drug_codes or frozenset()
        missing = [code for code in drug_codes if code not in held]
        if missing or not drug_codes:
            raise InvalidCommand("drugs not on the pharmacy's list", pharmacy_id=self.pharmacy_id,
                                 drug_codes=",".join(missing[:5]))
        self._trigger(PharmacyDrugsDelisted, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      drug_codes=tuple(dict.fromkeys(drug_codes)))

    def set_chronic_qualification(self, *, clock: Clock, changed_by: str, qualified: bool,
                                  effective_from: date | None = None) -> None:
        if qualified == self.chronic_qualified:
            raise IllegalTransition("qualified" if qualified else "not_qualified", "set_chronic_qualification",
                                    pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyChronicQualificationChanged, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), qualified=qualified)

    def change_payee(self, *, clock: Clock, changed_by: str, payee_id: str | None,
                     effective_from: date | None = None) -> None:
        if payee_id == self.payee_id:
            raise InvalidCommand("the payee is already the registered one", pharmacy_id=self.pharmacy_id)
        self._trigger(PharmacyPayeeChanged, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      payee_id=payee_id)

    @classmethod
    def _created(cls, event: PharmacyDesignated) -> Self:
        return cls(
            id=event.originator_id,
            pharmacy_id=event.pharmacy_id,
            pooling_region=event.pooling_region,
            ownership=event.ownership,
            drug_codes=None if event.drug_codes is None else frozenset(event.drug_codes),
            chronic_qualified=event.chronic_qualified,
            payee_id=event.payee_id,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, PharmacyAgreementSuspended):
            self.agreement_active = False
        elif isinstance(event, PharmacyAgreementReinstated):
            self.agreement_active = True
        elif isinstance(event, PharmacyDrugsListed):
            self.drug_codes = (self.drug_codes or frozenset()) | set(event.drug_codes)
        elif isinstance(event, PharmacyDrugsDelisted):
            self.drug_codes = (self.drug_codes or frozenset()) - set(event.drug_codes)
        elif isinstance(event, PharmacyChronicQualificationChanged):
            self.chronic_qualified = event.qualified
        elif isinstance(event, PharmacyPayeeChanged):
            self.payee_id = event.payee_id


# --- delivery enterprises ---------------------------------------------------------------------------------------


class DeliveryEnterprise(Aggregate):
    """药品配送企业 (GSP-qualified)."""

    creation_event = DeliveryEnterpriseRegistered

    enterprise_id: str
    name: str
    region: str
    gsp_qualified: bool
    gsp_certificate_no: str | None = None

    @staticmethod
    def id_for(enterprise_id: str) -> UUID:
        return natural_id("delivery_enterprise", enterprise_id)

    @classmethod
    def register(cls, *, clock: Clock, changed_by: str, enterprise_id: str, name: str, region: str,
                 gsp_qualified: bool, gsp_certificate_no: str | None = None,
                 effective_from: date | None = None) -> Self:
        return cls._create(
            DeliveryEnterpriseRegistered, clock, cls.id_for(enterprise_id), changed_by=changed_by,
            effective_from=_from(clock, effective_from), enterprise_id=enterprise_id, name=name, region=region,
            gsp_qualified=gsp_qualified, gsp_certificate_no=gsp_certificate_no,
        )

    def change_gsp(self, *, clock: Clock, changed_by: str, gsp_qualified: bool, reason: str,
                   gsp_certificate_no: str | None = None, effective_from: date | None = None) -> None:
        if gsp_qualified == self.gsp_qualified and gsp_certificate_no == self.gsp_certificate_no:
            raise InvalidCommand("GSP qualification unchanged", enterprise_id=self.enterprise_id)
        self._trigger(DeliveryEnterpriseGspChanged, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), gsp_qualified=gsp_qualified,
                      gsp_certificate_no=gsp_certificate_no, reason=reason)

    @classmethod
    def _created(cls, event: DeliveryEnterpriseRegistered) -> Self:
        return cls(id=event.originator_id, enterprise_id=event.enterprise_id, name=event.name, region=event.region,
                   gsp_qualified=event.gsp_qualified, gsp_certificate_no=event.gsp_certificate_no)

    def _apply(self, event: object) -> None:
        if isinstance(event, DeliveryEnterpriseGspChanged):
            self.gsp_qualified = event.gsp_qualified
            self.gsp_certificate_no = event.gsp_certificate_no


# --- patients ---------------------------------------------------------------------------------------------------


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
        changed_by: str,
        patient_ref: str,
        reason: str,
        until: date | None = None,
        effective_from: date | None = None,
    ) -> PatientStatus:
        """``existing`` is what the repository holds for ``id_for(patient_ref)``, or None."""
        fields = {"changed_by": changed_by, "effective_from": _from(clock, effective_from),
                  "patient_ref": patient_ref, "reason": reason, "until": until}
        if existing is None:
            return cls._create(PatientSuspendedForFraud, clock, cls.id_for(patient_ref), **fields)
        if existing.suspended:
            raise IllegalTransition("suspended", "suspend_for_fraud", patient_ref=patient_ref)
        existing._trigger(PatientSuspendedForFraud, clock, **fields)
        return existing

    def reinstate(self, *, clock: Clock, changed_by: str, reason: str, effective_from: date | None = None) -> None:
        if not self.suspended:
            raise IllegalTransition("active", "reinstate", patient_ref=self.patient_ref)
        self._trigger(PatientReinstated, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      reason=reason)

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


class _Period(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str
    region: str
    valid_from: date
    valid_until: date | None = None

    def covers(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_until is None or day <= self.valid_until)


def _ended(periods: tuple[_Period, ...], ref: str, last_day: date) -> tuple[_Period, ...]:
    return tuple(p.model_copy(update={"valid_until": min(last_day, p.valid_until or last_day)}) if p.ref == ref
                 else p for p in periods)


class PatientInsurance(Aggregate):
    """参保人的医保事实：参保地、险种、门诊慢特病待遇（按病种）、长期异地就医备案（有期限）. Keyed by the pseudonym
    ``patient_ref`` (the HTTP/CLI edge takes the national id; the vault turns it into the pseudonym)."""

    creation_event = PatientInsuranceRegistered

    patient_ref: str
    insured_region: str
    insurance_type: InsuranceType
    chronic_entitlements: frozenset[str] = frozenset()
    filings: tuple[_Period, ...] = ()

    @staticmethod
    def id_for(patient_ref: str) -> UUID:
        return natural_id("patient_insurance", patient_ref)

    @classmethod
    def register(cls, *, clock: Clock, changed_by: str, patient_ref: str, insured_region: str,
                 insurance_type: InsuranceType, effective_from: date | None = None) -> Self:
        return cls._create(PatientInsuranceRegistered, clock, cls.id_for(patient_ref), changed_by=changed_by,
                           effective_from=_from(clock, effective_from), patient_ref=patient_ref,
                           insured_region=insured_region, insurance_type=insurance_type)

    def change(self, *, clock: Clock, changed_by: str, insured_region: str, insurance_type: InsuranceType,
               effective_from: date | None = None) -> None:
        if (insured_region, insurance_type) == (self.insured_region, self.insurance_type):
            raise InvalidCommand("insured region and insurance type unchanged")
        self._trigger(PatientInsuranceChanged, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), insured_region=insured_region,
                      insurance_type=insurance_type)

    def grant_chronic(self, *, clock: Clock, changed_by: str, disease_code: str,
                      effective_from: date | None = None) -> None:
        if disease_code in self.chronic_entitlements:
            raise IllegalTransition("entitled", "grant_chronic", disease_code=disease_code)
        self._trigger(ChronicEntitlementGranted, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), disease_code=disease_code)

    def revoke_chronic(self, *, clock: Clock, changed_by: str, disease_code: str, reason: str,
                       effective_from: date | None = None) -> None:
        if disease_code not in self.chronic_entitlements:
            raise IllegalTransition("not_entitled", "revoke_chronic", disease_code=disease_code)
        self._trigger(ChronicEntitlementRevoked, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), disease_code=disease_code, reason=reason)

    def entitled_to(self, disease_code: str) -> bool:
        """An entitlement for the disease's category (E11) covers its subcategories (E11.9)."""
        return disease_code in self.chronic_entitlements or disease_code.split(".")[0] in self.chronic_entitlements

    def record_filing(self, *, clock: Clock, changed_by: str, filing_no: str, region: str, valid_from: date,
                      valid_until: date | None = None) -> None:
        if any(p.ref == filing_no for p in self.filings):
            raise IllegalTransition("filed", "record_filing", filing_no=filing_no)
        if region == self.insured_region:
            raise InvalidCommand("an off-site filing names a region other than the insured region", region=region)
        if valid_until is not None and valid_until < valid_from:
            raise InvalidCommand("a filing ends on or after the day it starts", filing_no=filing_no)
        self._trigger(OffSiteFilingRecorded, clock, changed_by=changed_by, effective_from=valid_from,
                      filing_no=filing_no, region=region, valid_until=valid_until)

    def end_filing(self, *, clock: Clock, changed_by: str, filing_no: str, reason: str,
                   effective_from: date | None = None) -> None:
        """The filing holds up to the day before ``effective_from`` (default: today, so it ends yesterday)."""
        if not any(p.ref == filing_no for p in self.filings):
            raise IllegalTransition("not_filed", "end_filing", filing_no=filing_no)
        self._trigger(OffSiteFilingEnded, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      filing_no=filing_no, reason=reason)

    def filed_for(self, region: str, day: date) -> bool:
        """长期异地就医备案 for treatment in ``region`` valid on ``day`` (R12)."""
        return any(p.region == region and p.covers(day) for p in self.filings)

    @classmethod
    def _created(cls, event: PatientInsuranceRegistered) -> Self:
        return cls(id=event.originator_id, patient_ref=event.patient_ref, insured_region=event.insured_region,
                   insurance_type=event.insurance_type)

    def _apply(self, event: object) -> None:
        if isinstance(event, PatientInsuranceChanged):
            self.insured_region = event.insured_region
            self.insurance_type = event.insurance_type
        elif isinstance(event, ChronicEntitlementGranted):
            self.chronic_entitlements = self.chronic_entitlements | {event.disease_code}
        elif isinstance(event, ChronicEntitlementRevoked):
            self.chronic_entitlements = self.chronic_entitlements - {event.disease_code}
        elif isinstance(event, OffSiteFilingRecorded):
            self.filings = (*self.filings, _Period(ref=event.filing_no, region=event.region,
                                                   valid_from=event.effective_from, valid_until=event.valid_until))
        elif isinstance(event, OffSiteFilingEnded):
            self.filings = _ended(self.filings, event.filing_no, event.effective_from - timedelta(days=1))


# --- emergency declarations -------------------------------------------------------------------------------------


class EmergencyDeclarations(Aggregate):
    """Public-health emergency declarations of one region, with their periods (R4)."""

    creation_event = EmergencyDeclared

    region: str
    declarations: tuple[_Period, ...] = ()

    @staticmethod
    def id_for(region: str) -> UUID:
        return natural_id("emergency_declarations", region)

    @classmethod
    def declare(cls, existing: EmergencyDeclarations | None, *, clock: Clock, changed_by: str, region: str,
                declaration_no: str, title: str, valid_from: date,
                valid_until: date | None = None) -> EmergencyDeclarations:
        """``existing`` is what the repository holds for ``id_for(region)``, or None."""
        if valid_until is not None and valid_until < valid_from:
            raise InvalidCommand("a declaration ends on or after the day it starts", declaration_no=declaration_no)
        fields = {"changed_by": changed_by, "effective_from": valid_from, "region": region,
                  "declaration_no": declaration_no, "title": title, "valid_until": valid_until}
        if existing is None:
            return cls._create(EmergencyDeclared, clock, cls.id_for(region), **fields)
        if any(d.ref == declaration_no for d in existing.declarations):
            raise IllegalTransition("declared", "declare", declaration_no=declaration_no)
        existing._trigger(EmergencyDeclared, clock, **fields)
        return existing

    def end(self, *, clock: Clock, changed_by: str, declaration_no: str, reason: str,
            effective_from: date | None = None) -> None:
        """The declaration holds up to the day before ``effective_from``."""
        if not any(d.ref == declaration_no for d in self.declarations):
            raise IllegalTransition("not_declared", "end", declaration_no=declaration_no)
        self._trigger(EmergencyEnded, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      declaration_no=declaration_no, reason=reason)

    def declared_on(self, day: date) -> bool:
        return any(d.covers(day) for d in self.declarations)

    @classmethod
    def _created(cls, event: EmergencyDeclared) -> Self:
        aggregate = cls(id=event.originator_id, region=event.region)
        aggregate._apply(event)
        return aggregate

    def _apply(self, event: object) -> None:
        if isinstance(event, EmergencyDeclared):
            self.declarations = (*self.declarations, _Period(ref=event.declaration_no, region=event.region,
                                                             valid_from=event.effective_from,
                                                             valid_until=event.valid_until))
        elif isinstance(event, EmergencyEnded):
            self.declarations = _ended(self.declarations, event.declaration_no,
                                       event.effective_from - timedelta(days=1))


# --- drug catalog -----------------------------------------------------------------------------------------------


def generic_code_of(drug_code: str) -> str:
    """The generic of a national drug code: its ATC group and substance serial (``XA10BAA001A001030101`` →
    ``XA10BA001``), the same across specs, forms and makers."""
    return drug_code[:6] + drug_code[7:10]


class _RegionValue(_Dated):
    region: str
    institution_id: str | None = None


class DrugListing(Aggregate):
    """医保药品目录条目: category (A/B/C, NONE = out of catalog, self-pay), generic, chronic list; payment standard per
    region and price caps per region and institution, with effective dates (R7, R10)."""

    creation_event = DrugListed

    drug_code: str
    generic_code: str
    name: str
    spec: str | None = None
    form: str | None = None
    category: CatalogCategory
    chronic_list: bool = False
    standards: tuple[_RegionValue, ...] = ()
    caps: tuple[_RegionValue, ...] = ()

    @staticmethod
    def id_for(drug_code: str) -> UUID:
        return natural_id("drug", drug_code)

    @classmethod
    def list_drug(cls, *, clock: Clock, changed_by: str, drug_code: str, name: str, category: CatalogCategory,
             generic_code: str | None = None, spec: str | None = None, form: str | None = None,
             chronic_list: bool = False, effective_from: date | None = None) -> Self:
        return cls._create(
            DrugListed, clock, cls.id_for(drug_code), changed_by=changed_by,
            effective_from=_from(clock, effective_from), drug_code=drug_code,
            generic_code=generic_code or generic_code_of(drug_code), name=name, spec=spec, form=form,
            category=category, chronic_list=chronic_list,
        )

    def change(self, *, clock: Clock, changed_by: str, category: CatalogCategory | None = None,
               chronic_list: bool | None = None, name: str | None = None, generic_code: str | None = None,
               effective_from: date | None = None) -> None:
        if all(v is None for v in (category, chronic_list, name, generic_code)):
            raise InvalidCommand("nothing to change", drug_code=self.drug_code)
        self._trigger(DrugListingChanged, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      category=category, chronic_list=chronic_list, name=name, generic_code=generic_code)

    def set_payment_standard(self, *, clock: Clock, changed_by: str, region: str, amount: Decimal | None,
                             effective_from: date | None = None) -> None:
        self._trigger(PaymentStandardSet, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      region=region, amount=amount)

    def set_price_cap(self, *, clock: Clock, changed_by: str, region: str, cap: Decimal | None,
                      institution_id: str | None = None, effective_from: date | None = None) -> None:
        self._trigger(PriceCapSet, clock, changed_by=changed_by, effective_from=_from(clock, effective_from),
                      region=region, institution_id=institution_id, cap=cap)

    def payment_standard_on(self, region: str, day: date) -> Decimal | None:
        found = _as_of((s for s in self.standards if s.region == region), day)
        return None if found is None else found.value

    def price_cap_on(self, region: str, institution_id: str | None, day: date) -> Decimal | None:
        """The institution's own cap in force on ``day`` if it has one, else the region's, else None."""
        if institution_id is not None:
            own = _as_of((c for c in self.caps if c.region == region and c.institution_id == institution_id), day)
            if own is not None and own.value is not None:
                return own.value
        found = _as_of((c for c in self.caps if c.region == region and c.institution_id is None), day)
        return None if found is None else found.value

    @property
    def out_of_catalog(self) -> bool:
        return self.category in (CatalogCategory.C, CatalogCategory.NONE)

    @classmethod
    def _created(cls, event: DrugListed) -> Self:
        return cls(id=event.originator_id, drug_code=event.drug_code, generic_code=event.generic_code,
                   name=event.name, spec=event.spec, form=event.form, category=event.category,
                   chronic_list=event.chronic_list)

    def _apply(self, event: object) -> None:
        if isinstance(event, DrugListingChanged):
            self.category = event.category or self.category
            self.chronic_list = self.chronic_list if event.chronic_list is None else event.chronic_list
            self.name = event.name or self.name
            self.generic_code = event.generic_code or self.generic_code
        elif isinstance(event, PaymentStandardSet):
            self.standards = (*self.standards, _RegionValue(
                region=event.region, effective_from=event.effective_from, value=event.amount,
                recorded=event.originator_version))
        elif isinstance(event, PriceCapSet):
            self.caps = (*self.caps, _RegionValue(
                region=event.region, institution_id=event.institution_id, effective_from=event.effective_from,
                value=event.cap, recorded=event.originator_version))


# --- chronic-disease lists --------------------------------------------------------------------------------------


class _Listed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    disease_code: str
    name: str
    valid_from: date
    valid_until: date | None = None


class ChronicDiseaseList(Aggregate):
    """R4: the stable chronic diseases of one region for which long prescriptions are allowed."""

    creation_event = ChronicDiseaseListed

    region: str
    entries: tuple[_Listed, ...] = ()

    @staticmethod
    def id_for(region: str) -> UUID:
        return natural_id("chronic_disease_list", region)

    @classmethod
    def add(cls, existing: ChronicDiseaseList | None, *, clock: Clock, changed_by: str, region: str,
            disease_code: str, name: str, effective_from: date | None = None) -> ChronicDiseaseList:
        """``existing`` is what the repository holds for ``id_for(region)``, or None."""
        fields = {"changed_by": changed_by, "effective_from": _from(clock, effective_from), "region": region,
                  "disease_code": disease_code, "name": name}
        if existing is None:
            return cls._create(ChronicDiseaseListed, clock, cls.id_for(region), **fields)
        if disease_code in existing.listed():
            raise IllegalTransition("listed", "add", region=region, disease_code=disease_code)
        existing._trigger(ChronicDiseaseListed, clock, **fields)
        return existing

    def remove(self, *, clock: Clock, changed_by: str, disease_code: str, reason: str,
               effective_from: date | None = None) -> None:
        """Listed up to the day before ``effective_from``."""
        if disease_code not in self.listed():
            raise IllegalTransition("not_listed", "remove", region=self.region, disease_code=disease_code)
        self._trigger(ChronicDiseaseDelisted, clock, changed_by=changed_by,
                      effective_from=_from(clock, effective_from), disease_code=disease_code, reason=reason)

    def listed(self) -> frozenset[str]:
        """Disease codes on the list and not removed (whatever their start day)."""
        return frozenset(e.disease_code for e in self.entries if e.valid_until is None)

    def covers(self, disease_code: str, day: date) -> bool:
        """A listed category (E11) covers its subcategories (E11.9)."""
        keys = {disease_code, disease_code.split(".")[0]}
        return any(e.disease_code in keys and e.valid_from <= day and (e.valid_until is None or day <= e.valid_until)
                   for e in self.entries)

    @classmethod
    def _created(cls, event: ChronicDiseaseListed) -> Self:
        aggregate = cls(id=event.originator_id, region=event.region)
        aggregate._apply(event)
        return aggregate

    def _apply(self, event: object) -> None:
        if isinstance(event, ChronicDiseaseListed):
            self.entries = (*self.entries, _Listed(disease_code=event.disease_code, name=event.name,
                                                   valid_from=event.effective_from))
        elif isinstance(event, ChronicDiseaseDelisted):
            last = event.effective_from - timedelta(days=1)
            self.entries = tuple(e.model_copy(update={"valid_until": last})
                                 if e.disease_code == event.disease_code and e.valid_until is None else e
                                 for e in self.entries)


project_institution = make_projector(Institution)
project_physician = make_projector(Physician)
project_pharmacist = make_projector(Pharmacist)
project_pharmacy = make_projector(Pharmacy)
project_delivery_enterprise = make_projector(DeliveryEnterprise)
project_patient_status = make_projector(PatientStatus)
project_patient_insurance = make_projector(PatientInsurance)
project_emergency_declarations = make_projector(EmergencyDeclarations)
project_drug_listing = make_projector(DrugListing)
project_chronic_disease_list = make_projector(ChronicDiseaseList)
