"""Request (``XCreate``) and response (``XPublic``) models, one pair per operation.

Request bodies are the commands minus what the credential already says (the hospital, pharmacist or
pharmacy id) and minus the idempotency key (the ``Idempotency-Key`` header). They are written out as classes;
``BODIES`` pairs each with its command and a unit test keeps the two from drifting apart.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.base import (
    ITEMS_MAX,
    REASONS_MAX,
    TRACE_CODES_MAX,
    Amount,
    Fee,
    Id,
    InsuranceType,
    LongText,
    Money,
    Name,
    Ownership,
    RealNameMethod,
    Region,
    Text,
    TraceCodeStr,
    UTCDateTime,
    Version,
)
from events.prescription import DispensedLine, DispensedLines, PrescriptionItem, PrescriptionItems, RoutingBasis
from services.application import commands as c
from services.application.access import find_nul
from services.application.outcomes import Outcome

NO_NUL = r"^[^\x00]*$"


class _Body(BaseModel):
    """A request body: a command's fields (same types and constraints) minus what the server fills in (the
    acting party's id from the key, the idempotency key from the header, ids from the path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if find_nul(value) is not None:
            raise ValueError("text must not contain NUL characters")
        return value


class PrescriptionBody(_Body):
    """A body of a command on one prescription (its id comes from the path)."""

    expected_version: Version | None = Field(
        default=None, description="refuse with 409 unless the prescription is still at this version")


# --- hospital --------------------------------------------------------------------------------------------


class VisitCreate(_Body):
    """An online follow-up visit (R1/R16: same disease diagnosed offline, at a registered physical institution, within
    the window; R2; R17: the hospital and its physical institution under agreement, the patient's insurance facts
    from the registry; R12: an off-site visit records whether a long-term off-site registration was valid)."""

    visit_ref: Id = Field(description="the hospital's own visit number; the encounter id derives from it")
    physical_institution_id: Id | None = Field(default=None, description=c.REGISTRY_FACT)
    institution_ownership: Ownership | None = Field(default=None, description=c.REGISTRY_FACT)
    pooling_region: Region | None = Field(default=None, description=c.REGISTRY_FACT)
    insured_region: Region | None = Field(default=None, description=c.REGISTRY_FACT)
    insurance_type: InsuranceType | None = Field(default=None, description=c.REGISTRY_FACT)
    patient: c.PatientIdentity
    physician_id: Id
    physician_signature: Text
    diagnosis_code: Id
    diagnosis_name: Name
    original_diagnosis_code: Id
    original_diagnosis_date: date
    original_institution_id: Id
    verification_method: RealNameMethod
    consultation_fee: Fee


class PrescriptionCreate(_Body):
    """A prescription issued from a recorded visit (R1/R16 again on the day, R2 the physician's Ed25519 signature over
    the content of ``services.domain.signature``, R4 the region's chronic disease list, declared emergencies and the
    patient's running supply per generic drug, R5, R10, R17)."""

    prescription_ref: Id = Field(description="the hospital's prescription number; the id derives from it")
    encounter_id: UUID
    physician_signature: Text = Field(description=c.SIGNATURE)
    items: PrescriptionItems
    first_visit_drug_codes: tuple[Id, ...] = Field(
        default=(), max_length=ITEMS_MAX, description="drugs of the first-visit (offline) prescription, for R5")
    justification: LongText | None = None
    preferred_pharmacy_id: Id | None = Field(
        default=None,
        description="the patient's chosen designated pharmacy; unset = the router's rule picks one")


class CancellationCreate(PrescriptionBody):
    """Cancel a prescription (after a partial dispense only the remainder)."""

    reason: Text
    cancelled_by: Id


class RoutingCreate(PrescriptionBody):
    """Route an approved prescription to a designated pharmacy of the pooling region (the patient's choice), or pharmacy_id null: the hospital dispenses itself."""  # noqa: E501

    pharmacy_id: Id | None = Field(default=None, description="None: the hospital dispenses itself")
    basis: RoutingBasis


# --- pharmacist ------------------------------------------------------------------------------------------


class ApprovalCreate(PrescriptionBody):
    """The reviewing pharmacist approves."""


class RejectionCreate(PrescriptionBody):
    """The reviewing pharmacist rejects, with reasons."""

    reasons: tuple[Text, ...] = Field(min_length=1, max_length=REASONS_MAX)


# --- pharmacy --------------------------------------------------------------------------------------------


class AcceptanceCreate(PrescriptionBody):
    """The pharmacy accepts a prescription routed to it."""


class ReturnCreate(PrescriptionBody):
    """The pharmacy declines; the prescription can be routed again."""

    reason: Text


class DispenseCreate(PrescriptionBody):
    """What was handed over, with each pack's trace code (partial dispensing allowed)."""

    lines: DispensedLines


class WithdrawalCreate(PrescriptionBody):
    """Undo one dispense before delivery or collection."""

    reason: Text


class PackReturnCreate(PrescriptionBody):
    """Packs handed back before delivery or collection: their trace codes go back to stock (R8)."""

    trace_codes: tuple[TraceCodeStr, ...] = Field(min_length=1, max_length=TRACE_CODES_MAX)
    reason: Text


class ValidityExtensionCreate(PrescriptionBody):
    """R19: the prescribing physician extends the validity, to at most validity_days after issue."""

    physician_id: Id
    valid_until: UTCDateTime
    reason: Text


class DeliveryCreate(PrescriptionBody):
    """Arrange delivery; the fee, stated to the patient in advance, is self-pay (R6)."""

    delivery_enterprise_id: Id
    delivery_fee: Fee
    fee_disclosed: bool = Field(description="R6: the fee was stated to the patient in advance")
    delivery_address: Text | None = Field(default=None, description="where the drugs go; only its keyed pseudonym "
                                          "is recorded (fraud analytics: many patients to one address)")


class DeliveredCreate(PrescriptionBody):
    """The delivery enterprise handed the drugs over."""

    delivery_enterprise_id: Id


class CollectionCreate(PrescriptionBody):
    """The patient collected in person (real-name verification recorded, R9)."""

    verification_method: RealNameMethod


# --- agency ----------------------------------------------------------------------------------------------


class AuditRefusalCreate(PrescriptionBody):
    """Fees refused in audit, deducted from the month's statement."""

    amount: Amount
    reason: Text
    audit_ref: Id


class ClawbackCreate(PrescriptionBody):
    """Fees already paid for a violation are clawed back."""

    amount: Amount
    reason: Text
    audit_ref: Id


# --- agency: settlement cases (money, issue 14) ------------------------------------------------------


class ConsultationRefusalCreate(_Body):
    """Consultation fees refused in audit (bounded by what the fund and personal account paid)."""

    amount: Amount
    reason: Text
    audit_ref: Id


class ConsultationClawbackCreate(_Body):
    """Consultation fees already paid for a violation are clawed back."""

    amount: Amount
    reason: Text
    audit_ref: Id


class SettlementRetryCreate(_Body):
    """Retry a failed settlement (after the registry was fixed)."""

    reason: Text


class SettlementWriteOffCreate(_Body):
    """Close a failed settlement without payment."""

    reason: Text


class ReversalCreate(_Body):
    """Reverse a settlement (default: everything insurance paid and not yet taken back)."""

    fund: Amount | None = Field(default=None, description="fund share to reverse (default: what is left of it)")
    personal_account: Amount | None = Field(default=None, description="personal-account share (default: the rest)")
    self_pay_refund: Amount = Decimal("0.00")
    reason: Text
    reversal_ref: Id


class SettlementIssuePublic(BaseModel):
    """A settlement that failed (never a silent skip): the agency retries or writes it off."""

    model_config = ConfigDict(frozen=True)

    case_id: UUID
    subject_kind: str
    subject_id: UUID
    pooling_region: str
    open: bool
    rule_id: str | None
    error: str
    reason: str
    trigger: str
    failed_at: datetime
    failures: int
    resolution: str | None
    resolution_reason: str | None
    resolved_by: str | None
    resolved_at: datetime | None


class SettlementIssuePage(BaseModel):
    model_config = ConfigDict(frozen=True)

    pooling_region: str
    items: list[SettlementIssuePublic]


BODIES: dict[type[_Body], tuple[type[c.Command], tuple[str, ...]]] = {
    VisitCreate: (c.RecordFollowUpVisit, ("hospital_id",)),
    PrescriptionCreate: (c.IssuePrescription, ("hospital_id",)),
    CancellationCreate: (c.CancelPrescription, ("prescription_id",)),
    RoutingCreate: (c.RoutePrescription, ("prescription_id",)),
    ApprovalCreate: (c.ApprovePrescription, ("prescription_id", "pharmacist_id")),
    RejectionCreate: (c.RejectPrescription, ("prescription_id", "pharmacist_id")),
    AcceptanceCreate: (c.AcceptPrescription, ("prescription_id", "dispenser_id")),
    ReturnCreate: (c.ReturnPrescription, ("prescription_id", "dispenser_id")),
    DispenseCreate: (c.DispensePrescription, ("prescription_id", "dispenser_id")),
    WithdrawalCreate: (c.WithdrawDispense, ("prescription_id", "dispense_no")),
    PackReturnCreate: (c.ReturnPacks, ("prescription_id", "dispenser_id")),
    ValidityExtensionCreate: (c.ExtendValidity, ("prescription_id",)),
    DeliveryCreate: (c.ArrangeDelivery, ("prescription_id",)),
    DeliveredCreate: (c.MarkDelivered, ("prescription_id",)),
    CollectionCreate: (c.MarkCollected, ("prescription_id",)),
    AuditRefusalCreate: (c.RefuseFeesInAudit, ("prescription_id", "acted_by")),
    ClawbackCreate: (c.ClawBackFees, ("prescription_id", "acted_by")),
    ConsultationRefusalCreate: (c.RefuseConsultationFees, ("encounter_id", "acted_by")),
    ConsultationClawbackCreate: (c.ClawBackConsultationFees, ("encounter_id", "acted_by")),
    SettlementRetryCreate: (c.RetrySettlement, ("subject_kind", "subject_id", "acted_by")),
    SettlementWriteOffCreate: (c.WriteOffSettlement, ("subject_kind", "subject_id", "acted_by")),
    ReversalCreate: (c.ReverseSettlement, ("subject_kind", "subject_id", "acted_by")),
}
"""Each body and the command it becomes, with the fields the server fills in (a unit test checks that every body
has exactly the command's other fields, with the same types and constraints)."""


# --- responses ---------------------------------------------------------------------------------------


class _Public(BaseModel):
    model_config = ConfigDict(frozen=True)


class EventRefPublic(_Public):
    aggregate_id: UUID
    version: int
    event_type: str


class CommandResultPublic(_Public):
    """What an accepted command recorded. A retried request (same Idempotency-Key) gets the first result."""

    command: str
    status: Literal["ok"]
    aggregate_id: UUID | None
    events: list[EventRefPublic]
    replayed: bool

    @classmethod
    def of(cls, outcome: Outcome) -> CommandResultPublic:
        return cls(
            command=outcome.command_type,
            status="ok",
            aggregate_id=outcome.aggregate_id,
            events=[EventRefPublic(**e.model_dump()) for e in outcome.events],
            replayed=outcome.replayed,
        )


class ErrorPublic(BaseModel):
    """Every refusal: ``error`` (class), ``reason``; a rule violation adds ``rule`` (an id of ``GET /rules``), an illegal
    transition ``state``; the ids involved appear as extra fields."""

    model_config = ConfigDict(extra="allow")

    error: str
    reason: str
    rule: str | None = None
    state: str | None = None
    command: str | None = None


class VisitPublic(_Public):
    visit_id: UUID
    hospital_id: str
    physical_institution_id: str
    pooling_region: str
    insured_region: str
    insurance_type: InsuranceType
    patient_ref: str = Field(description="the patient's pseudonym")
    physician_id: str
    diagnosis_code: str
    diagnosis_name: str
    consultation_fee: Money
    settled: bool
    business_type: str
    offsite_filing_valid: bool | None = Field(
        default=None, description="R12: an off-site visit's long-term off-site registration (长期异地就医备案) was valid "
                                  "on its day (registry); null for a visit in the insured region")


class DispensePublic(_Public):
    dispense_no: int
    lines: list[DispensedLine]


class PrescriptionPublic(_Public):
    prescription_id: UUID
    version: int
    status: str
    business_type: str
    hospital_id: str
    encounter_id: UUID
    pooling_region: str
    insured_region: str
    insurance_type: InsuranceType
    patient_ref: str = Field(description="the patient's pseudonym")
    physician_id: str
    items: list[PrescriptionItem]
    valid_until: datetime
    pharmacist_id: str | None
    dispenser_kind: str | None
    dispenser_id: str | None
    dispenses: list[DispensePublic]
    delivery_enterprise_id: str | None
    delivery_fee: Money
    total: Money | None
    fund: Money | None
    personal_account: Money | None
    self_pay: Money | None
    refused: Money
    clawed_back: Money
    flags: list[str]


class PageInfo(_Public):
    next_cursor: int | None = Field(description="pass as `after` for the next page; null when this page is the end")


class PrescriptionPage(PageInfo):
    items: list[PrescriptionPublic]


class VisitPage(PageInfo):
    items: list[VisitPublic]


class FeedItemPublic(_Public):
    """One event on a prescription while it is routed to this pharmacy (its routing, what follows, its own return);
    `data`: the event's business fields (nothing sealed, no chain fields)."""

    cursor: int
    prescription_id: UUID
    version: int
    event_type: str
    at: datetime
    data: dict[str, Any]
    prescription: dict[str, Any] | None = Field(
        default=None, description="on PrescriptionRouted: what to dispense (items, diagnosis, validity, patient "
                                  "pseudonym), as the Kafka feed's `prescription` (events.contracts.FeedPrescription)")


class FeedPagePublic(_Public):
    items: list[FeedItemPublic]
    cursor: int = Field(description="resume from here (`after`); unchanged when nothing new came")


class TrailEventPublic(_Public):
    aggregate_id: UUID
    aggregate_type: str
    version: int
    event_type: str
    at: datetime
    data: dict[str, Any]


class VerificationPublic(_Public):
    verified: bool
    aggregates: int
    broken: list[dict[str, Any]]


class TrailPublic(_Public):
    prescription_id: UUID
    status: str
    events: list[TrailEventPublic]
    verification: VerificationPublic


class FlagPublic(_Public):
    cursor: int
    prescription_id: UUID
    version: int
    rule: str
    reason: str
    at: datetime
    details: dict[str, str]


class FlagPage(_Public):
    items: list[FlagPublic]
    next_cursor: int | None


class StatementPublic(_Public):
    party_kind: str
    party_id: str
    month: str
    figures: dict[str, Decimal | int | str | None]


class StatementPage(_Public):
    pooling_region: str
    items: list[StatementPublic]


class RegulatorQueryPublic(_Public):
    id: int
    regulator_id: str
    at: datetime
    method: str
    path: str
    query: str


class ReviewItemPublic(_Public):
    prescription_id: UUID
    hospital_id: str
    issued_at: datetime
    prescription: PrescriptionPublic


class ReviewQueuePublic(PageInfo):
    items: list[ReviewItemPublic]



class RuleParameterPublic(_Public):
    name: str
    value: int
    description: str


class RulePublic(_Public):
    """One rule of the catalogue (``rxtrail rules`` prints the same table)."""

    id: str = Field(description="R1, R2, ...: the id refusals (`rule`) and flags carry")
    title: str
    source: str = Field(description="where the policy texts state it, e.g. `003 art. 13`")
    seed_files: list[str] = Field(description="the policy text files it is read from")
    kind: Literal["reject", "flag", "reject+flag"] = Field(
        description="reject: the command is refused (409); flag: recorded as a RuleFlagged event")
    parameters: list[RuleParameterPublic] = Field(description="configurable values, as this deployment uses them")
    enforced: bool
    note: str = Field(description="what is not covered, if anything")


# --- the regulator console's dashboard (services/api/console/dashboard.py) ---------------------------------------
class DashboardDayPublic(_Public):
    day: date = Field(description="China day (UTC+8)")
    region: str = Field(description="pooling region of the treatment")
    issued: int
    settled: int
    fund: Money = Field(description="统筹基金 paid by the insurance fund for the day's settlements")
    personal_account: Money = Field(description="个人账户")
    self_pay: Money = Field(description="自费")
    total: Money
    flags: int


class DashboardPublic(_Public):
    since: date
    days: list[DashboardDayPublic]


# --- fraud findings (projections/fraud; services/api/routes/findings.py) ------------------------------------------
class FindingEvidencePublic(_Public):
    event_id: str
    aggregate_id: UUID
    version: int
    event_type: str
    at: datetime


class FindingPublic(_Public):
    cursor: int
    finding_id: str = Field(description="stable id: pattern + a digest of its subject")
    pattern: str = Field(description="FR-TC-REPEAT, FR-TC-DUPSALE, FR-DOCTOR-SHOP, FR-SUSPENDED-ACTIVE, FR-R5-RATE, "
                                     "FR-R7-RATE, FR-AT-CAP, FR-VOLUME, FR-ADDRESS")
    rule: str | None = Field(description="the rule it concerns, when one does")
    severity: str = Field(description="low | medium | high | critical")
    subject: str = Field(description="what it is about: a trace code, a party, patient|generic, party|day, …")
    parties: list[str] = Field(description="kind:id of every party concerned (patients and addresses as pseudonyms)")
    patient_ref: str | None
    prescription_ids: list[UUID]
    explanation: str
    first_at: datetime
    last_at: datetime
    evidence: list[FindingEvidencePublic] = Field(description="the events that prove it")


class FindingPage(_Public):
    items: list[FindingPublic]
    next_cursor: int | None
