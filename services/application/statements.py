"""Closing a month: one ``StatementIssued`` per party, and the year-end ``DepositReleased``.

Figures come from the settlement projections (``hospital_settlement.institution_statements`` and
``pharmacy_settlement.statements``) through :class:`SettlementFigures`, so a statement always agrees with them:

- hospitals are rolled up to their physical designated institution (000 §五(二)); the statement's ``gross`` is
  the month's fund share (consultations and drugs the hospital dispensed), ``refused`` the fees refused in audit
  during the month, and the deposit is ``deposit_rate`` (region reference data, 5%) of ``gross − refused``, as the
  projection's ``withheld_deposit``;
- pharmacies / delivery enterprises: the month's fund share, in full (003 art. 20; 004 §六);
- ``clawed_back`` is what was clawed back during the *previous* month (003 art. 30): fees already paid are
  recovered from the next payment. A party with nothing in the month but a clawback the month before still gets
  a statement, with a negative payable.

A statement's id derives from (party kind, party, month): closing a month again finds it and records nothing.
Close a month once the projections have caught up with it (events are booked in the month of their timestamp,
so nothing new lands in a month after it ended, except through consumer lag).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
        """One statement per party with figures in ``month`` or a clawback the month before."""
        today = self.rules.local_date(self.clock.now())
        if f"{today:%Y-%m}" <= month:
            raise InvalidCommand(f"month {month} is not over yet (today is {today})", month=month)
        before = previous_month(month)
        current = {p.key: p for p in self.figures.month(month, party_id)}
        clawbacks = {p.key: p.clawed_back for p in self.figures.month(before, party_id) if p.clawed_back > ZERO}
        keys = sorted(set(current) | set(clawbacks), key=lambda k: (k[0].value, k[1]))
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
                gross=detail.fund if detail else ZERO, refused=detail.refused if detail else ZERO,
                clawed_back=clawbacks.get((kind, party), ZERO))
            closed.append(self._close(figures, detail, before))
        return closed

    def _close(self, figures: StatementFigures, detail: PartyMonth | None, before: str) -> ClosedStatement:
        rate = self.reference.region(figures.pooling_region).deposit_rate
        sid = statement_id(figures.party_kind, figures.party_id, figures.month)
        existing = self._load(sid, project_statement)
        if existing is None:
            statement = Statement.issue(clock=self.clock, figures=figures, deposit_rate=rate,
                                        policy_version=self.reference.version, business_type=BusinessType.INTERNET)
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
            log.warning("statement %s %s %s was closed with other figures than the projections hold now: %s",
                        figures.party_kind.value, figures.party_id, figures.month, drift)
        return ClosedStatement(existing, detail, before, rate, created=False, drift=drift)

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
