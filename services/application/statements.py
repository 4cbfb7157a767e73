"""Closing a month: one ``StatementIssued`` per party, and the year-end ``DepositReleased``.

Figures come from the settlement projections (``hospital_settlement.institution_statements`` and
``pharmacy_settlement.statements``) through :class:`SettlementFigures`, so a statement always agrees with them
(DOMAIN.md, Settlement; the arithmetic is ``services.domain.statement.amounts_due``):

- hospitals are rolled up to their physical designated institution (000 §五(二)); pharmacies, or the delivery
  enterprise the region pays (Jinan, 004 §六), are parties of their own;
- each statement shows the month's gross fund share, gross personal-account share, what audit refused, what was
  clawed back and reversed in the month (all booked in the China-time month of their event), the deposit the
  treatment region's provider terms withhold (``services.reference.policies.provider_terms``: Jinan 5% of a
  physical institution's audited fees, 003 art. 20; pharmacies and delivery enterprises in full), and the payable;
- a closed month stays closed: figures of an earlier month that the record holds now but no statement has booked
  yet (a refusal or reversal recorded late, consumer lag) are carried by this statement as lines naming their
  month. Over all statements of a party, every figure of the projections is booked exactly once.

A statement's id derives from (party kind, party, month): closing a month again finds it and records nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from events.base import ZERO, BusinessType
from events.statement import PartyKind
from services.application.ports import EventStore, PartyDirectory, SettlementFigures
from services.domain.aggregate import Aggregate
from services.domain.clock import Clock
from services.domain.errors import InvalidCommand
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.statement import (
    DEFAULT_DEPOSIT_RULE,
    DEPOSIT_PARTY_KINDS,
    CarriedLine,
    DepositRelease,
    DepositRule,
    Statement,
    StatementFigures,
    deposit_release_id,
    previous_month,
    project_deposit_release,
    project_statement,
    statement_id,
)
from services.reference import Reference, load_reference
from services.reference.policies import load_policy, provider_terms

log = logging.getLogger("rxtrail.statements")


@dataclass(frozen=True)
class PartyMonth:
    """One party's booked figures for one month, as the projections hold them."""

    party_id: str
    party_kind: PartyKind
    month: str
    fund: Decimal = ZERO
    refused: Decimal = ZERO
    clawed_back: Decimal = ZERO
    reversed: Decimal = ZERO
    consultations: int = 0
    consultation_fees: Decimal = ZERO
    prescriptions: int = 0
    drug_fees: Decimal = ZERO
    personal_account: Decimal = ZERO
    self_pay: Decimal = ZERO
    delivery_fees: Decimal = ZERO
    withheld_deposit: Decimal = ZERO
    members: tuple[PartyMonth, ...] = ()

    @property
    def key(self) -> tuple[PartyKind, str]:
        return self.party_kind, self.party_id


@dataclass
class ClosedStatement:
    """A statement as closed (now or before), with the month's detail for rendering."""

    statement: Statement
    detail: PartyMonth | None
    clawbacks_month: str
    deposit_rate: Decimal
    created: bool
    drift: StatementFigures | None = None
    """Figures recomputed now, when they differ from those the statement was closed with (late events)."""


@dataclass
class StatementDesk:
    """Closes months and releases deposits; statements are saved through the event store like everything else."""

    store: EventStore
    figures: SettlementFigures
    directory: PartyDirectory
    clock: Clock
    reference: Reference = field(default_factory=load_reference)
    rules: RuleConfig = DEFAULT_RULES

    def close_month(self, month: str, party_id: str | None = None) -> list[ClosedStatement]:
        """One statement per party with figures in ``month`` or figures of closed months not yet booked."""
        today = self.rules.local_date(self.clock.now())
        if f"{today:%Y-%m}" <= month:
            raise InvalidCommand(f"month {month} is not over yet (today is {today})", month=month)
        current = {p.key: p for p in self.figures.month(month, party_id)}
        earlier: dict[tuple[PartyKind, str], list[PartyMonth]] = {}
        for p in self.figures.before(month, party_id):
            if p.month >= _oldest(month):
                earlier.setdefault(p.key, []).append(p)
        carried = {key: self.carried(key, month, rows) for key, rows in earlier.items()}
        keys = sorted(set(current) | {k for k, lines in carried.items() if lines}, key=lambda k: (k[0].value, k[1]))
        regions = self.directory.regions(keys)
        closed = []
        for kind, party in keys:
            detail = current.get((kind, party))
            region = regions.get((kind, party))
            if region is None:
                raise InvalidCommand("pooling region of the party not found in the record", party_id=party,
                                     party_kind=kind.value)
            figures = StatementFigures(
                party_id=party, party_kind=kind, pooling_region=region, month=month,
                gross=detail.fund if detail else ZERO,
                personal_account=detail.personal_account if detail else ZERO,
                refused=detail.refused if detail else ZERO, clawed_back=detail.clawed_back if detail else ZERO,
                reversed=detail.reversed if detail else ZERO, carried=carried.get((kind, party), ()))
            closed.append(self._close(figures, detail, previous_month(month)))
        return closed

    def carried(self, key: tuple[PartyKind, str], month: str, rows: list[PartyMonth]) -> tuple[CarriedLine, ...]:
        """For each earlier month: what the projections hold less what statements from that month up to (not
        including) ``month`` booked for it."""
        kind, party = key
        booked: dict[str, CarriedLine] = {}
        for m in _months(min(r.month for r in rows), month):
            found = self._load(statement_id(kind, party, m), project_statement)
            if isinstance(found, Statement):
                for original, line in found.booked().items():
                    booked[original] = _plus(booked.get(original), line)
        lines = []
        for r in sorted(rows, key=lambda r: r.month):
            have = booked.get(r.month) or CarriedLine(month=r.month)
            line = CarriedLine(month=r.month, fund=r.fund - have.fund,
                               personal_account=r.personal_account - have.personal_account,
                               refused=r.refused - have.refused, clawed_back=r.clawed_back - have.clawed_back,
                               reversed=r.reversed - have.reversed)
            if any((line.fund, line.personal_account, line.refused, line.clawed_back, line.reversed)):
                lines.append(line)
        return tuple(lines)

    def terms(self, region: str, month: str) -> tuple[Decimal, str]:
        """The treatment region's deposit rate and policy version in effect on the month's last day."""
        last = _last_day(month)
        return (provider_terms(region, last).hospital_deposit_rate, load_policy(region, as_of=last).version)

    def _close(self, figures: StatementFigures, detail: PartyMonth | None, before: str) -> ClosedStatement:
        rate, version = self.terms(figures.pooling_region, figures.month)
        sid = statement_id(figures.party_kind, figures.party_id, figures.month)
        existing = self._load(sid, project_statement)
        if existing is None:
            statement = Statement.issue(clock=self.clock, figures=figures, deposit_rate=rate,
                                        policy_version=version, business_type=BusinessType.INTERNET)
            try:
                self.store.save(statement)
            except IntegrityError:
                existing = self._load(sid, project_statement)  # another closer won the race
                if existing is None:
                    raise
            else:
                return ClosedStatement(statement, detail, before, rate, created=True)
        if not isinstance(existing, Statement):
            raise TypeError(f"{sid} is not a statement")
        drift = figures if existing.figures() != figures else None
        if drift is not None:
            log.info("statement %s %s %s was closed with other figures than the projections hold now; the next"
                     " statement carries the difference", figures.party_kind.value, figures.party_id, figures.month)
        return ClosedStatement(existing, detail, before, existing.deposit_rate, created=False, drift=drift)

    def release_deposit(self, party_id: str, year: int, score: int, assessment_ref: str,
                        rule: DepositRule = DEFAULT_DEPOSIT_RULE) -> tuple[DepositRelease, Decimal, bool]:
        """Release the year's withheld deposit by the assessment score; returns (release, withheld, created)."""
        today = self.rules.local_date(self.clock.now())
        if today.year <= year:
            raise InvalidCommand(f"year {year} is not over yet", year=year)
        withheld = self.withheld(party_id, year)
        rid = deposit_release_id(party_id, year)
        existing = self._load(rid, project_deposit_release)
        if isinstance(existing, DepositRelease):
            return existing, withheld, False
        release = DepositRelease.release(clock=self.clock, party_id=party_id, year=year, withheld=withheld,
                                         score=score, assessment_ref=assessment_ref, rule=rule)
        try:
            self.store.save(release)
        except IntegrityError:
            existing = self._load(rid, project_deposit_release)
            if isinstance(existing, DepositRelease):
                return existing, withheld, False
            raise
        return release, withheld, True

    def withheld(self, party_id: str, year: int) -> Decimal:
        """The deposit withheld from a party over a year's statements."""
        total = ZERO
        for kind in sorted(DEPOSIT_PARTY_KINDS):
            for month in range(1, 13):
                found = self._load(statement_id(kind, party_id, f"{year}-{month:02d}"), project_statement)
                if isinstance(found, Statement):
                    total += found.withheld_deposit
        return total

    def _load(self, aggregate_id: UUID, projector: Any) -> Aggregate | None:
        return self.store.load(Aggregate, aggregate_id, projector)


CARRY_MONTHS = 24
"""How far back closing a month looks for figures of closed months not yet booked."""


def _months(first: str, until: str) -> list[str]:
    """Months from ``first`` up to, not including, ``until``."""
    out, m = [], first
    while m < until:
        out.append(m)
        year, mon = int(m[:4]), int(m[5:])
        m = f"{year + 1}-01" if mon == 12 else f"{year}-{mon + 1:02d}"
    return out


def _oldest(month: str) -> str:
    m = month
    for _ in range(CARRY_MONTHS):
        m = previous_month(m)
    return m


def _last_day(month: str) -> date:
    year, mon = int(month[:4]), int(month[5:])
    return date(year + (mon == 12), 1 if mon == 12 else mon + 1, 1) - timedelta(days=1)


def _plus(a: CarriedLine | None, b: CarriedLine) -> CarriedLine:
    if a is None:
        return b
    return CarriedLine(month=b.month, fund=a.fund + b.fund, personal_account=a.personal_account + b.personal_account,
                       refused=a.refused + b.refused, clawed_back=a.clawed_back + b.clawed_back,
                       reversed=a.reversed + b.reversed)
