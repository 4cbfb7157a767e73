"""Broker loss with one relay per event store on one topic (region shards, deploy/SCALING.md "Relays").

A relay used to notice a loss only by a partition ending below the offsets the broker acknowledged to *it*. With
several relays on ``rx.events``, another relay's republish after the same loss lifts the partitions back above
those floors, and the loss stayed hidden. Now each relay reads its own records back at each check
(``services/relay/core.py`` ``_read_back``; ``positions.py`` ``marks``).

Real PostgreSQL (three databases: the global store and the Changchun and Jinan shards) and a private embedded
Tansu, memory-only: killing and starting it again loses the topic, as in tests/faults and test_relay.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from aiokafka.errors import KafkaError

from events.envelope import event_id
from projections import registry
from services.adapters.event_log import discover_logs
from services.application import RxTrail
from services.application.sharding import GLOBAL
from services.bootstrap import build_application, relay_config, run_projections, shard_database_urls
from services.domain.clock import FixedClock
from services.infra.settings import Settings
from services.relay import core
from services.relay.core import RelayStats, find_loss, run_relay
from tests.integration.test_sharding import NOW, collected_in_catalog, stored_versions, union_reference
from tests.support import unique_topic
from tests.support.cast import CHANGCHUN, JINAN, SECRET, Cast
from tests.support.kafka import end_offsets, read_all
from tests.support.trails import applied_versions, differences, dump_all
from tests.support.waits import wait_until_async

T = TypeVar("T")

PARTITIONS = 3


@pytest.fixture
def shards(make_database: Callable[[], str]) -> dict[str, str]:
    return {GLOBAL: make_database(), CHANGCHUN: make_database(), JINAN: make_database()}


@pytest.fixture
def settings(shards: dict[str, str]) -> Settings:
    return Settings(database_url=shards[GLOBAL], pseudonym_secret=SECRET,
                    shards={CHANGCHUN: shards[CHANGCHUN], JINAN: shards[JINAN]})


@pytest.fixture
def app(settings: Settings) -> Iterator[RxTrail]:
    application = build_application(settings, clock=FixedClock(NOW), pool_size=5, max_overflow=10)
    yield application
    application.close()


class Broker:
    """A private memory-only Tansu on a fixed port that can lose everything (kill + start again)."""

    def __init__(self, base: Path) -> None:
        from services.infra.embedded import Tansu
        from services.infra.ports import free_port

        self.base, self.port, self.n = base, free_port(), 0
        self.tansu = Tansu(base / "tansu-0", self.port)
        self.bootstrap = self.tansu.start()

    def lose_everything(self) -> None:
        from services.infra.embedded import Tansu

        self.tansu.stop()
        self.n += 1
        self.tansu = Tansu(self.base / f"tansu-{self.n}", self.port)
        self.tansu.start()

    def stop(self) -> None:
        self.tansu.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


async def until(read: Callable[[], Awaitable[T]], holds: Callable[[T], bool], *, timeout: float, what: str) -> T:
    """Read until ``holds`` accepts what was read; the last value read is in the failure."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if holds(value):
            return value
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.3)


def stored_event_ids(urls: list[str]) -> set[str]:
    ids: set[str] = set()
    for url in urls:
        with psycopg.connect(url) as conn:
            for table in discover_logs(conn):
                rows = conn.execute(f'SELECT originator_id, originator_version FROM "{table}"').fetchall()
                ids |= {event_id(str(a), v) for a, v in rows}
    return ids


async def topic_event_ids(bootstrap: str, topic: str) -> set[str]:
    """The event ids on the topic now (none while the broker is away)."""
    try:
        return {dict(r.headers)["event_id"].decode() for r in await read_all(bootstrap, topic)}
    except (KafkaError, OSError, TimeoutError):
        return set()


def relay_marks(database_url: str, name: str) -> tuple[dict[int, int], dict[str, Any]]:
    """(floors, marks) as relay ``name`` stored them."""
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute("SELECT next_offsets, marks FROM relay_broker WHERE name = %s", (name,)).fetchone()
        except psycopg.errors.UndefinedTable:  # the relay has not started yet
            row = None
    if row is None:
        return {}, {}
    return {int(p): int(v[0]) for p, v in row[0].items()}, row[1]


class Relays:
    """One relay per store, each started and stopped on its own."""

    def __init__(self, settings: Settings, urls: dict[str, str], **config: Any) -> None:
        self.settings, self.urls, self.config = settings, urls, config
        self.running: dict[str, tuple[asyncio.Event, asyncio.Task[RelayStats]]] = {}
        self.stats = {shard: RelayStats() for shard in urls}

    def start(self, *shards: str, **config: Any) -> None:
        for shard in shards:
            cfg = relay_config(self.settings, database_url=self.urls[shard], name=f"relay-{shard}",
                               **{**self.config, **config})
            stop = asyncio.Event()
            self.running[shard] = (stop, asyncio.create_task(run_relay(cfg, stop, self.stats[shard])))

    async def stop(self, *shards: str) -> None:
        for shard in shards or tuple(self.running):
            stop, task = self.running.pop(shard)
            stop.set()
            await asyncio.wait_for(task, 30)


def traffic(app: RxTrail, casts: dict[str, Cast], per_region: dict[str, int]) -> None:
    for region, n in per_region.items():
        for _ in range(n):
            collected_in_catalog(casts[region])


async def test_a_loss_hidden_by_another_relays_republish_is_found_by_reading_our_records_back(
        app: RxTrail, settings: Settings, shards: dict[str, str], broker: Broker,
        make_database: Callable[[], str]) -> None:
    """Jinan's relay publishes first (low offsets), the others after it. The broker loses everything while
    Jinan's relay is down; the global and Changchun relays find the loss and republish first, so every partition
    ends above Jinan's floors (the old check, ``find_loss``, sees nothing: asserted). Jinan's relay starts, reads
    its floor records back, finds others' records there, republishes. The topic then holds every stored event,
    and the projections built from it equal the projections of the union of the three stores."""
    casts = {region: await asyncio.to_thread(Cast(app, region=region, patient_per_visit=True).register)
             for region in (CHANGCHUN, JINAN)}
    await asyncio.to_thread(traffic, app, casts, {JINAN: 1})
    topic = unique_topic("rx.events.loss")
    live = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "events_topic": topic,
                                       "dlq_topic": topic + ".dlq", "partitions": PARTITIONS})
    urls = shard_database_urls(live)
    relays = Relays(live, urls, poll_interval_s=0.2, check_interval_s=1.0)
    others = (GLOBAL, CHANGCHUN)
    try:
        relays.start(JINAN)
        jinan_ids = stored_event_ids([urls[JINAN]])
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: jinan_ids <= got,
                    timeout=30, what="jinan_ids on the topic")
        await relays.stop(JINAN)
        await asyncio.to_thread(traffic, app, casts, {CHANGCHUN: 4})
        relays.start(*others)
        before = stored_event_ids([urls[GLOBAL], urls[CHANGCHUN]])
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: before <= got,
                    timeout=30, what="before on the topic")
        floors, marks = relay_marks(urls[JINAN], f"relay-{JINAN}")
        assert floors and set(marks["floor"]) == {str(p) for p in floors}

        broker.lose_everything()
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: before <= got,
                    timeout=60, what="before on the topic")
        assert all(relays.stats[s].resets >= 1 for s in others)
        ends = await end_offsets(broker.bootstrap, topic)
        assert find_loss(floors, len(ends), ends) is None, (floors, ends)  # the end offsets hide Jinan's loss
        assert not jinan_ids & await topic_event_ids(broker.bootstrap, topic)

        await asyncio.to_thread(traffic, app, casts, {JINAN: 1})  # Jinan has something new to send, too
        relays.start(JINAN)
        everything = stored_event_ids(list(urls.values()))
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: everything <= got,
                    timeout=60, what="everything on the topic")
        assert relays.stats[JINAN].resets == 1

        stop = asyncio.Event()
        projections = asyncio.create_task(run_projections(registry.NAMES, live, stop))
        expect = stored_versions(list(urls.values()))
        try:
            await wait_until_async(
                lambda: asyncio.to_thread(lambda: all(applied_versions(urls[GLOBAL], name) == expect
                                                      for name in registry.NAMES)), timeout=90, interval=0.5)
        finally:
            stop.set()
            await projections
    finally:
        await relays.stop()
    got = dump_all(urls[GLOBAL], registry.NAMES)
    reference = await asyncio.to_thread(union_reference, make_database(), list(urls.values()))
    assert differences(got, reference) == {}
    with psycopg.connect(urls[GLOBAL]) as conn:
        regions = {r[0] for r in conn.execute("SELECT DISTINCT pooling_region FROM traceability.visits")}
    assert {CHANGCHUN, JINAN} <= regions


async def test_a_relay_whose_floors_moved_past_the_loss_still_finds_it(
        app: RxTrail, settings: Settings, shards: dict[str, str], broker: Broker,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Jinan's relay keeps running, but its checks come late (skipped here for a while): after the loss the others
    republish, then Jinan's relay sends new events, which land above its old offsets. Its floors now point at
    records written after the loss, which are in place. The records its last check found (``checked``) are not:
    that check was before the loss. It republishes."""
    casts = {region: await asyncio.to_thread(Cast(app, region=region, patient_per_visit=True).register)
             for region in (CHANGCHUN, JINAN)}
    await asyncio.to_thread(traffic, app, casts, {JINAN: 1})
    topic = unique_topic("rx.events.loss")
    live = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "events_topic": topic,
                                       "dlq_topic": topic + ".dlq", "partitions": PARTITIONS})
    urls = shard_database_urls(live)
    jinan_relay = f"relay-{JINAN}"
    held = asyncio.Event()
    held.set()
    original = core.Relay._check_broker

    async def late_check(self: core.Relay, conn: Any, view: Any, state: Any, logs: Any, *, at_start: bool) -> Any:
        if self.config.name == jinan_relay and not held.is_set():
            return state  # not yet: this relay's checks come late (a session restart's included)
        return await original(self, conn, view, state, logs, at_start=at_start)

    monkeypatch.setattr(core.Relay, "_check_broker", late_check)
    relays = Relays(live, urls, poll_interval_s=0.2, check_interval_s=0.5)
    try:
        relays.start(JINAN)
        jinan_ids = stored_event_ids([urls[JINAN]])
        await until(lambda: asyncio.to_thread(relay_marks, urls[JINAN], jinan_relay),
                    lambda fm: bool(fm[0]) and len(fm[1].get("checked", {})) == len(fm[0]),
                    timeout=30, what="Jinan's relay to check its records")
        await asyncio.to_thread(traffic, app, casts, {CHANGCHUN: 4})
        relays.start(GLOBAL, CHANGCHUN)
        before = stored_event_ids([urls[GLOBAL], urls[CHANGCHUN]])
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: before <= got,
                    timeout=30, what="before on the topic")
        _, marks = relay_marks(urls[JINAN], jinan_relay)
        checked_before = marks["checked"]

        held.clear()  # Jinan's relay checks nothing from here on, until set again
        await asyncio.sleep(1.0)
        broker.lose_everything()
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: before <= got,
                    timeout=60, what="before on the topic")
        await asyncio.to_thread(traffic, app, casts, {JINAN: 3})  # sent while its check is held
        new_ids = stored_event_ids([urls[JINAN]]) - jinan_ids
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: new_ids <= got,
                    timeout=30, what="new_ids on the topic")
        floors, marks = relay_marks(urls[JINAN], jinan_relay)
        ends = await end_offsets(broker.bootstrap, topic)
        assert relays.stats[JINAN].resets == 0
        assert find_loss(floors, len(ends), ends) is None  # its floors moved onto the new records
        assert marks["checked"] == checked_before
        assert not jinan_ids & await topic_event_ids(broker.bootstrap, topic)  # the old ones are gone

        held.set()
        everything = stored_event_ids(list(urls.values()))
        await until(lambda: topic_event_ids(broker.bootstrap, topic), lambda got: everything <= got,
                    timeout=60, what="everything on the topic")
        assert relays.stats[JINAN].resets == 1
    finally:
        held.set()
        await relays.stop()
