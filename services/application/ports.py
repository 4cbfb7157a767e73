"""What the application needs from outside, as protocols; ``services.adapters`` implements each one and
``services.bootstrap`` plugs the implementations in. Nothing here opens a connection.

- ``EventStore``: aggregates' events, saved with the outcomes of the commands that caused them
  (``services.adapters.store.RxTrailStore``, eventsourcing on PostgreSQL).
- ``PatientKeyStore``: per-patient data keys for sealing personal fields
  (``services.adapters.patient_keys.PostgresPatientKeyStore``; ``privacy.InMemoryPatientKeyStore`` for tools).
- ``SettlementFigures`` and ``PartyDirectory``: what closing a month reads
  (``services.adapters.statement_figures``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

from events.base import DomainEvent
from services.domain.aggregate import Aggregate

if TYPE_CHECKING:
    from events.statement import PartyKind
    from services.application.statements import PartyMonth

A = TypeVar("A", bound=Aggregate)

Projector = Callable[[Any, Iterable[Any]], Any]
"""``projector(None, events) -> aggregate | None``: an aggregate folded from its events."""


@dataclass(frozen=True)
class OutcomeRow:
    """A command's recorded outcome, stored in the same transaction as the events it caused."""

    command_id: str
    command_type: str
    status: str
    outcome: str  # JSON text of services.application.outcomes.Outcome


class EventStore(Protocol):
    """Aggregates' event streams, written with optimistic concurrency.

    ``save`` raises ``eventsourcing.persistence.IntegrityError`` when another writer took a version (or a
    command id) first; ``command_outcomes=[OutcomeRow...]`` stores outcomes in the events' transaction."""

    def load(self, cls: type[A], aggregate_id: UUID, projector: Projector) -> A | None:
        """The aggregate folded from its stream (from a snapshot where ``cls`` is snapshotted), or None."""
        ...

    def load_many(self, aggregate_ids: Sequence[UUID], projector: Projector) -> dict[UUID, Any]:
        """Several aggregates in one round trip (full streams), None for those without events."""
        ...

    def events_of(self, aggregate_id: UUID, *, lte: int | None = None) -> list[DomainEvent]:
        """One aggregate's events in version order (up to version ``lte``)."""
        ...

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Store the pending events of ``objs`` atomically (keyword ``command_outcomes``: see above)."""
        ...

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, str]:
        """Outcome JSON by command id, for the ids that have one."""
        ...

    def close(self) -> None: ...


class PatientKeyStore(Protocol):
    """Per-patient data keys. ``key_for_sealing`` creates one on first use; ``forget`` shreds them all.
    Nothing may be cached across processes: forgetting must take effect everywhere at once."""

    def key_for_sealing(self, patient_ref: str) -> tuple[str, bytes]:
        """(key_id, 32-byte key) of the patient's current key, created if there is none."""
        ...

    def key(self, patient_ref: str, key_id: str) -> bytes | None:
        """The key, or None when it was shredded (or never existed)."""
        ...

    def forget(self, patient_ref: str) -> int:
        """Delete every key of the patient; returns how many were deleted."""
        ...

    def close(self) -> None:
        """Release connections, if any."""
        ...


class SettlementFigures(Protocol):
    """Per party and month, what was settled (the settlement projections)."""

    source: str

    def month(self, month: str, party_id: str | None = None) -> list[PartyMonth]: ...

    def before(self, month: str, party_id: str | None = None) -> list[PartyMonth]:
        """Every party's figures of the months before ``month`` (for the carried lines of closed months)."""
        ...


class PartyDirectory(Protocol):
    """The pooling region each party belongs to, as the record says."""

    def regions(self, parties: Iterable[tuple[PartyKind, str]]) -> dict[tuple[PartyKind, str], str]: ...


__all__ = ["EventStore", "OutcomeRow", "PartyDirectory", "PatientKeyStore", "Projector",
           "SettlementFigures"]
