"""Aggregates loaded for one command (or one batch of commands), saved together in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any, TypeVar
from uuid import UUID

from events.base import DomainEvent
from services.application.errors import AlreadyExists, PatientStatusNotFound, StaleVersion
from services.application.outcomes import EventRef
from services.application.ports import EventStore
from services.domain.aggregate import Aggregate
from services.domain.encounter import Encounter, project_encounter
from services.domain.errors import (
    ChronicDiseaseListNotFound,
    DeliveryEnterpriseNotFound,
    DrugListingNotFound,
    EmergencyDeclarationsNotFound,
    EncounterNotFound,
    InstitutionNotFound,
    InvalidCommand,
    NotFound,
    PatientInsuranceNotFound,
    PharmacistNotFound,
    PharmacyNotFound,
    PhysicianNotFound,
    PrescriptionNotFound,
    TraceCodeNotFound,
)
from services.domain.prescription import Prescription, project_prescription
from services.domain.registries import (
    ChronicDiseaseList,
    DeliveryEnterprise,
    DrugListing,
    EmergencyDeclarations,
    Institution,
    PatientInsurance,
    PatientStatus,
    Pharmacist,
    Pharmacy,
    Physician,
    project_chronic_disease_list,
    project_delivery_enterprise,
    project_drug_listing,
    project_emergency_declarations,
    project_institution,
    project_patient_insurance,
    project_patient_status,
    project_pharmacist,
    project_pharmacy,
    project_physician,
)
from services.domain.settlement_case import SettlementCase, project_settlement_case
from services.domain.supply import SupplyLedger, project_supply_ledger
from services.domain.trace_code import TraceCode, project_trace_code

A = TypeVar("A", bound=Aggregate)

PROJECTORS: dict[type[Aggregate], Callable[[Any, Iterable[Any]], Any]] = {
    Prescription: project_prescription,
    Encounter: project_encounter,
    SettlementCase: project_settlement_case,
    TraceCode: project_trace_code,
    Physician: project_physician,
    Pharmacist: project_pharmacist,
    Pharmacy: project_pharmacy,
    PatientStatus: project_patient_status,
    Institution: project_institution,
    DeliveryEnterprise: project_delivery_enterprise,
    PatientInsurance: project_patient_insurance,
    EmergencyDeclarations: project_emergency_declarations,
    DrugListing: project_drug_listing,
    ChronicDiseaseList: project_chronic_disease_list,
    SupplyLedger: project_supply_ledger,
}
NOT_FOUND: dict[type[Aggregate], type[NotFound]] = {
    Prescription: PrescriptionNotFound,
    Encounter: EncounterNotFound,
    TraceCode: TraceCodeNotFound,
    Physician: PhysicianNotFound,
    Pharmacist: PharmacistNotFound,
    Pharmacy: PharmacyNotFound,
    PatientStatus: PatientStatusNotFound,
    Institution: InstitutionNotFound,
    DeliveryEnterprise: DeliveryEnterpriseNotFound,
    PatientInsurance: PatientInsuranceNotFound,
    EmergencyDeclarations: EmergencyDeclarationsNotFound,
    DrugListing: DrugListingNotFound,
    ChronicDiseaseList: ChronicDiseaseListNotFound,
}


class UnitOfWork:
    """Loads each aggregate once, hands the same object to every command of the unit, and knows what changed.

    In a batch, ``begin()`` starts a command: the first time the command touches an aggregate, what it was is
    journaled, so ``rollback()`` undoes a refused command without disturbing the others, and ``command_events()``
    tells which pending events the command produced.

    ``careful=False`` (a first attempt) lets ``expect_new`` trust a derived id to be free without reading:
    if it was taken after all, the save fails on the event store's primary key and the retry, careful,
    reads and refuses with ``AlreadyExists``.
    """

    def __init__(self, store: EventStore, *, careful: bool = True) -> None:
        self.store = store
        self.careful = careful
        self._loaded: dict[UUID, Aggregate | None] = {}
        self._backup: dict[UUID, tuple[Aggregate, int] | None] | None = None
        self._base: dict[UUID, Aggregate | None] = {}

    # --- loading ------------------------------------------------------------------------------
    def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        if aggregate_id in self._loaded:
            aggregate = self._loaded[aggregate_id]
        else:
            aggregate = self._load(cls, aggregate_id)
            self._loaded[aggregate_id] = aggregate
        if aggregate is not None and not isinstance(aggregate, cls):
            raise InvalidCommand(f"{aggregate_id} is a {type(aggregate).__name__}, not a {cls.__name__}")
        self._journal(aggregate_id)
        return aggregate

    def peek(self, aggregate_id: UUID) -> Aggregate | None:
        """The aggregate if this unit has loaded it (None otherwise), without journaling: for planning reads."""
        return self._loaded.get(aggregate_id)

    def _load(self, cls: type[A], aggregate_id: UUID) -> A | None:
        return self.store.load(cls, aggregate_id, PROJECTORS[cls])

    def prefetch(self, cls: type[Aggregate], aggregate_ids: Iterable[UUID]) -> None:
        """Load many aggregates in one round trip (full streams; snapshots are for single loads)."""
        wanted = list(dict.fromkeys(i for i in aggregate_ids if i not in self._loaded))
        if not wanted:
            return
        self._loaded.update(self.store.load_many(wanted, PROJECTORS[cls]))

    def prefetch_all(self, wanted: Mapping[type[Aggregate], Iterable[UUID]]) -> None:
        """Load aggregates of several kinds in ONE round trip (full streams): each stream is folded by the
        projector of the kind it was asked for (the first kind, if an id is asked for twice)."""
        kinds: dict[UUID, type[Aggregate]] = {}
        for cls, aggregate_ids in wanted.items():
            for aggregate_id in aggregate_ids:
                if aggregate_id not in self._loaded:
                    kinds.setdefault(aggregate_id, cls)
        if not kinds:
            return

        def fold(state: Any, events: Iterable[Any]) -> Any:
            stream = iter(events)
            first = next(stream, None)
            if first is None:
                return state
            return PROJECTORS[kinds[first.originator_id]](state, chain((first,), stream))

        self._loaded.update(self.store.load_many(list(kinds), fold))

    def get_many(self, cls: type[A], aggregate_ids: Iterable[UUID]) -> dict[UUID, A | None]:
        ids = list(aggregate_ids)
        self.prefetch(cls, ids)
        return {aggregate_id: self.get(cls, aggregate_id) for aggregate_id in ids}

    def expect_new(self, cls: type[Aggregate], aggregate_id: UUID, kind: str, key: object) -> None:
        """Refuse with ``AlreadyExists`` when the id is taken (read only when careful or already loaded)."""
        if (aggregate_id in self._loaded or self.careful) and self.get(cls, aggregate_id) is not None:
            raise AlreadyExists(kind, key)

    def require(
        self, cls: type[A], aggregate_id: UUID, *, key: object = None, expected_version: int | None = None
    ) -> A:
        aggregate = self.get(cls, aggregate_id)
        if aggregate is None:
            raise NOT_FOUND[cls](key if key is not None else aggregate_id)
        if expected_version is not None and aggregate.version != expected_version:
            raise StaleVersion(aggregate_id, expected_version, aggregate.version)
        return aggregate

    def add(self, aggregate: Aggregate) -> None:
        """Track an aggregate the command created (or got back from a domain method)."""
        if aggregate.id not in self._loaded:
            self._loaded[aggregate.id] = None
        self._journal(aggregate.id)
        self._loaded[aggregate.id] = aggregate

    # --- batch journal ------------------------------------------------------------------------
    # An aggregate changes only by its events (``Aggregate._follow``: version + 1, one more pending event), so the
    # journal records, per command, the object touched and how many pending events it had; the state before the
    # command is the batch's copy of the aggregate (one deep copy per aggregate per batch, taken at its first touch,
    # before any event of the batch) with those pending events replayed. Read-only aggregates (registries, the
    # visit an issue reads) are never copied again, and rebuilt only when a refused command had changed them.
    @property
    def in_batch(self) -> bool:
        return self._backup is not None

    def begin(self) -> None:
        self._backup = {}

    def _journal(self, aggregate_id: UUID) -> None:
        if self._backup is not None and aggregate_id not in self._backup:
            current = self._loaded.get(aggregate_id)
            if aggregate_id not in self._base:
                self._base[aggregate_id] = None if current is None else current.model_copy(deep=True)
            self._backup[aggregate_id] = None if current is None else (current, len(current._pending))

    def _before(self, aggregate_id: UUID) -> Aggregate | None:
        """The aggregate as it was when the current command first touched it."""
        touched = self._backup[aggregate_id] if self._backup is not None else None
        if touched is None:
            return None
        aggregate, pending = touched
        if self._loaded.get(aggregate_id) is aggregate and len(aggregate._pending) == pending:
            return aggregate  # unchanged by the command
        base = self._base[aggregate_id]
        events = aggregate._pending[:pending]
        before = base.model_copy(deep=True) if base is not None else None
        for event in events:
            if before is None:
                before = type(aggregate)._start(event)
            else:
                before._follow(event)
            before._pending.append(event)
        return before

    def rollback(self) -> None:
        if self._backup is None:
            raise RuntimeError("rollback() without begin()")
        restored = {aggregate_id: self._before(aggregate_id) for aggregate_id in self._backup}
        self._loaded.update(restored)
        self._backup = {}

    def command_events(self) -> list[DomainEvent]:
        """Events the current command produced (since ``begin()``), or all pending events outside a batch."""
        if self._backup is None:
            return self.pending_events()
        produced: list[DomainEvent] = []
        for aggregate_id, touched in self._backup.items():
            now = self._loaded.get(aggregate_id)
            if now is None:
                continue
            skip = 0 if touched is None else touched[1]
            produced.extend(now.pending_events[skip:])
        return produced

    # --- saving ---------------------------------------------------------------------------------
    def changed(self) -> list[Aggregate]:
        return [a for a in self._loaded.values() if a is not None and a.pending_events]

    def pending_events(self) -> list[DomainEvent]:
        return [event for aggregate in self.changed() for event in aggregate.pending_events]


def event_refs(events: Iterable[DomainEvent]) -> tuple[EventRef, ...]:
    return tuple(
        EventRef(aggregate_id=e.originator_id, version=e.originator_version, event_type=type(e).__name__)
        for e in events
    )
