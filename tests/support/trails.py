"""Helpers for the projection tests (no tests here): realistic hash-chained trails, relay-style publishing,
writing the same events into eventsourcing's event store, and whole-schema dumps for comparison."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from events import GENESIS_HASH, event_hash, to_json
from events.base import BusinessType, CatalogCategory, DomainEvent, InsuranceType, Ownership, RealNameMethod
from events.encounter import ConsultationSettled, FollowUpVisitRecorded
from events.prescription import (
    DeliveryArranged,
    DispensedLine,
    DispenserKind,
    FeesClawedBack,
    FeesRefusedInAudit,
    PrescriptionAccepted,
    PrescriptionApproved,
    PrescriptionCollected,
    PrescriptionDelivered,
    PrescriptionDispensed,
    PrescriptionIssued,
    PrescriptionItem,
    PrescriptionRouted,
    PrescriptionSettled,
    RoutingBasis,
)
from events.trace_code import TraceCodeSold
from services.relay.core import event_id

REGION = "370100"
CENT = Decimal("0.01")


def money(x: Decimal) -> Decimal:
    return x.quantize(CENT)


class Chain:
    """Builds one aggregate's events: versions counted, each event's prev_hash the previous event's hash."""

    def __init__(self, aggregate_id: uuid.UUID | None = None) -> None:
        self.id = aggregate_id or uuid.uuid4()
        self.version = 0
        self.head = GENESIS_HASH

    def add(self, cls: type[DomainEvent], at: datetime, **fields: Any) -> DomainEvent:
        self.version += 1
        e = cls(originator_id=self.id, originator_version=self.version, timestamp=at, prev_hash=self.head, **fields)
        e = e.model_copy(update={"hash": event_hash(e)})
        self.head = e.hash
        return e


@dataclass
class Trail:
    encounter_id: uuid.UUID
    prescription_id: uuid.UUID
    hospital_id: str
    institution_id: str
    pharmacy_id: str | None
    delivery_enterprise_id: str | None
    patient_ref: str
    physician_id: str
    events: list[DomainEvent] = field(default_factory=list)
    times: dict[str, datetime] = field(default_factory=dict)
    trace_codes: list[str] = field(default_factory=list)
    settled: PrescriptionSettled | None = None
    consultation: ConsultationSettled | None = None
    refused: Decimal = Decimal("0.00")
    clawed_back: Decimal = Decimal("0.00")


def make_trail(rng: random.Random, start: datetime, *, hospital_id: str, institution_id: str,
               pharmacy_id: str | None, delivery_enterprise_id: str | None = None, patient_ref: str | None = None,
               physician_id: str = "PHY-1", audit: bool = True) -> Trail:
    """A whole trail: visit, prescription, review, routing, two partial dispenses with trace codes, delivery (or
    collection at the hospital), settlement, refusal in audit, clawback, and the consultation's settlement."""
    enc, rx = Chain(), Chain()
    patient = patient_ref or f"pt-{uuid.uuid4().hex[:16]}"
    t = Trail(enc.id, rx.id, hospital_id, institution_id, pharmacy_id, delivery_enterprise_id if pharmacy_id else None,
              patient, physician_id)
    bt = BusinessType.INTERNET
    fee = Decimal(rng.choice(["12.00", "18.50", "25.00"]))
    at = start
    t.times["visit"] = at
    t.events.append(enc.add(
        FollowUpVisitRecorded, at, business_type=bt, hospital_id=hospital_id, physical_institution_id=institution_id,
        institution_ownership=Ownership.PUBLIC, pooling_region=REGION, insured_region=REGION,
        insurance_type=InsuranceType.EMPLOYEE, patient_ref=patient, patient_sealed="v1.k1.c2VhbGVkLXNlY3JldA",
        physician_id=physician_id, physician_signature="sig-visit", diagnosis_code="I10",
        diagnosis_name="hypertension", original_diagnosis_code="I10", original_diagnosis_date=date(2025, 11, 2),
        original_institution_id=institution_id, verification_method=RealNameMethod.E_VOUCHER, consultation_fee=fee))
    price_a = money(Decimal(rng.randint(1500, 9000)) / 100)
    price_b = money(Decimal(rng.randint(500, 4000)) / 100)
    drug_a, drug_b = "X" + "A" * 19, "Z" + "B" * 19
    at += timedelta(minutes=5)
    t.times["issued"] = at
    t.events.append(rx.add(
        PrescriptionIssued, at, business_type=bt, encounter_id=enc.id, hospital_id=hospital_id,
        physical_institution_id=institution_id, institution_ownership=Ownership.PUBLIC, pooling_region=REGION,
        insured_region=REGION, insurance_type=InsuranceType.EMPLOYEE, patient_ref=patient,
        patient_sealed="v1.k1.c2VhbGVkLXNlY3JldA", physician_id=physician_id, physician_signature="sig-rx",
        diagnosis_code="I10", diagnosis_name="hypertension",
        items=(PrescriptionItem(drug_code=drug_a, name="amlodipine", spec="5mg*28", quantity=2, days_supply=56,
                                unit_price=price_a, category=CatalogCategory.A),
               PrescriptionItem(drug_code=drug_b, name="aspirin", spec="100mg*30", quantity=2, days_supply=56,
                                unit_price=price_b, category=CatalogCategory.B)),
        valid_until=at + timedelta(days=3)))
    consult_fund = money(fee * Decimal("0.6"))
    at += timedelta(minutes=5)
    t.consultation = enc.add(
        ConsultationSettled, at, business_type=bt, settled_with=institution_id, patient_ref=patient,
        verification_method=RealNameMethod.E_VOUCHER, fund=consult_fund, personal_account=Decimal("0.00"),
        self_pay=fee - consult_fund, policy_version="p1", settlement_ref=f"cs-{enc.id.hex[:8]}")
    t.events.append(t.consultation)
    at += timedelta(minutes=10)
    t.times["approved"] = at
    t.events.append(rx.add(PrescriptionApproved, at, business_type=bt, pharmacist_id="PHA-1"))
    at += timedelta(minutes=30)
    t.times["routed"] = at
    kind = DispenserKind.PHARMACY if pharmacy_id else DispenserKind.HOSPITAL
    dispenser = pharmacy_id or hospital_id
    t.events.append(rx.add(PrescriptionRouted, at, business_type=bt, dispenser_kind=kind, dispenser_id=dispenser,
                           dispenser_ownership=Ownership.NON_PUBLIC if pharmacy_id else Ownership.PUBLIC,
                           basis=RoutingBasis.PATIENT_CHOICE))
    at += timedelta(minutes=15)
    t.events.append(rx.add(PrescriptionAccepted, at, business_type=bt, dispenser_id=dispenser))
    codes = ["".join(rng.choice("0123456789") for _ in range(20)) for _ in range(4)]
    t.trace_codes = codes
    at += timedelta(hours=1)
    t.times["dispensed"] = at
    first = (DispensedLine(drug_code=drug_a, quantity=1, unit_price=price_a, price_cap=price_a,
                           trace_codes=(codes[0],)),)
    t.events.append(rx.add(PrescriptionDispensed, at, business_type=bt, dispenser_id=dispenser, dispense_no=1,
                           lines=first, complete=False))
    sales = [(codes[0], drug_a, at)]
    at += timedelta(hours=1)
    second = (DispensedLine(drug_code=drug_a, quantity=1, unit_price=price_a, price_cap=price_a,
                            trace_codes=(codes[1],)),
              DispensedLine(drug_code=drug_b, quantity=2, unit_price=price_b, price_cap=price_b,
                            trace_codes=(codes[2], codes[3])))
    t.events.append(rx.add(PrescriptionDispensed, at, business_type=bt, dispenser_id=dispenser, dispense_no=2,
                           lines=second, complete=True))
    sales += [(codes[1], drug_a, at), (codes[2], drug_b, at), (codes[3], drug_b, at)]
    for code, drug, sold_at in sales:
        t.events.append(Chain().add(TraceCodeSold, sold_at, business_type=bt, code=code, drug_code=drug,
                                    seller_id=dispenser, prescription_id=rx.id, patient_ref=patient))
    drugs = price_a * 2 + price_b * 2
    delivery = Decimal("0.00")
    if pharmacy_id:
        delivery = Decimal(rng.choice(["0.00", "6.00", "8.00"]))
        at += timedelta(minutes=10)
        t.events.append(rx.add(DeliveryArranged, at, business_type=bt,
                               delivery_enterprise_id=delivery_enterprise_id or "DEL-1", delivery_fee=delivery))
        at += timedelta(hours=3)
        t.events.append(rx.add(PrescriptionDelivered, at, business_type=bt,
                               delivery_enterprise_id=delivery_enterprise_id or "DEL-1"))
    else:
        at += timedelta(hours=1)
        t.events.append(rx.add(PrescriptionCollected, at, business_type=bt,
                               verification_method=RealNameMethod.FACE_RECOGNITION))
    fund = money(drugs * Decimal("0.7"))
    personal = money(drugs * Decimal("0.1"))
    at += timedelta(minutes=5)
    t.times["settled"] = at
    t.settled = rx.add(  # type: ignore[assignment]
        PrescriptionSettled, at, business_type=bt, settled_with=pharmacy_id or institution_id,
        settled_with_kind=kind, patient_ref=patient, verification_method=RealNameMethod.E_VOUCHER,
        total=drugs + delivery, fund=fund, personal_account=personal, self_pay=drugs - fund - personal + delivery,
        delivery_fee=delivery, policy_version="p1", policy_region=REGION, catalog_region=REGION,
        settlement_ref=f"st-{rx.id.hex[:8]}")
    t.events.append(t.settled)  # type: ignore[arg-type]
    if audit:
        t.refused = money(fund * Decimal("0.1"))
        t.clawed_back = money(fund * Decimal("0.05"))
        t.times["refused"] = at + timedelta(days=20)
        t.events.append(rx.add(FeesRefusedInAudit, t.times["refused"], business_type=bt, amount=t.refused,
                               reason="over-supply", audit_ref=f"au-{rx.id.hex[:6]}"))
        t.times["clawed_back"] = at + timedelta(days=40)
        t.events.append(rx.add(FeesClawedBack, t.times["clawed_back"], business_type=bt, amount=t.clawed_back,
                               reason="violation found", audit_ref=f"cb-{rx.id.hex[:6]}"))
    return t


def make_trails(n: int, *, seed: int = 7, start: datetime | None = None, jinan: bool = False) -> list[Trail]:
    """``n`` trails over two hospitals of one institution plus one of another, three pharmacies, hospital
    dispensing every fourth, spread over about six weeks so months (and a CST month boundary) are crossed."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    hospitals = [(f"H1-{tag}", f"INST1-{tag}"), (f"H2-{tag}", f"INST1-{tag}"), (f"H3-{tag}", f"INST2-{tag}")]
    pharmacies = [f"PH{i}-{tag}" for i in range(3)]
    delivery = [f"DEL{i}-{tag}" for i in range(2)]
    patients = [f"pt-{tag}-{i:03d}" for i in range(max(1, n // 3))]
    base = start or datetime(2026, 1, 27, 8, 0, tzinfo=UTC)
    trails = []
    for i in range(n):
        hospital, institution = hospitals[i % 3]
        at = base + timedelta(hours=7 * i + rng.randint(0, 5))
        trails.append(make_trail(rng, at, hospital_id=hospital, institution_id=institution,
                                 pharmacy_id=None if i % 4 == 3 else pharmacies[i % 3],
                                 delivery_enterprise_id=delivery[i % 2], patient_ref=patients[i % len(patients)],
                                 physician_id=f"PHY{i % 4}-{tag}", audit=i % 3 != 2))
    return trails


def all_events(trails: Iterable[Trail]) -> list[DomainEvent]:
    """Every event of the trails in time order (stable: per-aggregate order is kept)."""
    return sorted((e for t in trails for e in t.events), key=lambda e: e.timestamp)


def headers(e: DomainEvent, notification_id: int) -> list[tuple[str, bytes]]:
    """The headers the relay puts on a message."""
    return [
        ("event_id", event_id(str(e.originator_id), e.originator_version).encode()),
        ("aggregate_id", str(e.originator_id).encode()),
        ("aggregate_version", str(e.originator_version).encode()),
        ("notification_id", str(notification_id).encode()),
        ("event_type", type(e).__name__.encode()),
        ("schema_version", str(e.schema_version).encode()),
        ("business_type", str(getattr(e, "business_type", "")).encode()),
    ]


async def publish(bootstrap: str, topic: str, events: Sequence[DomainEvent], *, first_notification: int = 1) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i, e in enumerate(events):
            await producer.send(topic, to_json(e), key=str(e.originator_id).encode(),
                                headers=headers(e, first_notification + i))
        await producer.flush()
    finally:
        await producer.stop()


def store(database_url: str, events: Sequence[DomainEvent]) -> None:
    """Write events into eventsourcing's PostgreSQL event store the way the application does (one table per
    application, topic = event class topic, state = the JSON of model_dump(mode="json"))."""
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent
    from eventsourcing.utils import Environment, get_topic

    from services.infra.settings import eventsourcing_env

    apps = {"FollowUpVisitRecorded": "encounters", "ConsultationSettled": "encounters",
            "TraceCodeSold": "tracecodes", "TraceCodeReturned": "tracecodes"}
    by_app: dict[str, list[StoredEvent]] = {}
    for e in events:
        app = apps.get(type(e).__name__, "prescriptions")
        by_app.setdefault(app, []).append(StoredEvent(
            originator_id=e.originator_id, originator_version=e.originator_version, topic=get_topic(type(e)),
            state=to_json(e)))
    for app, stored in by_app.items():
        factory = InfrastructureFactory.construct(Environment(app, eventsourcing_env(database_url)))
        recorder = factory.application_recorder()
        for i in range(0, len(stored), 500):
            recorder.insert_events(stored[i:i + 500])
        factory.close()


def dump(database_url: str, schema: str, *, skip: Sequence[str] = ("kafka_offsets",)) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of a schema, rows sorted, for whole-table comparisons."""
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'"
            " ORDER BY 1", (schema,))]
        out = {}
        for table in tables:
            if table in skip:
                continue
            rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table))).fetchall()
            out[table] = sorted(rows, key=repr)
        return out


def dump_all(database_url: str, schemas: Iterable[str]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    return {s: dump(database_url, s) for s in schemas}


# --- running projections ---------------------------------------------------------------------------------------

PROJECTION_NAMES = ("hospital_settlement", "pharmacy_settlement", "traceability")


async def run_to_idle(projection: Any, database_url: str, bootstrap: str, topic: str, *, schema: str | None = None,
                      group: str | None = None, max_records: int = 500, idle_s: float = 3.0) -> Any:
    """Run one projection consumer until nothing new arrived for ``idle_s``; returns its stats."""
    import asyncio

    from projections.base import ProjectionConsumer
    from tests.support import unique_id

    consumer = ProjectionConsumer(projection, database_url, bootstrap, schema=schema or projection.name, topic=topic,
                                  dlq_topic=topic + ".dlq", group_id=group or unique_id("g"), max_records=max_records)
    return await consumer.run(asyncio.Event(), idle_timeout_s=idle_s)


def version_total(events: Iterable[DomainEvent]) -> int:
    """Sum over aggregates of their last version: what ``stream_versions`` adds up to once everything is applied."""
    heads: dict[uuid.UUID, int] = {}
    for e in events:
        heads[e.originator_id] = max(heads.get(e.originator_id, 0), e.originator_version)
    return sum(heads.values())


def applied_versions(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass(%s)", (f"{schema}.stream_versions",)).fetchone()[0]:  # type: ignore[index]
            return 0
        row = conn.execute(sql.SQL("SELECT coalesce(sum(version), 0) FROM {}.stream_versions").format(
            sql.Identifier(schema))).fetchone()
        return int(row[0]) if row else 0


async def run_all_to_idle(database_url: str, bootstrap: str, topic: str, *, expect: int | None = None,
                          **kwargs: Any) -> list[Any]:
    """Run the three projections until idle; with ``expect`` (see version_total), again until each has it all
    (an idle timeout can fire during a slow rebalance on a busy machine)."""
    import asyncio

    from projections.run import build

    stats: list[Any] = []
    for _ in range(5):
        stats = list(await asyncio.gather(*(run_to_idle(build(n), database_url, bootstrap, topic, **kwargs)
                                            for n in PROJECTION_NAMES)))
        if expect is None or all(applied_versions(database_url, n) >= expect for n in PROJECTION_NAMES):
            return stats
    raise AssertionError(f"projections did not catch up with {topic} after 5 runs")


@dataclass
class Published:
    """A topic holding ``trails`` once, and a database with the three projections built from it in one pass."""

    trails: list[Trail]
    events: list[DomainEvent]
    topic: str
    reference_db: str
    reference: dict[str, dict[str, list[tuple[Any, ...]]]]


async def publish_and_build_reference(make_database: Any, bootstrap: str, n: int = 24, seed: int = 7
                                      ) -> Published:
    from services.infra.kafka_admin import ensure_topics_async
    from tests.support import unique_topic

    trails = make_trails(n, seed=seed)
    events = all_events(trails)
    topic = unique_topic("rx.events")
    await ensure_topics_async(bootstrap, [topic, topic + ".dlq"], partitions=3)
    await publish(bootstrap, topic, events)
    db = make_database()
    await run_all_to_idle(db, bootstrap, topic, expect=version_total(events))
    return Published(trails, events, topic, db, dump_all(db, PROJECTION_NAMES))


def differences(got: dict[str, dict[str, list[tuple[Any, ...]]]], want: dict[str, dict[str, list[tuple[Any, ...]]]]
                ) -> dict[str, Any]:
    """Per schema and table, the rows only in ``got`` and only in ``want`` (empty when the dumps are equal)."""
    out: dict[str, Any] = {}
    for schema in sorted(set(got) | set(want)):
        for table in sorted(set(got.get(schema, {})) | set(want.get(schema, {}))):
            a, b = got.get(schema, {}).get(table, []), want.get(schema, {}).get(table, [])
            if a != b:
                out[f"{schema}.{table}"] = {"only_got": [r for r in a if r not in b][:3],
                                            "only_want": [r for r in b if r not in a][:3], "rows": (len(a), len(b))}
    return out
