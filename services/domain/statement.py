"""Statements: a party's monthly settlement statement (月度结算单) and the year-end release of the deposit.

DOMAIN.md, Settlement: the agency pays a provider the **fund share plus the personal-account share** of what it
settled in the month (both are insurance money the agency holds; the self-pay share the provider collects from
the patient), less what audit refused (003 art. 20), what was clawed back (003 art. 30) and what was reversed, all
booked in the China-time month of their event. Where the region's policy says so (Jinan, 003 art. 20: 5%), a
performance deposit (履约保证金) is withheld from a physical institution's payment, returned after the year
"according to how the agreement was performed"; pharmacies / delivery enterprises are paid in full. The rate is
the treatment region's provider terms (``services.reference.policies.provider_terms``), not a global setting.

For every statement: ``payable + withheld_deposit = fund + personal_account − refused − clawed_back − reversed``,
carried lines included; the deposit is ``rate × max(fund + personal_account − refused − reversed, 0)``, rounded
once half up to the fen. A negative payable is owed by the party and says so (``owed_by_party``). Figures of a
month already closed that reach the record later are carried by the next statement as :class:`CarriedLine` s
naming their month: a closed month stays closed.

Each statement is its own aggregate with an id derived from (party kind, party, month), so closing a month
twice meets the first closure and records nothing; the same holds for a deposit release per (party, year).

The release share by assessment score is :class:`DepositRule`. 003 art. 20 and 002 §四(十) only say that the
deposit is returned according to the performance assessment; the thresholds are ILLUSTRATIVE configuration
in the shape local agreements commonly use: at least 90 points → all of it, 60–89 → the score as a
percentage (75 points → 75%), under 60 → nothing (the rest is forfeited).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.base import ZERO, BusinessType, to_money
from events.statement import CarriedLine, DepositReleased, PartyKind, StatementIssued
from services.domain.aggregate import Aggregate, make_projector, natural_id
from services.domain.clock import Clock
from services.domain.errors import InvalidCommand
from services.domain.settlement import to_fen

__all__ = [
    "DEPOSIT_PARTY_KINDS",
    "CarriedLine",
    "DepositRelease",
    "DepositRule",
    "Statement",
    "StatementFigures",
    "amounts_due",
    "deposit_release_id",
    "previous_month",
    "project_deposit_release",
    "project_statement",
    "statement_id",
]

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
DEPOSIT_PARTY_KINDS = frozenset({PartyKind.HOSPITAL, PartyKind.PHYSICAL_INSTITUTION})
"""Parties whose monthly payment has the performance deposit withheld; pharmacies and delivery enterprises
are paid in full (003 art. 20)."""


def statement_id(party_kind: PartyKind, party_id: str, month: str) -> UUID:
    return natural_id("statement", f"{party_kind.value}:{party_id}:{month}")


def deposit_release_id(party_id: str, year: int) -> UUID:
    return natural_id("deposit-release", f"{party_id}:{year}")


def previous_month(month: str) -> str:
    _check_month(month)
    year, mon = int(month[:4]), int(month[5:])
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def _check_month(month: str) -> None:
    if not MONTH.match(month):
        raise InvalidCommand("month must be YYYY-MM", month=month)


class StatementFigures(BaseModel):
    """What one statement settles: the month's fund and personal-account shares, what audit refused, what was clawed
    back and reversed in the month, and the carried lines of closed months."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    party_id: str = Field(min_length=1)
    party_kind: PartyKind
    pooling_region: str = Field(pattern=r"^\d{6}$")
    month: str = Field(pattern=MONTH.pattern)
    gross: Decimal = Field(ge=0, description="the fund share settled in the month (统筹基金支付)")
    personal_account: Decimal = Field(default=ZERO, ge=0, description="the personal-account share (个人账户支付)")
    refused: Decimal = Field(ge=0, description="fees refused in audit during the month (拒付)")
    clawed_back: Decimal = Field(ge=0, description="fees clawed back during the month (追回)")
    reversed: Decimal = Field(default=ZERO, ge=0, description="settlements reversed during the month (冲正)")
    carried: tuple[CarriedLine, ...] = ()

    @model_validator(mode="after")
    def _money(self) -> StatementFigures:
        for name in ("gross", "personal_account", "refused", "clawed_back", "reversed"):
            to_money(getattr(self, name))
        return self


def amounts_due(party_kind: PartyKind, figures: StatementFigures, deposit_rate: Decimal
                ) -> tuple[Decimal, Decimal]:
    """``(withheld_deposit, payable)`` of a statement: the one place the statement arithmetic lives.

    The deposit: ``deposit_rate`` of the audited insurance-paid fees (fund + personal account − refused −
    reversed, carried lines included), never below zero, rounded once half up, for physical institutions only.
    """
    carried = figures.carried
    audited = (figures.gross + figures.personal_account - figures.refused - figures.reversed
               + sum((c.fund + c.personal_account - c.refused - c.reversed for c in carried), ZERO))
    clawed = figures.clawed_back + sum((c.clawed_back for c in carried), ZERO)
    deposit = to_fen(max(audited, ZERO) * deposit_rate) if party_kind in DEPOSIT_PARTY_KINDS else ZERO
    return deposit, audited - clawed - deposit


class Statement(Aggregate):
    """One party's statement for one month."""

    creation_event = StatementIssued

    business_type: BusinessType
    party_id: str
    party_kind: PartyKind
    pooling_region: str
    month: str
    gross: Decimal
    personal_account: Decimal = ZERO
    refused: Decimal
    clawed_back: Decimal
    reversed: Decimal = ZERO
    carried: tuple[CarriedLine, ...] = ()
    withheld_deposit: Decimal
    deposit_rate: Decimal = ZERO
    payable: Decimal
    owed_by_party: bool = False
    policy_version: str
    issued_at: datetime

    @staticmethod
    def withheld(party_kind: PartyKind, gross: Decimal, refused: Decimal, deposit_rate: Decimal) -> Decimal:
        """The deposit on audited fees of ``gross − refused`` (see :func:`amounts_due`)."""
        if party_kind not in DEPOSIT_PARTY_KINDS:
            return ZERO
        return to_fen(max(gross - refused, ZERO) * deposit_rate)

    @classmethod
    def issue(
        cls,
        *,
        clock: Clock,
        figures: StatementFigures,
        deposit_rate: Decimal,
        policy_version: str,
        business_type: BusinessType = BusinessType.INTERNET,
    ) -> Self:
        """Close the month for a party (see the module docstring for the arithmetic)."""
        if not ZERO <= deposit_rate < 1:
            raise InvalidCommand("deposit rate must lie in [0, 1)", deposit_rate=deposit_rate)
        deposit, payable = amounts_due(figures.party_kind, figures, deposit_rate)
        return cls._create(
            StatementIssued,
            clock,
            statement_id(figures.party_kind, figures.party_id, figures.month),
            business_type=business_type,
            party_id=figures.party_id,
            party_kind=figures.party_kind,
            pooling_region=figures.pooling_region,
            month=figures.month,
            gross=to_money(figures.gross),
            personal_account=to_money(figures.personal_account),
            refused=to_money(figures.refused),
            clawed_back=to_money(figures.clawed_back),
            reversed=to_money(figures.reversed),
            carried=figures.carried,
            withheld_deposit=deposit,
            deposit_rate=deposit_rate,
            payable=payable,
            owed_by_party=payable < ZERO,
            policy_version=policy_version,
        )

    def figures(self) -> StatementFigures:
        return StatementFigures(party_id=self.party_id, party_kind=self.party_kind,
                                pooling_region=self.pooling_region, month=self.month, gross=self.gross,
                                personal_account=self.personal_account, refused=self.refused,
                                clawed_back=self.clawed_back, reversed=self.reversed, carried=self.carried)

    def booked(self) -> dict[str, CarriedLine]:
        """What this statement booked per original month: its own month's figures and each carried line."""
        own = CarriedLine(month=self.month, fund=self.gross, personal_account=self.personal_account,
                          refused=self.refused, clawed_back=self.clawed_back, reversed=self.reversed)
        out = {self.month: own}
        for line in self.carried:
            out[line.month] = line
        return out

    @classmethod
    def _created(cls, event: StatementIssued) -> Self:
        return cls(
            id=event.originator_id,
            business_type=event.business_type,
            party_id=event.party_id,
            party_kind=event.party_kind,
            pooling_region=event.pooling_region,
            month=event.month,
            gross=event.gross,
            personal_account=event.personal_account,
            refused=event.refused,
            clawed_back=event.clawed_back,
            reversed=event.reversed,
            carried=event.carried,
            withheld_deposit=event.withheld_deposit,
            deposit_rate=event.deposit_rate,
            payable=event.payable,
            owed_by_party=event.owed_by_party,
            policy_version=event.policy_version,
            issued_at=event.timestamp,
        )

    def _apply(self, event: object) -> None:
        raise InvalidCommand("a statement is closed once and never changes", statement_id=self.id)


class DepositRule(BaseModel):
    """Share of the year's withheld deposit released for an assessment score (0–100). ILLUSTRATIVE thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    full_release_from: int = Field(default=90, ge=0, le=100, description="this score or more: 100%")
    partial_release_from: int = Field(default=60, ge=0, le=100, description="this score or more: score %")

    @model_validator(mode="after")
    def _ordered(self) -> DepositRule:
        if self.partial_release_from > self.full_release_from:
            raise ValueError("partial_release_from must not exceed full_release_from")
        return self

    def share(self, score: int) -> Decimal:
        if not 0 <= score <= 100:
            raise InvalidCommand("assessment score must lie in 0..100", score=score)
        if score >= self.full_release_from:
            return Decimal(1)
        if score >= self.partial_release_from:
            return Decimal(score) / 100
        return Decimal(0)

    def released(self, withheld: Decimal, score: int) -> Decimal:
        return to_fen(withheld * self.share(score))


DEFAULT_DEPOSIT_RULE = DepositRule()


class DepositRelease(Aggregate):
    """The year-end release of one party's performance deposit (once per party and year)."""

    creation_event = DepositReleased

    business_type: BusinessType
    party_id: str
    year: int
    amount: Decimal
    assessment_ref: str

    @classmethod
    def release(
        cls,
        *,
        clock: Clock,
        party_id: str,
        year: int,
        withheld: Decimal,
        score: int,
        assessment_ref: str,
        rule: DepositRule = DEFAULT_DEPOSIT_RULE,
        business_type: BusinessType = BusinessType.INTERNET,
    ) -> Self:
        """Release ``rule.share(score)`` of the deposit withheld over the year (the rest is forfeited)."""
        if withheld < ZERO:
            raise InvalidCommand("withheld deposit must not be negative", withheld=withheld)
        if not assessment_ref.strip():
            raise InvalidCommand("an assessment reference is needed", party_id=party_id)
        return cls._create(
            DepositReleased,
            clock,
            deposit_release_id(party_id, year),
            business_type=business_type,
            party_id=party_id,
            year=year,
            amount=rule.released(to_money(withheld), score),
            assessment_ref=f"{assessment_ref.strip()} (score {score}/100)",
        )

    @classmethod
    def _created(cls, event: DepositReleased) -> Self:
        return cls(id=event.originator_id, business_type=event.business_type, party_id=event.party_id,
                   year=event.year, amount=event.amount, assessment_ref=event.assessment_ref)

    def _apply(self, event: object) -> None:
        raise InvalidCommand("a deposit release is recorded once", party_id=self.party_id)


project_statement = make_projector(Statement)
project_deposit_release = make_projector(DepositRelease)
