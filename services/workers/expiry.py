"""Expiry: sends ``ExpirePrescription`` once a prescription's validity has elapsed (DOMAIN.md, validity;
``Prescription.valid_until`` = issue + ``RuleConfig.validity_days``). ``rxtrail run expiry`` runs it until SIGTERM.

Which prescriptions. The worker folds ``rx.events`` into one table (schema ``expiry``): every issued prescription
with its ``valid_until`` (moved by the physician's extension, R19), open while it can still expire — issued,
approved, routed, accepted or partially dispensed (``Prescription.expire``'s states). Rejected, cancelled, expired and
fully dispensed close it; a withdrawn dispense or returned packs open it again.

State: ``services.adapters.expiry_state``.

When. A sweep every ``interval_s`` (and once more after the consumer stops idle) takes the open prescriptions
whose ``valid_until`` lies more than ``grace`` before the injected clock's now, oldest first, and sends
``ExpirePrescription`` for each. Time, not an event, prompts the command, so it is keyed by what it acts on:
``"expiry:<prescription id>"`` (``services.workers.base.command_key``), and ``"expiry:<prescription id>:<n>"``
after n refusals (the write side's clock still saw it valid, or a withdrawn dispense reopened it). The write
side decides with its own clock and the aggregate's state; ``grace`` keeps a worker clock slightly ahead of the
write side's from asking too early.

Exactly once. A sweep issues its commands inside the transaction that then closes the rows; a crash in
between leaves the rows open, and the next sweep asks again under the same keys: the application answers
with the first outcome and records nothing new. A second worker (or a fresh schema reading the topic from the
start) asks under the same keys too, and an expired prescription refuses a second expiry anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from events import topics
from events.prescription import (
    DispenseWithdrawn,
    PacksReturned,
    PrescriptionCancelled,
    PrescriptionDispensed,
    PrescriptionExpired,
    PrescriptionIssued,
    PrescriptionRejected,
    PrescriptionValidityExtended,
)
from projections.base import Delivered, MissingEvents, ensure_schema
from services.adapters import expiry_state as state
from services.application.commands import ExpirePrescription
from services.application.outcomes import Outcome
from services.domain.clock import Clock, SystemClock
from services.workers.base import CommandHandler, CommandWorker, in_log_order, run_worker

log = logging.getLogger(__name__)

NAME = state.SCHEMA
NOT_YET = "InvalidCommand"
"""The write side's answer while it still sees the prescription valid (its clock behind the worker's)."""


class Expiry(CommandWorker):
    """Folds ``rx.events`` into the open prescriptions and their validity; ``sweep`` expires those past it.
    ``stats.recorded`` counts prescriptions expired, ``stats.replayed`` keys answered from the record."""

    name = NAME

    def __init__(self, app: CommandHandler, clock: Clock | None = None, *, grace: timedelta = timedelta(minutes=1),
                 sweep_limit: int = 500) -> None:
        super().__init__(app)
        self.clock: Clock = clock or SystemClock()
        self.grace = grace
        self.sweep_limit = sweep_limit
        self._turn = threading.Lock()
        """The fold and a sweep never write the table at once (each takes its rows in its own order)."""

    # --- state (the Projection hooks) --------------------------------------------------------------------
    def create_tables(self, conn: psycopg.Connection[Any], schema: str) -> None:
        state.create_tables(conn, schema)

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        with self._turn:
            self._fold(conn, schema, batch)

    def _fold(self, conn: psycopg.Connection[Any], schema: str, batch: Sequence[Delivered]) -> None:
        issued: dict[UUID, datetime] = {}
        opened: dict[UUID, bool] = {}
        for d in in_log_order(batch):
            e = d.event
            if isinstance(e, PrescriptionIssued):
                issued[d.aggregate_id] = e.valid_until
                opened[d.aggregate_id] = True
            elif isinstance(e, PrescriptionRejected | PrescriptionCancelled | PrescriptionExpired):
                opened[d.aggregate_id] = False
            elif isinstance(e, PrescriptionDispensed):
                opened[d.aggregate_id] = not e.complete
            elif isinstance(e, DispenseWithdrawn | PacksReturned):
                opened[d.aggregate_id] = True
            elif isinstance(e, PrescriptionValidityExtended):  # R19: the row exists; only its validity moves
                issued[d.aggregate_id] = e.valid_until
        state.record(conn, schema, issued, opened)

    # --- the sweep ---------------------------------------------------------------------------------------
    def due(self, conn: psycopg.Connection[Any], schema: str) -> list[state.Due]:
        """Open prescriptions whose validity ended more than ``grace`` ago, oldest first."""
        return state.due(conn, schema, self.clock.now() - self.grace, self.sweep_limit)

    def sweep(self, conn: psycopg.Connection[Any], schema: str) -> int:
        """Expire what is due, in the caller's transaction (commit after it returns); the number expired now."""
        expired = 0
        closed: list[UUID] = []
        retried: list[UUID] = []
        found = self.due(conn, schema)
        log.debug("expiry: %d due", len(found))
        for due in found:
            outcome = self.issue(self.command(due))
            if outcome.ok:
                expired += not outcome.replayed
                closed.append(due.prescription_id)
                log.info("expiry: prescription %s expired (valid until %s)%s", due.prescription_id,
                         due.valid_until.isoformat(), " (already recorded)" if outcome.replayed else "")
            else:
                self._refused(due, outcome, closed, retried)
        state.settle(conn, schema, retried=retried, closed=closed)
        return expired

    def command(self, due: state.Due) -> ExpirePrescription:
        qualifiers = (str(due.attempts),) if due.attempts else ()
        return ExpirePrescription(prescription_id=due.prescription_id,
                                  command_id=self.key(str(due.prescription_id), *qualifiers))

    def _refused(self, due: state.Due, outcome: Outcome, closed: list[UUID], retried: list[UUID]) -> None:
        """A refusal moves the next attempt to a new key; it closes the row unless the write side only found the
        prescription still valid (then the next sweep asks again)."""
        retried.append(due.prescription_id)
        if outcome.error == NOT_YET:
            log.warning("expiry: prescription %s (valid until %s) not expired yet by the write side: %s",
                        due.prescription_id, due.valid_until.isoformat(), outcome.reason)
            return
        closed.append(due.prescription_id)
        self.stats.skipped += 1
        log.info("expiry: prescription %s not expired: %s %s", due.prescription_id, outcome.error, outcome.reason)

    def sweep_database(self, database_url: str, schema: str) -> int:
        """One sweep in a transaction of its own (a connection per sweep), never while the fold writes."""
        with self._turn, psycopg.connect(database_url) as conn, conn.transaction():
            return self.sweep(conn, schema)


# --- running it -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiryConfig:
    database_url: str
    bootstrap: str
    topic: str = topics.EVENTS
    dlq_topic: str = topics.DLQ
    group_id: str = "rxtrail.expiry"
    schema: str = NAME
    partitions: int = 12
    max_records: int = 500
    interval_s: float = 60.0
    grace_s: float = 60.0
    sweep_limit: int = 500
    missing: MissingEvents | None = field(default=None, compare=False)
    """Where version gaps are read (bootstrap: every store's when sharded); None = the store at database_url."""


def prepare(database_url: str, expiry: Expiry, schema: str) -> None:
    """Create the worker's schema and tables before the consumer and the sweeps both use them."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        ensure_schema(conn, expiry, schema)


async def run_expiry(config: ExpiryConfig, stop: asyncio.Event, app: CommandHandler, *, clock: Clock | None = None,
                     idle_timeout_s: float | None = None, expiry: Expiry | None = None) -> Expiry:
    """Consume ``rx.events`` and sweep every ``interval_s`` until ``stop`` is set (or nothing arrived for
    ``idle_timeout_s``: then one last sweep over everything consumed); returns the worker and its stats."""
    expiry = expiry or Expiry(app, clock, grace=timedelta(seconds=config.grace_s), sweep_limit=config.sweep_limit)
    await asyncio.to_thread(prepare, config.database_url, expiry, config.schema)
    consuming = asyncio.Event()

    async def sweeping() -> None:
        while not consuming.is_set():
            await _sweep(expiry, config)
            with suppress(TimeoutError):
                await asyncio.wait_for(consuming.wait(), config.interval_s)

    sweeper = asyncio.create_task(sweeping())
    try:
        stats = await run_worker(expiry, config.database_url, config.bootstrap, stop, topic=config.topic,
                                 dlq_topic=config.dlq_topic, group_id=config.group_id, schema=config.schema,
                                 partitions=config.partitions, max_records=config.max_records,
                                 idle_timeout_s=idle_timeout_s, missing=config.missing)
    finally:
        consuming.set()
        await sweeper
    if not stop.is_set():
        await _sweep(expiry, config)
    log.info("expiry: stopped after %d events; expired %d, refused %d, replayed %d", stats.applied,
             expiry.stats.recorded, expiry.stats.rejected, expiry.stats.replayed)
    return expiry


async def _sweep(expiry: Expiry, config: ExpiryConfig) -> None:
    """One sweep; a failure (the database went away) is logged and the next sweep tries again."""
    try:
        await asyncio.to_thread(expiry.sweep_database, config.database_url, config.schema)
    except Exception:
        expiry.stats.failures += 1
        log.exception("expiry: sweep failed; trying again in %.0f s", config.interval_s)
