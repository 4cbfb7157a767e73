"""Registry streams: the authority's facts (issue 13, R17) — institutions, physicians, pharmacists, designated
pharmacies, delivery enterprises, patients' insurance facts and fraud status, emergency declarations, the drug
catalog with payment standards and price caps, the chronic-disease lists.

Every registry event records ``changed_by`` (the acting party, e.g. ``agency:370100``, ``regulator:R1`` or
``seed:2026.1``) and ``effective_from`` (the China-time day the fact holds from), so "who changed which fact when"
is on the record. Events written before these fields existed load through the upcasters below (``changed_by``
becomes ``UNRECORDED``, ``effective_from`` the UTC day of the event).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from events.base import (
    DRUG_CODES_MAX,
    CatalogCategory,
    DomainEvent,
    DrugCode,
    Id,
    InsuranceType,
    Name,
    Ownership,
    PatientRef,
    Region,
    Text,
    UnitPrice,
    register_upcaster,
)

UNRECORDED = "unrecorded"
"""``changed_by`` of events written before the registries recorded who made a change."""

ChangedBy = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$",
               description="the acting party, e.g. agency:370100, regulator:R-1, seed:2026.1")
]
PublicKeyHex = Annotated[
    str, Field(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64,
               description="Ed25519 raw public key, 64 lower-case hex characters")
]
DiseaseCode = Annotated[
    str, Field(pattern=r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$", min_length=3, max_length=8,
               description="ICD-10 code (category like E11, or subcategory like E11.9)")
]
GenericCode = Annotated[
    str, Field(pattern=r"^[A-Z0-9-]{1,40}$", min_length=1, max_length=40,
               description="the generic drug (same substance across makers and specs)")
]


class InstitutionKind(StrEnum):
    """实体定点医疗机构（physical）/ 依托其设立的互联网医院（internet）。"""

    PHYSICAL = "physical"
    INTERNET = "internet"


class InstitutionLevel(StrEnum):
    """医院等级（三级 tertiary / 二级 secondary / 一级 primary / 未定级 unrated）."""

    TERTIARY = "tertiary"
    SECONDARY = "secondary"
    PRIMARY = "primary"
    UNRATED = "unrated"


class RegistryEvent(DomainEvent):
    """A change of an authority's fact: who made it and from which day it holds."""

    changed_by: ChangedBy
    effective_from: date


def _attributed(data: dict[str, Any]) -> dict[str, Any]:
    """The upcast of an event written before ``changed_by`` / ``effective_from`` existed."""
    data.setdefault("changed_by", UNRECORDED)
    data.setdefault("effective_from", str(data.get("timestamp", "1970-01-01"))[:10])
    return data


# --- institutions -----------------------------------------------------------------------------------------------


class InstitutionRegistered(RegistryEvent):
    """定点医疗机构（实体）或依托实体机构的互联网医院，及其协议、所有制、等级、统筹区。"""

    institution_id: Id
    name: Name
    kind: InstitutionKind
    physical_institution_id: Id | None = Field(default=None, description="internet hospitals: the physical one")
    ownership: Ownership
    level: InstitutionLevel
    region: Region
    agreement_no: Id


class InstitutionChanged(RegistryEvent):
    """A change of name, ownership or level (None: unchanged)."""

    name: Name | None = None
    ownership: Ownership | None = None
    level: InstitutionLevel | None = None


class InstitutionAgreementSuspended(RegistryEvent):
    reason: Text


class InstitutionAgreementReinstated(RegistryEvent):
    reason: Text


# --- physicians -------------------------------------------------------------------------------------------------


class PhysicianRegistered(RegistryEvent):
    """互联网医师实名备案（v2：医保医师代码、电子签名公钥、变更人、生效日）。"""

    schema_version: int = 2
    physician_id: Id
    hospital_id: Id
    name: Name
    qualification_no: Id
    physician_code: Id | None = Field(default=None, description="national insurance physician code")
    public_key: PublicKeyHex | None = Field(default=None, description="e-signature key (R2)")


class PhysicianSuspended(RegistryEvent):
    schema_version: int = 2
    reason: Text


class PhysicianReinstated(RegistryEvent):
    schema_version: int = 2
    reason: Text


class PhysicianKeyChanged(RegistryEvent):
    """A new e-signature public key (the old one no longer verifies prescriptions signed from this day)."""

    public_key: PublicKeyHex


@register_upcaster("PhysicianRegistered", 1)
def _physician_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["physician_code"] = None
    data["public_key"] = None
    return _attributed(data)


@register_upcaster("PhysicianSuspended", 1)
def _physician_suspended_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return _attributed(data)


@register_upcaster("PhysicianReinstated", 1)
def _physician_reinstated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return _attributed(data)


# --- pharmacists ------------------------------------------------------------------------------------------------


class PharmacistRegistered(RegistryEvent):
    """审方药师：本院（employer_id = hospital）或第三方平台（third_party, company_id）(v2: region, who, when)."""

    schema_version: int = 2
    pharmacist_id: Id
    employer_id: Id | None = Field(default=None, description="the employing hospital; None for a third party")
    third_party: bool = False
    company_id: Id | None = Field(default=None, description="third party: the review platform it works for")
    region: Region | None = Field(default=None, description="the pooling region of the agency that registered it")
    name: Name
    qualification_no: Id


@register_upcaster("PharmacistRegistered", 1)
def _pharmacist_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("third_party"):
        data["company_id"] = data.get("employer_id")
        data["employer_id"] = None
    else:
        data["company_id"] = None
    data["region"] = None
    return _attributed(data)


class CooperationAgreementRecorded(RegistryEvent):
    """R18: a third-party pharmacist reviews for this hospital (合作协议)."""

    hospital_id: Id
    agreement_no: Id


class CooperationAgreementEnded(RegistryEvent):
    hospital_id: Id
    reason: Text


class PharmacistSuspended(RegistryEvent):
    reason: Text


class PharmacistReinstated(RegistryEvent):
    reason: Text


# --- designated pharmacies --------------------------------------------------------------------------------------


class PharmacyDesignated(RegistryEvent):
    """定点零售药店，属于某统筹区（v2：``drug_codes``；v3：特慢病资质、收款方、变更人、生效日）。"""

    schema_version: int = 3
    pharmacy_id: Id
    name: Name
    pooling_region: Region
    agreement_no: Id
    ownership: Ownership = Ownership.NON_PUBLIC
    drug_codes: tuple[DrugCode, ...] | None = Field(
        default=None, max_length=DRUG_CODES_MAX, description="drugs the pharmacy declares it carries; None = not declared"
    )
    chronic_qualified: bool = Field(default=False, description="特慢病 qualification")
    payee_id: Id | None = Field(default=None, description="who is paid for its drugs; None = the pharmacy itself")


@register_upcaster("PharmacyDesignated", 1)
def _designated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["drug_codes"] = None
    return data


@register_upcaster("PharmacyDesignated", 2)
def _designated_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["chronic_qualified"] = False
    data["payee_id"] = None
    return _attributed(data)


class PharmacyAgreementSuspended(RegistryEvent):
    schema_version: int = 2
    reason: Text


@register_upcaster("PharmacyAgreementSuspended", 1)
def _agreement_suspended_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return _attributed(data)


class PharmacyAgreementReinstated(RegistryEvent):
    reason: Text


class PharmacyDrugsListed(RegistryEvent):
    """Drugs added to the pharmacy's list (a pharmacy with no list declared gets one)."""

    drug_codes: tuple[DrugCode, ...] = Field(min_length=1, max_length=DRUG_CODES_MAX)


class PharmacyDrugsDelisted(RegistryEvent):
    drug_codes: tuple[DrugCode, ...] = Field(min_length=1, max_length=DRUG_CODES_MAX)


class PharmacyChronicQualificationChanged(RegistryEvent):
    """特慢病 (outpatient chronic and special disease) qualification granted or withdrawn."""

    qualified: bool


class PharmacyPayeeChanged(RegistryEvent):
    """Who the agency pays for this pharmacy's drugs (None: the pharmacy; Jinan: the supply enterprise, 004 §六)."""

    payee_id: Id | None = None


# --- delivery enterprises ---------------------------------------------------------------------------------------


class DeliveryEnterpriseRegistered(RegistryEvent):
    """药品配送企业 with its GSP qualification."""

    enterprise_id: Id
    name: Name
    region: Region
    gsp_qualified: bool
    gsp_certificate_no: Id | None = None


class DeliveryEnterpriseGspChanged(RegistryEvent):
    gsp_qualified: bool
    gsp_certificate_no: Id | None = None
    reason: Text


# --- patients ---------------------------------------------------------------------------------------------------


class PatientSuspendedForFraud(RegistryEvent):
    """参保人因欺诈骗保被暂停线上医保支付（R11）(v2: who, from when)."""

    schema_version: int = 2
    patient_ref: PatientRef
    reason: Text
    until: date | None = None


class PatientReinstated(RegistryEvent):
    schema_version: int = 2
    reason: Text


@register_upcaster("PatientSuspendedForFraud", 1)
def _patient_suspended_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return _attributed(data)


@register_upcaster("PatientReinstated", 1)
def _patient_reinstated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return _attributed(data)


class PatientInsuranceRegistered(RegistryEvent):
    """参保登记：参保地、险种 (keyed by the pseudonym; the national id never leaves the vault)."""

    patient_ref: PatientRef
    insured_region: Region
    insurance_type: InsuranceType


class PatientInsuranceChanged(RegistryEvent):
    insured_region: Region
    insurance_type: InsuranceType


class ChronicEntitlementGranted(RegistryEvent):
    """门诊慢特病 entitlement for one disease."""

    disease_code: DiseaseCode


class ChronicEntitlementRevoked(RegistryEvent):
    disease_code: DiseaseCode
    reason: Text


class OffSiteFilingRecorded(RegistryEvent):
    """长期异地就医备案 (R12): the patient may be treated with fund payment in ``region`` from ``effective_from``."""

    filing_no: Id
    region: Region
    valid_until: date | None = Field(default=None, description="last day; None = open-ended")


class OffSiteFilingEnded(RegistryEvent):
    """The filing ends: its last day is the day before ``effective_from``."""

    filing_no: Id
    reason: Text


# --- emergency declarations -------------------------------------------------------------------------------------


class EmergencyDeclared(RegistryEvent):
    """突发公共卫生事件 declared by the authority for ``region`` from ``effective_from`` (R4: 3 months' supply)."""

    region: Region
    declaration_no: Id
    title: Name
    valid_until: date | None = Field(default=None, description="last day; None = until ended")


class EmergencyEnded(RegistryEvent):
    """The declaration ends: its last day is the day before ``effective_from``."""

    declaration_no: Id
    reason: Text


# --- drug catalog -----------------------------------------------------------------------------------------------


class DrugListed(RegistryEvent):
    """医保药品目录条目（类别、通用名、慢病用药）."""

    drug_code: DrugCode
    generic_code: GenericCode
    name: Name
    spec: Name | None = None
    form: Name | None = None
    category: CatalogCategory
    chronic_list: bool = False


class DrugListingChanged(RegistryEvent):
    """A change of category, chronic list or names (None: unchanged)."""

    category: CatalogCategory | None = None
    chronic_list: bool | None = None
    name: Name | None = None
    generic_code: GenericCode | None = None


class PaymentStandardSet(RegistryEvent):
    """医保支付标准 of the drug in ``region`` from ``effective_from`` (None: withdrawn)."""

    region: Region
    amount: UnitPrice | None


class PriceCapSet(RegistryEvent):
    """R7 限价 of the drug in ``region`` (for one institution when ``institution_id`` is set) from ``effective_from``
    (None: withdrawn)."""

    region: Region
    institution_id: Id | None = None
    cap: UnitPrice | None


# --- chronic-disease lists --------------------------------------------------------------------------------------


class ChronicDiseaseListed(RegistryEvent):
    """R4: a stable chronic disease of ``region``'s list (long prescriptions allowed)."""

    region: Region
    disease_code: DiseaseCode
    name: Name


class ChronicDiseaseDelisted(RegistryEvent):
    disease_code: DiseaseCode
    reason: Text


REGISTRY_EVENTS: tuple[type[DomainEvent], ...] = (
    InstitutionRegistered,
    InstitutionChanged,
    InstitutionAgreementSuspended,
    InstitutionAgreementReinstated,
    PhysicianRegistered,
    PhysicianSuspended,
    PhysicianReinstated,
    PhysicianKeyChanged,
    PharmacistRegistered,
    CooperationAgreementRecorded,
    CooperationAgreementEnded,
    PharmacistSuspended,
    PharmacistReinstated,
    PharmacyDesignated,
    PharmacyAgreementSuspended,
    PharmacyAgreementReinstated,
    PharmacyDrugsListed,
    PharmacyDrugsDelisted,
    PharmacyChronicQualificationChanged,
    PharmacyPayeeChanged,
    DeliveryEnterpriseRegistered,
    DeliveryEnterpriseGspChanged,
    PatientSuspendedForFraud,
    PatientReinstated,
    PatientInsuranceRegistered,
    PatientInsuranceChanged,
    ChronicEntitlementGranted,
    ChronicEntitlementRevoked,
    OffSiteFilingRecorded,
    OffSiteFilingEnded,
    EmergencyDeclared,
    EmergencyEnded,
    DrugListed,
    DrugListingChanged,
    PaymentStandardSet,
    PriceCapSet,
    ChronicDiseaseListed,
    ChronicDiseaseDelisted,
)
