"""The settlement worker on real PostgreSQL + Kafka: commands through the application, the relay to a unique
topic, the worker settles once with the worked split, and a redelivery from the start settles nothing again.

Worked figures (Jinan 370100 policy 2026.1, ILLUSTRATIVE: employee deductible 500.00, fund ratio 0.85, category B
first self-pay 10%, tertiary outpatient consultation 12.00; the worker's default personal-account balance 2000.00):

Consultation (public institution, fee charged 12.00 = Jinan's tertiary outpatient price; R15: a public institution
charging more is refused at the visit, and the fee is paid only once the visit's first prescription is approved):
  12.00 all towards the deductible → fund 0.00 / account 12.00 / self 0.00;
  the year's deductible met: 12.00, account used 12.00.

Prescription (non-public pharmacy, delivery fee 8.00), deductible left 488.00, account 1988.00:
  metformin (A) 4 × 150.00 (cap 150.00) = 600.00 → 488.00 deductible, fund 0.85 × 112.00 = 95.20, account 504.80
  glimepiride (B) 2 × 55.00 (cap 50.00) = 110.00 → settled 100.00, first self-pay 10.00, fund 0.85 × 90.00 = 76.50,
      account 33.50 (incl. the 10.00 above the cap: a non-public dispenser, R7)
  delivery 8.00 self-pay (R6)
  → total 718.00 = fund 171.70 + account 538.30 + self 8.00; Jinan pays the delivery enterprise (004 §六).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import psycopg
import pytest

from events import topics
from events.base import CatalogCategory
from events.encounter import ConsultationSettled
from events.prescription import PrescriptionItem, PrescriptionSettled
from services.adapters.event_log import load_stream
from services.application import RxTrail
from services.application import commands as c
from services.application.outcomes import Outcome
from services.bootstrap import build_application, build_settlement
from services.domain.clock import FixedClock
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import Settings
from services.relay import RelayConfig, RelayStats, run_relay
from services.workers.base import WorkerStats
from tests.support import unique_id, unique_topic, wait_until_async
from tests.support.cast import DRUG_FACTS, REGULATOR, Cast, line

JINAN = "370100"
T0 = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
SECRET = b"rxtrail-settlement-test-secret-0123456789"
METFORMIN = "XA10BAA001A001030101"  # category A in reference 2026.1
GLIMEPIRIDE = "XA10BBA003A001040101"  # category B
D = Decimal


def ok(outcome: Outcome) -> UUID:
    if not outcome.ok or outcome.aggregate_id is None:
        raise AssertionError(f"expected ok, got {outcome.error} {outcome.rule_id}: {outcome.reason}")
    return outcome.aggregate_id


@dataclass
class World:
    """The cast (in Jinan, its own non-public pharmacy, one patient) on an application at T0, and the relay."""

    app: RxTrail
    db: str
    bootstrap: str
    topic: str
    relay_stats: RelayStats
    cast: Cast

    @property
    def hospital(self) -> str:
        return self.cast.hospital

    @property
    def pharmacy(self) -> str:
        return self.cast.pharmacy

    @property
    def national_id(self) -> str:
        return self.cast.national_id

    def events_stored(self) -> int:
        with psycopg.connect(self.db) as conn:
            row = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
        return int(row[0]) if row else 0

    async def relayed(self, timeout_s: float = 20.0) -> None:
        """Wait until the relay has published everything stored so far."""
        await wait_until_async(lambda: self.relay_stats.published >= self.events_stored(), timeout=timeout_s,
                               what=lambda: f"the relay to publish {self.events_stored()} "
                                            f"(published {self.relay_stats.published})")

    async def run_worker(self, group: str, schema: str, idle_s: float = 2.5) -> WorkerStats:
        await self.relayed()
        settings = Settings(database_url=self.db, kafka_bootstrap=self.bootstrap, events_topic=self.topic,
                            dlq_topic=self.topic + ".dlq")
        consumer = build_settlement(settings, self.app, group_id=group, schema=schema)
        await consumer.run(asyncio.Event(), idle_timeout_s=idle_s)
        stats: WorkerStats = consumer.projection.stats  # type: ignore[attr-defined]
        return stats

    def visit(self, fee: str = "12.00") -> UUID:
        return ok(self.app.handle(self.cast.visit(consultation_fee=D(fee))))

    def delivered_prescription(self, encounter_id: UUID) -> UUID:
        items = (PrescriptionItem(drug_code=METFORMIN, name="metformin", spec="0.5g*30", quantity=4, days_supply=28,
                                  unit_price=D("150.00"), category=CatalogCategory.A),
                 PrescriptionItem(drug_code=GLIMEPIRIDE, name="glimepiride", spec="2mg*30", quantity=2,
                                  days_supply=28, unit_price=D("55.00"), category=CatalogCategory.B))
        rx = ok(self.app.handle(self.cast.issue(encounter_id, *items)))
        self.cast.accept(self.cast.route(self.cast.approve(rx)))
        ok(self.cast.dispense(rx, line(METFORMIN, 4, "150.00", codes=4), line(GLIMEPIRIDE, 2, "55.00", cap="50.00", codes=2)))
        ok(self.app.handle(c.ArrangeDelivery(prescription_id=rx, delivery_enterprise_id="DEL-1",
                                             delivery_fee=D("8.00"), fee_disclosed=True)))
        ok(self.app.handle(c.MarkDelivered(prescription_id=rx, delivery_enterprise_id="DEL-1")))
        return rx


@pytest.fixture
async def world(make_database: Callable[[], str], kafka_bootstrap: str) -> AsyncIterator[World]:
    db = make_database()
    topic = unique_topic(f"{topics.EVENTS}.settle")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    app = build_application(Settings(database_url=db, pseudonym_secret=SECRET), clock=FixedClock(T0))
    cast = Cast(app, region=JINAN, with_pharmacies=False).register()
    cast.designate(cast.pharmacy)  # non-public, carrying no declared list
    # the worked example's registry facts (R7, R17): metformin 150.00 a box in Jinan; glimepiride (B) capped 50.00
    by, day = {"changed_by": f"agency:{JINAN}", "region": JINAN}, date(2026, 1, 1)
    for code, name, category in ((METFORMIN, "metformin", CatalogCategory.A),
                                 (GLIMEPIRIDE, "glimepiride", CatalogCategory.B)):
        if code in DRUG_FACTS:  # the cast has listed it (tests/support/cast.py): use that listing, as worked above
            assert DRUG_FACTS[code][:2] == (name, category), DRUG_FACTS[code]
            continue
        ok(app.handle(c.ListDrug(changed_by=REGULATOR, drug_code=code, name=name, category=category,
                                 chronic_list=True, effective_from=date(2024, 1, 1))))
    facts: list[c.Command] = [
        c.SetPriceCap(**by, drug_code=METFORMIN, cap=D("150.00"), effective_from=day),
        c.SetPaymentStandard(**by, drug_code=METFORMIN, amount=D("150.00"), effective_from=day),
        c.SetPriceCap(**by, drug_code=GLIMEPIRIDE, cap=D("50.00"), effective_from=day),
        c.SetPaymentStandard(**by, drug_code=GLIMEPIRIDE, amount=D("50.00"), effective_from=day)]
    for fact in facts:
        outcome = app.handle(fact)
        assert outcome.ok, (outcome.error, outcome.reason)
    w = World(app, db, kafka_bootstrap, topic, RelayStats(), cast)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(
        RelayConfig(database_url=db, bootstrap=kafka_bootstrap, topic=topic, partitions=3, poll_interval_s=0.5,
                    check_interval_s=5.0, max_backoff_s=1.0), stop, w.relay_stats))
    try:
        yield w
    finally:
        stop.set()
        await asyncio.wait_for(relay, 20)
        app.close()


def settlements(world: World, aggregate_id: UUID, kind: type) -> list[object]:
    return [e for e in load_stream(world.app.store, aggregate_id) if isinstance(e, kind)]


async def test_worker_settles_visit_and_prescription_once_with_the_worked_split(world: World) -> None:
    encounter = world.visit()
    first = await world.run_worker("g-settle", "settlement_worker")
    # R15: a visit that issued no prescription is not paid (issue 14; before, it was settled on the visit)
    assert (first.recorded, first.rejected) == (0, 0)
    assert settlements(world, encounter, ConsultationSettled) == []

    rx = world.delivered_prescription(encounter)
    second = await world.run_worker("g-settle", "settlement_worker")
    assert (second.recorded, second.rejected) == (2, 0)  # the consultation (on approval) and the prescription
    (consultation,) = settlements(world, encounter, ConsultationSettled)
    assert isinstance(consultation, ConsultationSettled)
    assert (consultation.fund, consultation.personal_account, consultation.self_pay) == (
        D("0.00"), D("12.00"), D("0.00"))
    assert consultation.settled_with == f"P-{world.hospital}"
    assert consultation.policy_version == "2026.1" and consultation.deductible_applied == D("12.00")
    (settled,) = settlements(world, rx, PrescriptionSettled)
    assert isinstance(settled, PrescriptionSettled)
    assert settled.settled_with == world.pharmacy and settled.payee_id == "DEL-1"  # Jinan: the enterprise is paid
    assert (settled.deductible_applied, settled.fund_cap_applied) == (D("488.00"), D("0.00"))
    assert (settled.total, settled.fund, settled.personal_account, settled.self_pay, settled.delivery_fee) == (
        D("718.00"), D("171.70"), D("538.30"), D("8.00"), D("8.00"))
    assert (settled.policy_region, settled.catalog_region) == (JINAN, JINAN)
    assert settled.settlement_ref.startswith("settle:")

    # the ledger (year-to-date source) now holds both, corrected by the settled events
    await world.relayed()
    with psycopg.connect(world.db) as conn:
        rows = conn.execute("SELECT sum(deductible), sum(fund), sum(personal_account), count(*)"
                            " FROM settlement_worker.ledger").fetchone()
    assert rows == (D("500.00"), D("171.70"), D("550.30"), 2)

    # redelivery: a fresh group and fresh state read the topic from the start; nothing new is recorded
    before = world.events_stored()
    again = await world.run_worker("g-settle-again", "settlement_worker_again")
    assert again.recorded == 0 and again.rejected == 0
    assert again.replayed == 2  # both triggers met their recorded outcomes by command id
    assert world.events_stored() == before
    assert len(settlements(world, rx, PrescriptionSettled)) == 1
    assert len(settlements(world, encounter, ConsultationSettled)) == 1


async def test_a_patient_suspended_for_fraud_is_settled_without_insurance(world: World) -> None:
    world.app.handle(c.SuspendPatientForFraud(changed_by="agency:370100",
                                              patient_ref=world.app.vault.patient_ref(world.national_id),
                                              reason="duplicate claims"))
    encounter = world.visit()
    world.delivered_prescription(encounter)
    stats = await world.run_worker(unique_id("g"), "settlement_worker")
    assert stats.recorded == 2
    (consultation,) = settlements(world, encounter, ConsultationSettled)
    assert isinstance(consultation, ConsultationSettled)
    assert (consultation.fund, consultation.personal_account, consultation.self_pay) == (
        D("0.00"), D("0.00"), D("12.00"))
