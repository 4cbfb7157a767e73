"""Kafka intake on the real broker and PostgreSQL: good traffic mixed with malformed JSON, unknown ids, rule
violations and wrong senders; every good command applied once, every bad one answered, the consumer alive;
a crash after the outcomes are stored but before the commit redelivers harmlessly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from events import topics
from services.application import RxTrail
from services.application import commands as c
from services.application.outcomes import Outcome
from services.domain.prescription import project_prescription
from services.infra.kafka_admin import ensure_topics_async
from services.workers.intake import IntakeWorker, create_intake
from tests.support import unique_id, wait_until_async
from tests.support.flows import Cast, prescription_body, visit_body
from tests.support.kafka import consume_to_end

PARTITIONS = 3


async def start_intake(database: str, bootstrap: str, cast: Cast, application: Any,
                       hospital: str | None = None, pharmacy_topic: bool = True) -> IntakeWorker:
    hospital = hospital or cast.hospital
    await ensure_topics_async(bootstrap, [topics.inbound_topic(hospital), topics.INBOUND_PHARMACY,
                                          topics.REJECTIONS, topics.DLQ], PARTITIONS)
    worker = create_intake(application, bootstrap,
                           group_id=unique_id("intake"), session_timeout_ms=6000, heartbeat_interval_ms=1000,
                           pattern=rf"rx\.inbound\.({re.escape(hospital)}{'|pharmacy' if pharmacy_topic else ''})",
                           retry_delay_s=0.2)
    await worker.start()
    return worker


async def send(bootstrap: str, messages: Sequence[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key, headers=headers)
                   for topic, key, value, headers in messages]
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    # Subscribing (no group) makes the client ask the broker for this topic's metadata; a bare client's
    # metadata may not list a topic the intake auto-created a moment ago (Apache Kafka answers an empty
    # metadata request with no topics).
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = list(await wait_until_async(consumer.assignment, timeout=20, what=f"topic {topic} to appear"))
        return await consume_to_end(consumer, parts)
    finally:
        await consumer.stop()


async def until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    await wait_until_async(predicate, timeout=timeout_s)


def command(cmd: c.Command) -> bytes:
    return cmd.model_dump_json().encode()


def visit(cast: Cast, ref: str, **overrides: Any) -> dict[str, Any]:
    return {"kind": "record_follow_up_visit", "command_id": ref, "hospital_id": cast.hospital,
            **visit_body(cast, visit_ref=ref), **overrides}


async def test_mixed_traffic(database: str, kafka_bootstrap: str, cast: Cast, application: RxTrail) -> None:
    hospital_topic = topics.inbound_topic(cast.hospital)
    # a visit and an approved, routed prescription to refer to
    seed = application.handle(c.RecordFollowUpVisit.model_validate(
        {"hospital_id": cast.hospital, **visit_body(cast)}))
    encounter = str(seed.aggregate_id)
    rx = application.handle(c.IssuePrescription.model_validate(
        {"hospital_id": cast.hospital, **prescription_body(encounter, cast=cast)})).aggregate_id
    assert application.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist)).ok
    assert application.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy,
                                                   basis="patient_choice")).ok

    good_refs = [unique_id("good") for _ in range(20)]
    bad = {
        "r4": unique_id("r4"), "unknown": unique_id("unknown"), "invalid": unique_id("invalid"),
        "mismatch": unique_id("mismatch"), "forbidden": unique_id("forbidden"), "r1": unique_id("r1"),
        "not_routed": unique_id("notrouted"),
    }
    too_long = {"kind": "issue_prescription", "command_id": bad["r4"], "hospital_id": cast.hospital,
                **prescription_body(encounter, cast=cast, days=120)}
    missing = "00000000-0000-4000-8000-000000000001"
    messages: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for i, ref in enumerate(good_refs):
        messages.append((hospital_topic, ref.encode(), json.dumps(visit(cast, ref)).encode(), []))
        if i == 3:
            messages.append((hospital_topic, b"junk-1", b"{not json", []))
            messages.append((hospital_topic, b"junk-2", b"[1, 2, 3]", []))
        if i == 5:
            messages.append((hospital_topic, bad["r4"].encode(), json.dumps(too_long).encode(), []))
            messages.append((hospital_topic, None, json.dumps(
                {"kind": "cancel_prescription", "command_id": bad["unknown"], "prescription_id": missing,
                 "reason": "x", "cancelled_by": "y"}).encode(), []))
        if i == 8:
            messages.append((hospital_topic, None, json.dumps(
                {"kind": "record_follow_up_visit", "command_id": bad["invalid"]}).encode(), []))
            messages.append((hospital_topic, None, json.dumps(
                visit(cast, bad["mismatch"], hospital_id=cast.other_hospital)).encode(), []))
            messages.append((hospital_topic, None, json.dumps(
                {"kind": "approve_prescription", "command_id": bad["forbidden"], "prescription_id": str(rx),
                 "pharmacist_id": cast.hospital}).encode(), []))
            messages.append((hospital_topic, None, json.dumps(
                visit(cast, bad["r1"], original_diagnosis_code="J45.0")).encode(), []))
        if i == 10:  # a retry of an earlier good command: applied once, answered nothing new
            messages.append((hospital_topic, good_refs[0].encode(), json.dumps(visit(cast, good_refs[0])).encode(), []))
    messages.append((topics.INBOUND_PHARMACY, b"acc", command(c.AcceptPrescription(
        command_id="acc-" + str(rx), prescription_id=rx, dispenser_id=cast.pharmacy)), []))
    messages.append((topics.INBOUND_PHARMACY, b"acc-other", command(c.AcceptPrescription(
        command_id=bad["not_routed"], prescription_id=rx, dispenser_id=cast.other_pharmacy)), []))

    worker = await start_intake(database, kafka_bootstrap, cast, application)
    try:
        await send(kafka_bootstrap, messages)
        await until(lambda: worker.intake.stats.ok + worker.intake.stats.rejected
                    + worker.intake.stats.dead_lettered >= len(messages))
        stats = worker.intake.stats
        # counts are at least once (a rewound batch answers again); exactly-once is checked on the outcomes below
        assert stats.dead_lettered >= 2 and stats.rejected >= len(bad)

        # every good command applied exactly once
        recorded = application.recorded_outcomes([f"hospital:{cast.hospital}:{r}" for r in good_refs])
        assert len(recorded) == len(good_refs) and all(o.ok for o in recorded.values())
        rx_state = application.store.repository.get(rx, projector_func=project_prescription)
        assert rx_state.status.value == "accepted"

        rejections = {r.key.decode(): json.loads(r.value) for r in await read_all(kafka_bootstrap, topics.REJECTIONS)
                      if r.key and r.key.decode() in bad.values()}
        assert set(rejections) == set(bad.values())
        assert rejections[bad["r4"]]["rule"] == "R4" and rejections[bad["r4"]]["command_kind"] == "issue_prescription"
        assert rejections[bad["r1"]]["rule"] == "R1"
        assert rejections[bad["unknown"]]["error"] == "PrescriptionNotFound"
        assert rejections[bad["invalid"]]["error"] == "ValidationError"
        assert "visit_ref" in rejections[bad["invalid"]]["reason"]
        assert rejections[bad["mismatch"]]["error"] == "SenderMismatch"
        assert rejections[bad["forbidden"]]["error"] == "Forbidden"
        assert rejections[bad["not_routed"]]["error"] == "PrescriptionNotFound"
        dead = [r for r in await read_all(kafka_bootstrap, topics.DLQ) if r.key in (b"junk-1", b"junk-2")
                and dict(r.headers).get("dlq_source", b"").startswith(hospital_topic.encode())]
        assert {r.value for r in dead} >= {b"{not json", b"[1, 2, 3]"}
        assert all(dict(r.headers)["dlq_error"] for r in dead)

        # still consuming after all that
        late = unique_id("late")
        await send(kafka_bootstrap, [(hospital_topic, late.encode(), json.dumps(visit(cast, late)).encode(), [])])
        await until(lambda: application.recorded_outcome(f"hospital:{cast.hospital}:{late}") is not None, 30)
    finally:
        await worker.stop()


class CrashAfterStoring(RxTrail):
    """The real application, except that the first batch dies after its outcomes were stored."""

    crashed = 0

    def apply_batch(self, commands: Sequence[c.Command]) -> list[Outcome]:
        outcomes = super().apply_batch(commands)
        if not self.crashed:
            self.crashed += 1
            raise ConnectionError("simulated crash after storing, before the offsets are committed")
        return outcomes


async def test_crash_mid_batch_loses_nothing_and_applies_once(database: str, kafka_bootstrap: str, cast: Cast,
                                                              application: RxTrail) -> None:
    flaky = CrashAfterStoring(application.store, application.vault, clock=application.clock)
    refs = [unique_id("crash") for _ in range(10)]
    hospital = cast.other_hospital  # a topic of its own, so the previous test's traffic stays out of this one
    worker = await start_intake(database, kafka_bootstrap, cast, flaky, hospital=hospital, pharmacy_topic=False)
    try:
        await send(kafka_bootstrap, [(topics.inbound_topic(hospital), r.encode(), json.dumps(
            visit(cast, r, hospital_id=hospital, physician_id=cast.other_physician)).encode(), []) for r in refs])
        ids = [f"hospital:{hospital}:{r}" for r in refs]
        await until(lambda: len(application.recorded_outcomes(ids)) == len(refs) and worker.intake.stats.batches > 0)
        await until(lambda: worker.intake.stats.ok >= len(refs))
        assert flaky.crashed == 1 and worker.intake.stats.failures == 1
        outcomes = application.recorded_outcomes(ids)
        assert all(o.ok for o in outcomes.values())
        assert worker.intake.stats.rejected == 0  # redelivered commands replayed their first outcome
    finally:
        await worker.stop()
