"""Encounter: the online follow-up visit and its consultation-fee settlement (rules: services.domain.rules)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Self
from uuid import UUID

from events.base import ZERO, BusinessType, InsuranceType, Ownership, RealNameMethod, to_money
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from services.domain.aggregate import Aggregate, make_projector, new_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.registries import PatientStatus, Physician
from services.domain.rules import (
    check_r1_follow_up,
    check_r2_physician,
    check_r9_same_person,
    check_r11_not_suspended,
    check_r12_policy_region,
)


def business_type_for(pooling_region: str, insured_region: str) -> BusinessType:
    """R14: a visit outside the patient's insured region is off-site (异地), otherwise internet."""
    return BusinessType.INTERNET if pooling_region == insured_region else BusinessType.OFF_SITE


def check_split(total: Decimal, **parts: Decimal) -> None:
    for name, amount in parts.items():
        if amount < ZERO:
            raise InvalidCommand(f"{name} must not be negative", **{name: amount})
    if sum(parts.values(), ZERO) != total:
        raise InvalidCommand(f"split {sum(parts.values(), ZERO)} does not equal total {total}", total=total)


class Encounter(Aggregate):
    """互联网复诊（诊疗）。"""

    creation_event = FollowUpVisitRecorded

    business_type: BusinessType
    hospital_id: str
    physical_institution_id: str
    institution_ownership: Ownership
    pooling_region: str
    insured_region: str
    insurance_type: InsuranceType
    patient_ref: str
    physician_id: str
    diagnosis_code: str
    diagnosis_name: str
    consultation_fee: Decimal
    settled: bool = False
    settled_fund: Decimal = ZERO
    settled_personal_account: Decimal = ZERO

    @classmethod
    def record(
        cls,
        *,
        clock: Clock,
        hospital_id: str,
        physical_institution_id: str,
        institution_ownership: Ownership,
        pooling_region: str,
        insured_region: str,
        insurance_type: InsuranceType,
        patient_ref: str,
        physician_id: str,
        physician: Physician | None,
        physician_signature: str,
        diagnosis_code: str,
        diagnosis_name: str,
        original_diagnosis_code: str,
        original_diagnosis_date: date,
        original_institution_id: str,
        verification_method: RealNameMethod,
        consultation_fee: Decimal | str,
        patient_sealed: str | None = None,
        rules: RuleConfig = DEFAULT_RULES,
        encounter_id: UUID | None = None,
    ) -> Self:
        """Record a follow-up visit: R1 (a follow-up of an offline diagnosis), R2 (physician), R14 (business)."""
        check_r1_follow_up(
            diagnosis_code=diagnosis_code,
            original_diagnosis_code=original_diagnosis_code,
            original_diagnosis_date=original_diagnosis_date,
            today=rules.local_date(clock.now()),
            rules=rules,
        )
        check_r2_physician(physician, physician_id, hospital_id, physician_signature)
        return cls._create(
            FollowUpVisitRecorded,
            clock,
            encounter_id or new_id(),
            business_type=business_type_for(pooling_region, insured_region),
            hospital_id=hospital_id,
            physical_institution_id=physical_institution_id,
            institution_ownership=institution_ownership,
            pooling_region=pooling_region,
            insured_region=insured_region,
            insurance_type=insurance_type,
            patient_ref=patient_ref,
            patient_sealed=patient_sealed,
            physician_id=physician_id,
            physician_signature=physician_signature,
            diagnosis_code=diagnosis_code,
            diagnosis_name=diagnosis_name,
            original_diagnosis_code=original_diagnosis_code,
            original_diagnosis_date=original_diagnosis_date,
            original_institution_id=original_institution_id,
            verification_method=verification_method,
            consultation_fee=to_money(consultation_fee),
        )

    def settle_consultation(
        self,
        *,
        clock: Clock,
        patient: PatientStatus | None,
        patient_ref: str,
        verification_method: RealNameMethod,
        fund: Decimal | str,
        personal_account: Decimal | str,
        self_pay: Decimal | str,
        policy_version: str,
        policy_region: str,
        settlement_ref: str,
        rules: RuleConfig = DEFAULT_RULES,
        deductible_applied: Decimal | str = ZERO,
        fund_cap_applied: Decimal | str = ZERO,
    ) -> None:
        """Settle the consultation fee with the physical institution: R9, R12, R11."""
        if self.settled:
            raise IllegalTransition("settled", "settle_consultation", encounter_id=self.id)
        fund_, personal_, self_pay_ = to_money(fund), to_money(personal_account), to_money(self_pay)
        check_split(self.consultation_fee, fund=fund_, personal_account=personal_, self_pay=self_pay_)
        check_r9_same_person(self.patient_ref, patient_ref, encounter_id=self.id)
        check_r12_policy_region(self.business_type, self.insured_region, self.pooling_region, policy_region)
        check_r11_not_suspended(patient, self.patient_ref, fund_, personal_, clock, rules)
        self._trigger(
            ConsultationSettled,
            clock,
            business_type=self.business_type,
            settled_with=self.physical_institution_id,
            patient_ref=patient_ref,
            verification_method=verification_method,
            fund=fund_,
            personal_account=personal_,
            self_pay=self_pay_,
            policy_version=policy_version,
            settlement_ref=settlement_ref,
            deductible_applied=to_money(deductible_applied),
            fund_cap_applied=to_money(fund_cap_applied),
        )

    @classmethod
    def _created(cls, event: FollowUpVisitRecorded) -> Self:
        return cls(
            id=event.originator_id,
            business_type=event.business_type,
            hospital_id=event.hospital_id,
            physical_institution_id=event.physical_institution_id,
            institution_ownership=event.institution_ownership,
            pooling_region=event.pooling_region,
            insured_region=event.insured_region,
            insurance_type=event.insurance_type,
            patient_ref=event.patient_ref,
            physician_id=event.physician_id,
            diagnosis_code=event.diagnosis_code,
            diagnosis_name=event.diagnosis_name,
            consultation_fee=event.consultation_fee,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, ConsultationSettled):
            self.settled = True
            self.settled_fund, self.settled_personal_account = event.fund, event.personal_account


project_encounter = make_projector(Encounter)
