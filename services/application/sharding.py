"""Region shards of the write side: the pooling region is the shard key (deploy/SCALING.md, "Region shards").

Where each aggregate lives:

- **region-bound** (``Encounter``, ``Prescription``): in the event store of its pooling region. A visit goes to the
  region its hospital is registered in (the ``Institution`` in the global store; R17); a prescription is placed
  with the visit it is issued for. Later commands find the shard of an existing aggregate by id in the **shard
  directory** (``ShardDirectory``: a table in the global database, written before the first event, first writer
  wins). Ids stay what they are (derived from hospital id + reference, known to the caller before the command),
  so no shard prefix can be put into them.
- **global** (the registries — physicians, pharmacists, pharmacies, patient status — and every ``TraceCode``):
  in the global store (the default database). A trace code's stream has one home, so R8 ("sold once") stays
  platform-wide with the event store's optimistic concurrency deciding the race, as on one shard.

``ShardRouter`` (an ``RxTrail``) sends each command to its shard's ``RxTrail``; a region's ``RxTrail`` works on a
``RegionStore``: its region's store for region-bound aggregates, the global store for the rest. A unit that
touches both is saved in an order that keeps R8 correct without a distributed transaction:

- a **sale** (TraceCodeSold, a dispense) writes the codes to the global store first — that write is the
  reservation: of two regions selling the same code at once exactly one commits, the other's save fails, its
  handler runs again, meets R8 and records RuleFlagged on its prescription (as today) — then the prescription in
  its region. If the region write loses (the prescription moved on meanwhile), the codes are released again
  (TraceCodeReturned, reason ``RELEASE_REASON``) before the handler retries;
- a **return** (TraceCodeReturned, a withdrawn dispense) writes the prescription first, then the codes (rolled
  forward until written: only this prescription holds them, so nobody else can change them in between).

A process that dies between the global and the region write of a sale leaves the codes sold without a dispense in
the region (refused elsewhere — safe, never sold twice) until the repair job releases them
(``ShardRouter.release_stranded``; ``bootstrap.release_stranded_reservations``; deploy/SCALING.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from events.base import DomainEvent
from events.trace_code import TraceCodeReturned, TraceCodeSold
from services.application import commands as c
from services.application.ids import encounter_id_for, prescription_id_for
from services.application.outcomes import Outcome
from services.application.ports import EventStore, Projector
from services.application.privacy import PatientVault
from services.application.service import RxTrail
from services.application.unit_of_work import PROJECTORS, UnitOfWork
from services.domain.aggregate import Aggregate
from services.domain.clock import Clock, SystemClock
from services.domain.encounter import Encounter, project_encounter
from services.domain.errors import RuleViolation
from services.domain.policy import DEFAULT_RULES, RuleConfig
from services.domain.prescription import Prescription, project_prescription
from services.domain.registries import Institution
from services.domain.rules import R8
from services.domain.supply import SupplyLedger, project_supply_ledger
from services.domain.trace_code import TraceCode, project_trace_code

log = logging.getLogger("rxtrail.shards")

A = TypeVar("A", bound=Aggregate)

GLOBAL = "global"
"""The shard key of the global store (registries, trace codes, and regions without a shard of their own)."""
REGION_BOUND: tuple[type[Aggregate], ...] = (Encounter, Prescription, SupplyLedger)
"""A patient's SupplyLedger (R4) lives with the prescriptions that reserve on it, so the reservation commits in the
prescription's transaction; its count is then per region shard (a patient prescribed in two shards has one ledger
in each)."""
_REGION_PROJECTORS: tuple[Projector, ...] = (project_encounter, project_prescription, project_supply_ledger)


def _one_kind(projector: Projector) -> bool:
    """Whether ``projector`` folds one aggregate kind (not ``UnitOfWork.prefetch_all``'s fold over several)."""
    return projector in PROJECTORS.values()
RELEASE_REASON = "reservation released: the dispense was not recorded in its region (cross-shard sale lost a race)"
STRANDED_REASON = "reservation released: its dispense was never recorded in its region (the writer stopped between)"


class ShardDirectory(Protocol):
    """Which shard holds an existing region-bound aggregate (implemented by ``services.adapters.shard_directory``)."""

    def shard_of(self, aggregate_id: UUID) -> str | None: ...

    def place(self, aggregate_id: UUID, shard: str, kind: str) -> str:
        """Record ``aggregate_id`` in ``shard`` unless it is placed already; the shard it is in (first writer wins)."""
        ...

    def close(self) -> None: ...


def _pending(objs: Iterable[Any]) -> list[DomainEvent]:
    return [e for a in objs for e in getattr(a, "pending_events", ())]


class RegionStore:
    """``EventStore`` of one region's ``RxTrail``: region-bound aggregates in ``home``, the rest in ``global_store``."""

    def __init__(self, home: EventStore, global_store: EventStore, *, clock: Clock | None = None,
                 attempts: int = 20) -> None:
        self.home = home
        self.global_store = global_store
        self.clock: Clock = clock or SystemClock()
        self.attempts = attempts

    def _store_for(self, cls: type[Any]) -> EventStore:
        return self.home if issubclass(cls, REGION_BOUND) else self.global_store

    def load(self, cls: type[A], aggregate_id: UUID, projector: Projector) -> A | None:
        return self._store_for(cls).load(cls, aggregate_id, projector)

    def load_many(self, aggregate_ids: Sequence[UUID], projector: Projector) -> dict[UUID, Any]:
        if projector in _REGION_PROJECTORS:
            return self.home.load_many(aggregate_ids, projector)
        if _one_kind(projector):
            return self.global_store.load_many(aggregate_ids, projector)
        # a fold over several kinds (UnitOfWork.prefetch_all): each aggregate is in one of the two stores
        found = self.global_store.load_many(aggregate_ids, projector)
        found.update({i: state for i, state in self.home.load_many(aggregate_ids, projector).items()
                      if state is not None})
        return found

    def events_of(self, aggregate_id: UUID, *, lte: int | None = None) -> list[DomainEvent]:
        return self.home.events_of(aggregate_id, lte=lte) or self.global_store.events_of(aggregate_id, lte=lte)

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, str]:
        return {**self.global_store.recorded_outcomes(command_ids), **self.home.recorded_outcomes(command_ids)}

    def save(self, *objs: Any, command_outcomes: Sequence[Any] = (), **kwargs: Any) -> Any:
        home = [a for a in objs if isinstance(a, REGION_BOUND)]
        other = [a for a in objs if not isinstance(a, REGION_BOUND)]
        if not other:
            return self.home.save(*home, command_outcomes=command_outcomes, **kwargs)
        if not home:
            return self.global_store.save(*other, command_outcomes=command_outcomes, **kwargs)
        events = _pending(other)
        sold = [e for e in events if isinstance(e, TraceCodeSold)]
        if sold:
            self.global_store.save(*other)  # the reservation; IntegrityError here = another sale won: retry -> R8
            try:
                return self.home.save(*home, command_outcomes=command_outcomes, **kwargs)
            except IntegrityError:
                self._release(sold)
                raise
        returned = [e for e in events if isinstance(e, TraceCodeReturned)]
        result = self.home.save(*home, command_outcomes=command_outcomes, **kwargs)
        try:
            self.global_store.save(*other)
        except IntegrityError:
            self._roll_forward(returned)
        return result

    def _release(self, sold: Sequence[TraceCodeSold]) -> None:
        """Undo a reservation whose region write failed: return each code still held by that prescription."""
        for event in sold:
            self.return_if_held(event.originator_id, event.prescription_id, event.business_type, RELEASE_REASON)

    def _roll_forward(self, returned: Sequence[TraceCodeReturned]) -> None:
        for event in returned:
            self.return_if_held(event.originator_id, event.prescription_id, event.business_type, event.reason)

    def return_if_held(self, code_id: UUID, prescription_id: UUID | None, business_type: Any, reason: str) -> None:
        for _ in range(self.attempts):
            code = self.global_store.load(TraceCode, code_id, project_trace_code)
            if code is None or not code.sold or code.prescription_id != prescription_id:
                return
            code.return_to_stock(clock=self.clock, business_type=business_type, prescription_id=prescription_id,
                                 reason=reason)
            try:
                self.global_store.save(code)
                log.warning("trace code %s returned for prescription %s: %s", code.code, prescription_id, reason)
                return
            except IntegrityError:
                continue
        log.error("trace code %s: could not be returned for prescription %s after %d attempts", code_id,
                  prescription_id, self.attempts)

    def close(self) -> None:  # the stores are closed by their owner (ShardRouter)
        return None


class ShardedStore:
    """A read view over every shard (``EventStore`` for the API's gate and reads): an aggregate is read where the
    directory places it (region-bound) or from the global store."""

    def __init__(self, directory: ShardDirectory, stores: Mapping[str, EventStore], global_store: EventStore) -> None:
        self.directory = directory
        self.stores = dict(stores)
        self.global_store = global_store

    def store_of(self, aggregate_id: UUID) -> EventStore:
        shard = self.directory.shard_of(aggregate_id)
        return self.stores.get(shard or GLOBAL, self.global_store)

    def load(self, cls: type[A], aggregate_id: UUID, projector: Projector) -> A | None:
        store = self.store_of(aggregate_id) if issubclass(cls, REGION_BOUND) else self.global_store
        return store.load(cls, aggregate_id, projector)

    def load_many(self, aggregate_ids: Sequence[UUID], projector: Projector) -> dict[UUID, Any]:
        if projector not in _REGION_PROJECTORS and _one_kind(projector):
            return self.global_store.load_many(aggregate_ids, projector)
        by_store: dict[int, tuple[EventStore, list[UUID]]] = {}  # the directory places each region-bound id
        for aggregate_id in aggregate_ids:
            store = self.store_of(aggregate_id)
            by_store.setdefault(id(store), (store, []))[1].append(aggregate_id)
        found: dict[UUID, Any] = {}
        for store, ids in by_store.values():
            found.update(store.load_many(ids, projector))
        return found

    def events_of(self, aggregate_id: UUID, *, lte: int | None = None) -> list[DomainEvent]:
        return self.store_of(aggregate_id).events_of(aggregate_id, lte=lte)

    def recorded_outcomes(self, command_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for store in [self.global_store, *self.stores.values()]:
            found.update(store.recorded_outcomes(command_ids))
        return found

    @property
    def recorder(self) -> _RoutingRecorder:
        """``select_events(aggregate_id)`` from the store that holds the aggregate (the integrity check of the API's
        reads goes through the store's recorder)."""
        return _RoutingRecorder(self)

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        homes = {id(self.store_of(a.id)) for a in objs if isinstance(a, REGION_BOUND)}
        if homes:
            raise TypeError("region-bound aggregates are written through ShardRouter.handle, which picks their store")
        return self.global_store.save(*objs, **kwargs)

    def close(self) -> None:
        return None


class RegionRxTrail(RxTrail):
    """A region's ``RxTrail``: as ``RxTrail``, except that an R8 refusal caused by a code this very prescription
    holds in the global store without a dispense of the prescription listing it is a reservation in flight (a
    concurrent attempt of the same dispense between its two writes, see ``RegionStore``): retried, not refused —
    the next attempt finds the dispense recorded (or the code released) and answers as one shard would."""

    def _record_rejection(self, command: c.Command, err: Exception) -> Outcome | None:
        if self._reserved_in_flight(command, err):
            return None  # handle() backs off and runs the command again
        return super()._record_rejection(command, err)

    def _reserved_in_flight(self, command: c.Command, err: Exception) -> bool:
        if not (isinstance(err, RuleViolation) and err.rule_id == R8 and isinstance(command, c.DispensePrescription)):
            return False
        ids = dict(getattr(err, "ids", {}) or {})
        if ids.get("sold_for") is None or ids.get("sold_for") != ids.get("attempted_for"):
            return False
        rx = self.store.load(Prescription, command.prescription_id, project_prescription)
        held = {code for lines in (rx.dispenses.values() if rx is not None else ()) for ln in lines
                for code in ln.trace_codes}
        return ids.get("trace_code") not in held


class _RoutingRecorder:
    def __init__(self, sharded: ShardedStore) -> None:
        self.sharded = sharded

    def select_events(self, aggregate_id: UUID, **kwargs: Any) -> Any:
        return self.sharded.store_of(aggregate_id).recorder.select_events(  # type: ignore[attr-defined]
            aggregate_id, **kwargs)


def _prescription_target(command: c.Command) -> UUID | None:
    if isinstance(command, c.PrescriptionCommand | c.SettlePrescription):
        return command.prescription_id
    return None


class ShardRouter(RxTrail):
    """One ``RxTrail`` per region shard plus the global one, behind the ``RxTrail`` interface (the API and the
    workers take it unchanged). ``handle`` sends each command to its shard; ``store`` reads across shards."""

    def __init__(self, *, global_store: EventStore, region_stores: Mapping[str, EventStore],
                 directory: ShardDirectory, vault: PatientVault, clock: Clock | None = None,
                 rules: RuleConfig = DEFAULT_RULES, max_attempts: int = 8,
                 closers: Sequence[Callable[[], object]] = ()) -> None:
        clock = clock or SystemClock()
        self.directory = directory
        self.global_app = RxTrail(global_store, vault, clock=clock, rules=rules, max_attempts=max_attempts)
        self.regions: dict[str, RxTrail] = {
            region: RegionRxTrail(RegionStore(store, global_store, clock=clock), vault, clock=clock, rules=rules,
                                  max_attempts=max_attempts)
            for region, store in region_stores.items()
        }
        self._stores: dict[str, EventStore] = {GLOBAL: global_store, **region_stores}
        self._hospital_regions: dict[str, str] = {}
        self._closers = list(closers)
        super().__init__(ShardedStore(directory, self._stores, global_store), vault, clock=clock, rules=rules,
                         max_attempts=max_attempts)

    # --- routing ----------------------------------------------------------------------------------
    def shard_for(self, command: c.Command) -> str:
        """The shard a command goes to (placing a new visit or prescription in the directory first)."""
        if isinstance(command, c.RecordFollowUpVisit):
            region = self.registered_region(command.hospital_id) or command.pooling_region
            wanted = region if region in self.regions else GLOBAL
            return self.directory.place(encounter_id_for(command.hospital_id, command.visit_ref), wanted, "encounter")
        if isinstance(command, c.IssuePrescription):
            shard = self.directory.shard_of(command.encounter_id) or GLOBAL
            return self.directory.place(prescription_id_for(command.hospital_id, command.prescription_ref), shard,
                                        "prescription")
        if isinstance(command, c.SettleConsultation):
            return self.directory.shard_of(command.encounter_id) or GLOBAL
        if (target := _prescription_target(command)) is not None:
            return self.directory.shard_of(target) or GLOBAL
        return GLOBAL

    def registered_region(self, hospital_id: str) -> str | None:
        """The pooling region the hospital is registered in (the authority's registry, in the global store; R17:
        a visit goes by the registry, not by the request). None: not registered (the visit will be refused)."""
        if (known := self._hospital_regions.get(hospital_id)) is not None:
            return known
        hospital = self.global_app.store.load(Institution, Institution.id_for(hospital_id), PROJECTORS[Institution])
        if hospital is None:
            return None
        self._hospital_regions[hospital_id] = hospital.region  # an institution's region never changes
        return hospital.region

    def app_for(self, shard: str) -> RxTrail:
        return self.regions.get(shard, self.global_app)

    # --- RxTrail ----------------------------------------------------------------------------------
    def unit_for(self, command: c.Command, *, careful: bool = False) -> UnitOfWork:
        """The unit of the command's shard (its ``RegionStore``), so ``handle(command, unit=...)`` saves there."""
        return self.app_for(self.shard_for(command)).unit_for(command, careful=careful)

    def handle(self, command: c.Command, *, unit: UnitOfWork | None = None) -> Outcome:
        return self.app_for(self.shard_for(command)).handle(command, unit=unit)

    def apply_batch(self, commands: Sequence[c.Command]) -> list[Outcome]:
        """Consecutive commands of one shard go as one batch of that shard; a sale or return of trace codes in a
        region goes alone (its save spans two stores, see ``RegionStore``)."""
        outcomes: list[Outcome] = []
        run: list[c.Command] = []
        run_shard: str | None = None

        def flush() -> None:
            if run:
                outcomes.extend(self.app_for(run_shard or GLOBAL).apply_batch(list(run)))
                run.clear()

        for command in commands:
            shard = self.shard_for(command)
            if shard != GLOBAL and isinstance(command, c.DispensePrescription | c.WithdrawDispense):
                flush()
                outcomes.append(self.app_for(shard).handle(command))
                continue
            if shard != run_shard:
                flush()
                run_shard = shard
            run.append(command)
        flush()
        return outcomes

    def history(self, aggregate_id: UUID, *, up_to: int | None = None) -> list[Any]:
        return list(self.store.events_of(aggregate_id, lte=up_to))

    # --- repair ------------------------------------------------------------------------------------
    def release_stranded(self, held: Iterable[tuple[UUID, UUID]]) -> list[UUID]:
        """Release reservations a writer left behind (it stopped between the global and the region write of a sale).

        ``held``: (trace-code stream id, prescription id) of codes whose last event is a sale for a prescription,
        old enough that no writer can still be between its two writes (the caller picks the age). A code is
        released when its prescription lives in a region shard and no dispense of it lists the code. Returns the
        released code ids."""
        released: list[UUID] = []
        for code_id, prescription_id in held:
            shard = self.directory.shard_of(prescription_id)
            if shard not in self.regions:
                continue  # a sale inside one store is atomic: nothing can be stranded there
            region_store = self.regions[shard].store
            if not isinstance(region_store, RegionStore):
                continue
            rx = region_store.home.load(Prescription, prescription_id, project_prescription)
            code = region_store.global_store.load(TraceCode, code_id, project_trace_code)
            if code is None or not code.sold or code.prescription_id != prescription_id:
                continue
            if rx is not None and code.code in {c for lines in rx.dispenses.values() for ln in lines
                                                for c in ln.trace_codes}:
                continue
            sale = region_store.global_store.events_of(code_id)[-1]
            region_store.return_if_held(code_id, prescription_id, getattr(sale, "business_type", None),
                                      STRANDED_REASON)
            released.append(code_id)
        return released

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
        self.vault.close()
        self.directory.close()


__all__ = ["GLOBAL", "REGION_BOUND", "RELEASE_REASON", "STRANDED_REASON", "RegionRxTrail", "RegionStore",
           "ShardDirectory", "ShardRouter", "ShardedStore"]
