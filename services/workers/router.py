"""Router: sends each approved prescription to a designated retail pharmacy (trail step 4, 处方流转;
002 §三(六), 000 §五(三)3, 001 art. 25). ``rxtrail run router`` runs it until SIGTERM.

When it routes. On ``PrescriptionApproved``, and again on ``PrescriptionReturned`` (the pharmacy declined).
A prescription for which no pharmacy is eligible is left approved — nothing is recorded, a WARNING is logged
and ``RouterStats.unroutable`` counts it — and is tried again when a pharmacy is designated in its pooling
region. The hospital can still route it (or dispense itself) through the API at any time.

Where it routes: ``services.domain.routing`` (the pure choice: the patient's choice, then the routing rule).

Each choice is sent as ``RoutePrescription`` keyed by the triggering event (the approval or the return):
the first under ``"router:<event id>"``, later ones under ``"router:<event id>:<n>"``, n counting the commands
already sent for that event. A later one is sent when the write side refuses a pharmacy (unknown, suspended,
other region: the router's view may lag the record; up to ``MAX_CANDIDATES`` per pass) or, for a prescription
no pharmacy could take, when a pharmacy is designated in its region. Keying retries by the approval, not by
whatever prompted the retry, makes a replay converge on the same keys however its batches fall (an approval
met before or after the designations of its region asks under the same key). Any other refusal (the
prescription was cancelled or has expired meanwhile) ends the attempt, logged.

Idempotency and ordering (see ``services.workers.base``): the router's state — pharmacies with region, agreement
state and drug list; prescriptions with region, drugs, the patient's choice, who returned them and whether they
await routing — lives in its own schema (``router``) and is written in the same transaction as its consumed
offsets. Commands are issued inside that transaction, before it commits. A crash in between redelivers the
batch; the same keys come again and the application answers with the first outcomes, recording nothing new.
A redelivered or republished event is also dropped by the per-aggregate version check of the shared loop,
and a prescription can be routed only while it is approved, so no path routes it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from events import topics
from events.prescription import (
    PrescriptionApproved,
    PrescriptionCancelled,
    PrescriptionExpired,
    PrescriptionIssued,
    PrescriptionRejected,
    PrescriptionReturned,
    PrescriptionRouted,
)
from events.registries import PharmacyAgreementSuspended, PharmacyDesignated
from projections.base import Delivered, RunnerStats
from services.application.commands import RoutePrescription
from services.domain.routing import PharmacyInfo, RoutingRequest, candidates
from services.workers.base import CommandHandler, CommandWorker, in_log_order, run_worker

log = logging.getLogger(__name__)

NAME = "router"
MAX_CANDIDATES = 3
PHARMACY_REFUSALS = frozenset({"PharmacyNotFound", "PartyNotEligible"})
"""Outcome errors that concern the pharmacy chosen, not the prescription: the next candidate is tried."""


# --- state ------------------------------------------------------------------------------------------------

ISSUED = "issued"
AWAITING = "awaiting"
"""Approved (or returned) in this batch; a route is about to be asked for."""
UNROUTABLE = "unroutable"
"""No pharmacy was eligible; tried again when one is designated in the region."""
ROUTED = "routed"
HELD = "held"
"""The write side refused for a reason that is not the pharmacy's (cancelled, validity elapsed): left alone."""
CLOSED = "closed"
"""Rejected, cancelled or expired: the row is deleted."""


@dataclass
class _Rx:
    prescription_id: UUID
    pooling_region: str
    drug_codes: tuple[str, ...]
    preferred_pharmacy_id: str | None
    returned_by: tuple[str, ...] = ()
    status: str = ISSUED
    trigger_event_id: str | None = None
    """The approval or return being acted on: every command for it is keyed by this event."""
    attempts: int = 0
    """Commands already sent for the trigger (the next key's suffix)."""

    def request(self) -> RoutingRequest:
        return RoutingRequest(self.prescription_id, self.pooling_region, frozenset(self.drug_codes),
                              self.preferred_pharmacy_id, frozenset(self.returned_by))


@dataclass
class RouterStats:
    routed: int = 0
    unroutable: int = 0
    held: int = 0
    by_basis: dict[str, int] = field(default_factory=dict)


class Router(CommandWorker):
    """The router as a projection whose ``apply`` also issues ``RoutePrescription`` (see the module docstring)."""

    name = NAME

    def __init__(self, app: CommandHandler) -> None:
        super().__init__(app)
        self.routing = RouterStats()

    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.pharmacies (aggregate_id uuid PRIMARY KEY, pharmacy_id text NOT NULL, "
            "pooling_region text NOT NULL, agreement_active boolean NOT NULL, drug_codes text[])").format(s))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS pharmacies_by_region ON {}.pharmacies (pooling_region)").format(s))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS pharmacies_by_id ON {}.pharmacies (pharmacy_id)").format(s))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.prescriptions (prescription_id uuid PRIMARY KEY, "
            "pooling_region text NOT NULL, drug_codes text[] NOT NULL, preferred_pharmacy_id text, "
            "returned_by text[] NOT NULL DEFAULT '{{}}', status text NOT NULL, trigger_event_id text, "
            "attempts int NOT NULL DEFAULT 0)").format(s))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS prescriptions_unroutable ON {}.prescriptions (pooling_region) "
            "WHERE status = 'unroutable'").format(s))

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        s = sql.Identifier(schema)
        events = in_log_order(batch)
        rxs = _load_prescriptions(conn, s, {d.aggregate_id for d in events if _is_rx(d.event)})
        pharmacies = _load_pharmacies(conn, s, ids={d.aggregate_id for d in events if _is_pharmacy(d.event)})
        touched_rx: set[UUID] = set()
        touched_pharmacies: set[UUID] = set()
        triggers: set[UUID] = set()
        designated: set[str] = set()  # regions with a pharmacy designated in this batch

        for d in events:
            e = d.event
            if isinstance(e, PharmacyDesignated):
                codes = None if e.drug_codes is None else frozenset(e.drug_codes)
                pharmacies[d.aggregate_id] = PharmacyInfo(e.pharmacy_id, e.pooling_region, True, codes)
                touched_pharmacies.add(d.aggregate_id)
                designated.add(e.pooling_region)
            elif isinstance(e, PharmacyAgreementSuspended):
                if d.aggregate_id in pharmacies:
                    pharmacies[d.aggregate_id] = replace(pharmacies[d.aggregate_id], agreement_active=False)
                    touched_pharmacies.add(d.aggregate_id)
            elif isinstance(e, PrescriptionIssued):
                rxs[d.aggregate_id] = _Rx(d.aggregate_id, e.pooling_region, tuple(i.drug_code for i in e.items),
                                          e.preferred_pharmacy_id)
                touched_rx.add(d.aggregate_id)
            elif _is_rx(e):
                rx = rxs.get(d.aggregate_id)
                if rx is None:
                    log.warning("router: %s for prescription %s whose issue it never saw; ignored",
                                d.event_type, d.aggregate_id)
                    continue
                touched_rx.add(d.aggregate_id)
                if isinstance(e, PrescriptionApproved | PrescriptionReturned):
                    if isinstance(e, PrescriptionReturned):
                        rx.returned_by = (*rx.returned_by, e.dispenser_id)
                    rx.status, rx.trigger_event_id, rx.attempts = AWAITING, d.event_id, 0
                    triggers.add(d.aggregate_id)
                elif isinstance(e, PrescriptionRouted):
                    rx.status = ROUTED
                    triggers.discard(d.aggregate_id)
                else:  # rejected, cancelled, expired
                    rx.status = CLOSED
                    triggers.discard(d.aggregate_id)

        if designated:
            rxs.update(_load_unroutable(conn, s, sorted(designated), exclude=set(rxs)))
            for rx in rxs.values():
                if rx.status == UNROUTABLE and rx.pooling_region in designated:
                    triggers.add(rx.prescription_id)
                    touched_rx.add(rx.prescription_id)

        if triggers:
            waiting = sorted(triggers, key=str)
            regions = {rxs[k].pooling_region for k in waiting}
            chosen = {p for k in waiting if (p := rxs[k].preferred_pharmacy_id)}
            known = _load_pharmacies(conn, s, regions=regions, pharmacy_ids=chosen)
            known.update(pharmacies)
            for k in waiting:
                self._route(rxs[k], known.values())

        _save_pharmacies(conn, s, {k: pharmacies[k] for k in touched_pharmacies})
        _save_prescriptions(conn, s, [rxs[k] for k in touched_rx])

    def _route(self, rx: _Rx, pharmacies: Iterable[PharmacyInfo]) -> None:
        if rx.trigger_event_id is None:
            raise ValueError(f"router: prescription {rx.prescription_id} has nothing to act on")
        tries = candidates(rx.request(), pharmacies)[:MAX_CANDIDATES]
        for candidate in tries:
            qualifiers = (str(rx.attempts),) if rx.attempts else ()
            rx.attempts += 1
            outcome = self.issue(RoutePrescription(prescription_id=rx.prescription_id,
                                                   pharmacy_id=candidate.pharmacy_id, basis=candidate.basis,
                                                   command_id=self.key(rx.trigger_event_id, *qualifiers)))
            if outcome.ok:
                rx.status = ROUTED
                self.routing.routed += 1
                if outcome.replayed:
                    log.info("router: prescription %s was already routed under key %s", rx.prescription_id,
                             outcome.command_id)
                    return
                self.routing.by_basis[candidate.basis.value] = self.routing.by_basis.get(candidate.basis.value, 0) + 1
                log.info("router: prescription %s → pharmacy %s (%s)", rx.prescription_id, candidate.pharmacy_id,
                         candidate.basis.value)
                return
            if outcome.error not in PHARMACY_REFUSALS:
                rx.status = HELD
                self.routing.held += 1
                log.warning("router: prescription %s not routed: %s %s", rx.prescription_id, outcome.error,
                            outcome.reason)
                return
            log.info("router: pharmacy %s refused for prescription %s (%s); trying the next", candidate.pharmacy_id,
                     rx.prescription_id, outcome.reason)
        rx.status = UNROUTABLE
        self.routing.unroutable += 1
        log.warning("router: NO ELIGIBLE PHARMACY for prescription %s in pooling region %s (drugs %s; %d refused); "
                    "it stays approved and is tried again when a pharmacy is designated there",
                    rx.prescription_id, rx.pooling_region, ",".join(sorted(rx.drug_codes)), len(tries))


def _is_rx(event: object) -> bool:
    return isinstance(event, PrescriptionIssued | PrescriptionApproved | PrescriptionReturned | PrescriptionRouted
                      | PrescriptionRejected | PrescriptionCancelled | PrescriptionExpired)


def _is_pharmacy(event: object) -> bool:
    return isinstance(event, PharmacyDesignated | PharmacyAgreementSuspended)


_RX_COLUMNS = ("prescription_id, pooling_region, drug_codes, preferred_pharmacy_id, returned_by, status, "
               "trigger_event_id, attempts")
_PHARMACY_COLUMNS = "aggregate_id, pharmacy_id, pooling_region, agreement_active, drug_codes"


def _rx_row(r: Sequence[Any]) -> _Rx:
    return _Rx(r[0], r[1], tuple(r[2]), r[3], tuple(r[4]), r[5], r[6], r[7])


def _load_prescriptions(conn: psycopg.Connection[Any], s: sql.Identifier, ids: set[UUID]) -> dict[UUID, _Rx]:
    if not ids:
        return {}
    rows = conn.execute(sql.SQL("SELECT " + _RX_COLUMNS + " FROM {}.prescriptions WHERE prescription_id = ANY(%s)")
                        .format(s), (list(ids),)).fetchall()
    return {r[0]: _rx_row(r) for r in rows}


def _load_unroutable(conn: psycopg.Connection[Any], s: sql.Identifier, regions: list[str], exclude: set[UUID]
                     ) -> dict[UUID, _Rx]:
    rows = conn.execute(sql.SQL("SELECT " + _RX_COLUMNS + " FROM {}.prescriptions WHERE status = 'unroutable' "
                                "AND pooling_region = ANY(%s) ORDER BY prescription_id").format(s),
                        (regions,)).fetchall()
    return {r[0]: _rx_row(r) for r in rows if r[0] not in exclude}


def _load_pharmacies(conn: psycopg.Connection[Any], s: sql.Identifier, *, ids: set[UUID] | None = None,
                     regions: set[str] | None = None, pharmacy_ids: set[str] | None = None
                     ) -> dict[UUID, PharmacyInfo]:
    if not (ids or regions or pharmacy_ids):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT " + _PHARMACY_COLUMNS + " FROM {}.pharmacies WHERE aggregate_id = ANY(%s) "
                "OR pooling_region = ANY(%s) OR pharmacy_id = ANY(%s)").format(s),
        (list(ids or ()), list(regions or ()), list(pharmacy_ids or ())),
    ).fetchall()
    return {r[0]: PharmacyInfo(r[1], r[2], r[3], None if r[4] is None else frozenset(r[4])) for r in rows}


def _save_pharmacies(conn: psycopg.Connection[Any], s: sql.Identifier, rows: Mapping[UUID, PharmacyInfo]) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {}.pharmacies (" + _PHARMACY_COLUMNS + ") VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (aggregate_id) DO UPDATE SET pharmacy_id = EXCLUDED.pharmacy_id, "
                    "pooling_region = EXCLUDED.pooling_region, agreement_active = EXCLUDED.agreement_active, "
                    "drug_codes = EXCLUDED.drug_codes").format(s),
            [(k, p.pharmacy_id, p.pooling_region, p.agreement_active,
              None if p.drug_codes is None else sorted(p.drug_codes)) for k, p in rows.items()],
        )


def _save_prescriptions(conn: psycopg.Connection[Any], s: sql.Identifier, rows: Sequence[_Rx]) -> None:
    closed = [rx.prescription_id for rx in rows if rx.status == CLOSED]
    kept = [rx for rx in rows if rx.status != CLOSED]
    if closed:
        conn.execute(sql.SQL("DELETE FROM {}.prescriptions WHERE prescription_id = ANY(%s)").format(s), (closed,))
    if kept:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {}.prescriptions (" + _RX_COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (prescription_id) DO UPDATE SET returned_by = EXCLUDED.returned_by, "
                        "status = EXCLUDED.status, trigger_event_id = EXCLUDED.trigger_event_id, "
                        "attempts = EXCLUDED.attempts").format(s),
                [(rx.prescription_id, rx.pooling_region, list(rx.drug_codes), rx.preferred_pharmacy_id,
                  list(rx.returned_by), rx.status, rx.trigger_event_id, rx.attempts) for rx in kept],
            )


# --- composition root -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterConfig:
    database_url: str
    bootstrap: str
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DLQ
    group_id: str = "rxtrail.router"
    schema: str = NAME
    partitions: int = 12
    max_records: int = 500


async def run_router(config: RouterConfig, stop: asyncio.Event, app: CommandHandler, *,
                     idle_timeout_s: float | None = None, router: Router | None = None) -> Router:
    """Route until ``stop`` is set (or nothing arrived for ``idle_timeout_s``); returns the router and its stats."""
    router = router or Router(app)
    stats: RunnerStats = await run_worker(
        router, config.database_url, config.bootstrap, stop, topic=config.topic, dlq_topic=config.dlq_topic,
        group_id=config.group_id, schema=config.schema, partitions=config.partitions,
        max_records=config.max_records, idle_timeout_s=idle_timeout_s)
    log.info("router: stopped after %d events (%d duplicates); routed %d, unroutable %d, held %d",
             stats.applied, stats.duplicates, router.routing.routed, router.routing.unroutable, router.routing.held)
    return router
