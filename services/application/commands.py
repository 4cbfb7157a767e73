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
    TRACE_CODES_MAX,
    Amount,
    CatalogCategory,
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
    TraceCodeStr,
    UnitPrice,
    UTCDateTime,
    Version,
)
from events.prescription import DispensedLines, PrescriptionItems, RoutingBasis
from events.registries import ChangedBy, DiseaseCode, GenericCode, InstitutionKind, InstitutionLevel, PublicKeyHex
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


class ExtendValidity(PrescriptionCommand):
    """R19: the prescribing physician extends the validity (to at most validity_days after issue)."""

    kind: Literal["extend_validity"] = "extend_validity"
    physician_id: Id
    valid_until: UTCDateTime
    reason: Text


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


class ReturnPacks(PrescriptionCommand):
    """Packs handed back before delivery or collection: their trace codes go back to stock (R8)."""

    kind: Literal["return_packs"] = "return_packs"
    dispenser_id: Id
    trace_codes: tuple[TraceCodeStr, ...] = Field(min_length=1, max_length=TRACE_CODES_MAX)
    reason: Text


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
# The authority's facts (issue 13, R17; services/domain/registries.py). Every registry command names who sends it
# (``changed_by``: "agency:<region>", "regulator:<id>", or "seed:<version>" for reference data loaded as events);
# the HTTP edge fills it from the API key and the gate refuses any other. The handler checks that the sender may
# change the fact: the agency of the fact's pooling region; the regulator for the national catalog (drugs, payment
# standards, price caps), chronic-disease lists and emergency declarations.


class RegistryCommand(Command):
    changed_by: ChangedBy


class _Dated(RegistryCommand):
    effective_from: date | None = Field(default=None, description="the day the change holds from; unset = today")


class _PatientKey(RegistryCommand):
    patient_ref: Id | None = Field(default=None, description="pseudonym of the patient")
    patient_national_id: Id | None = Field(default=None, description="or their national id (pseudonymised here)")

    @model_validator(mode="after")
    def _one_patient_key(self) -> _PatientKey:
        if (self.patient_ref is None) == (self.patient_national_id is None):
            raise ValueError("give exactly one of patient_ref and patient_national_id")
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<patient redacted>)"

    __str__ = __repr__


class RegisterInstitution(_Dated):
    kind: Literal["register_institution"] = "register_institution"
    institution_id: Id
    name: Name
    institution_kind: InstitutionKind
    physical_institution_id: Id | None = Field(default=None, description="internet hospitals: the physical one")
    ownership: Ownership
    level: InstitutionLevel
    region: Region
    agreement_no: Id


class ChangeInstitution(_Dated):
    kind: Literal["change_institution"] = "change_institution"
    institution_id: Id
    name: Name | None = None
    ownership: Ownership | None = None
    level: InstitutionLevel | None = None


class SuspendInstitutionAgreement(_Dated):
    kind: Literal["suspend_institution_agreement"] = "suspend_institution_agreement"
    institution_id: Id
    reason: Text


class ReinstateInstitutionAgreement(_Dated):
    kind: Literal["reinstate_institution_agreement"] = "reinstate_institution_agreement"
    institution_id: Id
    reason: Text


class RegisterPhysician(_Dated):
    kind: Literal["register_physician"] = "register_physician"
    physician_id: Id
    hospital_id: Id = Field(description="the registered internet hospital (or physical institution) it works for")
    name: Name
    qualification_no: Id
    physician_code: Id = Field(description="national insurance physician code")
    public_key: PublicKeyHex


class SuspendPhysician(_Dated):
    kind: Literal["suspend_physician"] = "suspend_physician"
    physician_id: Id
    reason: Text


class ReinstatePhysician(_Dated):
    kind: Literal["reinstate_physician"] = "reinstate_physician"
    physician_id: Id
    reason: Text


class ChangePhysicianKey(_Dated):
    kind: Literal["change_physician_key"] = "change_physician_key"
    physician_id: Id
    public_key: PublicKeyHex


class RegisterPharmacist(_Dated):
    kind: Literal["register_pharmacist"] = "register_pharmacist"
    pharmacist_id: Id
    employer_id: Id | None = Field(default=None, description="the registered hospital employing it; unset = third party")
    third_party: bool = False
    company_id: Id | None = Field(default=None, description="third party: the review platform it works for")
    region: Region | None = Field(default=None, description="third party: the pooling region registering it")
    name: Name
    qualification_no: Id


class RecordCooperationAgreement(_Dated):
    kind: Literal["record_cooperation_agreement"] = "record_cooperation_agreement"
    pharmacist_id: Id
    hospital_id: Id
    agreement_no: Id


class EndCooperationAgreement(_Dated):
    kind: Literal["end_cooperation_agreement"] = "end_cooperation_agreement"
    pharmacist_id: Id
    hospital_id: Id
    reason: Text


class SuspendPharmacist(_Dated):
    kind: Literal["suspend_pharmacist"] = "suspend_pharmacist"
    pharmacist_id: Id
    reason: Text


class ReinstatePharmacist(_Dated):
    kind: Literal["reinstate_pharmacist"] = "reinstate_pharmacist"
    pharmacist_id: Id
    reason: Text


class DesignatePharmacy(_Dated):
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
    chronic_qualified: bool = Field(default=False, description="特慢病 qualification")
    payee_id: Id | None = Field(default=None, description="who is paid for its drugs; unset = the pharmacy")


class SuspendPharmacyAgreement(_Dated):
    kind: Literal["suspend_pharmacy_agreement"] = "suspend_pharmacy_agreement"
    pharmacy_id: Id
    reason: Text


class ReinstatePharmacyAgreement(_Dated):
    kind: Literal["reinstate_pharmacy_agreement"] = "reinstate_pharmacy_agreement"
    pharmacy_id: Id
    reason: Text


class ListPharmacyDrugs(_Dated):
    kind: Literal["list_pharmacy_drugs"] = "list_pharmacy_drugs"
    pharmacy_id: Id
    drug_codes: tuple[DrugCode, ...] = Field(min_length=1, max_length=DRUG_CODES_MAX)


class DelistPharmacyDrugs(_Dated):
    kind: Literal["delist_pharmacy_drugs"] = "delist_pharmacy_drugs"
    pharmacy_id: Id
    drug_codes: tuple[DrugCode, ...] = Field(min_length=1, max_length=DRUG_CODES_MAX)


class SetPharmacyChronicQualification(_Dated):
    kind: Literal["set_pharmacy_chronic_qualification"] = "set_pharmacy_chronic_qualification"
    pharmacy_id: Id
    qualified: bool


class ChangePharmacyPayee(_Dated):
    kind: Literal["change_pharmacy_payee"] = "change_pharmacy_payee"
    pharmacy_id: Id
    payee_id: Id | None = Field(default=None, description="unset = the pharmacy itself")


class RegisterDeliveryEnterprise(_Dated):
    kind: Literal["register_delivery_enterprise"] = "register_delivery_enterprise"
    enterprise_id: Id
    name: Name
    region: Region
    gsp_qualified: bool
    gsp_certificate_no: Id | None = None


class ChangeDeliveryEnterpriseGsp(_Dated):
    kind: Literal["change_delivery_enterprise_gsp"] = "change_delivery_enterprise_gsp"
    enterprise_id: Id
    gsp_qualified: bool
    gsp_certificate_no: Id | None = None
    reason: Text


class SuspendPatientForFraud(_PatientKey):
    kind: Literal["suspend_patient_for_fraud"] = "suspend_patient_for_fraud"
    reason: Text
    until: date | None = None


class ReinstatePatient(_PatientKey):
    kind: Literal["reinstate_patient"] = "reinstate_patient"
    reason: Text


class RegisterPatientInsurance(_PatientKey):
    kind: Literal["register_patient_insurance"] = "register_patient_insurance"
    insured_region: Region
    insurance_type: InsuranceType
    effective_from: date | None = None


class ChangePatientInsurance(_PatientKey):
    kind: Literal["change_patient_insurance"] = "change_patient_insurance"
    insured_region: Region
    insurance_type: InsuranceType
    effective_from: date | None = None


class GrantChronicEntitlement(_PatientKey):
    kind: Literal["grant_chronic_entitlement"] = "grant_chronic_entitlement"
    disease_code: DiseaseCode
    effective_from: date | None = None


class RevokeChronicEntitlement(_PatientKey):
    kind: Literal["revoke_chronic_entitlement"] = "revoke_chronic_entitlement"
    disease_code: DiseaseCode
    reason: Text
    effective_from: date | None = None


class RecordOffSiteFiling(_PatientKey):
    kind: Literal["record_off_site_filing"] = "record_off_site_filing"
    filing_no: Id
    region: Region = Field(description="the treatment region (就医地) the filing is for")
    valid_from: date
    valid_until: date | None = Field(default=None, description="last day; unset = open-ended")


class EndOffSiteFiling(_PatientKey):
    kind: Literal["end_off_site_filing"] = "end_off_site_filing"
    filing_no: Id
    reason: Text
    effective_from: date | None = Field(default=None, description="first day without it; unset = today")


class DeclareEmergency(RegistryCommand):
    kind: Literal["declare_emergency"] = "declare_emergency"
    region: Region
    declaration_no: Id
    title: Name
    valid_from: date
    valid_until: date | None = Field(default=None, description="last day; unset = until ended")


class EndEmergency(_Dated):
    kind: Literal["end_emergency"] = "end_emergency"
    region: Region
    declaration_no: Id
    reason: Text


class ListDrug(_Dated):
    kind: Literal["list_drug"] = "list_drug"
    drug_code: DrugCode
    generic_code: GenericCode | None = Field(default=None, description="unset = derived from the drug code")
    name: Name
    spec: Name | None = None
    form: Name | None = None
    category: CatalogCategory
    chronic_list: bool = False


class ChangeDrugListing(_Dated):
    kind: Literal["change_drug_listing"] = "change_drug_listing"
    drug_code: DrugCode
    category: CatalogCategory | None = None
    chronic_list: bool | None = None
    name: Name | None = None
    generic_code: GenericCode | None = None


class SetPaymentStandard(_Dated):
    kind: Literal["set_payment_standard"] = "set_payment_standard"
    drug_code: DrugCode
    region: Region
    amount: UnitPrice | None = Field(description="yuan per box; null = withdrawn")


class SetPriceCap(_Dated):
    kind: Literal["set_price_cap"] = "set_price_cap"
    drug_code: DrugCode
    region: Region
    institution_id: Id | None = Field(default=None, description="unset = the region's cap for every institution")
    cap: UnitPrice | None = Field(description="yuan per box; null = withdrawn")


class AddChronicDisease(_Dated):
    kind: Literal["add_chronic_disease"] = "add_chronic_disease"
    region: Region
    disease_code: DiseaseCode
    name: Name


class RemoveChronicDisease(_Dated):
    kind: Literal["remove_chronic_disease"] = "remove_chronic_disease"
    region: Region
    disease_code: DiseaseCode
    reason: Text


REGISTRY_COMMANDS: tuple[type[RegistryCommand], ...] = (
    RegisterInstitution, ChangeInstitution, SuspendInstitutionAgreement, ReinstateInstitutionAgreement,
    RegisterPhysician, SuspendPhysician, ReinstatePhysician, ChangePhysicianKey,
    RegisterPharmacist, RecordCooperationAgreement, EndCooperationAgreement, SuspendPharmacist, ReinstatePharmacist,
    DesignatePharmacy, SuspendPharmacyAgreement, ReinstatePharmacyAgreement, ListPharmacyDrugs, DelistPharmacyDrugs,
    SetPharmacyChronicQualification, ChangePharmacyPayee,
    RegisterDeliveryEnterprise, ChangeDeliveryEnterpriseGsp,
    SuspendPatientForFraud, ReinstatePatient, RegisterPatientInsurance, ChangePatientInsurance,
    GrantChronicEntitlement, RevokeChronicEntitlement, RecordOffSiteFiling, EndOffSiteFiling,
    DeclareEmergency, EndEmergency,
    ListDrug, ChangeDrugListing, SetPaymentStandard, SetPriceCap,
    AddChronicDisease, RemoveChronicDisease,
)
"""Every registry command (the HTTP registry routes, the CLI and the gate read this list); agencies may send them all."""
REGULATOR_REGISTRY_COMMANDS: tuple[type[RegistryCommand], ...] = (
    DeclareEmergency, EndEmergency, ListDrug, ChangeDrugListing, SetPaymentStandard, SetPriceCap,
    AddChronicDisease, RemoveChronicDisease,
)
"""The registry commands a regulator may send (the national catalog; the regions' lists, standards, caps and
emergency declarations where the authority acts above the agency)."""


AnyCommand = Annotated[
    RecordFollowUpVisit
    | IssuePrescription
    | CancelPrescription
    | ExpirePrescription
    | ExtendValidity
    | ApprovePrescription
    | RejectPrescription
    | RoutePrescription
    | AcceptPrescription
    | ReturnPrescription
    | DispensePrescription
    | WithdrawDispense
    | ReturnPacks
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
    | RegisterInstitution
    | ChangeInstitution
    | SuspendInstitutionAgreement
    | ReinstateInstitutionAgreement
    | RegisterPhysician
    | SuspendPhysician
    | ReinstatePhysician
    | ChangePhysicianKey
    | RegisterPharmacist
    | RecordCooperationAgreement
    | EndCooperationAgreement
    | SuspendPharmacist
    | ReinstatePharmacist
    | DesignatePharmacy
    | SuspendPharmacyAgreement
    | ReinstatePharmacyAgreement
    | ListPharmacyDrugs
    | DelistPharmacyDrugs
    | SetPharmacyChronicQualification
    | ChangePharmacyPayee
    | RegisterDeliveryEnterprise
    | ChangeDeliveryEnterpriseGsp
    | SuspendPatientForFraud
    | ReinstatePatient
    | RegisterPatientInsurance
    | ChangePatientInsurance
    | GrantChronicEntitlement
    | RevokeChronicEntitlement
    | RecordOffSiteFiling
    | EndOffSiteFiling
    | DeclareEmergency
    | EndEmergency
    | ListDrug
    | ChangeDrugListing
    | SetPaymentStandard
    | SetPriceCap
    | AddChronicDisease
    | RemoveChronicDisease,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)


def parse_command(data: bytes | str | dict[str, object]) -> Command:
    """Decode a command from JSON (Kafka intake) or a dict; raises pydantic.ValidationError naming the field."""
    if isinstance(data, bytes | str):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)
