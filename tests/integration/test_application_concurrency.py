"""Concurrent writers on the real PostgreSQL: optimistic concurrency plus re-checked retries keep R8 and R13."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from events.prescription import PrescriptionDispensed, RuleFlagged
from events.trace_code import TraceCodeSold
from services.adapters.event_log import load_stream
from services.adapters.store import RxTrailStore, open_store
from services.application import RxTrail
from services.application import commands as c
from services.application.ids import trace_code_id_for
from services.application.outcomes import Outcome
from services.integrity import verify_aggregate
from tests.support.cast import (
    CHANGCHUN,
    METFORMIN,
    Cast,
    hospital_commands,
    item,
    line,
    ok,
    physician_command,
    trace_codes,
)

T = TypeVar("T")


@pytest.fixture(scope="module")
def store(pg_url: str) -> Iterator[RxTrailStore]:
    s = open_store(pg_url, pool_size=10, max_overflow=40)
    yield s
    s.close()


@pytest.fixture
def cast(app: RxTrail) -> Cast:
    return Cast(app).register()


def all_at_once(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` for i in range(n) in n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_fifty_concurrent_full_dispenses_exactly_one_wins(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted(item(METFORMIN, 4))
    attempts = [line(METFORMIN, 4, codes=4) for _ in range(50)]
    outcomes = all_at_once(50, lambda i: cast.dispense(rx, attempts[i]))

    winners = [i for i, o in enumerate(outcomes) if o.ok]
    assert len(winners) == 1
    losers = [o for o in outcomes if not o.ok]
    assert {(o.error, o.rule_id) for o in losers} <= {("RuleViolation", "R13"), ("ConcurrencyConflict", None)}
    assert all(o.reason for o in losers)
    stream = load_stream(app.store, rx)
    assert sum(isinstance(e, PrescriptionDispensed) for e in stream) == 1
    assert verify_aggregate(app.store, rx) is None
    won = attempts[winners[0]].trace_codes
    for i, attempt in enumerate(attempts):
        for code in attempt.trace_codes:
            sold = app.store.events.recorder.select_events(trace_code_id_for(code))
            assert len(sold) == (1 if i == winners[0] else 0), (i, code in won)


def test_fifty_concurrent_partial_dispenses_never_exceed_the_prescription(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted(item(METFORMIN, 4))
    outcomes = all_at_once(50, lambda i: cast.dispense(rx, line(METFORMIN, 1, codes=1)))
    assert sum(o.ok for o in outcomes) == 4
    refused = Counter((o.error, o.rule_id) for o in outcomes if not o.ok)
    assert set(refused) <= {("RuleViolation", "R13"), ("ConcurrencyConflict", None)}
    dispensed = [e for e in load_stream(app.store, rx) if isinstance(e, PrescriptionDispensed)]
    assert sum(ln.quantity for d in dispensed for ln in d.lines) == 4
    assert [d.dispense_no for d in dispensed] == [1, 2, 3, 4] and dispensed[-1].complete


@pytest.mark.parametrize("round_", range(3))
def test_one_trace_code_sold_concurrently_on_two_prescriptions(app: RxTrail, cast: Cast, round_: int) -> None:
    first, second = cast.accepted(), cast.accepted()
    shared = trace_codes(1)[0]
    own = trace_codes(6)

    def sell(i: int) -> Outcome:
        rx = (first, second)[i]
        codes = (shared, *own[i * 3:(i + 1) * 3])
        return cast.dispense(rx, line(METFORMIN, 4, codes=codes))

    outcomes = all_at_once(2, sell)
    assert sorted(o.status for o in outcomes) == ["ok", "rejected"]
    loser_index = 0 if not outcomes[0].ok else 1
    loser = outcomes[loser_index]
    assert (loser.error, loser.rule_id) == ("RuleViolation", "R8")
    assert [e.event_type for e in loser.events] == ["RuleFlagged"]

    loser_rx, winner_rx = (first, second)[loser_index], (first, second)[1 - loser_index]
    flags = [e for e in load_stream(app.store, loser_rx) if isinstance(e, RuleFlagged)]
    assert [(f.rule_id, f.details["trace_code"]) for f in flags] == [("R8", shared)]
    assert not any(isinstance(e, PrescriptionDispensed) for e in load_stream(app.store, loser_rx))
    sales = [e for e in app.store.events.get(trace_code_id_for(shared))]
    assert len(sales) == 1 and isinstance(sales[0], TraceCodeSold) and sales[0].prescription_id == winner_rx
    for code in own[loser_index * 3:(loser_index + 1) * 3]:
        assert app.store.events.recorder.select_events(trace_code_id_for(code)) == []
    assert verify_aggregate(app.store, loser_rx) is None


def test_concurrent_registrations_of_one_physician(app: RxTrail) -> None:
    physician = f"DR-race-{threading.get_ident()}-{id(app)}"
    hospital = f"H-race-{threading.get_ident()}-{id(app)}"
    for outcome in app.apply_batch(hospital_commands(hospital, CHANGCHUN)):
        ok(outcome)
    outcomes = all_at_once(10, lambda i: app.handle(physician_command(physician, hospital, CHANGCHUN)))
    assert sum(o.ok for o in outcomes) == 1
    assert {o.error for o in outcomes if not o.ok} == {"AlreadyExists"}


def test_concurrent_retries_of_one_command_id_record_once(app: RxTrail, cast: Cast) -> None:
    rx = cast.accepted()
    command = c.DispensePrescription(command_id=f"pos-{rx}-1", prescription_id=rx, dispenser_id=cast.pharmacy,
                                     lines=(line(METFORMIN, 4, codes=4),))
    outcomes = all_at_once(20, lambda i: app.handle(command))
    assert all(o.ok for o in outcomes)
    assert sum(not o.replayed for o in outcomes) == 1
    assert len({o.model_dump_json(exclude={"replayed"}) for o in outcomes}) == 1
    assert sum(isinstance(e, PrescriptionDispensed) for e in load_stream(app.store, rx)) == 1
    ok(app.handle(c.MarkCollected(prescription_id=rx, verification_method="face_recognition")))
