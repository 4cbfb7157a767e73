"""The eventsourcing Application that holds every rxtrail stream in one PostgreSQL event store.

Tables (schema ``public`` unless POSTGRES_SCHEMA is set): ``rxtrail_events`` (the record of truth and the
notification log the relay reads), ``rxtrail_snapshots``, ``rxtrail_command_outcomes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import Mapper, Transcoder
from eventsourcing.utils import get_topic

from events.base import DomainEvent, Snapshot
from services.adapters.aggregate_cache import AggregateCache
from services.adapters.persistence import OutcomeRecorder, PydanticJSONTranscoder, PydanticMapper
from services.application.ports import Projector
from services.domain.aggregate import Aggregate
from services.domain.prescription import Prescription, project_prescription
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    Pharmacist,
    Pharmacy,
    Physician,
)
from services.infra.settings import eventsourcing_env

APP_NAME = "rxtrail"
EVENTS_TABLE = f"{APP_NAME}_events"
SNAPSHOTS_TABLE = f"{APP_NAME}_snapshots"
OUTCOMES_TABLE = f"{APP_NAME}_command_outcomes"
DEFAULT_SNAPSHOT_INTERVAL = 50

A = TypeVar("A")

SHARED = (Institution, Physician, Pharmacist, Pharmacy, DeliveryEnterprise, DrugListing, ChronicDiseaseList,
          EmergencyDeclarations)
"""Registry aggregates many commands read: held whenever loaded."""
ONE_COMMAND = 64
"""A load of at most this many aggregates (one command's) holds them all; a batch's load holds only ``SHARED``."""


class RxTrailStore(Application[Any]):
    """eventsourcing's Application on PostgreSQL; implements ``services.application.ports.EventStore``."""

    name = APP_NAME
    snapshot_class = Snapshot
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Prescription: DEFAULT_SNAPSHOT_INTERVAL}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {Prescription: project_prescription}

    def __init__(self, env: dict[str, str] | None = None, *, snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL):
        if snapshot_interval < 1:
            raise ValueError("snapshot_interval must be at least 1")
        self.snapshotting_intervals = {Prescription: snapshot_interval}  # type: ignore[misc]  # per instance
        self.cache = AggregateCache()
        super().__init__(env=env)

    def construct_transcoder(self) -> Transcoder:
        return PydanticJSONTranscoder()

    def construct_mapper(self) -> Mapper[Any]:
        return PydanticMapper(transcoder=self.construct_transcoder())

    @property
    def outcome_recorder(self) -> OutcomeRecorder:
        recorder = self.recorder
        if not isinstance(recorder, OutcomeRecorder):
            raise TypeError("RxTrailStore must be built by store_env() (APPLICATION_RECORDER_TOPIC)")
        return recorder

    # --- services.application.ports.EventStore ----------------------------------------------------------
    def load(self, cls: type[A], aggregate_id: UUID, projector: Projector) -> A | None:
        if cls in self.snapshotting_intervals:
            try:
                found: A = self.repository.get(aggregate_id, projector_func=projector)
            except AggregateNotFoundError:
                return None
            return found
        stored = self.recorder.select_events(aggregate_id)
        loaded: A | None = projector(None, map(self.mapper.to_domain_event, stored))
        return loaded

    def load_many(self, aggregate_ids: Sequence[UUID], projector: Projector) -> dict[UUID, Any]:
        """One round trip; an aggregate this process holds (``aggregate_cache``) is read from its held version on:
        the store returns only the events after it, folded onto a copy."""
        held = self.cache.held(aggregate_ids)
        small = len(aggregate_ids) <= ONE_COMMAND  # a batch's many patients and visits are not copied to be held
        found = self.outcome_recorder.select_events_many(aggregate_ids, {i: a.version for i, a in held.items()})
        loaded: dict[UUID, Any] = {}
        fresh = []
        for i in aggregate_ids:
            base, events = held.get(i), found.get(i)
            if base is not None and not events:
                loaded[i] = self.cache.copy(base)
                continue
            start = self.cache.copy(base) if base is not None else None
            loaded[i] = state = projector(start, map(self.mapper.to_domain_event, events or []))
            if isinstance(state, Aggregate) and (small or base is not None or isinstance(state, SHARED)):
                fresh.append(state)
        self.cache.keep(fresh)
        return loaded

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """eventsourcing's save; the saved aggregates' committed states are then held (``aggregate_cache``) as they
        are: the unit of work that saved them is done with them (``RxTrail`` drops a unit once it is saved)."""
        recordings = super().save(*objs, **kwargs)
        self.cache.keep((o for o in objs if isinstance(o, Aggregate)), copy=False)
        return recordings

    def events_of(self, aggregate_id: UUID, *, lte: int | None = None) -> list[DomainEvent]:
        return cast(list[DomainEvent], list(self.events.get(aggregate_id, lte=lte)))

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, str]:
        return self.outcome_recorder.select_outcomes(command_ids)


POOL_WAIT_S = 2.0
"""How long one attempt waits for a pooled connection (the store's psycopg pool ``timeout``; eventsourcing's own
setting, POSTGRES_CONNECT_TIMEOUT, takes whole seconds, default 5). eventsourcing retries every read and write
10 times, 0.2 s apart. Workers, the CLI and batch callers queue: a burst of threads larger than the open connections
waits while the pool opens more (under load that takes longer than a tenth of a second)."""

FAIL_FAST_POOL_WAIT_S = 0.1
"""The API's wait: about 10 × (0.1 + 0.2) ≈ 3 s before an outage reaches the caller as 503 with Retry-After
(with eventsourcing's default a request hung ~50 s); after the first, the API's gate answers 503 at once."""


def store_env(database_url: str, *, pool_size: int = 5, max_overflow: int = 10, **extra: str) -> dict[str, str]:
    """eventsourcing's environment for our store, from our database URL."""
    return eventsourcing_env(
        database_url,
        APPLICATION_RECORDER_TOPIC=get_topic(OutcomeRecorder),
        POSTGRES_POOL_SIZE=str(pool_size),
        POSTGRES_MAX_OVERFLOW=str(max_overflow),
        **extra,
    )


def open_store(
    database_url: str, *, snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL, pool_wait_s: float = POOL_WAIT_S,
    **env: Any
) -> RxTrailStore:
    store = RxTrailStore(env=store_env(database_url, **env), snapshot_interval=snapshot_interval)
    pool = getattr(getattr(store.recorder, "datastore", None), "pool", None)  # one pool for events and snapshots
    if pool is not None:
        pool.timeout = pool_wait_s
    return store
