"""Crashes and broker loss under steady HTTP traffic on the embedded parts (PostgreSQL + Tansu), each test on a
stack of its own; after the faults, ONE end-state check (tests/faults/harness.py: check_end_state)."""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.harness import (
    KILLABLE,
    FaultStack,
    Traffic,
    check_end_state,
    max_notification_id,
    register_cast,
    say,
)

pytestmark = pytest.mark.faults

def _traffic(stack: FaultStack, **kw: object) -> Traffic:
    return Traffic(stack, register_cast(stack), **kw).start()  # type: ignore[arg-type]


def test_republish_then_broker_loss_loses_nothing(make_stack) -> None:  # type: ignore[no-untyped-def]
    """The repeatable case of issue 12: `rxtrail relay --republish --from <max-120> --once` while the stack runs,
    then the broker dies (comes back empty) while traffic runs → afterwards nothing lost."""
    stack = make_stack()
    traffic = _traffic(stack, clients=3, max_journeys=400, max_seconds=35, route_wait_s=25)
    time.sleep(10)
    top = max_notification_id(stack.database_url)
    frm = max(0, top - 120)
    r = stack.cli("relay", "--republish", "--from", str(frm), "--once")
    say(f"relay --republish --from {frm} --once (max {top}): exit {r.returncode} {r.stdout.strip()[-200:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(2)
    assert traffic.running(), "the traffic ended before the fault: raise max_journeys"
    started_before = traffic.stats.journeys_started
    stack.restart_broker()
    say("broker restarted (empty) under traffic")
    traffic.run_on_for(40)  # longer than route_wait_s: journeys waiting for the recovering router end, new ones start
    stats = traffic.join(120)
    assert stats.journeys_started > started_before, "no journey started after the broker loss"
    say(stats.line())
    state = check_end_state(stack, settle_timeout=60, kafka_replay=True,
                            extra={"journeys": stats.journeys_started, "republished_from": frm})
    assert state.ok, state.report()


def test_broker_restart_mid_run(make_stack) -> None:  # type: ignore[no-untyped-def]
    """The embedded broker is killed mid-run and comes back empty — twice, 10 s apart — the relay republishes from
    the store and every consumer must end equal to the record (and a replay from rx.events equal to the store)."""
    stack = make_stack()
    traffic = _traffic(stack, clients=3, max_journeys=500, max_seconds=38, route_wait_s=25)
    for at in (10, 10):
        time.sleep(at)
        assert traffic.running(), "the traffic ended before the fault: raise max_journeys"
        started_before = traffic.stats.journeys_started
        t0 = time.monotonic()
        stack.restart_broker()
        say(f"broker restarted (empty) in {time.monotonic() - t0:.1f}s under traffic")
    traffic.run_on_for(40)  # longer than route_wait_s: journeys waiting for the recovering router end, new ones start
    stats = traffic.join(120)
    assert stats.journeys_started > started_before, "no journey started after the broker loss"
    say(stats.line())
    state = check_end_state(stack, settle_timeout=60, kafka_replay=True, extra={"journeys": stats.journeys_started})
    assert state.ok, state.report()


def test_crash_matrix(make_stack) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the relay, each projection, the router, the settlement worker, the gateway and the API at seeded
    random points under steady traffic (3 rounds over the 8 processes: 24 kills); then the end-state check."""
    seed = 20261201
    rng = random.Random(seed)
    stack = make_stack()
    traffic = _traffic(stack, clients=3, max_journeys=200, max_seconds=120, route_wait_s=30, seed=seed)
    time.sleep(4)
    schedule = [name for _ in range(3) for name in rng.sample(KILLABLE, len(KILLABLE))]
    t0 = time.monotonic()
    for name in schedule:
        time.sleep(rng.uniform(0.8, 2.5))
        stack.kill(name)
    say(f"{len(schedule)} kills in {time.monotonic() - t0:.0f}s: {dict(stack.kills)}")
    time.sleep(3)
    traffic.stop()
    stats = traffic.join(90)
    say(stats.line())
    state = check_end_state(stack, settle_timeout=60, extra={"journeys": stats.journeys_started,
                                                             "journeys_done": stats.journeys_done, "seed": seed})
    assert sum(stack.kills.values()) >= 20
    assert stats.journeys_done > 0, stats.errors[:5]
    assert state.ok, state.report()
