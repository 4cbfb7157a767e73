"""PostgreSQL restarted under load: meanwhile the API answers 503 with Retry-After (not 500, not a hang); then it
recovers by itself and nothing is half-written (the end-state check: projections equal a rebuild from the store,
every promise kept, `rxtrail verify` intact)."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from tests.faults.harness import Traffic, check_end_state, insure_patients, register_cast, say, visit_body

pytestmark = pytest.mark.faults


def test_postgres_restart_under_load(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack()
    cast = register_cast(stack)
    traffic = Traffic(stack, cast, clients=2, max_journeys=300, max_seconds=40, route_wait_s=30).start()
    time.sleep(8)
    h = cast.keys[f"hospital:{cast.hospital}"]
    down_patients = insure_patients(stack, 2)
    during: Counter[str] = Counter()
    assert traffic.running(), "the traffic ended before the fault: raise max_journeys"
    stack.stop_postgres()
    t_down = time.monotonic()
    say("postgres stopped under load")
    with httpx.Client(base_url=stack.api_url, timeout=3) as http:  # a 503 comes at once; a hang is a failure
        i = 0
        while time.monotonic() - t_down < 8:
            i += 1
            for method, path, kw in (
                ("GET", "/health", {}),
                ("POST", "/hospital/visits", {"json": visit_body(cast, down_patients[i % 2]),
                                              "headers": {"Authorization": f"Bearer {h}",
                                                          "Idempotency-Key": f"pgdown-{i}"}}),
            ):
                try:
                    r = http.request(method, path, **kw)  # type: ignore[arg-type]
                    during[f"{method} {path} {r.status_code}{' Retry-After' if 'retry-after' in r.headers else ''}"] += 1
                except httpx.TransportError as exc:
                    during[f"{method} {path} {exc.__class__.__name__}"] += 1
            time.sleep(0.5)
    stack.start_postgres()
    recovered_at = time.monotonic()
    say(f"postgres back after {recovered_at - t_down:.1f}s; answers while down: {dict(during)}")
    done_before = traffic.stats.journeys_done
    stats = traffic.join(120)
    say(stats.line())
    state = check_end_state(stack, settle_timeout=60, extra={"answers_while_down": dict(during),
                                                             "journeys_done_after_restart": stats.journeys_done - done_before})
    posts = {k: v for k, v in during.items() if k.startswith("POST")}
    assert posts and all(k.endswith("503 Retry-After") for k in posts), during
    assert stats.journeys_done > done_before, "no journey completed after PostgreSQL came back"
    assert state.ok, state.report()
