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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from events.base import (
    DRUG_CODES_MAX,
    ID_LENGTH,
    ITEMS_MAX,
    REASONS_MAX,
    Amount,
    DrugCode,
    Fee,
    Id,
    InsuranceType,
    LongText,
    Name,
    Ownership,
    RealNameMethod,
    Region,
    Text,
    Version,
)
from events.prescription import DispensedLines, PrescriptionItems, RoutingBasis
from events.statement import SubjectKind


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str | None = Field(
        default=None, min_length=1, max_length=ID_LENGTH, pattern=r"^[^\x00]*$",
        description="idempotency key; the first outcome wins",
    )


class PrescriptionCommand(Command):
    prescription_id: UUID
    expected_version: Version | None = Field(
        default=None, description="refuse (StaleVersion) unless the prescription is still at this version"
    )


class PatientIdentity(BaseModel):
    """Personal data: sealed with the patient's key before anything is recorded; never logged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    national_id: Id
    name: Name
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[^\x00]*$")

    def __repr__(self) -> str:
        return "PatientIdentity(<redacted>)"

    __str__ = __repr__


# --- hospitals ----------------------------------------------------------------------------------------

REGISTRY_FACT = ("a registry fact (R17): read from the authority's registries at the visit; optional, and refused "
                  "when it disagrees with them")
SIGNATURE = ("R2: hex Ed25519 signature of the prescription's canonical content (services.domain.signature) by "
             "the physician's registered key")
VISIT_REGISTRY_FACTS = ("physical_institution_id", "institution_ownership", "pooling_region", "insured_region",
                        "insurance_type")
"""Fields of RecordFollowUpVisit the registries own (R17)."""


class RecordFollowUpVisit(Command):
    kind: Literal["record_follow_up_visit"] = "record_follow_up_visit"
    hospital_id: Id
    visit_ref: Id = Field(description="the hospital's own visit number; the encounter id derives from it")
    physical_institution_id: Id | None = Field(default=None, description=REGISTRY_FACT)
    institution_ownership: Ownership | None = Field(default=None, description=REGISTRY_FACT)
    pooling_region: Region | None = Field(default=None, description=REGISTRY_FACT)
    insured_region: Region | None = Field(default=None, description=REGISTRY_FACT)
    insurance_type: InsuranceType | None = Field(default=None, description=REGISTRY_FACT)
    patient: PatientIdentity
    physician_id: Id
    physician_signature: Text
    diagnosis_code: Id
    diagnosis_name: Name
    original_diagnosis_code: Id
    original_diagnosis_date: date
    original_institution_id: Id
    verification_method: RealNameMethod
    consultation_fee: Fee


class IssuePrescription(Command):
    kind: Literal["issue_prescription"] = "issue_prescription"
    hospital_id: Id
    prescription_ref: Id = Field(description="the hospital's prescription number; the id derives from it")
    encounter_id: UUID
    physician_signature: Text = Field(description=SIGNATURE)
    items: PrescriptionItems
    first_visit_drug_codes: tuple[Id, ...] = Field(
        default=(), max_length=ITEMS_MAX, description="drugs of the first-visit (offline) prescription, for R5"
    )
    justification: LongText | None = None
    preferred_pharmacy_id: Id | None = Field(
        default=None,
        description="the patient's chosen designated pharmacy; unset = the router's rule picks one",
    )


class CancelPrescription(PrescriptionCommand):
    kind: Literal["cancel_prescription"] = "cancel_prescription"
    reason: Text
    cancelled_by: Id


class ExpirePrescription(PrescriptionCommand):
    kind: Literal["expire_prescription"] = "expire_prescription"


# --- pharmacists ----------------------------------------------------------------------------------------


class ApprovePrescription(PrescriptionCommand):
    kind: Literal["approve_prescription"] = "approve_prescription"
    pharmacist_id: Id


class RejectPrescription(PrescriptionCommand):
    kind: Literal["reject_prescription"] = "reject_prescription"
    pharmacist_id: Id
    reasons: tuple[Text, ...] = Field(min_length=1, max_length=REASONS_MAX)


# --- routing ----------------------------------------------------------------------------------------------


class RoutePrescription(PrescriptionCommand):
    kind: Literal["route_prescription"] = "route_prescription"
    pharmacy_id: Id | None = Field(default=None, description="None: the hospital dispenses itself")
    basis: RoutingBasis


# --- pharmacies -------------------------------------------------------------------------------------------


class AcceptPrescription(PrescriptionCommand):
    kind: Literal["accept_prescription"] = "accept_prescription"
    dispenser_id: Id


class ReturnPrescription(PrescriptionCommand):
    kind: Literal["return_prescription"] = "return_prescription"
    dispenser_id: Id
    reason: Text


class DispensePrescription(PrescriptionCommand):
    kind: Literal["dispense_prescription"] = "dispense_prescription"
    dispenser_id: Id
    lines: DispensedLines


class WithdrawDispense(PrescriptionCommand):
    kind: Literal["withdraw_dispense"] = "withdraw_dispense"
    dispense_no: Version
    reason: Text


class ArrangeDelivery(PrescriptionCommand):
    kind: Literal["arrange_delivery"] = "arrange_delivery"
    delivery_enterprise_id: Id
    delivery_fee: Fee
    fee_disclosed: bool = Field(description="R6: the fee was stated to the patient in advance")
    delivery_address: Text | None = Field(default=None, description="where the drugs go; only its keyed pseudonym "
                                          "is recorded (fraud analytics: many patients to one address)")


class MarkDelivered(PrescriptionCommand):
    kind: Literal["mark_delivered"] = "mark_delivered"
    delivery_enterprise_id: Id


class MarkCollected(PrescriptionCommand):
    kind: Literal["mark_collected"] = "mark_collected"
    verification_method: RealNameMethod


# --- agency -------------------------------------------------------------------------------------------------


class _Settlement(Command):
    patient_ref: Id | None = Field(default=None, description="pseudonym of the person settling")
    patient_national_id: Id | None = Field(default=None, description="or their national id (pseudonymised here)")
    verification_method: RealNameMethod
    fund: Amount
    personal_account: Amount
    self_pay: Amount
    policy_version: Id
    policy_region: Region
    settlement_ref: Id
    deductible_applied: Amount = Field(default=Decimal("0.00"), description="what the deductible took (起付线)")
    fund_cap_applied: Amount = Field(default=Decimal("0.00"), description="what the annual fund cap took off")

    @model_validator(mode="after")
    def _one_patient_key(self) -> _Settlement:
        if (self.patient_ref is None) == (self.patient_national_id is None):
            raise ValueError("give exactly one of patient_ref and patient_national_id")
        return self


class SettlePrescription(_Settlement):
    kind: Literal["settle_prescription"] = "settle_prescription"
    prescription_id: UUID
    expected_version: Version | None = None
    delivery_fee: Fee = Decimal("0.00")
    catalog_region: Region
    payee_id: Id | None = Field(default=None, description="whom the agency pays (default: the dispenser)")


class SettleConsultation(_Settlement):
    kind: Literal["settle_consultation"] = "settle_consultation"
    encounter_id: UUID


class RefuseFeesInAudit(PrescriptionCommand):
    kind: Literal["refuse_fees_in_audit"] = "refuse_fees_in_audit"
    amount: Amount
    reason: Text
    audit_ref: Id
    acted_by: Id | None = Field(default=None, description="the acting agency (set from the credential)")


class ClawBackFees(PrescriptionCommand):
    kind: Literal["claw_back_fees"] = "claw_back_fees"
    amount: Amount
    reason: Text
    audit_ref: Id
    acted_by: Id | None = Field(default=None, description="the acting agency (set from the credential)")


# --- money: settlement cases (issue 14) ------------------------------------------------------------------------


class _Subject(Command):
    subject_kind: SubjectKind
    subject_id: UUID


class RecordSettlementFailure(_Subject):
    """The settlement worker: a settlement could not be computed or was refused (never a silent skip)."""

    kind: Literal["record_settlement_failure"] = "record_settlement_failure"
    rule_id: str | None = Field(default=None, pattern=r"^R\d{1,2}$", max_length=3)
    error: Id
    reason: LongText
    trigger: Id


class RetrySettlement(_Subject):
    """The agency: try the failed settlement again (after a registry fix); the settlement worker retries it."""

    kind: Literal["retry_settlement"] = "retry_settlement"
    reason: Text
    acted_by: Id | None = None


class WriteOffSettlement(_Subject):
    """The agency: close a failed settlement without payment, with the reason."""

    kind: Literal["write_off_settlement"] = "write_off_settlement"
    reason: Text
    acted_by: Id | None = None


class ReverseSettlement(_Subject):
    """The agency reverses a settlement (settlement error, drugs returned): by default everything insurance paid
    and not yet refused, clawed back or reversed; the next statement carries it."""

    kind: Literal["reverse_settlement"] = "reverse_settlement"
    fund: Amount | None = Field(default=None, description="fund share to reverse (default: what is left of it)")
    personal_account: Amount | None = Field(default=None, description="personal-account share (default: the rest)")
    self_pay_refund: Amount = Decimal("0.00")
    reason: Text
    reversal_ref: Id
    acted_by: Id | None = None


class RefuseConsultationFees(Command):
    kind: Literal["refuse_consultation_fees"] = "refuse_consultation_fees"
    encounter_id: UUID
    amount: Amount
    reason: Text
    audit_ref: Id
    acted_by: Id | None = None


class ClawBackConsultationFees(Command):
    kind: Literal["claw_back_consultation_fees"] = "claw_back_consultation_fees"
    encounter_id: UUID
    amount: Amount
    reason: Text
    audit_ref: Id
    acted_by: Id | None = None


# --- registries ---------------------------------------------------------------------------------------------


class RegisterPhysician(Command):
    kind: Literal["register_physician"] = "register_physician"
    physician_id: Id
    hospital_id: Id
    name: Name
    qualification_no: Id


class SuspendPhysician(Command):
    kind: Literal["suspend_physician"] = "suspend_physician"
    physician_id: Id
    reason: Text


class ReinstatePhysician(Command):
    kind: Literal["reinstate_physician"] = "reinstate_physician"
    physician_id: Id
    reason: Text


class RegisterPharmacist(Command):
    kind: Literal["register_pharmacist"] = "register_pharmacist"
    pharmacist_id: Id
    employer_id: Id
    name: Name
    qualification_no: Id
    third_party: bool = False


class DesignatePharmacy(Command):
    kind: Literal["designate_pharmacy"] = "designate_pharmacy"
    pharmacy_id: Id
    name: Name
    pooling_region: Region
    agreement_no: Id
    ownership: Ownership = Ownership.NON_PUBLIC
    drug_codes: tuple[DrugCode, ...] | None = Field(
        default=None, max_length=DRUG_CODES_MAX,
        description="drugs the pharmacy carries, for rule-based routing; unset = not declared",
    )


class SuspendPharmacyAgreement(Command):
    kind: Literal["suspend_pharmacy_agreement"] = "suspend_pharmacy_agreement"
    pharmacy_id: Id
    reason: Text


class SuspendPatientForFraud(Command):
    kind: Literal["suspend_patient_for_fraud"] = "suspend_patient_for_fraud"
    patient_ref: Id
    reason: Text
    until: date | None = None


class ReinstatePatient(Command):
    kind: Literal["reinstate_patient"] = "reinstate_patient"
    patient_ref: Id
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
    | RecordSettlementFailure
    | RetrySettlement
    | WriteOffSettlement
    | ReverseSettlement
    | RefuseConsultationFees
    | ClawBackConsultationFees
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
