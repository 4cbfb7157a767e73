"""Helpers for the router and gateway tests (no tests here): the real path in one process — the write side,
the relay on a topic of its own, the router and the gateway as asyncio tasks — plus feed readers (the cast: ``Pipeline.cast()``).

Every test gets a fresh database (the relay reads a global log) and unique topics, groups and feed prefixes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg

from events import topics
from events.base import DomainEvent
from events.contracts import FeedMessage
from events.prescription import PrescriptionItem, PrescriptionRouted
from services.application import RxTrail
from services.bootstrap import build_application
from services.infra.settings import Settings
from services.relay import run_relay
from services.workers.gateway import Gateway, GatewayConfig, run_gateway
from services.workers.router import Router, RouterConfig, run_router
from tests.support import domain, unique_id, unique_topic, wait_until_async
from tests.support.cast import CHANGCHUN, JINAN, Cast
from tests.support.kafka import end_offsets, read_all

SECRET = b"x" * 32
REGION = JINAN
OTHER_REGION = CHANGCHUN
PARTITIONS = 4


def item(drug_code: str, quantity: int = 2, unit_price: str = "12.50") -> PrescriptionItem:
    """The router and gateway tests' prescriptions carry two units of each drug."""
    return domain.item(drug_code, quantity, unit_price)


@dataclass
class Pipeline:
    database_url: str
    bootstrap: str
    app: RxTrail
    topic: str
    dlq_topic: str
    feed_prefix: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    router: Router | None = None
    gateway: Gateway | None = None

    def router_config(self, **kw: Any) -> RouterConfig:
        fields: dict[str, Any] = {"topic": self.topic, "dlq_topic": self.dlq_topic, "group_id": unique_id("router"),
                                      "partitions": PARTITIONS}
        fields.update(kw)
        return RouterConfig(self.database_url, self.bootstrap, **fields)

    def gateway_config(self, **kw: Any) -> GatewayConfig:
        fields: dict[str, Any] = {"topic": self.topic, "dlq_topic": self.dlq_topic, "group_id": unique_id("gateway"),
                                      "feed_prefix": self.feed_prefix, "partitions": PARTITIONS}
        fields.update(kw)
        return GatewayConfig(self.database_url, self.bootstrap, **fields)

    def cast(self, **kw: Any) -> Cast:
        """The cast for these tests: in REGION, a new patient per prescription, pharmacies designated per test."""
        return Cast(self.app, **{"region": REGION, "with_pharmacies": False, "patient_per_visit": True, **kw})

    def feed(self, pharmacy_id: str) -> str:
        return f"{self.feed_prefix}{pharmacy_id}"

    async def start(self, *, router: bool = True, gateway: bool = True) -> Pipeline:
        self.tasks.append(asyncio.create_task(run_relay((self.database_url, self.bootstrap), self.stop,
                                                        topic=self.topic, partitions=PARTITIONS,
                                                        poll_interval_s=0.2, check_interval_s=5.0)))
        if router:
            self.router = Router(self.app)
            self.tasks.append(asyncio.create_task(run_router(self.router_config(), self.stop, self.app,
                                                             router=self.router)))
        if gateway:
            self.gateway = Gateway(feed_prefix=self.feed_prefix)
            self.tasks.append(asyncio.create_task(run_gateway(self.gateway_config(), self.stop,
                                                              gateway=self.gateway)))
        return self

    async def close(self) -> None:
        self.stop.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def call(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a blocking write-side call off the event loop (the workers share it)."""
        return await asyncio.to_thread(func, *args, **kw)

    def check_tasks(self) -> None:
        for task in self.tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def new_pipeline(make_database: Callable[[], str], bootstrap: str) -> Pipeline:
    db = make_database()
    app = build_application(Settings(database_url=db, pseudonym_secret=SECRET))
    return Pipeline(db, bootstrap, app, topic=unique_topic(topics.EVENTS), dlq_topic=unique_topic(topics.DLQ),
                    feed_prefix=unique_topic(topics.PHARMACY_PREFIX.rstrip(".")) + ".")


async def wait_for(predicate: Callable[[], Any], pipeline: Pipeline | None = None, timeout_s: float = 40.0,
                   what: str = "condition") -> Any:
    """``wait_until_async`` for a blocking predicate (run in a thread), re-raising a crashed pipeline task."""
    return await wait_until_async(predicate, timeout=timeout_s, interval=0.2, what=what, in_thread=True,
                                  check=pipeline.check_tasks if pipeline is not None else None)


def stream(app: RxTrail, rx: UUID) -> list[DomainEvent]:
    return app.store.events_of(rx)


def routes(app: RxTrail, rx: UUID) -> list[PrescriptionRouted]:
    return [e for e in stream(app, rx) if isinstance(e, PrescriptionRouted)]


async def wait_routed(p: Pipeline, rx: UUID, n: int = 1) -> list[PrescriptionRouted]:
    found: list[PrescriptionRouted] = await wait_for(lambda: (r := routes(p.app, rx)) and len(r) >= n and r, p,
                                                     what=f"{n} route(s) of {rx}")
    return found


def event_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
    return int(row[0]) if row else 0


async def wait_relayed(p: Pipeline) -> None:
    """Until the events topic holds every stored event."""
    async def caught_up() -> bool:
        return len(await read_all(p.bootstrap, p.topic)) >= event_count(p.database_url)

    await wait_until_async(caught_up, interval=0.3, what="the relay to publish every event", check=p.check_tasks)


def stored_offsets(database_url: str, schema: str, topic: str) -> dict[int, int]:
    """The next offsets a worker or projection stored with its state (``<schema>.kafka_offsets``)."""
    try:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(f'SELECT partition, next_offset FROM "{schema}".kafka_offsets WHERE topic = %s',
                                (topic,)).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {int(partition): int(offset) for partition, offset in rows}


async def wait_consumed(p: Pipeline, schema: str) -> None:
    """Until the consumer keeping its state in ``schema`` has stored offsets at the end of every partition of the
    events topic (call ``wait_relayed`` first so that the end is every stored event)."""
    async def consumed() -> bool:
        ends = await end_offsets(p.bootstrap, p.topic)
        done = await asyncio.to_thread(stored_offsets, p.database_url, schema, p.topic)
        return all(done.get(partition, 0) >= end for partition, end in ends.items() if end)

    await wait_until_async(consumed, interval=0.2, what=f"{schema} to consume {p.topic} to its end",
                           check=p.check_tasks)


def router_knows(p: Pipeline, schema: str, pharmacy_id: str, *, active: bool | None = None) -> bool:
    """The router has folded this pharmacy's designation (and its suspension, with ``active=False``)."""
    try:
        with psycopg.connect(p.database_url) as conn:
            row = conn.execute(f'SELECT agreement_active FROM "{schema}".pharmacies WHERE pharmacy_id = %s',
                               (pharmacy_id,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return row is not None and (active is None or row[0] is active)


def feed_messages(records: list[Any]) -> list[FeedMessage]:
    return [FeedMessage.model_validate_json(r.value) for r in records]


async def wait_feed(p: Pipeline, pharmacy_id: str, predicate: Callable[[list[FeedMessage]], bool],
                    timeout_s: float = 40.0) -> list[Any]:
    """The pharmacy's whole feed once ``predicate`` holds for its messages."""
    seen: list[Any] = []

    async def feed() -> list[Any] | None:
        seen[:] = await read_all(p.bootstrap, p.feed(pharmacy_id))
        return list(seen) if predicate(feed_messages(seen)) else None

    def described() -> str:
        return f"the feed of {pharmacy_id}: {[(m.message_type, str(m.prescription_id)) for m in feed_messages(seen)]}"

    records = await wait_until_async(feed, timeout=timeout_s, interval=0.3, check=p.check_tasks, what=described)
    assert records is not None
    return records


def kinds(messages: list[FeedMessage], rx: UUID) -> list[str]:
    return [m.message_type for m in messages if m.prescription_id == rx]


async def copy_topic(bootstrap: str, source: str, target: str, keep: Callable[[Any], bool]) -> int:
    """Republish the messages of ``source`` that ``keep`` accepts to ``target`` (headers and keys as they were)."""
    from aiokafka import AIOKafkaProducer

    from services.infra.kafka_admin import ensure_topics_async

    await ensure_topics_async(bootstrap, [target], partitions=PARTITIONS)
    records = [r for r in await read_all(bootstrap, source) if keep(r)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(target, value=r.value, key=r.key, headers=list(r.headers))
    finally:
        await producer.stop()
    return len(records)
