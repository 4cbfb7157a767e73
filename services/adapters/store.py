"""The eventsourcing Application that holds every rxtrail stream in one PostgreSQL event store.

Tables (schema ``public`` unless POSTGRES_SCHEMA is set): ``rxtrail_events`` (the record of truth and the
notification log the relay reads), ``rxtrail_snapshots``, ``rxtrail_command_outcomes``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, Transcoder
from eventsourcing.utils import get_topic

from events.base import Snapshot
from services.adapters.persistence import OutcomeRecorder, PydanticJSONTranscoder, PydanticMapper
from services.domain.prescription import Prescription, project_prescription
from services.infra.settings import eventsourcing_env

APP_NAME = "rxtrail"
EVENTS_TABLE = f"{APP_NAME}_events"
SNAPSHOTS_TABLE = f"{APP_NAME}_snapshots"
OUTCOMES_TABLE = f"{APP_NAME}_command_outcomes"
DEFAULT_SNAPSHOT_INTERVAL = 50


class RxTrailStore(Application[Any]):
    name = APP_NAME
    snapshot_class = Snapshot
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Prescription: DEFAULT_SNAPSHOT_INTERVAL}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {Prescription: project_prescription}

    def __init__(self, env: dict[str, str] | None = None, *, snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL):
        if snapshot_interval < 1:
            raise ValueError("snapshot_interval must be at least 1")
        self.snapshotting_intervals = {Prescription: snapshot_interval}
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
    database_url: str, *, snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL, **env: Any
) -> RxTrailStore:
    return RxTrailStore(env=store_env(database_url, **env), snapshot_interval=snapshot_interval)
