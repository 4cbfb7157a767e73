"""Commands: what hospitals, pharmacists, routing, pharmacies, the agency and registries ask the platform to do.

Validated at the edge (HTTP bodies, Kafka payloads) by pydantic; ``parse_command`` decodes any of them by
its ``kind``. Every command may carry a ``command_id``: the idempotency key (a retry with the same id gets
the first outcome back and records nothing new). Commands that create an aggregate name it by a business
reference (``visit_ref``, ``prescription_ref``) so the aggregate id is derived, never random.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from events.base import DrugCode, InsuranceType, Money, Ownership, RealNameMethod
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    return text


Text = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_no_nul)]
Region = Annotated[str, Field(pattern=r"^\d{6}$")]


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str | None = Field(
        default=None, min_length=1, max_length=200, description="idempotency key; the first outcome wins"
    )


class PrescriptionCommand(Command):
    prescription_id: UUID
    expected_version: int | None = Field(
        default=None, ge=1, description="refuse (StaleVersion) unless the prescription is still at this version"
    )


class PatientIdentity(BaseModel):
    """Personal data: sealed with the patient's key before anything is recorded; never logged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    national_id: Text
    name: Text
    phone: str | None = Field(default=None, max_length=40)

    def __repr__(self) -> str:
        return "PatientIdentity(<redacted>)"

    __str__ = __repr__


# --- hospitals ----------------------------------------------------------------------------------------


class RecordFollowUpVisit(Command):
    kind: Literal["record_follow_up_visit"] = "record_follow_up_visit"
    hospital_id: Text
    visit_ref: Text = Field(description="the hospital's own visit number; the encounter id derives from it")
    physical_institution_id: Text
    institution_ownership: Ownership
    pooling_region: Region
    insured_region: Region
    insurance_type: InsuranceType
    patient: PatientIdentity
    physician_id: Text
    physician_signature: Text
    diagnosis_code: Text
    diagnosis_name: Text
    original_diagnosis_code: Text
    original_diagnosis_date: date
    original_institution_id: Text
    verification_method: RealNameMethod
    consultation_fee: Money


class IssuePrescription(Command):
    kind: Literal["issue_prescription"] = "issue_prescription"
    hospital_id: Text
    prescription_ref: Text = Field(description="the hospital's prescription number; the id derives from it")
    encounter_id: UUID
    physician_signature: Text
    items: tuple[PrescriptionItem, ...] = Field(min_length=1)
    first_visit_drug_codes: tuple[str, ...] = Field(
        default=(), description="drugs of the first-visit (offline) prescription, for R5"
    )
    justification: str | None = None
    emergency_declared: bool = False
    preferred_pharmacy_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="the patient's chosen designated pharmacy; unset = the router's rule picks one",
    )


class CancelPrescription(PrescriptionCommand):
    kind: Literal["cancel_prescription"] = "cancel_prescription"
    reason: Text
    cancelled_by: Text


class ExpirePrescription(PrescriptionCommand):
    kind: Literal["expire_prescription"] = "expire_prescription"


# --- pharmacists ----------------------------------------------------------------------------------------


class ApprovePrescription(PrescriptionCommand):
    kind: Literal["approve_prescription"] = "approve_prescription"
    pharmacist_id: Text


class RejectPrescription(PrescriptionCommand):
    kind: Literal["reject_prescription"] = "reject_prescription"
    pharmacist_id: Text
    reasons: tuple[Text, ...] = Field(min_length=1)


# --- routing ----------------------------------------------------------------------------------------------


class RoutePrescription(PrescriptionCommand):
    kind: Literal["route_prescription"] = "route_prescription"
    pharmacy_id: str | None = Field(default=None, description="None: the hospital dispenses itself")
    basis: RoutingBasis


# --- pharmacies -------------------------------------------------------------------------------------------


class AcceptPrescription(PrescriptionCommand):
    kind: Literal["accept_prescription"] = "accept_prescription"
    dispenser_id: Text


class ReturnPrescription(PrescriptionCommand):
    kind: Literal["return_prescription"] = "return_prescription"
    dispenser_id: Text
    reason: Text


class DispensePrescription(PrescriptionCommand):
    kind: Literal["dispense_prescription"] = "dispense_prescription"
    dispenser_id: Text
    lines: tuple[DispensedLine, ...] = Field(min_length=1)


class WithdrawDispense(PrescriptionCommand):
    kind: Literal["withdraw_dispense"] = "withdraw_dispense"
    dispense_no: int = Field(ge=1)
    reason: Text


class ArrangeDelivery(PrescriptionCommand):
    kind: Literal["arrange_delivery"] = "arrange_delivery"
    delivery_enterprise_id: Text
    delivery_fee: Money
    fee_disclosed: bool = Field(description="R6: the fee was stated to the patient in advance")


class MarkDelivered(PrescriptionCommand):
    kind: Literal["mark_delivered"] = "mark_delivered"
    delivery_enterprise_id: Text


class MarkCollected(PrescriptionCommand):
    kind: Literal["mark_collected"] = "mark_collected"
    verification_method: RealNameMethod


# --- agency -------------------------------------------------------------------------------------------------


class _Settlement(Command):
    patient_ref: str | None = Field(default=None, description="pseudonym of the person settling")
    patient_national_id: str | None = Field(default=None, description="or their national id (pseudonymised here)")
    verification_method: RealNameMethod
    fund: Money
    personal_account: Money
    self_pay: Money
    policy_version: Text
    policy_region: Region
    settlement_ref: Text

    @model_validator(mode="after")
    def _one_patient_key(self) -> _Settlement:
        if (self.patient_ref is None) == (self.patient_national_id is None):
            raise ValueError("give exactly one of patient_ref and patient_national_id")
        return self


class SettlePrescription(_Settlement):
    kind: Literal["settle_prescription"] = "settle_prescription"
    prescription_id: UUID
    expected_version: int | None = Field(default=None, ge=1)
    delivery_fee: Money = Decimal("0.00")
    catalog_region: Region


class SettleConsultation(_Settlement):
    kind: Literal["settle_consultation"] = "settle_consultation"
    encounter_id: UUID


class RefuseFeesInAudit(PrescriptionCommand):
    kind: Literal["refuse_fees_in_audit"] = "refuse_fees_in_audit"
    amount: Money
    reason: Text
    audit_ref: Text


class ClawBackFees(PrescriptionCommand):
    kind: Literal["claw_back_fees"] = "claw_back_fees"
    amount: Money
    reason: Text
    audit_ref: Text


# --- registries ---------------------------------------------------------------------------------------------


class RegisterPhysician(Command):
    kind: Literal["register_physician"] = "register_physician"
    physician_id: Text
    hospital_id: Text
    name: Text
    qualification_no: Text


class SuspendPhysician(Command):
    kind: Literal["suspend_physician"] = "suspend_physician"
    physician_id: Text
    reason: Text


class ReinstatePhysician(Command):
    kind: Literal["reinstate_physician"] = "reinstate_physician"
    physician_id: Text
    reason: Text


class RegisterPharmacist(Command):
    kind: Literal["register_pharmacist"] = "register_pharmacist"
    pharmacist_id: Text
    employer_id: Text
    name: Text
    qualification_no: Text
    third_party: bool = False


class DesignatePharmacy(Command):
    kind: Literal["designate_pharmacy"] = "designate_pharmacy"
    pharmacy_id: Text
    name: Text
    pooling_region: Region
    agreement_no: Text
    ownership: Ownership = Ownership.NON_PUBLIC
    drug_codes: tuple[DrugCode, ...] | None = Field(
        default=None, description="drugs the pharmacy carries, for rule-based routing; unset = not declared"
    )


class SuspendPharmacyAgreement(Command):
    kind: Literal["suspend_pharmacy_agreement"] = "suspend_pharmacy_agreement"
    pharmacy_id: Text
    reason: Text


class SuspendPatientForFraud(Command):
    kind: Literal["suspend_patient_for_fraud"] = "suspend_patient_for_fraud"
    patient_ref: Text
    reason: Text
    until: date | None = None


class ReinstatePatient(Command):
    kind: Literal["reinstate_patient"] = "reinstate_patient"
    patient_ref: Text
    reason: Text


AnyCommand = Annotated[
    RecordFollowUpVisit
    | IssuePrescription
    | CancelPrescription
    | ExpirePrescription
    | ApprovePrescription
    | RejectPrescription
    | RoutePrescription
    | AcceptPrescription
    | ReturnPrescription
    | DispensePrescription
    | WithdrawDispense
    | ArrangeDelivery
    | MarkDelivered
    | MarkCollected
    | SettlePrescription
    | SettleConsultation
    | RefuseFeesInAudit
    | ClawBackFees
    | RegisterPhysician
    | SuspendPhysician
    | ReinstatePhysician
    | RegisterPharmacist
    | DesignatePharmacy
    | SuspendPharmacyAgreement
    | SuspendPatientForFraud
    | ReinstatePatient,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)


def parse_command(data: bytes | str | dict[str, object]) -> Command:
    """Decode a command from JSON (Kafka intake) or a dict; raises pydantic.ValidationError naming the field."""
    if isinstance(data, bytes | str):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)
