"""Encounter: the online follow-up visit (R1, R2, R9, R14) and its consultation-fee settlement (R9, R11, R12)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Self
from uuid import UUID

from events.base import ZERO, BusinessType, InsuranceType, Ownership, RealNameMethod, to_money
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from services.domain.aggregate import Aggregate, make_projector, new_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand, RuleViolation
from services.domain.policy import DEFAULT_RULES, RuleConfig, add_months
from services.domain.registries import PatientStatus, Physician


def same_disease(code_a: str, code_b: str) -> bool:
    """同种疾病：ICD-10 类目（小数点前三位）相同，如 E11.9 与 E11.65。"""
    return code_a.strip().upper().split(".")[0] == code_b.strip().upper().split(".")[0]


def business_type_for(pooling_region: str, insured_region: str) -> BusinessType:
    """R14: a visit outside the patient's insured region is off-site (异地), otherwise internet."""
    return BusinessType.INTERNET if pooling_region == insured_region else BusinessType.OFF_SITE


def check_physician(physician: Physician | None, physician_id: str, hospital_id: str, signature: str) -> None:
    """R2: e-signature present; physician registered at this hospital and not suspended."""
    if not signature.strip():
        raise RuleViolation("R2", "physician e-signature missing", physician_id=physician_id)
    if physician is None or physician.physician_id != physician_id:
        raise RuleViolation("R2", "physician not registered", physician_id=physician_id)
    if physician.hospital_id != hospital_id:
        raise RuleViolation(
            "R2",
            "physician not registered at this hospital",
            physician_id=physician_id,
            hospital_id=hospital_id,
        )
    if physician.suspended:
        raise RuleViolation("R2", "physician suspended", physician_id=physician_id)


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
        """Record a follow-up visit; R1 (same disease, offline diagnosis within the window), R2."""
        today = rules.local_date(clock.now())
        if not same_disease(diagnosis_code, original_diagnosis_code):
            raise RuleViolation(
                "R1",
                "online visit is not a follow-up of the same disease diagnosed offline",
                diagnosis_code=diagnosis_code,
                original_diagnosis_code=original_diagnosis_code,
            )
        if original_diagnosis_date > today:
            raise RuleViolation("R1", "offline diagnosis date is in the future", date=original_diagnosis_date)
        earliest = add_months(today, -rules.follow_up_window_months)
        if original_diagnosis_date < earliest:
            raise RuleViolation(
                "R1",
                f"offline diagnosis older than {rules.follow_up_window_months} months",
                original_diagnosis_date=original_diagnosis_date,
                earliest=earliest,
            )
        check_physician(physician, physician_id, hospital_id, physician_signature)
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
    ) -> None:
        """Settle the consultation fee with the physical institution; R9, R11, R12."""
        if self.settled:
            raise IllegalTransition("settled", "settle_consultation", encounter_id=self.id)
        fund_, personal_, self_pay_ = to_money(fund), to_money(personal_account), to_money(self_pay)
        check_split(self.consultation_fee, fund=fund_, personal_account=personal_, self_pay=self_pay_)
        check_person(self.patient_ref, patient_ref, encounter_id=self.id)
        check_policy_region(self.business_type, self.insured_region, self.pooling_region, policy_region)
        check_not_suspended(patient, self.patient_ref, fund_, personal_, clock, rules)
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


def check_person(expected_ref: str, settling_ref: str, **ids: object) -> None:
    """R9: the person served is the person settling."""
    if settling_ref != expected_ref:
        raise RuleViolation("R9", "the person settling is not the person served", **ids)


def check_policy_region(
    business_type: BusinessType, insured_region: str, treatment_region: str, policy_region: str
) -> None:
    """R12: off-site patients settle by their insured region's policy; local ones by the local policy."""
    expected = insured_region if business_type is BusinessType.OFF_SITE else treatment_region
    if policy_region != expected:
        raise RuleViolation(
            "R12",
            f"{business_type.value} settlement must use region {expected}'s policy",
            policy_region=policy_region,
            expected=expected,
        )


def check_not_suspended(
    patient: PatientStatus | None,
    patient_ref: str,
    fund: Decimal,
    personal_account: Decimal,
    clock: Clock,
    rules: RuleConfig,
) -> None:
    """R11: a patient suspended for fraud gets no insurance payment online."""
    if patient is None:
        return
    if patient.patient_ref != patient_ref:
        raise InvalidCommand("patient status given is for another patient", patient_ref=patient.patient_ref)
    if patient.is_suspended(clock.now(), rules) and (fund != ZERO or personal_account != ZERO):
        raise RuleViolation(
            "R11",
            "patient suspended for fraud: no fund or personal-account payment",
            patient_ref=patient_ref,
        )


project_encounter = make_projector(Encounter)
