"""3-broker Apache Kafka (replication 3, min.insync.replicas 2): one broker SIGKILLed under load and restarted
→ 0 events lost, 0 double counted: every projection equals a rebuild from the event store AND a rebuild from
rx.events, every promise of the workers kept. Slow (three JVMs): CI runs this file as a step of its own."""

from __future__ import annotations

import time

import pytest

from services.infra.apache_kafka import find_java
from tests.faults.harness import Traffic, check_end_state, register_cast, say

pytestmark = pytest.mark.faults


def _java() -> bool:
    try:
        find_java()
        return True
    except Exception:
        return False


def test_one_broker_of_three_killed_under_load(make_stack) -> None:  # type: ignore[no-untyped-def]
    if not _java():
        pytest.fail("no Java runtime: the Apache Kafka fault test needs one (the CI image has it)")
    stack = make_stack(kafka="apache")
    traffic = Traffic(stack, register_cast(stack), clients=3, max_journeys=300, max_seconds=40,
                      route_wait_s=40).start()
    time.sleep(10)
    assert traffic.running(), "the traffic ended before the fault: raise max_journeys"
    t0 = time.monotonic()
    stack.kill_apache_broker(1)
    say("kafka broker 2 of 3 SIGKILLed under load")
    time.sleep(10)
    stack.restart_apache_broker(1)
    say(f"kafka broker 2 back after {time.monotonic() - t0:.1f}s")
    stats = traffic.join(150)
    say(stats.line())
    state = check_end_state(stack, settle_timeout=90, kafka_replay=True,
                            extra={"journeys": stats.journeys_started, "journeys_done": stats.journeys_done})
    assert stats.journeys_done > 0, stats.errors[:5]
    assert state.ok, state.report()
