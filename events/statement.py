"""Statement stream: monthly statements per party and the year-end release of the deposit; the settlement case
stream: what happened to one prescription's or visit's settlement besides the settlement itself (a failure the
agency resolves, a reversal, consultation-fee refusals and clawbacks)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.base import ZERO, BusinessType, DomainEvent, Id, LongText, Money, Region, Text

MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


class PartyKind(StrEnum):
    HOSPITAL = "hospital"
    PHYSICAL_INSTITUTION = "physical_institution"
    PHARMACY = "pharmacy"
    DELIVERY_ENTERPRISE = "delivery_enterprise"


class CarriedLine(BaseModel):
    """Figures of an earlier, already closed month that reached the record after its statement was closed
    (a late refusal, clawback, reversal or settlement): carried by the next open statement, naming their month."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    month: str = Field(pattern=MONTH_PATTERN)
    fund: Money = ZERO
    personal_account: Money = ZERO
    refused: Money = ZERO
    clawed_back: Money = ZERO
    reversed: Money = ZERO

    @property
    def net(self) -> Decimal:
        return self.fund + self.personal_account - self.refused - self.clawed_back - self.reversed


class StatementIssued(DomainEvent):
    """月度结算单：payable + withheld_deposit = gross + personal_account − refused − clawed_back − reversed
    (this month's figures and the carried lines of closed months together).

    ``gross`` is the fund share (统筹基金) settled in the month, ``personal_account`` the personal-account share
    (个人账户): the agency pays both (DOMAIN.md, Settlement). A negative payable is owed by the party
    (``owed_by_party``)."""

    business_type: BusinessType
    party_id: Id
    party_kind: PartyKind
    pooling_region: Region
    month: str = Field(pattern=MONTH_PATTERN)
    gross: Money
    refused: Money
    clawed_back: Money
    withheld_deposit: Money
    payable: Money
    policy_version: Id
    personal_account: Money = ZERO
    reversed: Money = ZERO
    carried: tuple[CarriedLine, ...] = Field(default=(), max_length=120)
    deposit_rate: Decimal = Field(default=ZERO, ge=0, lt=1, max_digits=6, decimal_places=4)
    owed_by_party: bool = False

    @model_validator(mode="after")
    def _payable_adds_up(self) -> StatementIssued:
        carried = sum((line.net for line in self.carried), ZERO)
        expected = (self.gross + self.personal_account - self.refused - self.clawed_back - self.reversed + carried
                    - self.withheld_deposit)
        if self.payable != expected:
            raise ValueError(
                f"payable {self.payable} != gross + personal_account - refused - clawed_back - reversed"
                f" + carried - deposit ({expected})"
            )
        if self.owed_by_party != (self.payable < ZERO):
            raise ValueError("owed_by_party must say whether the payable is negative")
        return self


class DepositReleased(DomainEvent):
    """年终考核后返还履约保证金。"""

    business_type: BusinessType
    party_id: Id
    year: int = Field(ge=2000, le=2999)
    amount: Money
    assessment_ref: Id


class SubjectKind(StrEnum):
    PRESCRIPTION = "prescription"
    CONSULTATION = "consultation"


class SettlementCaseEvent(DomainEvent):
    """An event of one prescription's or visit's settlement case (natural id from the subject)."""

    business_type: BusinessType
    subject_kind: SubjectKind
    subject_id: UUID
    pooling_region: Region


class SettlementCaseOpened(SettlementCaseEvent):
    """结算事项立案：the first thing that happened to this settlement besides the settlement itself."""

    hospital_id: Id
    physical_institution_id: Id


class SettlementFailed(SettlementCaseEvent):
    """结算失败：the settlement could not be computed or was refused; the agency sees it and resolves it."""

    rule_id: str | None = Field(default=None, pattern=r"^R\d{1,2}$", max_length=3)
    error: Id
    reason: LongText
    trigger: Id


class FailureResolution(StrEnum):
    RETRIED = "retried"
    WRITTEN_OFF = "written_off"
    SETTLED = "settled"  # a later trigger settled it


class SettlementFailureResolved(SettlementCaseEvent):
    resolution: FailureResolution
    reason: Text
    resolved_by: Id


class SettlementReversed(SettlementCaseEvent):
    """结算冲正/退费：the insurance-paid amounts go back to the agency (drugs returned, a settlement error); the next
    statement of the party carries it."""

    party_id: Id
    party_kind: PartyKind
    fund: Money
    personal_account: Money
    self_pay_refund: Money = ZERO
    reason: Text
    reversed_by: Id
    reversal_ref: Id


class ConsultationFeesRefused(SettlementCaseEvent):
    """诊察费审核拒付 (003 art. 20)."""

    party_id: Id
    amount: Money
    reason: Text
    audit_ref: Id
    acted_by: Id


class ConsultationFeesClawedBack(SettlementCaseEvent):
    """已支付诊察费违规追回 (003 art. 30)."""

    party_id: Id
    amount: Money
    reason: Text
    audit_ref: Id
    acted_by: Id


STATEMENT_EVENTS: tuple[type[DomainEvent], ...] = (
    StatementIssued, DepositReleased, SettlementCaseOpened, SettlementFailed, SettlementFailureResolved,
    SettlementReversed, ConsultationFeesRefused, ConsultationFeesClawedBack)
