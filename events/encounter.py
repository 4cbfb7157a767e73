"""Encounter stream: the online follow-up visit (复诊) and its consultation-fee settlement."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field

from events.base import (
    ZERO,
    BusinessType,
    DomainEvent,
    Id,
    InsuranceType,
    Money,
    Name,
    Ownership,
    PatientRef,
    RealNameMethod,
    Region,
    Sealed,
    Text,
    register_upcaster,
)


class FollowUpVisitRecorded(DomainEvent):
    """互联网复诊：记录线下首诊的同种疾病诊断、首诊日期与机构，以及实名核验方式（v2：异地备案是否有效）。

    Institution facts (physical institution, ownership, pooling region) and the patient's insurance facts (insured
    region, type) are the registries' at the time of the visit (R17), never the hospital's request."""

    schema_version: int = 2

    business_type: BusinessType
    hospital_id: Id
    physical_institution_id: Id
    institution_ownership: Ownership
    pooling_region: Region
    insured_region: Region
    insurance_type: InsuranceType
    patient_ref: PatientRef
    patient_sealed: Sealed | None = None
    physician_id: Id
    physician_signature: Text
    diagnosis_code: Id
    diagnosis_name: Name
    original_diagnosis_code: Id
    original_diagnosis_date: date
    original_institution_id: Id
    verification_method: RealNameMethod
    consultation_fee: Money
    offsite_filing_valid: bool | None = Field(
        default=None,
        description="R12: off-site visits: a long-term off-site registration (长期异地就医备案) for the treatment "
                    "region was valid on the visit's day (registry); None for a visit in the insured region",
    )


@register_upcaster("FollowUpVisitRecorded", 1)
def _visit_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["offsite_filing_valid"] = None
    return data


class ConsultationSettled(DomainEvent):
    """诊察费结算（与实体定点医疗机构结算）。"""

    business_type: BusinessType
    settled_with: Id
    patient_ref: PatientRef
    verification_method: RealNameMethod
    fund: Money
    personal_account: Money
    self_pay: Money
    policy_version: Id
    settlement_ref: Id
    deductible_applied: Money = ZERO
    fund_cap_applied: Money = ZERO


ENCOUNTER_EVENTS: tuple[type[DomainEvent], ...] = (FollowUpVisitRecorded, ConsultationSettled)
