"""Encounter stream: the online follow-up visit (复诊) and its consultation-fee settlement."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from events.base import (
    BusinessType,
    DomainEvent,
    InsuranceType,
    Money,
    Ownership,
    PatientRef,
    RealNameMethod,
)


class FollowUpVisitRecorded(DomainEvent):
    """互联网复诊：记录线下首诊的同种疾病诊断、首诊日期与机构，以及实名核验方式。"""

    business_type: BusinessType
    hospital_id: str = Field(min_length=1)
    physical_institution_id: str = Field(min_length=1)
    institution_ownership: Ownership
    pooling_region: str = Field(pattern=r"^\d{6}$")
    insured_region: str = Field(pattern=r"^\d{6}$")
    insurance_type: InsuranceType
    patient_ref: PatientRef
    patient_sealed: str | None = None
    physician_id: str = Field(min_length=1)
    physician_signature: str = Field(min_length=1)
    diagnosis_code: str = Field(min_length=1)
    diagnosis_name: str = Field(min_length=1)
    original_diagnosis_code: str = Field(min_length=1)
    original_diagnosis_date: date
    original_institution_id: str = Field(min_length=1)
    verification_method: RealNameMethod
    consultation_fee: Money


class ConsultationSettled(DomainEvent):
    """诊察费结算（与实体定点医疗机构结算）。"""

    business_type: BusinessType
    settled_with: str = Field(min_length=1)
    patient_ref: PatientRef
    verification_method: RealNameMethod
    fund: Money
    personal_account: Money
    self_pay: Money
    policy_version: str = Field(min_length=1)
    settlement_ref: str = Field(min_length=1)


ENCOUNTER_EVENTS: tuple[type[DomainEvent], ...] = (FollowUpVisitRecorded, ConsultationSettled)
