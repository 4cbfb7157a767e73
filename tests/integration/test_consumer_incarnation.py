"""Consumers that cannot skip (issue 12, item 1), on real PostgreSQL + Kafka.

- A topic that is not the one the stored offsets belong to (deleted and recreated with other content; the embedded
  broker restarted empty) is detected on start and while running, and read again from the beginning: the
  projections equal a rebuild from the event store.
- A version gap (v1, v3 on the topic; v2 only in the store) is closed from the store, in order, never skipped; when
  the store does not hold the missing version yet, the consumer waits for it.
- The repeatable case of the issue: the broker restarts, the relay's in-flight batch (later versions) lands at offset
  0 ahead of the republish of everything: nothing lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import TopicPartition

from events.base import DomainEvent
from projections import registry
from projections.base import ProjectionConsumer, RunnerStats, TopicProbe, stored_positions
from services.adapters.missing_events import StoreEvents
from services.infra.kafka_admin import delete_topics_async, ensure_topics_async
from services.replay import replay_async
from services.simulate import all_events, make_trails
from tests.support import unique_id, unique_topic
from tests.support.trails import applied_versions, differences, dump, publish, store, version_total

NAMES = registry.NAMES
PARTITIONS = 4
"""As many as Tansu gives a topic it creates by itself: any request naming a missing topic (a consumer's, the probe's)
creates it, so a deleted topic may come back before the test creates it again."""


def _consumers(db: str, bootstrap: str, topic: str, group: str, *, check_interval_s: float = 10.0,
               names: Sequence[str] = NAMES) -> list[ProjectionConsumer]:
    return [ProjectionConsumer(registry.build(n), db, bootstrap, topic=topic, dlq_topic=topic + ".dlq",
                               group_id=f"{group}.{n}", max_records=50, missing=StoreEvents(db),
                               check_interval_s=check_interval_s, retry_delay_s=0.3)
            for n in names]


async def _run_to_idle(consumers: list[ProjectionConsumer], idle_s: float = 3.0) -> list[RunnerStats]:
    return list(await asyncio.gather(*(c.run(asyncio.Event(), idle_timeout_s=idle_s) for c in consumers)))


async def _wait_applied(db: str, total: int, consumers: list[ProjectionConsumer], tasks: list[asyncio.Task[Any]],
                        timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for t in tasks:
            if t.done():
                t.result()  # a consumer that died says why
        if all(applied_versions(db, c.schema) >= total for c in consumers):
            return
        await asyncio.sleep(0.2)
    got = {c.schema: applied_versions(db, c.schema) for c in consumers}
    raise AssertionError(f"consumers did not apply every version ({total}) within {timeout_s:.0f}s: {got}")


async def _equals_rebuild(db: str, names: Sequence[str] = NAMES) -> None:
    """Each projection equals a rebuild of it from the event store (whole tables)."""
    for n in names:
        await replay_async(n, db, None, from_store=True, schema=f"{n}_rebuilt", progress=False)
        got, want = dump(db, n), dump(db, f"{n}_rebuilt")
        assert differences({n: got}, {n: want}) == {}, n


async def _recreate(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    await delete_topics_async(bootstrap, [topic])
    await asyncio.sleep(1.0)
    deadline = time.monotonic() + 30
    while True:
        try:
            await ensure_topics_async(bootstrap, [topic], partitions=partitions)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _partition_sizes(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    probe = TopicProbe(bootstrap)
    await probe.start()
    try:
        seen = await probe.observe({TopicPartition(topic, p): None for p in range(partitions)})
    finally:
        await probe.stop()
    return {tp.partition: o.end - o.beginning for tp, o in seen.items()}


async def _consume_across_recreate(db: str, bootstrap: str, first: Sequence[DomainEvent], second: Sequence[DomainEvent],
                                   *, partitions_before: int,
                                   after_second: Callable[[str], Awaitable[None]] | None = None,
                                   ) -> list[ProjectionConsumer]:
    """Consumers running (checking every 0.5 s) while ``first`` is read from a topic of ``partitions_before``
    partitions, the topic deleted and created again (``PARTITIONS``), ``second`` published to it: they must apply
    every version of both. Returns the consumers, stopped, for the caller's checks of their stats."""
    topic = unique_topic("events")
    await ensure_topics_async(bootstrap, [topic, topic + ".dlq"], partitions=partitions_before)
    await publish(bootstrap, topic, first)
    consumers = _consumers(db, bootstrap, topic, unique_id("g"), check_interval_s=0.5)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        await _wait_applied(db, version_total(first), consumers, tasks)
        await _recreate(bootstrap, topic)
        await publish(bootstrap, topic, second, first_notification=10_000)
        if after_second is not None:
            await after_second(topic)
        await _wait_applied(db, version_total([*first, *second]), consumers, tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        t.result()
    return consumers


def _trails(n: int, seed: int) -> tuple[list[DomainEvent], int]:
    events = all_events(make_trails(n, seed=seed))
    return events, version_total(events)


# --- a recreated topic ---------------------------------------------------------------------------------------------


async def test_offsets_stored_for_an_old_topic_are_not_used_on_its_successor(
        make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    """Offsets stored, the topic deleted and recreated with more (other) records: seeking to the stored offsets would
    skip the new topic's first records; the consumer notices on start and reads it from the beginning."""
    db = make_database()
    first, _ = _trails(6, seed=11)
    second, _ = _trails(30, seed=12)  # several times more per partition: the old offsets lie inside the new topic
    store(db, first + second)
    topic = unique_topic("events")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)
    await publish(kafka_bootstrap, topic, first)
    group = unique_id("g")
    await _run_to_idle(_consumers(db, kafka_bootstrap, topic, group))
    with psycopg.connect(db) as conn:
        before = stored_positions(conn, "traceability", topic)
    assert before and all(p.incarnation for p in before.values())

    await _recreate(kafka_bootstrap, topic)
    await publish(kafka_bootstrap, topic, second, first_notification=10_000)
    sizes = await _partition_sizes(kafka_bootstrap, topic)
    assert all(sizes[p] > pos.next_offset for p, pos in before.items())  # the stored offsets lie inside the new topic

    stats = await _run_to_idle(_consumers(db, kafka_bootstrap, topic, group))
    assert all(s.incarnation_resets >= 1 for s in stats)
    total = version_total(first + second)
    assert all(applied_versions(db, n) == total for n in NAMES)
    with psycopg.connect(db) as conn:
        after = stored_positions(conn, "traceability", topic)
    assert all(after[p].incarnation != before[p].incarnation for p in before)
    await _equals_rebuild(db)


async def test_a_topic_recreated_while_consuming_is_read_from_the_beginning(
        make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    """The periodic check between batches finds the new incarnation without waiting for a restart."""
    db = make_database()
    first, _ = _trails(6, seed=21)
    second, _ = _trails(18, seed=22)
    store(db, first + second)
    consumers = await _consume_across_recreate(db, kafka_bootstrap, first, second, partitions_before=PARTITIONS)
    assert all(c.stats.incarnation_resets >= 1 for c in consumers)
    await _equals_rebuild(db)


# --- version gaps --------------------------------------------------------------------------------------------------


async def test_a_version_gap_is_read_from_the_store_not_skipped(make_database: Callable[[], str],
                                                                kafka_bootstrap: str) -> None:
    db = make_database()
    events, total = _trails(6, seed=31)
    store(db, events)
    longer = {e.originator_id for e in events if e.originator_version >= 3}
    dropped = [e for e in events if e.originator_version == 2 and e.originator_id in longer]
    assert len(dropped) >= 6  # every stream with a v3 reaches the topic as v1, v3, v4, ...
    topic = unique_topic("events")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)
    await publish(kafka_bootstrap, topic, [e for e in events if e not in dropped])
    stats = await _run_to_idle(_consumers(db, kafka_bootstrap, topic, unique_id("g")))
    for s in stats:
        assert s.gaps_filled == len(dropped) and s.events_filled == len(dropped)
    assert all(applied_versions(db, n) == total for n in NAMES)
    await _equals_rebuild(db)


async def test_a_gap_waits_for_the_store_instead_of_skipping(make_database: Callable[[], str],
                                                             kafka_bootstrap: str) -> None:
    """v3 arrives while the store holds only v1: the batch waits (it is read again from its stored offsets) until
    v2 is recorded, then v2 and v3 are applied in order."""
    db = make_database()
    events, total = _trails(1, seed=41)
    rx = next(e.originator_id for e in events if e.originator_version == 3)
    late = [e for e in events if e.originator_id == rx and e.originator_version >= 2]
    store(db, [e for e in events if e not in late])
    topic = unique_topic("events")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)
    await publish(kafka_bootstrap, topic, [e for e in events if e not in late])
    await publish(kafka_bootstrap, topic, [e for e in late if e.originator_version == 3], first_notification=500)
    consumers = _consumers(db, kafka_bootstrap, topic, unique_id("g"), names=["traceability"])
    stop = asyncio.Event()
    task = asyncio.create_task(consumers[0].run(stop))
    try:
        deadline = time.monotonic() + 60
        while consumers[0].stats.gap_waits < 2 and time.monotonic() < deadline:
            assert not task.done(), task.result()
            await asyncio.sleep(0.1)
        assert consumers[0].stats.gap_waits >= 2
        store(db, late)  # the record catches up
        await publish(kafka_bootstrap, topic, late, first_notification=600)
        await _wait_applied(db, total, consumers, [task])
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    task.result()
    assert consumers[0].stats.gaps_filled >= 1
    await _equals_rebuild(db, ["traceability"])


# --- the embedded broker restarts ----------------------------------------------------------------------------------


@dataclass
class Broker:
    bootstrap: str
    lose_data: Callable[[str], Awaitable[None]]
    """Make the broker lose ``topic`` (and every other)."""


@pytest.fixture
def broker(kafka_kind: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[Broker]:
    """On Tansu, a broker of this test's own, restarted empty (what `kill` of the embedded broker does); on other
    brokers the session's, losing the topic by deletion and recreation (a restarted Apache Kafka keeps its data)."""
    if kafka_kind != "tansu":
        yield Broker(kafka_bootstrap, lambda topic: _recreate(kafka_bootstrap, topic))
        return
    from services.infra.embedded import Tansu
    from services.infra.ports import start_on_free_port

    def start(port: int) -> Tansu:
        tansu = Tansu(tmp_path / "tansu", port)
        tansu.start()
        return tansu

    own = start_on_free_port(start)

    async def restart(topic: str) -> None:
        await asyncio.to_thread(own.stop)
        await asyncio.to_thread(own.start)
        await ensure_topics_async(own.bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)

    yield Broker(own.bootstrap, restart)
    own.stop()


async def test_the_repeatable_case_broker_restart_with_an_in_flight_batch_ahead_of_the_republish(
        broker: Broker, make_database: Callable[[], str]) -> None:
    """Consumers running; the broker restarts empty; the relay's in-flight batch (the last versions of some streams)
    lands first, at offset 0, then the relay republishes the store from the start: every projection ends equal to
    a rebuild from the store, nothing skipped."""
    bootstrap = broker.bootstrap
    db = make_database()
    first, _ = _trails(8, seed=51)
    second, _ = _trails(8, seed=52)
    store(db, first + second)
    topic = unique_topic("events")
    await ensure_topics_async(bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)
    await publish(bootstrap, topic, first)
    consumers = _consumers(db, bootstrap, topic, unique_id("g"), check_interval_s=1.0)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        await _wait_applied(db, version_total(first), consumers, tasks)
        await broker.lose_data(topic)
        heads: dict[Any, DomainEvent] = {}
        for e in second:
            heads[e.originator_id] = e
        in_flight = list(heads.values())  # the last version of every stream of the second wave
        await publish(bootstrap, topic, in_flight, first_notification=90_000)
        await publish(bootstrap, topic, first + second)  # the republish from the start
        await _wait_applied(db, version_total(first + second), consumers, tasks, timeout_s=120)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        t.result()
    assert all(c.stats.gaps_filled >= 1 or c.stats.incarnation_resets >= 1 for c in consumers)
    await _equals_rebuild(db)


# --- replay ----------------------------------------------------------------------------------------------------------


async def test_replay_from_kafka_reads_gaps_through_and_hands_over_its_incarnation(
        make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    """A replay of a topic that lacks versions fills them from the store; the offsets it stores carry the topic's
    incarnation, so the live consumer continues there (no reset, nothing read twice)."""
    db = make_database()
    events, _ = _trails(6, seed=61)
    later, _ = _trails(3, seed=62)
    store(db, events + later)
    longer = {e.originator_id for e in events if e.originator_version >= 3}
    dropped = [e for e in events if e.originator_version == 2 and e.originator_id in longer]
    topic = unique_topic("events")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=PARTITIONS)
    await publish(kafka_bootstrap, topic, [e for e in events if e not in dropped])
    [result] = await replay_async("traceability", db, kafka_bootstrap, topic=topic, progress=False)
    assert result.events_filled == len(dropped) and result.gaps_filled == len(dropped)
    with psycopg.connect(db) as conn:
        handed = stored_positions(conn, "traceability", topic)
    assert handed and all(p.incarnation for p in handed.values())

    await publish(kafka_bootstrap, topic, later, first_notification=5_000)
    [stats] = await _run_to_idle(_consumers(db, kafka_bootstrap, topic, unique_id("g"), names=["traceability"]))
    assert stats.incarnation_resets == 0 and stats.duplicates == 0
    assert stats.applied == len(later)
    await _equals_rebuild(db, ["traceability"])

    # the same from the store: the ends and incarnations captured before the store is read are handed over
    [from_store] = await replay_async("traceability", db, kafka_bootstrap, topic=topic, from_store=True,
                                      progress=False)
    assert from_store.offsets
    [again] = await _run_to_idle(_consumers(db, kafka_bootstrap, topic, unique_id("g"), names=["traceability"]))
    assert (again.incarnation_resets, again.applied, again.duplicates) == (0, 0, 0)
    await _equals_rebuild(db, ["traceability"])


# --- workers ---------------------------------------------------------------------------------------------------------


async def test_the_router_routes_approvals_whose_issue_the_topic_lost(make_database: Callable[[], str],
                                                                       kafka_bootstrap: str) -> None:
    """Workers run on the same base: the router gets approvals (v2) without the issue (v1) that tells it what to
    route; it reads v1 from the store and routes each prescription once (it used to ignore them for good)."""
    from events.prescription import RoutingBasis
    from services.workers.router import run_router
    from tests.support.cast import METFORMIN
    from tests.support.kafka import header
    from tests.support.pipeline import copy_topic, item, new_pipeline, routes, wait_relayed

    p = await new_pipeline(make_database, kafka_bootstrap).start(router=False, gateway=False)
    try:
        cast = await p.call(p.cast().register)
        pharmacy_id = await p.call(cast.designate, unique_id("PH"), drugs=(METFORMIN,))
        rxs = [await p.call(cast.approved, item(METFORMIN)) for _ in range(3)]
        await wait_relayed(p)
    finally:
        await p.close()
    try:
        lossy = unique_topic("events.noissue")
        await copy_topic(p.bootstrap, p.topic, lossy, keep=lambda r: header(r, "event_type") != "PrescriptionIssued")
        router = await run_router(p.router_config(topic=lossy), asyncio.Event(), p.app, idle_timeout_s=3)
        assert router.routing.routed == len(rxs)
        for rx in rxs:
            assert [(r.dispenser_id, r.basis) for r in routes(p.app, rx)] == [(pharmacy_id, RoutingBasis.ROUTING_RULE)]
    finally:
        p.app.close()


async def test_a_topic_that_comes_back_with_more_partitions_is_read_on_all_of_them(
        make_database: Callable[[], str], kafka_bootstrap: str) -> None:
    """The embedded broker restarted empty, and a client's request naming the topic created it again with the
    broker's own partition count before ours did: events keyed to the new partitions are read too (within a check
    interval), never left unread."""
    db = make_database()
    first, _ = _trails(6, seed=31)
    second, _ = _trails(24, seed=32)
    store(db, first + second)
    async def new_partition_holds_events(topic: str) -> None:
        sizes = await _partition_sizes(kafka_bootstrap, topic, PARTITIONS)
        assert sizes[PARTITIONS - 1] > 0, sizes

    # recreated with 4: on Tansu either way (see PARTITIONS)
    consumers = await _consume_across_recreate(db, kafka_bootstrap, first, second, partitions_before=3,
                                               after_second=new_partition_holds_events)
    # on Tansu the group is joined again as a new member (LeaderAssignments); Apache Kafka assigns it right
    assert all(c.stats.rejoins <= 1 for c in consumers), [c.stats.rejoins for c in consumers]
    await _equals_rebuild(db)
