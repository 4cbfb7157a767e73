"""The write side's aggregate cache: held states are copies the caller may change; a held state that changed after
it was kept (its version moved) is no longer trusted; a newer version is never replaced by an older one."""

from __future__ import annotations

from events.prescription import RoutingBasis
from services.adapters.aggregate_cache import AggregateCache
from services.domain.prescription import Prescription
from tests.support.domain import World


def test_held_states_are_committed_copies_and_a_changed_one_is_dropped() -> None:
    world = World()
    rx = world.approved()
    rx.collect_events()  # committed
    cache = AggregateCache(size=2)
    cache.keep([rx])
    held = cache.held([rx.id])[rx.id]
    assert held is not rx and held.model_dump() == rx.model_dump()

    mine = cache.copy(held)
    assert isinstance(mine, Prescription)
    mine.route(clock=world.clock, pharmacy=world.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)
    assert cache.held([rx.id])[rx.id].version == rx.version  # the caller's change is not the cache's

    cache.keep([mine])  # pending events: not committed, not kept
    assert cache.held([rx.id])[rx.id].version == rx.version

    mine.collect_events()
    cache.keep([mine], copy=False)
    assert cache.held([rx.id])[rx.id].version == rx.version + 1
    cache.keep([rx])  # older: ignored
    assert cache.held([rx.id])[rx.id].version == rx.version + 1

    mine.accept(clock=world.clock, dispenser_id=mine.dispenser_id or "")  # changed after it was handed over
    assert cache.held([rx.id]) == {} and cache.peek(rx.id) is None


def test_least_recently_used_out_first() -> None:
    world = World()
    physician, pharmacist, pharmacy = world.physician, world.pharmacist, world.pharmacy
    for aggregate in (physician, pharmacist, pharmacy):
        aggregate.collect_events()
    cache = AggregateCache(size=2)
    cache.keep([physician, pharmacist])
    cache.held([physician.id])
    cache.keep([pharmacy])
    assert set(cache.held([physician.id, pharmacist.id, pharmacy.id])) == {physician.id, pharmacy.id}
