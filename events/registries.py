"""Registry streams: physicians, pharmacists, designated pharmacies, insured-patient status."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field

from events.base import DomainEvent, DrugCode, Ownership, PatientRef, register_upcaster


class PhysicianRegistered(DomainEvent):
    """互联网医师实名备案。"""

    physician_id: str = Field(min_length=1)
    hospital_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    qualification_no: str = Field(min_length=1)


class PhysicianSuspended(DomainEvent):
    reason: str = Field(min_length=1)


class PhysicianReinstated(DomainEvent):
    reason: str = Field(min_length=1)


class PharmacistRegistered(DomainEvent):
    """审方药师（本院或具备资质的第三方平台）。"""

    pharmacist_id: str = Field(min_length=1)
    employer_id: str = Field(min_length=1)
    third_party: bool = False
    name: str = Field(min_length=1)
    qualification_no: str = Field(min_length=1)


class PharmacyDesignated(DomainEvent):
    """定点零售药店，属于某统筹区（v2：可申报经营的药品 ``drug_codes``，供规则流转使用）。"""

    schema_version: int = 2
    pharmacy_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    pooling_region: str = Field(pattern=r"^\d{6}$")
    agreement_no: str = Field(min_length=1)
    ownership: Ownership = Ownership.NON_PUBLIC
    drug_codes: tuple[DrugCode, ...] | None = Field(
        default=None, description="drugs the pharmacy declares it carries; None = not declared"
    )


@register_upcaster("PharmacyDesignated", 1)
def _designated_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["drug_codes"] = None
    return data


class PharmacyAgreementSuspended(DomainEvent):
    reason: str = Field(min_length=1)


class PatientSuspendedForFraud(DomainEvent):
    """参保人因欺诈骗保被暂停线上医保支付（R11）。"""

    patient_ref: PatientRef
    reason: str = Field(min_length=1)
    until: date | None = None


class PatientReinstated(DomainEvent):
    reason: str = Field(min_length=1)


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
