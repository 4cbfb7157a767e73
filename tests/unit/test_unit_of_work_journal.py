"""The batch journal of ``UnitOfWork``: a refused command is undone exactly, whatever it changed or created, and the
commands before it keep their events (one copy per aggregate per batch; rebuilt from it only when changed)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from events.prescription import RoutingBasis
from services.application.unit_of_work import UnitOfWork
from services.domain.prescription import Prescription
from tests.support.domain import PHARMACY, World


class Store:
    def __init__(self, *aggregates: Any) -> None:
        self.held = {}
        for aggregate in aggregates:
            aggregate.collect_events()  # as loaded: nothing pending
            self.held[aggregate.id] = aggregate

    def load(self, cls: Any, aggregate_id: UUID, projector: Any) -> Any:
        found = self.held.get(aggregate_id)
        return None if found is None else found.model_copy(deep=True)


def test_rollback_restores_changed_created_and_untouched_aggregates_exactly() -> None:
    world = World()
    approved = world.approved()
    physician = world.physician
    uow = UnitOfWork(Store(approved, physician))  # type: ignore[arg-type]
    as_loaded = approved.model_dump()

    uow.begin()  # a command that reads the physician only: rollback keeps the very object
    read = uow.require(type(physician), physician.id)
    uow.rollback()
    assert uow.get(type(physician), physician.id) is read

    uow.begin()  # a command that routes, then is refused: back to the loaded state, nothing pending
    rx = uow.require(Prescription, approved.id)
    rx.route(clock=world.clock, pharmacy=world.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    assert len(uow.command_events()) == 1
    uow.rollback()
    back = uow.require(Prescription, approved.id)
    assert back.model_dump() == as_loaded and back.pending_events == ()

    uow.begin()  # routes and is kept
    rx = uow.require(Prescription, approved.id)
    rx.route(clock=world.clock, pharmacy=world.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    routed, routed_events = rx.model_dump(), rx.pending_events
    uow.begin()  # accepts, then is refused: the routing stays, with its event
    rx = uow.require(Prescription, approved.id)
    rx.accept(clock=world.clock, dispenser_id=PHARMACY)
    assert [type(e).__name__ for e in uow.command_events()] == ["PrescriptionAccepted"]
    uow.rollback()
    back = uow.require(Prescription, approved.id)
    assert back.model_dump() == routed and back.pending_events == routed_events
    assert uow.command_events() == []

    uow.begin()  # a command that creates an aggregate, then is refused: it does not exist again
    created = world.issued()
    uow.add(created)
    uow.rollback()
    assert uow.get(Prescription, created.id) is None
    assert [type(e).__name__ for e in uow.pending_events()] == ["PrescriptionRouted"]
