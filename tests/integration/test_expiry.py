"""The expiry worker on real PostgreSQL + Kafka: a prescription past its validity is expired exactly once, however
often the worker runs (a crash between its command and its commit, a restart, a fresh worker reading from the
start); prescriptions still valid or already closed are left alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from uuid import UUID

import psycopg
import pytest

from events import topics
from events.prescription import PrescriptionExpired
from services.adapters.event_log import load_stream
from services.application import RxTrail
from services.application import commands as c
from services.application.outcomes import Outcome
from services.bootstrap import build_application
from services.domain.clock import FixedClock
from services.infra.kafka_admin import ensure_topics_async
from services.infra.settings import Settings
from services.relay import RelayConfig, RelayStats, run_relay
from services.workers.expiry import Expiry, ExpiryConfig, run_expiry
from tests.support import unique_id, unique_topic, wait_until_async
from tests.support.cast import SECRET, T0, Cast, ok

SWEEP_AT = T0 + timedelta(days=4)  # validity 3 days (RuleConfig.validity_days)


@dataclass
class World:
    db: str
    bootstrap: str
    topic: str
    relay_stats: RelayStats
    later: RxTrail
    """The write side at SWEEP_AT (the expiry worker's application)."""
    stop_relay: asyncio.Event

    def events_stored(self) -> int:
        with psycopg.connect(self.db) as conn:
            row = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
        return int(row[0]) if row else 0

    async def relayed(self) -> None:
        await wait_until_async(lambda: self.relay_stats.published >= self.events_stored(), timeout=20,
                               in_thread=True, what="the relay to publish every stored event")

    def config(self, group: str, schema: str) -> ExpiryConfig:
        return ExpiryConfig(self.db, self.bootstrap, topic=self.topic, dlq_topic=self.topic + ".dlq", group_id=group,
                            schema=schema, partitions=3, interval_s=0.2, grace_s=0)

    async def run(self, expiry: Expiry, group: str, schema: str) -> Expiry:
        return await run_expiry(self.config(group, schema), asyncio.Event(), self.later, idle_timeout_s=2.5,
                                expiry=expiry)

    def expiries(self, rx: UUID) -> int:
        return sum(isinstance(e, PrescriptionExpired) for e in load_stream(self.later.store, rx))


class CrashAfterExpiring(Expiry):
    """Dies once between an accepted ExpirePrescription and the sweep's commit."""

    crashed = 0

    def issue(self, command: c.Command) -> Outcome:
        outcome = super().issue(command)
        if outcome.ok and not self.crashed:
            self.crashed += 1
            raise ConnectionError("simulated crash after the command, before the sweep's commit")
        return outcome


@pytest.fixture
async def world(make_database: Callable[[], str], kafka_bootstrap: str) -> AsyncIterator[World]:
    db = make_database()
    topic = unique_topic(f"{topics.EVENTS}.expiry")
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    settings = Settings(database_url=db, pseudonym_secret=SECRET)
    later = build_application(settings, clock=FixedClock(SWEEP_AT))
    w = World(db, kafka_bootstrap, topic, RelayStats(), later, asyncio.Event())
    relay = asyncio.create_task(run_relay(
        RelayConfig(database_url=db, bootstrap=kafka_bootstrap, topic=topic, partitions=3, poll_interval_s=0.2,
                    check_interval_s=5.0, max_backoff_s=1.0), w.stop_relay, w.relay_stats))
    try:
        yield w
    finally:
        w.stop_relay.set()
        await asyncio.wait_for(relay, 20)
        later.close()


async def test_a_prescription_past_its_validity_expires_exactly_once(world: World) -> None:
    settings = Settings(database_url=world.db, pseudonym_secret=SECRET)
    at_t0 = build_application(settings, clock=FixedClock(T0))
    two_days_later = build_application(settings, clock=FixedClock(T0 + timedelta(days=2)))
    try:
        cast = Cast(at_t0, patient_per_visit=True).register()
        due = cast.approved()  # valid until T0 + 3 days
        cancelled = cast.issued()
        ok(at_t0.handle(c.CancelPrescription(prescription_id=cancelled, reason="patient request",
                                             cancelled_by=cast.hospital)))
        valid = replace(cast, app=two_days_later).approved()  # valid until T0 + 5 days
    finally:
        at_t0.close()
        two_days_later.close()

    # the topic holds the prescriptions but will not carry the expiry back: every worker below decides from
    # what it folded before the expiry, as a worker lagging the record would
    await world.relayed()
    world.stop_relay.set()

    # 1. the sweep's transaction dies after the command was recorded; the next sweep asks under the same key
    group, schema = unique_id("g-expiry"), unique_id("expiry")
    first = await world.run(CrashAfterExpiring(world.later, FixedClock(SWEEP_AT), grace=timedelta(0)), group, schema)
    assert first.crashed == 1 and first.stats.failures == 1
    # (a sweep between two batches may also ask for the cancelled one before its cancellation was folded: refused)
    assert first.stats.recorded == 1 and first.stats.replayed >= 1
    assert first.key(str(due)) == f"expiry:{due}"
    recorded = world.later.recorded_outcome(f"expiry:{due}")
    assert recorded is not None and recorded.ok
    assert world.expiries(due) == 1
    assert world.expiries(valid) == 0 and world.expiries(cancelled) == 0
    stored = world.events_stored()

    # 2. the same worker restarted (its group and schema): the prescription is closed there, nothing is asked
    again = await world.run(Expiry(world.later, FixedClock(SWEEP_AT), grace=timedelta(0)), group, schema)
    assert again.stats.issued == 0

    # 3. a fresh worker reading everything from the start asks again under the same key: the first outcome
    fresh = await world.run(Expiry(world.later, FixedClock(SWEEP_AT), grace=timedelta(0)), unique_id("g-expiry"),
                            unique_id("expiry"))
    assert fresh.stats.recorded == 0 and fresh.stats.replayed >= 1
    assert world.events_stored() == stored
    assert world.expiries(due) == 1
    assert world.expiries(valid) == 0 and world.expiries(cancelled) == 0
