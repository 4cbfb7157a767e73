"""Router: sends each approved prescription to a designated retail pharmacy (trail step 4, 处方流转;
002 §三(六), 000 §五(三)3, 001 art. 25). ``rxtrail run router`` runs it until SIGTERM.

When it routes. On ``PrescriptionApproved``, and again on ``PrescriptionReturned`` (the pharmacy declined).
A prescription for which no pharmacy is eligible is left approved — nothing is recorded, a WARNING is logged
and ``RouterStats.unroutable`` counts it — and is tried again when a pharmacy is designated in its pooling
region (or one there is reinstated or lists drugs: the registry's pharmacy events keep the router's view).
The hospital can still route it (or dispense itself) through the API at any time.

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
await routing — lives in its own schema (``router``; ``services.adapters.router_state``) and is written in the
same transaction as its consumed offsets. Commands are issued inside that transaction, before it commits. A crash
in between redelivers the batch; the same keys come again and the application answers with the first outcomes,
recording nothing new. A redelivered or republished event is also dropped by the per-aggregate version check of
the shared loop, and a prescription can be routed only while it is approved, so no path routes it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import psycopg

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
from events.registries import (
    PharmacyAgreementReinstated,
    PharmacyAgreementSuspended,
    PharmacyDesignated,
    PharmacyDrugsDelisted,
    PharmacyDrugsListed,
)
from projections.base import Delivered, MissingEvents, RunnerStats
from services.adapters import router_state as state
from services.application.commands import RoutePrescription
from services.domain.routing import PharmacyInfo, candidates
from services.workers.base import CommandHandler, CommandWorker, in_log_order, run_worker

log = logging.getLogger(__name__)

NAME = state.SCHEMA
MAX_CANDIDATES = 3
PHARMACY_REFUSALS = frozenset({"PharmacyNotFound", "PartyNotEligible"})
"""Outcome errors that concern the pharmacy chosen, not the prescription: the next candidate is tried."""


# --- state ------------------------------------------------------------------------------------------------

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
        state.create_tables(conn, schema)

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        events = in_log_order(batch)
        rxs = state.load_prescriptions(conn, schema, {d.aggregate_id for d in events if _is_rx(d.event)})
        pharmacies = state.load_pharmacies(conn, schema,
                                           ids={d.aggregate_id for d in events if _is_pharmacy(d.event)})
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
            elif isinstance(e, PharmacyAgreementReinstated | PharmacyDrugsListed | PharmacyDrugsDelisted):
                # the registry's later facts about a pharmacy: it may take prescriptions again, or carry new drugs
                info = pharmacies.get(d.aggregate_id)
                if info is None:
                    continue
                if isinstance(e, PharmacyAgreementReinstated):
                    info = replace(info, agreement_active=True)
                elif isinstance(e, PharmacyDrugsListed):
                    info = replace(info, drug_codes=(info.drug_codes or frozenset()) | set(e.drug_codes))
                else:
                    info = replace(info, drug_codes=(info.drug_codes or frozenset()) - set(e.drug_codes))
                pharmacies[d.aggregate_id] = info
                touched_pharmacies.add(d.aggregate_id)
                designated.add(info.pooling_region)
            elif isinstance(e, PrescriptionIssued):
                rxs[d.aggregate_id] = state.RoutedPrescription(
                    d.aggregate_id, e.pooling_region, tuple(i.drug_code for i in e.items), e.preferred_pharmacy_id)
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
                    rx.status, rx.trigger_event_id, rx.attempts = state.AWAITING, d.event_id, 0
                    triggers.add(d.aggregate_id)
                elif isinstance(e, PrescriptionRouted):
                    rx.status = state.ROUTED
                    triggers.discard(d.aggregate_id)
                else:  # rejected, cancelled, expired
                    rx.status = state.CLOSED
                    triggers.discard(d.aggregate_id)

        if designated:
            rxs.update(state.load_unroutable(conn, schema, sorted(designated), exclude=set(rxs)))
            for rx in rxs.values():
                if rx.status == state.UNROUTABLE and rx.pooling_region in designated:
                    triggers.add(rx.prescription_id)
                    touched_rx.add(rx.prescription_id)

        if triggers:
            waiting = sorted(triggers, key=str)
            regions = {rxs[k].pooling_region for k in waiting}
            chosen = {p for k in waiting if (p := rxs[k].preferred_pharmacy_id)}
            known = state.load_pharmacies(conn, schema, regions=regions, pharmacy_ids=chosen)
            known.update(pharmacies)
            for k in waiting:
                self._route(rxs[k], known.values())

        state.save_pharmacies(conn, schema, {k: pharmacies[k] for k in touched_pharmacies})
        state.save_prescriptions(conn, schema, [rxs[k] for k in touched_rx])

    def _route(self, rx: state.RoutedPrescription, pharmacies: Iterable[PharmacyInfo]) -> None:
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
                rx.status = state.ROUTED
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
                rx.status = state.HELD
                self.routing.held += 1
                log.warning("router: prescription %s not routed: %s %s", rx.prescription_id, outcome.error,
                            outcome.reason)
                return
            log.info("router: pharmacy %s refused for prescription %s (%s); trying the next", candidate.pharmacy_id,
                     rx.prescription_id, outcome.reason)
        rx.status = state.UNROUTABLE
        self.routing.unroutable += 1
        log.warning("router: NO ELIGIBLE PHARMACY for prescription %s in pooling region %s (drugs %s; %d refused); "
                    "it stays approved and is tried again when a pharmacy is designated there",
                    rx.prescription_id, rx.pooling_region, ",".join(sorted(rx.drug_codes)), len(tries))


def _is_rx(event: object) -> bool:
    return isinstance(event, PrescriptionIssued | PrescriptionApproved | PrescriptionReturned | PrescriptionRouted
                      | PrescriptionRejected | PrescriptionCancelled | PrescriptionExpired)


def _is_pharmacy(event: object) -> bool:
    return isinstance(event, PharmacyDesignated | PharmacyAgreementSuspended | PharmacyAgreementReinstated
                      | PharmacyDrugsListed | PharmacyDrugsDelisted)


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
    missing: MissingEvents | None = field(default=None, compare=False)
    """Where version gaps are read (bootstrap: every store's when sharded); None = the store at database_url."""


async def run_router(config: RouterConfig, stop: asyncio.Event, app: CommandHandler, *,
                     idle_timeout_s: float | None = None, router: Router | None = None) -> Router:
    """Route until ``stop`` is set (or nothing arrived for ``idle_timeout_s``); returns the router and its stats."""
    router = router or Router(app)
    stats: RunnerStats = await run_worker(
        router, config.database_url, config.bootstrap, stop, topic=config.topic, dlq_topic=config.dlq_topic,
        group_id=config.group_id, schema=config.schema, partitions=config.partitions,
        max_records=config.max_records, idle_timeout_s=idle_timeout_s, missing=config.missing)
    log.info("router: stopped after %d events (%d duplicates); routed %d, unroutable %d, held %d",
             stats.applied, stats.duplicates, router.routing.routed, router.routing.unroutable, router.routing.held)
    return router
