"""Helpers for the router and gateway tests (no tests here): the real path in one process — the write side,
the relay on a topic of its own, the router and the gateway as asyncio tasks — plus a cast and feed readers.

Every test gets a fresh database (the relay reads a global log) and unique topics, groups and feed prefixes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from events.base import CatalogCategory, DomainEvent, InsuranceType, Ownership, RealNameMethod
from events.prescription import PrescriptionItem, PrescriptionRouted
from services.adapters.event_log import load_stream
from services.application import RxTrail, build_application
from services.application import commands as c
from services.application.outcomes import Outcome
from services.relay import run_relay
from services.workers.gateway import FeedMessage, Gateway, GatewayConfig, run_gateway
from services.workers.router import Router, RouterConfig, run_router
from tests.support import unique_id, unique_topic

SECRET = b"x" * 32
REGION = "370100"
OTHER_REGION = "220100"
METFORMIN = "XA10BAA001A001010101"
AMLODIPINE = "XC08CAA001A001010101"
VITAMIN = "XA11HAX001A001010101"
PARTITIONS = 4


def item(drug_code: str, quantity: int = 2, unit_price: str = "12.50") -> PrescriptionItem:
    return PrescriptionItem(drug_code=drug_code, name=f"drug {drug_code[-6:]}", spec="0.5g*30", quantity=quantity,
                            days_supply=28, unit_price=Decimal(unit_price), category=CatalogCategory.A)


def ok(outcome: Outcome) -> Outcome:
    if not outcome.ok:
        raise AssertionError(f"expected ok, got {outcome.error} {outcome.rule_id}: {outcome.reason}")
    return outcome


@dataclass
class Cast:
    """A hospital with its physician and pharmacist; patients and pharmacies are added per test."""

    app: RxTrail
    hospital: str = field(default_factory=lambda: unique_id("H"))
    physician: str = field(default_factory=lambda: unique_id("DR"))
    pharmacist: str = field(default_factory=lambda: unique_id("RPH"))
    national_ids: dict[UUID, str] = field(default_factory=dict)

    def register(self) -> Cast:
        ok(self.app.handle(c.RegisterPhysician(physician_id=self.physician, hospital_id=self.hospital,
                                               name="Dr Li", qualification_no="Q-1")))
        ok(self.app.handle(c.RegisterPharmacist(pharmacist_id=self.pharmacist, employer_id=self.hospital,
                                                name="Wang", qualification_no="Q-2")))
        return self

    def designate(self, pharmacy_id: str, *, region: str = REGION, drugs: tuple[str, ...] | None = None) -> str:
        ok(self.app.handle(c.DesignatePharmacy(pharmacy_id=pharmacy_id, name=f"pharmacy {pharmacy_id}",
                                               pooling_region=region, agreement_no=unique_id("AG"),
                                               drug_codes=drugs)))
        return pharmacy_id

    def approved(self, *items: PrescriptionItem, preferred: str | None = None, region: str = REGION,
                 prescription_ref: str | None = None) -> UUID:
        """Visit, prescription (with the patient's choice) and approval; returns the prescription id."""
        national_id = f"3701{secrets.randbelow(10**14):014d}"
        visit = ok(self.app.handle(c.RecordFollowUpVisit(
            hospital_id=self.hospital, visit_ref=unique_id("V"), physical_institution_id=f"P-{self.hospital}",
            institution_ownership=Ownership.PUBLIC, pooling_region=region, insured_region=region,
            insurance_type=InsuranceType.EMPLOYEE,
            patient=c.PatientIdentity(national_id=national_id, name="张三", phone="13800138000"),
            physician_id=self.physician, physician_signature=f"sig:{self.physician}", diagnosis_code="E11.9",
            diagnosis_name="type 2 diabetes", original_diagnosis_code="E11.9",
            original_diagnosis_date=date.today() - timedelta(days=30), original_institution_id="OFFLINE-1",
            verification_method=RealNameMethod.E_VOUCHER, consultation_fee=Decimal("20.00"))))
        chosen = items or (item(METFORMIN),)
        rx = ok(self.app.handle(c.IssuePrescription(
            hospital_id=self.hospital, prescription_ref=prescription_ref or unique_id("RX"),
            encounter_id=visit.aggregate_id, physician_signature=f"sig:{self.physician}", items=chosen,
            first_visit_drug_codes=tuple(i.drug_code for i in chosen), preferred_pharmacy_id=preferred)))
        assert rx.aggregate_id is not None
        ok(self.app.handle(c.ApprovePrescription(prescription_id=rx.aggregate_id, pharmacist_id=self.pharmacist)))
        self.national_ids[rx.aggregate_id] = national_id
        return rx.aggregate_id


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
    app = build_application(db, pseudonym_secret=SECRET)
    return Pipeline(db, bootstrap, app, topic=unique_topic("rx.events"), dlq_topic=unique_topic("rx.dlq"),
                    feed_prefix=unique_topic("rx.pharmacy") + ".")


async def wait_for(predicate: Callable[[], Any], pipeline: Pipeline | None = None, timeout_s: float = 40.0,
                   what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if pipeline is not None:
            pipeline.check_tasks()
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def stream(app: RxTrail, rx: UUID) -> list[DomainEvent]:
    return load_stream(app.store, rx)


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

    deadline = asyncio.get_running_loop().time() + 30
    while not await caught_up():
        p.check_tasks()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the relay did not publish every event")
        await asyncio.sleep(0.3)


def router_knows(p: Pipeline, schema: str, pharmacy_id: str, *, active: bool | None = None) -> bool:
    """The router has folded this pharmacy's designation (and its suspension, with ``active=False``)."""
    try:
        with psycopg.connect(p.database_url) as conn:
            row = conn.execute(f'SELECT agreement_active FROM "{schema}".pharmacies WHERE pharmacy_id = %s',
                               (pharmacy_id,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return row is not None and (active is None or row[0] is active)


async def topic_partitions(bootstrap: str, topic: str) -> int:
    """How many partitions the topic has; 0 if it does not exist (asking never creates it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return 0
        for described in await admin.describe_topics([topic]):
            if described.get("topic") == topic:
                return len(described.get("partitions") or ())
        return 0
    finally:
        await admin.close()


async def topic_exists(bootstrap: str, topic: str) -> bool:
    return await topic_partitions(bootstrap, topic) > 0


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every message of the topic up to its current end ([] if it does not exist)."""
    count = await topic_partitions(bootstrap, topic)
    if not count:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, n) for n in range(count)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[Any] = []
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def feed_messages(records: list[Any]) -> list[FeedMessage]:
    return [FeedMessage.model_validate_json(r.value) for r in records]


async def wait_feed(p: Pipeline, pharmacy_id: str, predicate: Callable[[list[FeedMessage]], bool],
                    timeout_s: float = 40.0) -> list[Any]:
    """The pharmacy's whole feed once ``predicate`` holds for its messages."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        p.check_tasks()
        records = await read_all(p.bootstrap, p.feed(pharmacy_id))
        if predicate(feed_messages(records)):
            return records
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for the feed of {pharmacy_id}: "
                                 f"{[(m.message_type, str(m.prescription_id)) for m in feed_messages(records)]}")
        await asyncio.sleep(0.3)


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


def header(record: Any, name: str) -> str:
    return dict(record.headers)[name].decode()  # type: ignore[no-any-return]
