"""Encounter: the online follow-up visit and its consultation-fee settlement (rules: services.domain.rules)."""

from __future__ import annotations

from collections.abc import Mapping
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
from services.domain.registries import Institution, PatientInsurance, PatientStatus, Physician
from services.domain.rules import (
    check_r1_follow_up,
    check_r2_physician,
    check_r9_same_person,
    check_r11_not_suspended,
    check_r12_policy_region,
    check_r15_consultation_price,
    check_r16_diagnosed_offline,
    check_r17_institution_active,
    check_r17_registered,
    check_r17_request_agrees,
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
    original_diagnosis_code: str = ""
    original_diagnosis_date: date | None = None
    original_institution_id: str = ""
    offsite_filing_valid: bool | None = None
    settled: bool = False
    settled_fund: Decimal = ZERO
    settled_personal_account: Decimal = ZERO

    @classmethod
    def record(
        cls,
        *,
        clock: Clock,
        hospital_id: str,
        hospital: Institution | None,
        physical: Institution | None,
        original_institution: Institution | None,
        insurance: PatientInsurance | None,
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
        declared: Mapping[str, object | None] | None = None,
        consultation_standard: Decimal | None = None,
        patient_sealed: str | None = None,
        rules: RuleConfig = DEFAULT_RULES,
        encounter_id: UUID | None = None,
    ) -> Self:
        """Record a follow-up visit from the registries' facts at the time of the visit (R17): the internet hospital
        and its physical institution (registered, agreements active), the patient's insurance (insured region and
        type; R12 the off-site registration valid today), R1 and R16 (a follow-up of an offline diagnosis at a
        physical institution), R2 (the physician), R14 (business type).

        ``declared`` holds what the request said of registry facts (``physical_institution_id``,
        ``institution_ownership``, ``pooling_region``, ``insured_region``, ``insurance_type``; None = not said): a
        value that disagrees with the registry is refused (R17); the registry's value is the one recorded.
        ``consultation_standard``: the treatment region's ordinary outpatient consultation price for the physical
        institution's level (R15; None when the region publishes none).
        """
        today = rules.local_date(clock.now())
        hospital, physical = check_r17_institution_active(hospital, physical, hospital_id, today)
        insurance = check_r17_registered(insurance, "the patient's insurance", patient_ref=patient_ref)
        registered: dict[str, object] = {
            "physical_institution_id": physical.institution_id,
            "institution_ownership": physical.ownership,
            "pooling_region": hospital.region,
            "insured_region": insurance.insured_region,
            "insurance_type": insurance.insurance_type,
        }
        for name, value in (declared or {}).items():
            check_r17_request_agrees(name, value, registered[name], hospital_id=hospital_id)
        check_r1_follow_up(
            diagnosis_code=diagnosis_code,
            original_diagnosis_code=original_diagnosis_code,
            original_diagnosis_date=original_diagnosis_date,
            today=today,
            rules=rules,
        )
        check_r16_diagnosed_offline(original_institution, original_institution_id, hospital_id)
        check_r2_physician(physician, physician_id, hospital_id, physician_signature)
        check_r15_consultation_price(to_money(consultation_fee), consultation_standard, physical.ownership,
                                     hospital_id=hospital_id)
        business_type = business_type_for(hospital.region, insurance.insured_region)
        filing_valid = (
            insurance.filed_for(hospital.region, today) if business_type is BusinessType.OFF_SITE else None
        )
        return cls._create(
            FollowUpVisitRecorded,
            clock,
            encounter_id or new_id(),
            business_type=business_type,
            hospital_id=hospital_id,
            physical_institution_id=physical.institution_id,
            institution_ownership=physical.ownership,
            pooling_region=hospital.region,
            insured_region=insurance.insured_region,
            insurance_type=insurance.insurance_type,
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
            offsite_filing_valid=filing_valid,
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
        """Settle the consultation fee with the physical institution: R9, R12, R11 (when: R15, the settlement
        worker settles it once the visit's first prescription is approved)."""
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
            original_diagnosis_code=event.original_diagnosis_code,
            original_diagnosis_date=event.original_diagnosis_date,
            original_institution_id=event.original_institution_id,
            offsite_filing_valid=event.offsite_filing_valid,
        )

    def _apply(self, event: object) -> None:
        if isinstance(event, ConsultationSettled):
            self.settled = True
            self.settled_fund, self.settled_personal_account = event.fund, event.personal_account


project_encounter = make_projector(Encounter)
