"""Request (``XCreate``) and response (``XPublic``) models, one pair per operation.

Request bodies are the commands minus what the credential already says (the hospital, pharmacist or
pharmacy id) and minus the idempotency key (the ``Idempotency-Key`` header); they are derived from the
command models so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from events.base import InsuranceType, Money
from events.prescription import DispensedLine, PrescriptionItem, RoutingBasis
from services.application import commands as c
from services.application.outcomes import Outcome

_ALWAYS_IMPLIED = frozenset({"kind", "command_id", "expected_version"})
NO_NUL = r"^[^\x00]*$"


def find_nul(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where a NUL character hides in decoded JSON (PostgreSQL text and jsonb cannot store it), or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*path, key)
        if (found := find_nul(item, (*path, key))) is not None:
            return found
    return None


def _no_nul(value: Any) -> Any:
    if find_nul(value) is not None:
        raise ValueError("text must not contain NUL characters")
    return value


def body_model(name: str, command: type[c.Command], *, implied: tuple[str, ...] = (), doc: str) -> type[BaseModel]:
    """A request model with the command's fields (and constraints) minus those the server fills in."""
    skip = _ALWAYS_IMPLIED | set(implied)
    fields: dict[str, Any] = {
        n: (f.annotation, f) for n, f in command.model_fields.items() if n not in skip
    }
    if "expected_version" in command.model_fields:
        fields["expected_version"] = (int | None, Field(
            default=None, ge=1, description="refuse with 409 unless the prescription is still at this version"))
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        name, __config__=ConfigDict(extra="forbid", frozen=True), __doc__=doc,
        __validators__={"no_nul": field_validator("*", mode="before")(_no_nul)}, **fields
    )
    return model


VisitCreate = body_model("VisitCreate", c.RecordFollowUpVisit, implied=("hospital_id",),
                         doc="An online follow-up visit (R1: same disease diagnosed offline within the window).")
PrescriptionCreate = body_model("PrescriptionCreate", c.IssuePrescription, implied=("hospital_id",),
                                doc="A prescription issued from a recorded visit (R2, R4, R5, R10).")
CancellationCreate = body_model("CancellationCreate", c.CancelPrescription, implied=("prescription_id",),
                                doc="Cancel a prescription (after a partial dispense only the remainder).")
RoutingCreate = body_model("RoutingCreate", c.RoutePrescription, implied=("prescription_id",),
                           doc="Route an approved prescription to a designated pharmacy of the pooling region "
                               "(the patient's choice), or pharmacy_id null: the hospital dispenses itself.")
ApprovalCreate = body_model("ApprovalCreate", c.ApprovePrescription, implied=("prescription_id", "pharmacist_id"),
                            doc="The reviewing pharmacist approves.")
RejectionCreate = body_model("RejectionCreate", c.RejectPrescription, implied=("prescription_id", "pharmacist_id"),
                             doc="The reviewing pharmacist rejects, with reasons.")
AcceptanceCreate = body_model("AcceptanceCreate", c.AcceptPrescription, implied=("prescription_id", "dispenser_id"),
                              doc="The pharmacy accepts a prescription routed to it.")
ReturnCreate = body_model("ReturnCreate", c.ReturnPrescription, implied=("prescription_id", "dispenser_id"),
                          doc="The pharmacy declines; the prescription can be routed again.")
DispenseCreate = body_model("DispenseCreate", c.DispensePrescription, implied=("prescription_id", "dispenser_id"),
                            doc="What was handed over, with each pack's trace code (partial dispensing allowed).")
WithdrawalCreate = body_model("WithdrawalCreate", c.WithdrawDispense, implied=("prescription_id", "dispense_no"),
                              doc="Undo one dispense before delivery or collection.")
DeliveryCreate = body_model("DeliveryCreate", c.ArrangeDelivery, implied=("prescription_id",),
                            doc="Arrange delivery; the fee, stated to the patient in advance, is self-pay (R6).")
DeliveredCreate = body_model("DeliveredCreate", c.MarkDelivered, implied=("prescription_id",),
                             doc="The delivery enterprise handed the drugs over.")
CollectionCreate = body_model("CollectionCreate", c.MarkCollected, implied=("prescription_id",),
                              doc="The patient collected in person (real-name verification recorded, R9).")
AuditRefusalCreate = body_model("AuditRefusalCreate", c.RefuseFeesInAudit, implied=("prescription_id",),
                                doc="Fees refused in audit, deducted from the month's statement.")
ClawbackCreate = body_model("ClawbackCreate", c.ClawBackFees, implied=("prescription_id",),
                            doc="Fees already paid for a violation are clawed back.")


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
    """One event on a prescription routed to this pharmacy; `cursor` is its global position."""

    cursor: int
    prescription_id: UUID
    version: int
    event_type: str
    at: datetime
    data: dict[str, Any]
    prescription: dict[str, Any] | None = Field(
        default=None, description="on PrescriptionRouted: what to dispense (items, diagnosis, patient pseudonym)")


class FeedPagePublic(_Public):
    items: list[FeedItemPublic]
    cursor: int = Field(description="resume from here (`after`); it advances past events of other pharmacies too")


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


__all__ = [
    "AcceptanceCreate",
    "ApprovalCreate",
    "AuditRefusalCreate",
    "CancellationCreate",
    "ClawbackCreate",
    "CollectionCreate",
    "CommandResultPublic",
    "DeliveredCreate",
    "DeliveryCreate",
    "DispenseCreate",
    "ErrorPublic",
    "PrescriptionCreate",
    "RejectionCreate",
    "ReturnCreate",
    "RoutingBasis",
    "RoutingCreate",
    "VisitCreate",
    "WithdrawalCreate",
    "date",
]
