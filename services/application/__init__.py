"""The write side: eventsourcing on PostgreSQL, command handlers, idempotency, batches, reading trails.

Composition root: ``build_application(database_url, pseudonym_secret=...)`` → ``RxTrail``; then
``app.handle(command) -> Outcome`` and ``app.apply_batch(commands) -> list[Outcome]``.
"""

from __future__ import annotations

from services.adapters.store import (
    DEFAULT_SNAPSHOT_INTERVAL,
    EVENTS_TABLE,
    OUTCOMES_TABLE,
    SNAPSHOTS_TABLE,
    RxTrailStore,
    open_store,
)
from services.application.outcomes import EventRef, Outcome
from services.application.privacy import PatientVault, PostgresPatientKeyStore
from services.application.service import RxTrail
from services.domain.clock import Clock
from services.domain.policy import DEFAULT_RULES, RuleConfig


def build_application(
    database_url: str,
    *,
    pseudonym_secret: bytes,
    clock: Clock | None = None,
    rules: RuleConfig = DEFAULT_RULES,
    snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
    pool_size: int = 5,
    max_overflow: int = 10,
    max_attempts: int = 8,
) -> RxTrail:
    """One per process: the event store, the patient vault and the handlers, wired from a database URL."""
    store = open_store(database_url, snapshot_interval=snapshot_interval, pool_size=pool_size,
                       max_overflow=max_overflow)
    vault = PatientVault(pseudonym_secret, PostgresPatientKeyStore(database_url))
    return RxTrail(store, vault, clock=clock, rules=rules, max_attempts=max_attempts)


__all__ = [
    "EVENTS_TABLE",
    "OUTCOMES_TABLE",
    "SNAPSHOTS_TABLE",
    "EventRef",
    "Outcome",
    "RxTrail",
    "RxTrailStore",
    "build_application",
    "open_store",
]
