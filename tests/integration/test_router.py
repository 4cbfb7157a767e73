"""The router on real PostgreSQL + Kafka: commands → relay → router → RoutePrescription recorded.

Patient choice honoured; the rule deterministic and never picking a suspended, other-region or drug-lacking
pharmacy; a returned prescription routed elsewhere; no eligible pharmacy leaves it approved until one is
designated; redelivered events (fresh group and schema, approvals without their routes, a crash between the
commands and the commit) record no second route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg

from events import topics
from events.prescription import PrescriptionApproved, RoutingBasis
from services.application import commands as c
from services.domain.routing import PharmacyInfo, RoutingRequest, choose
from services.workers.router import Router, run_router
from tests.support import unique_id
from tests.support.cast import AMLODIPINE, METFORMIN, VITAMIN, ok
from tests.support.kafka import header
from tests.support.pipeline import (
    OTHER_REGION,
    Pipeline,
    copy_topic,
    event_count,
    item,
    new_pipeline,
    router_knows,
    routes,
    stream,
    unique_topic,
    wait_for,
    wait_relayed,
    wait_routed,
)

DRUGS = (METFORMIN, AMLODIPINE)


async def _pharmacies_known(p: Pipeline, *pharmacy_ids: str, suspended: tuple[str, ...] = ()) -> None:
    def knows(pharmacy_id: str, active: bool | None = None) -> Callable[[], bool]:
        return lambda: router_knows(p, "router", pharmacy_id, active=active)

    for pharmacy_id in pharmacy_ids:
        await wait_for(knows(pharmacy_id), p, what=f"router to see {pharmacy_id}")
    for pharmacy_id in suspended:
        await wait_for(knows(pharmacy_id, False), p, what=f"router to see {pharmacy_id} suspended")


async def test_patient_choice_is_honoured(make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start(gateway=False)
    try:
        cast = await p.call(p.cast().register)
        near, far = unique_id("PH"), unique_id("PH")
        for pharmacy_id in (near, far):
            await p.call(cast.designate, pharmacy_id, drugs=DRUGS)
        undeclared = await p.call(cast.designate, unique_id("PH"))  # no drug list: only by choice
        await _pharmacies_known(p, near, far, undeclared)
        chosen = {}
        for target in (near, far, far, undeclared):
            rx = await p.call(cast.approved, item(METFORMIN), preferred=target)
            chosen[rx] = target
        for rx, target in chosen.items():
            (route,) = await wait_routed(p, rx)
            assert (route.dispenser_id, route.basis) == (target, RoutingBasis.PATIENT_CHOICE)
    finally:
        await p.close()
        p.app.close()


def _predicted(rx: UUID, pharmacies: list[PharmacyInfo]) -> str | None:
    found = choose(RoutingRequest(rx, "370100", frozenset(DRUGS)), pharmacies)
    return found.pharmacy_id if found else None


async def _route_by_rule(p: Pipeline, tag: str, refs: list[str]) -> dict[str, tuple[UUID, str, RoutingBasis]]:
    """One region's pharmacies (2 eligible, 4 not) and prescriptions by ``refs``; returns ref → route."""
    cast = p.cast(hospital=f"H-{tag}", physician=f"DR-{tag}", pharmacist=f"RPH-{tag}")
    await p.call(cast.register)
    ids = {name: f"PH-{tag}-{name}" for name in ("E1", "E2", "SUSP", "ELSE", "LACK", "NOLIST")}
    await p.call(cast.designate, ids["E1"], drugs=DRUGS)
    await p.call(cast.designate, ids["E2"], drugs=(*DRUGS, VITAMIN))
    await p.call(cast.designate, ids["SUSP"], drugs=DRUGS)
    await p.call(cast.designate, ids["ELSE"], region=OTHER_REGION, drugs=DRUGS)
    await p.call(cast.designate, ids["LACK"], drugs=(METFORMIN,))
    await p.call(cast.designate, ids["NOLIST"])
    ok(await p.call(p.app.handle, c.SuspendPharmacyAgreement(changed_by="agency:370100", pharmacy_id=ids["SUSP"],
                                                               reason="audit findings")))
    await _pharmacies_known(p, *ids.values(), suspended=(ids["SUSP"],))
    out = {}
    rxs = {ref: await p.call(cast.approved, item(METFORMIN), item(AMLODIPINE), prescription_ref=ref) for ref in refs}
    for ref, rx in rxs.items():
        (route,) = await wait_routed(p, rx)
        out[ref] = (rx, route.dispenser_id, route.basis)
    return out


async def test_rule_is_deterministic_and_skips_ineligible_pharmacies(make_database: Callable[[], str],
                                                                     kafka_bootstrap: str) -> None:
    """Two independent stacks given the same registrations and prescriptions route them identically, to the
    pharmacy the pure rule predicts, and never to a suspended, other-region, drug-lacking or list-less one."""
    tag = unique_id("det")
    refs = [f"RX-{n}" for n in range(8)]
    first, second = new_pipeline(make_database, kafka_bootstrap), new_pipeline(make_database, kafka_bootstrap)
    await first.start(gateway=False)
    await second.start(gateway=False)
    try:
        a, b = await asyncio.gather(_route_by_rule(first, tag, refs), _route_by_rule(second, tag, refs))
    finally:
        await asyncio.gather(first.close(), second.close())
        first.app.close()
        second.app.close()
    assert a == b
    eligible = [PharmacyInfo(f"PH-{tag}-E1", "370100", True, frozenset(DRUGS)),
                PharmacyInfo(f"PH-{tag}-E2", "370100", True, frozenset((*DRUGS, VITAMIN)))]
    everyone = [*eligible, *(PharmacyInfo(f"PH-{tag}-{n}", "370100", True, frozenset((*DRUGS, VITAMIN)))
                             for n in ("SUSP", "ELSE", "LACK", "NOLIST"))]
    for rx, pharmacy_id, basis in a.values():
        assert basis is RoutingBasis.ROUTING_RULE
        assert pharmacy_id == _predicted(rx, eligible)
    # the test means something: had the ineligible ones counted, some prescriptions would have gone to them
    assert any(_predicted(rx, everyone) not in {e.pharmacy_id for e in eligible} for rx, _, _ in a.values())
    assert {pharmacy_id for _, pharmacy_id, _ in a.values()} == {e.pharmacy_id for e in eligible}


async def test_returned_prescription_is_routed_to_another_pharmacy(make_database: Callable[[], str],
                                                                   kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start(gateway=False)
    try:
        cast = await p.call(p.cast().register)
        first, other = unique_id("PH"), unique_id("PH")
        for pharmacy_id in (first, other):
            await p.call(cast.designate, pharmacy_id, drugs=DRUGS)
        await _pharmacies_known(p, first, other)
        rx = await p.call(cast.approved, item(METFORMIN), preferred=first)
        await wait_routed(p, rx)
        ok(await p.call(p.app.handle, c.ReturnPrescription(prescription_id=rx, dispenser_id=first,
                                                           reason="out of stock")))
        second = (await wait_routed(p, rx, n=2))[1]
        assert (second.dispenser_id, second.basis) == (other, RoutingBasis.ROUTING_RULE)
    finally:
        await p.close()
        p.app.close()


async def test_no_eligible_pharmacy_leaves_it_approved_until_one_is_designated(
        make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start(gateway=False)
    try:
        cast = await p.call(p.cast().register)
        lacking = await p.call(cast.designate, unique_id("PH"), drugs=(METFORMIN,))
        await _pharmacies_known(p, lacking)
        rx = await p.call(cast.approved, item(METFORMIN), item(VITAMIN))
        assert p.router is not None
        await wait_for(lambda: p.router.routing.unroutable >= 1, p, what="the router to give up")  # type: ignore[union-attr]
        assert routes(p.app, rx) == [] and type(stream(p.app, rx)[-1]) is PrescriptionApproved
        carrying = await p.call(cast.designate, unique_id("PH"), drugs=(METFORMIN, VITAMIN))
        (route,) = await wait_routed(p, rx)
        assert (route.dispenser_id, route.basis) == (carrying, RoutingBasis.ROUTING_RULE)
    finally:
        await p.close()
        p.app.close()


# --- redelivery ---------------------------------------------------------------------------------------------


async def _routed_world(p: Pipeline) -> list[UUID]:
    """Three prescriptions routed (one by choice, then returned and routed again) and one cancelled."""
    cast = await p.call(p.cast().register)
    a, b = unique_id("PH"), unique_id("PH")
    for pharmacy_id in (a, b):
        await p.call(cast.designate, pharmacy_id, drugs=DRUGS)
    await _pharmacies_known(p, a, b)
    rxs = [await p.call(cast.approved, item(METFORMIN), preferred=a),
           await p.call(cast.approved, item(METFORMIN)),
           await p.call(cast.approved, item(AMLODIPINE))]
    for rx in rxs:
        await wait_routed(p, rx)
    ok(await p.call(p.app.handle, c.ReturnPrescription(prescription_id=rxs[0], dispenser_id=a, reason="closed")))
    await wait_routed(p, rxs[0], n=2)
    return rxs


async def test_redelivered_events_record_no_second_route(make_database: Callable[[], str],
                                                         kafka_bootstrap: str) -> None:
    p = await new_pipeline(make_database, kafka_bootstrap).start(gateway=False)
    try:
        rxs = await _routed_world(p)
        await wait_relayed(p)  # the relay has published the last route
    finally:
        await p.close()
    try:
        before = event_count(p.database_url)
        routes_before = {rx: len(routes(p.app, rx)) for rx in rxs}
        # 1. every event again: a fresh consumer group and a fresh schema (offsets and state reset)
        again = await run_router(p.router_config(schema="router_again"), asyncio.Event(), p.app, idle_timeout_s=3)
        assert event_count(p.database_url) == before
        assert again.stats.replayed == again.stats.issued
        # 2. the approvals and the return redelivered without the routes they led to: the router must ask again,
        #    and every command it sends is answered from the idempotency store
        blind = unique_topic(f"{topics.EVENTS}.noroutes")
        await copy_topic(p.bootstrap, p.topic, blind, keep=lambda r: header(r, "event_type") != "PrescriptionRouted")
        asked = await run_router(p.router_config(topic=blind, schema="router_blind"), asyncio.Event(), p.app,
                                 idle_timeout_s=3)
        assert asked.stats.issued >= len(rxs)
        assert asked.stats.replayed == asked.stats.issued and asked.stats.ok == asked.stats.issued
        assert event_count(p.database_url) == before
        assert {rx: len(routes(p.app, rx)) for rx in rxs} == routes_before == {rxs[0]: 2, rxs[1]: 1, rxs[2]: 1}
    finally:
        p.app.close()


class _CrashBeforeCommit(Router):
    """Dies after issuing its commands and before the loop commits state and offsets."""

    def apply(self, conn: psycopg.Connection[Any], schema: str, batch: Any) -> None:
        super().apply(conn, schema, batch)
        if self.stats.issued:
            raise RuntimeError("crash between the commands and the commit")


async def test_a_crash_between_commands_and_commit_routes_once(make_database: Callable[[], str],
                                                               kafka_bootstrap: str) -> None:
    """The routes the crashed batch asked for are recorded, its state and offsets are not: the restarted router
    asks again under the same keys and gets the first outcomes back. The relay is stopped first so the
    restarted router cannot learn of those routes from the topic."""
    p = await new_pipeline(make_database, kafka_bootstrap).start(router=False, gateway=False)
    try:
        cast = await p.call(p.cast().register)
        pharmacy_id = await p.call(cast.designate, unique_id("PH"), drugs=DRUGS)
        rxs = [await p.call(cast.approved, item(METFORMIN)) for _ in range(3)]
        await wait_relayed(p)
    finally:
        await p.close()
    try:
        config = p.router_config()
        crashing = _CrashBeforeCommit(p.app)
        try:
            await run_router(config, asyncio.Event(), p.app, router=crashing, idle_timeout_s=5)
        except RuntimeError as exc:
            assert "crash" in str(exc)
        else:
            raise AssertionError("the crashing router did not crash")
        assert crashing.stats.ok >= 1 and crashing.stats.replayed == 0
        with psycopg.connect(p.database_url) as conn:  # the batch whose commands went out was not committed
            assert conn.execute("SELECT count(*) FROM router.prescriptions WHERE status = 'routed'").fetchone() == (0,)
        restarted = await run_router(config, asyncio.Event(), p.app, idle_timeout_s=3)
        assert restarted.stats.replayed == crashing.stats.ok
        assert restarted.routing.routed == len(rxs)
        for rx in rxs:
            assert [(r.dispenser_id, r.basis) for r in routes(p.app, rx)] == [(pharmacy_id, RoutingBasis.ROUTING_RULE)]
    finally:
        p.app.close()
