"""A settlement case: what happens to one prescription's or one visit's settlement besides the settlement itself.

DOMAIN.md, Settlement: a settlement the platform cannot compute is never a silent skip — it is a
``SettlementFailed`` the agency sees in its queue and resolves (retry after a registry fix, or write off with a
reason); settlements can be reversed (drugs returned, a settlement error), and the next statement carries the
reversal; consultation fees can be refused in audit and clawed back like drug fees (003 art. 20, 30).

Everything the agency takes back from a provider for one settlement — refused, clawed back, reversed — is bounded
by what the agency paid for it (fund + personal account): :meth:`SettlementCase.check_within_paid`. The case has a
natural id per subject (:func:`case_id`), so the first command on a subject opens it in the same transaction.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Self
from uuid import UUID

from pydantic import Field

from events.base import ZERO, BusinessType, to_money
from events.statement import (
    ConsultationFeesClawedBack,
    ConsultationFeesRefused,
    FailureResolution,
    PartyKind,
    SettlementCaseOpened,
    SettlementFailed,
    SettlementFailureResolved,
    SettlementReversed,
    SubjectKind,
)
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import IllegalTransition, InvalidCommand

__all__ = ["SettlementCase", "case_id", "project_settlement_case"]


def case_id(subject_kind: SubjectKind, subject_id: UUID) -> UUID:
    return natural_id("settlement-case", f"{subject_kind.value}:{subject_id}")


class SettlementCase(Aggregate):
    """结算事项：failures and their resolution, reversals, consultation-fee refusals and clawbacks."""

    creation_event = SettlementCaseOpened

    business_type: BusinessType
    subject_kind: SubjectKind
    subject_id: UUID
    pooling_region: str
    hospital_id: str
    physical_institution_id: str
    failed: bool = False
    failures: list[dict[str, str]] = Field(default_factory=list)
    reversed_fund: Decimal = ZERO
    reversed_personal_account: Decimal = ZERO
    refused: Decimal = ZERO
    clawed_back: Decimal = ZERO

    @classmethod
    def open(cls, *, clock: Clock, business_type: BusinessType, subject_kind: SubjectKind, subject_id: UUID,
             pooling_region: str, hospital_id: str, physical_institution_id: str) -> Self:
        return cls._create(SettlementCaseOpened, clock, case_id(subject_kind, subject_id),
                           business_type=business_type, subject_kind=subject_kind, subject_id=subject_id,
                           pooling_region=pooling_region, hospital_id=hospital_id,
                           physical_institution_id=physical_institution_id)

    @property
    def reversed(self) -> Decimal:
        return self.reversed_fund + self.reversed_personal_account

    def _common(self) -> dict[str, object]:
        return {"business_type": self.business_type, "subject_kind": self.subject_kind,
                "subject_id": self.subject_id, "pooling_region": self.pooling_region}

    # --- failures -------------------------------------------------------------------------------------
    def fail(self, *, clock: Clock, rule_id: str | None, error: str, reason: str, trigger: str) -> None:
        """Record that a settlement could not be made (the agency's queue shows it until it is resolved)."""
        self._trigger(SettlementFailed, clock, **self._common(), rule_id=rule_id, error=error[:64] or "Error",
                      reason=reason[:2000] or error, trigger=trigger)

    def resolve(self, *, clock: Clock, resolution: FailureResolution, reason: str, resolved_by: str) -> None:
        if not self.failed:
            raise IllegalTransition("no open failure", "resolve_settlement_failure", subject_id=self.subject_id)
        self._trigger(SettlementFailureResolved, clock, **self._common(), resolution=resolution, reason=reason,
                      resolved_by=resolved_by)

    # --- money taken back -----------------------------------------------------------------------------
    def check_within_paid(self, *, paid: Decimal, taken_elsewhere: Decimal, amount: Decimal) -> None:
        """Refused + clawed back + reversed never exceed what the agency paid (fund + personal account)."""
        if amount <= ZERO:
            raise InvalidCommand("amount must be positive", subject_id=self.subject_id)
        taken = taken_elsewhere + self.refused + self.clawed_back + self.reversed
        if taken + amount > paid:
            raise InvalidCommand(
                f"refused, clawed back and reversed would exceed the insurance-paid {paid} (already {taken})",
                subject_id=self.subject_id)

    def reverse(self, *, clock: Clock, party_id: str, party_kind: PartyKind, paid_fund: Decimal,
                paid_personal_account: Decimal, taken_elsewhere: Decimal, fund: Decimal | str,
                personal_account: Decimal | str, self_pay_refund: Decimal | str, reason: str, reversed_by: str,
                reversal_ref: str) -> None:
        """Give back insurance-paid amounts of a settlement; neither share beyond what was paid of it."""
        fund_, pa_, refund = to_money(fund), to_money(personal_account), to_money(self_pay_refund)
        if fund_ < ZERO or pa_ < ZERO or refund < ZERO:
            raise InvalidCommand("reversal amounts must not be negative", subject_id=self.subject_id)
        if self.reversed_fund + fund_ > paid_fund or self.reversed_personal_account + pa_ > paid_personal_account:
            raise InvalidCommand("a reversal never exceeds the fund or personal-account share paid",
                                 subject_id=self.subject_id)
        self.check_within_paid(paid=paid_fund + paid_personal_account, taken_elsewhere=taken_elsewhere,
                               amount=fund_ + pa_ if fund_ + pa_ > ZERO else refund)
        self._trigger(SettlementReversed, clock, **self._common(), party_id=party_id, party_kind=party_kind,
                      fund=fund_, personal_account=pa_, self_pay_refund=refund, reason=reason,
                      reversed_by=reversed_by, reversal_ref=reversal_ref)

    def refuse_consultation(self, *, clock: Clock, paid: Decimal, amount: Decimal | str, reason: str,
                            audit_ref: str, acted_by: str) -> None:
        self._require_consultation("refuse_consultation_fees")
        value = to_money(amount)
        self.check_within_paid(paid=paid, taken_elsewhere=ZERO, amount=value)
        self._trigger(ConsultationFeesRefused, clock, **self._common(), party_id=self.physical_institution_id,
                      amount=value, reason=reason, audit_ref=audit_ref, acted_by=acted_by)

    def claw_back_consultation(self, *, clock: Clock, paid: Decimal, amount: Decimal | str, reason: str,
                               audit_ref: str, acted_by: str) -> None:
        self._require_consultation("claw_back_consultation_fees")
        value = to_money(amount)
        self.check_within_paid(paid=paid, taken_elsewhere=ZERO, amount=value)
        self._trigger(ConsultationFeesClawedBack, clock, **self._common(), party_id=self.physical_institution_id,
                      amount=value, reason=reason, audit_ref=audit_ref, acted_by=acted_by)

    def _require_consultation(self, command: str) -> None:
        if self.subject_kind is not SubjectKind.CONSULTATION:
            raise IllegalTransition(self.subject_kind.value, command, subject_id=self.subject_id)

    # --- state ----------------------------------------------------------------------------------------
    @classmethod
    def _created(cls, event: SettlementCaseOpened) -> Self:
        return cls(id=event.originator_id, business_type=event.business_type, subject_kind=event.subject_kind,
                   subject_id=event.subject_id, pooling_region=event.pooling_region, hospital_id=event.hospital_id,
                   physical_institution_id=event.physical_institution_id)

    def _apply(self, event: object) -> None:
        match event:
            case SettlementFailed():
                self.failed = True
                self.failures = [*self.failures, {"trigger": event.trigger, "rule_id": event.rule_id or "",
                                                  "reason": event.reason}]
            case SettlementFailureResolved():
                self.failed = False
            case SettlementReversed():
                self.reversed_fund += event.fund
                self.reversed_personal_account += event.personal_account
            case ConsultationFeesRefused():
                self.refused += event.amount
            case ConsultationFeesClawedBack():
                self.clawed_back += event.amount


project_settlement_case = make_projector(SettlementCase)
