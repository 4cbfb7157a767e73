"""Registry streams: physicians, pharmacists, designated pharmacies, insured-patient status."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field

from events.base import (
    DRUG_CODES_MAX,
    DomainEvent,
    DrugCode,
    Id,
    Name,
    Ownership,
    PatientRef,
    Region,
    Text,
    register_upcaster,
)


class PhysicianRegistered(DomainEvent):
    """互联网医师实名备案。"""

    physician_id: Id
    hospital_id: Id
    name: Name
    qualification_no: Id


class PhysicianSuspended(DomainEvent):
    reason: Text


class PhysicianReinstated(DomainEvent):
    reason: Text


class PharmacistRegistered(DomainEvent):
    """审方药师（本院或具备资质的第三方平台）。"""

    pharmacist_id: Id
    employer_id: Id
    third_party: bool = False
    name: Name
    qualification_no: Id


class PharmacyDesignated(DomainEvent):
    """定点零售药店，属于某统筹区（v2：可申报经营的药品 ``drug_codes``，供规则流转使用）。"""

    schema_version: int = 2
    pharmacy_id: Id
    name: Name
    pooling_region: Region
    agreement_no: Id
    ownership: Ownership = Ownership.NON_PUBLIC
    drug_codes: tuple[DrugCode, ...] | None = Field(
        default=None, max_length=DRUG_CODES_MAX, description="drugs the pharmacy declares it carries; None = not declared"
    )


@register_upcaster("PharmacyDesignated", 1)
def _designated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["drug_codes"] = None
    return data


class PharmacyAgreementSuspended(DomainEvent):
    reason: Text


class PatientSuspendedForFraud(DomainEvent):
    """参保人因欺诈骗保被暂停线上医保支付（R11）。"""

    patient_ref: PatientRef
    reason: Text
    until: date | None = None


class PatientReinstated(DomainEvent):
    reason: Text


REGISTRY_EVENTS: tuple[type[DomainEvent], ...] = (
    PhysicianRegistered,
    PhysicianSuspended,
    PhysicianReinstated,
    PharmacistRegistered,
    PharmacyDesignated,
    PharmacyAgreementSuspended,
    PatientSuspendedForFraud,
    PatientReinstated,
)
