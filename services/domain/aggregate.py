"""Base aggregate: pending events, hash-chained ``trigger``, snapshots, projector functions for eventsourcing.

Loading with eventsourcing 9.5.6::

    app.repository.get(aggregate_id, projector_func=project_prescription)

Snapshots: set ``snapshotting_intervals = {Prescription: 50}`` and
``snapshotting_projectors = {Prescription: project_prescription}`` on the Application (it then stores an
``events.Snapshot`` every 50 versions via ``Aggregate.Snapshot.take``; the projector starts from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, ClassVar, Self, TypeVar
from uuid import UUID, uuid4, uuid5

from pydantic import BaseModel, ConfigDict, PrivateAttr

from events.base import GENESIS_HASH, DomainEvent, event_hash
from events.base import Snapshot as SnapshotEvent
from services.domain.clock import Clock
from services.domain.errors import IntegrityError

E = TypeVar("E", bound=DomainEvent)
A = TypeVar("A", bound="Aggregate")

ID_NAMESPACE = UUID("6f1c3f0e-52a4-4c57-9a55-3e0d2b8a7c11")


@lru_cache(maxsize=1 << 16)  # a pure function of its strings; a batch derives the same registry ids many times
def natural_id(kind: str, key: str) -> UUID:
    """A stable aggregate id for an aggregate known by a business key (trace code, physician code...)."""
    return uuid5(ID_NAMESPACE, f"{kind}:{key}")


def new_id() -> UUID:
    return uuid4()


class Aggregate(BaseModel):
    """State is a mutable pydantic model so snapshots are ``model_dump(mode="json")`` and back."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    Snapshot: ClassVar[type[SnapshotEvent]] = SnapshotEvent
    creation_event: ClassVar[type[DomainEvent]]

    id: UUID
    version: int = 0
    head_hash: str = GENESIS_HASH

    _pending: list[DomainEvent] = PrivateAttr(default_factory=list)

    # --- eventsourcing protocol -----------------------------------------------------------------
    def collect_events(self) -> list[DomainEvent]:
        pending, self._pending = self._pending, []
        return pending

    @property
    def pending_events(self) -> tuple[DomainEvent, ...]:
        return tuple(self._pending)

    def snapshot_state(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"id", "version", "head_hash"})

    @classmethod
    def from_snapshot(cls, snapshot: SnapshotEvent) -> Self:
        if snapshot.aggregate_type != cls.__name__:
            raise IntegrityError(f"snapshot of {snapshot.aggregate_type} given to {cls.__name__}")
        return cls.model_validate(
            {
                **snapshot.state,
                "id": snapshot.originator_id,
                "version": snapshot.originator_version,
                "head_hash": snapshot.head_hash,
            }
        )

    # --- recording ------------------------------------------------------------------------------
    @staticmethod
    def _seal(event_cls: type[E], fields: dict[str, Any]) -> E:
        draft = event_cls(**fields)
        return draft.model_copy(update={"hash": event_hash(draft)})

    @classmethod
    def _create(cls, event_cls: type[E], clock: Clock, aggregate_id: UUID, **fields: Any) -> Self:
        event = cls._seal(
            event_cls,
            {
                "originator_id": aggregate_id,
                "originator_version": 1,
                "timestamp": clock.now(),
                "prev_hash": GENESIS_HASH,
                **fields,
            },
        )
        aggregate = cls._start(event)
        aggregate._pending.append(event)
        return aggregate

    def _trigger(self, event_cls: type[E], clock: Clock, **fields: Any) -> E:
        event = self._seal(
            event_cls,
            {
                "originator_id": self.id,
                "originator_version": self.version + 1,
                "timestamp": clock.now(),
                "prev_hash": self.head_hash,
                **fields,
            },
        )
        self._follow(event)
        self._pending.append(event)
        return event

    # --- replay ---------------------------------------------------------------------------------
    @classmethod
    def _start(cls, event: DomainEvent) -> Self:
        if not isinstance(event, cls.creation_event):
            raise IntegrityError(f"{cls.__name__} stream must start with {cls.creation_event.__name__}")
        if event.originator_version != 1 or event.prev_hash != GENESIS_HASH:
            raise IntegrityError(f"{cls.__name__} {event.originator_id}: bad first event")
        aggregate = cls._created(event)
        aggregate.version = 1
        aggregate.head_hash = event.hash
        return aggregate

    def _follow(self, event: DomainEvent) -> None:
        if event.originator_id != self.id:
            raise IntegrityError(f"event of {event.originator_id} applied to {self.id}")
        if event.originator_version != self.version + 1:
            raise IntegrityError(f"{self.id}: version {event.originator_version} after {self.version}")
        if event.prev_hash != self.head_hash:
            raise IntegrityError(f"{self.id} v{event.originator_version}: prev_hash does not link")
        self._apply(event)
        self.version = event.originator_version
        self.head_hash = event.hash

    @classmethod
    def _created(cls, event: Any) -> Self:
        """Subclass hook: the aggregate its creation event describes."""
        raise NotImplementedError(f"{cls.__name__} must define _created")

    def _apply(self, event: Any) -> None:
        """Subclass hook: the state change one later event makes."""
        raise NotImplementedError(f"{type(self).__name__} must define _apply")


def make_projector(
    cls: type[A],
) -> Callable[[A | None, Iterable[DomainEvent | SnapshotEvent]], A | None]:
    """An eventsourcing ``projector_func``: ``(aggregate | None, events) -> aggregate | None``."""

    def project(aggregate: A | None, events: Iterable[DomainEvent | SnapshotEvent]) -> A | None:
        for event in events:
            if isinstance(event, SnapshotEvent):
                aggregate = cls.from_snapshot(event)
            elif aggregate is None:
                aggregate = cls._start(event)
            else:
                aggregate._follow(event)
        return aggregate

    project.__name__ = f"project_{cls.__name__.lower()}"
    return project


def project_all(cls: type[A], events: Iterable[DomainEvent | SnapshotEvent]) -> A:
    """Convenience for tests and tools: build an aggregate from its complete stream."""
    aggregate = make_projector(cls)(None, events)
    if aggregate is None:
        raise IntegrityError(f"no events for {cls.__name__}")
    return aggregate
