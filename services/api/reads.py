"""What parties read: the read side (projections), never scans of the event table.

Lists, searches, the review queue, flags and trails come from the traceability projection's indexed queries
(``projections.traceability.queries``); the pharmacy feed from the gateway's feed state
(``services.workers.gateway.feed_page``); statements from the settlement projections. Cursors are the read
model's ``seq`` (the order rows were first written there).

The read side is eventually consistent: a command's effects show here once the relay and the projection or
gateway have carried them (usually well under a second). The aggregates a list names are then loaded from the
write side, so each item shows the record of truth; who may see an aggregate is decided by the gate
(``services.application.access``) on the write side too. Until a projection has created its tables, its reads
answer empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from events.statement import PartyKind
from projections.hospital_settlement.projection import HospitalSettlement
from projections.hospital_settlement.projection import (
    region_institution_statements as hospital_region_institution_statements,
)
from projections.hospital_settlement.projection import settlement_issues as hospital_settlement_issues
from projections.pharmacy_settlement.projection import PharmacySettlement
from projections.pharmacy_settlement.projection import region_statements as pharmacy_region_statements
from projections.traceability import queries as trace
from projections.traceability.projection import Traceability
from services.adapters.gateway_state import SCHEMA as GATEWAY_SCHEMA
from services.adapters.gateway_state import feed_page
from services.api import models as m
from services.application.ports import EventStore
from services.application.unit_of_work import UnitOfWork
from services.domain.aggregate import Aggregate
from services.domain.encounter import Encounter
from services.domain.errors import DomainError
from services.domain.prescription import Prescription, RxStatus
from services.domain.registries import Pharmacist
from services.domain.statement import Statement, StatementFigures, amounts_due, project_statement, statement_id
from services.integrity import verify_aggregate
from services.reference.policies import provider_terms

T = TypeVar("T")


class Reads:
    def __init__(self, store: EventStore, pool: ConnectionPool[Any], *, traceability_schema: str = Traceability.name,
                 gateway_schema: str = GATEWAY_SCHEMA) -> None:
        self.store = store
        self.pool = pool
        self.traceability = traceability_schema
        self.gateway = gateway_schema

    def _read(self, query: Callable[[psycopg.Connection[Any]], T]) -> T | None:
        """``query``'s answer, or None until the projection has created its tables (callers show nothing then)."""
        try:
            with self.pool.connection() as conn:
                return query(conn)
        except psycopg.errors.UndefinedTable:
            return None

    # --- aggregates (write side) -----------------------------------------------------------------
    def _load(self, cls: type[T], ids: Sequence[UUID]) -> dict[UUID, T]:
        uow = UnitOfWork(self.store)
        found: dict[UUID, T] = {}
        for i in ids:
            try:
                aggregate = uow.get(cls, i)  # type: ignore[type-var]
            except DomainError:  # the id names an aggregate of another kind
                aggregate = None
            if isinstance(aggregate, cls):
                found[i] = aggregate
        return found

    def prescriptions(self, ids: Sequence[UUID]) -> list[Prescription]:
        loaded = self._load(Prescription, ids)
        return [loaded[i] for i in ids if i in loaded]

    # --- hospitals -------------------------------------------------------------------------------
    def hospital_prescriptions(self, hospital_id: str, after: int, limit: int) -> tuple[list[Prescription], int | None]:
        rows = self._read(lambda c: trace.prescription_page(c, self.traceability, hospital_id=hospital_id,
                                                             after=after, limit=limit)) or []
        return self.prescriptions([r[1] for r in rows]), _next(rows, limit)

    def hospital_visits(self, hospital_id: str, after: int, limit: int) -> tuple[list[Encounter], int | None]:
        rows = self._read(lambda c: trace.visit_page(c, self.traceability, hospital_id=hospital_id, after=after,
                                                     limit=limit)) or []
        loaded = self._load(Encounter, [r[1] for r in rows])
        return [loaded[r[1]] for r in rows if r[1] in loaded], _next(rows, limit)

    # --- regulators ------------------------------------------------------------------------------
    def search(self, *, patient_ref: str | None, physician_id: str | None, pharmacy_id: str | None,
               trace_code: str | None, hospital_id: str | None, after: int, limit: int
               ) -> tuple[list[Prescription], int | None]:
        """Prescriptions matching every given criterion."""
        rows = self._read(lambda c: trace.prescription_page(
            c, self.traceability, after=after, limit=limit, hospital_id=hospital_id, patient_ref=patient_ref,
            physician_id=physician_id, pharmacy_id=pharmacy_id, trace_code=trace_code)) or []
        return self.prescriptions([r[1] for r in rows]), _next(rows, limit)

    def trail(self, rx: Prescription) -> list[m.TrailEventPublic]:
        """The visit, the prescription and its trace codes' events, in time order."""
        codes = sorted({code for lines in rx.dispenses.values() for line in lines for code in line.trace_codes})
        events = self._read(lambda c: trace.trail_events(c, self.traceability, rx.id, rx.encounter_id, codes)) or []
        return [m.TrailEventPublic(aggregate_id=e.aggregate_id, aggregate_type=e.aggregate_type, version=e.version,
                                   event_type=e.event_type, at=e.at, data=e.data) for e in events]

    def verification(self, rx: Prescription) -> m.VerificationPublic:
        """The hash chains of the visit's and the prescription's streams, checked on the record itself."""
        ids = [rx.encounter_id, rx.id]
        broken = [link for i in ids if (link := verify_aggregate(self.store, i)) is not None]  # type: ignore[arg-type]
        return m.VerificationPublic(verified=not broken, aggregates=len(ids), broken=[
            {"aggregate_id": str(b.aggregate_id), "version": b.version, "reason": b.reason} for b in broken])

    def flags(self, rule: str | None, after: int, limit: int) -> tuple[list[m.FlagPublic], int | None]:
        rows = self._read(lambda c: trace.flag_page(c, self.traceability, rule_id=rule, after=after, limit=limit)) or []
        items = [m.FlagPublic(cursor=r["seq"], prescription_id=r["prescription_id"], version=r["version"],
                              rule=r["rule_id"], reason=r["reason"], at=r["at"], details=r["details"]) for r in rows]
        return items, (items[-1].cursor if len(items) == limit else None)

    # --- pharmacists -----------------------------------------------------------------------------
    def review_queue(self, pharmacist: Pharmacist | None, after: int, limit: int
                     ) -> tuple[list[tuple[datetime, Prescription]], int | None]:
        """Issued prescriptions not yet reviewed, cancelled or expired that this pharmacist may review (R18): its
        employer's, or for a third party those of the hospitals it has a cooperation agreement with."""
        if pharmacist is None:
            return [], None
        hospital = None if pharmacist.third_party else pharmacist.employer_id
        rows = self._read(lambda c: trace.to_review_page(c, self.traceability, hospital_id=hospital, after=after,
                                                         limit=limit)) or []
        loaded = {rx.id: rx for rx in self.prescriptions([r[1] for r in rows])}
        items = [(at, loaded[i]) for _, i, at in rows
                 if i in loaded and loaded[i].status is RxStatus.ISSUED and loaded[i].reviewable_by(pharmacist)]
        return items, _next(rows, limit)

    # --- pharmacies ------------------------------------------------------------------------------
    def pharmacy_feed(self, pharmacy_id: str, after: int, limit: int) -> tuple[list[m.FeedItemPublic], int]:
        """Events of prescriptions while they are routed to this pharmacy, after the cursor, oldest first."""
        rows = self._read(lambda c: feed_page(c, self.gateway, pharmacy_id, after, limit)) or []
        items = [m.FeedItemPublic(cursor=r["seq"], prescription_id=r["prescription_id"], version=r["version"],
                                  event_type=r["event_type"], at=r["at"], data=r["data"],
                                  prescription=r["prescription"]) for r in rows]
        return items, (items[-1].cursor if items else after)

    # --- agencies --------------------------------------------------------------------------------
    def region_statements(self, region: str, month: str | None) -> list[m.StatementPublic]:
        """The monthly statements of a pooling region's agency, per physical institution (its internet hospitals
        rolled up) and per pharmacy or delivery enterprise the region pays, with only the region's lines (a line's
        region is its visit's or prescription's ``pooling_region``, the treatment region). A month already closed
        shows the issued statement (``status: closed``, carried lines included: what ``rxtrail statement``
        prints); an open month the projections' figures with the deposit the region's policy would withhold
        (``status: open``). Both by ``services.domain.statement.amounts_due``."""
        out = [self._statement(region, PartyKind.PHYSICAL_INSTITUTION, r["physical_institution_id"], r)
               for r in self._read(lambda c: hospital_region_institution_statements(
                   c, HospitalSettlement.name, pooling_region=region, month=month)) or []]
        out += [self._statement(region, PartyKind(r["party_kind"]), r["party_id"], r)
                for r in self._read(lambda c: pharmacy_region_statements(
                    c, PharmacySettlement.name, pooling_region=region, month=month)) or []]
        return out

    def _statement(self, region: str, kind: PartyKind, party_id: str, row: dict[str, Any]) -> m.StatementPublic:
        closed = self.store.load(Aggregate, statement_id(kind, party_id, row["month"]), project_statement)
        if isinstance(closed, Statement) and closed.pooling_region == region:
            figures: dict[str, Any] = {
                "status": "closed", "fund": closed.gross, "personal_account": closed.personal_account,
                "refused": closed.refused, "clawed_back": closed.clawed_back, "reversed": closed.reversed,
                "carried_net": sum((c.net for c in closed.carried), Decimal("0.00")),
                "carried_months": ",".join(c.month for c in closed.carried) or None,
                "deposit_rate": closed.deposit_rate, "withheld_deposit": closed.withheld_deposit,
                "payable": closed.payable}
        else:
            open_figures = StatementFigures(
                party_id=party_id, party_kind=kind, pooling_region=region, month=row["month"],
                gross=row["fund"], personal_account=row["personal_account"], refused=row["refused"],
                clawed_back=row["clawed_back"], reversed=row["reversed"])
            rate = provider_terms(region, _last_day(row["month"])).hospital_deposit_rate
            deposit, payable = amounts_due(kind, open_figures, rate)
            figures = {"status": "open", "fund": row["fund"], "personal_account": row["personal_account"],
                       "refused": row["refused"], "clawed_back": row["clawed_back"], "reversed": row["reversed"],
                       "carried_net": Decimal("0.00"), "carried_months": None, "deposit_rate": rate,
                       "withheld_deposit": deposit, "payable": payable}
        extra = {k: v for k, v in row.items() if k in ("consultations", "consultation_fees", "prescriptions",
                                                       "drug_fees", "self_pay", "delivery_fees", "hospitals")}
        return m.StatementPublic(party_kind=kind.value, party_id=party_id, month=row["month"],
                                 figures={**extra, **figures})

    def settlement_issues(self, region: str | None, *, open_only: bool = True) -> list[m.SettlementIssuePublic]:
        """The agency's queue: settlements that failed (rule id, reason) and are not resolved yet. ``region`` None:
        every region (the regulator's view)."""
        rows = self._read(lambda c: hospital_settlement_issues(c, HospitalSettlement.name, pooling_region=region,
                                                               open_only=open_only)) or []
        return [m.SettlementIssuePublic(**{k: r[k] for k in m.SettlementIssuePublic.model_fields}) for r in rows]


def _last_day(month: str) -> date:
    year, mon = int(month[:4]), int(month[5:])
    return date(year + (mon == 12), 1 if mon == 12 else mon + 1, 1) - timedelta(days=1)


def _next(rows: Sequence[tuple[Any, ...]], limit: int) -> int | None:
    """The cursor of the next page (the last row's seq), or None when this page is the last."""
    return int(rows[-1][0]) if len(rows) == limit else None
