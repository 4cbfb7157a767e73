"""Poison input against the real PostgreSQL and broker (issue 12 item 2): each value the storage or the broker
cannot carry is refused at the edge (422 naming the field over HTTP, a rejection or a dead letter over Kafka), or,
already stored, dead-lettered by the relay; and a good input after it is processed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from fastapi.testclient import TestClient

from events import topics
from events.contracts import DLQ_SIZE, DLQ_VALUE_MAX
from services.adapters.dead_letters import dead_letter_counts
from services.api import create_app
from services.api.limits import BODY_MAX
from services.application import RxTrail
from services.infra.settings import Settings
from services.relay import RelayStats, run_relay
from services.relay.positions import dead_letters
from tests.integration.test_inbound import read_all, start_intake, until, visit
from tests.integration.test_relay import TrailStore, config, read_topic
from tests.support import unique_id, unique_topic, wait_until_async
from tests.support.flows import Actors, Cast, api_keys, prescription_body, visit_body


def _event_count(database: str) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*) FROM rxtrail_events").fetchone()
    return int(row[0]) if row else 0


@pytest.fixture(scope="module")
def actors(database: str, application: RxTrail, cast: Cast) -> Iterator[Actors]:
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"agency:{cast.region}", "regulator:REG1")
    with TestClient(create_app(Settings(database_url=database), application=application)) as client:
        yield Actors(client, cast, keys)


def _refused_naming(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text[:500]
    body = response.json()
    assert body["error"] == "ValidationError"
    assert field in json.dumps(body)[:4000], body


def test_poison_over_http_is_refused_naming_the_field(database: str, actors: Actors, cast: Cast) -> None:
    encounter = actors.visit()
    before = _event_count(database)

    fee = {**visit_body(cast), "consultation_fee": "99999999999999.99"}
    _refused_naming(actors.post(actors.hospital, "/hospital/visits", fee), "consultation_fee")

    quantity = prescription_body(encounter, cast=cast)
    quantity["items"][0]["quantity"] = 2**31
    _refused_naming(actors.post(actors.hospital, "/hospital/prescriptions", quantity), "quantity")

    name = prescription_body(encounter, cast=cast)
    name["items"][0]["name"] = "x" * 1_100_000
    _refused_naming(actors.post(actors.hospital, "/hospital/prescriptions", name), "name")

    reasons = {"reasons": ["no"] * 1000}
    rx = actors.issue()
    before = _event_count(database)
    _refused_naming(actors.post(actors.pharmacist, f"/pharmacist/prescriptions/{rx}/rejection", reasons), "reasons")

    assert _event_count(database) == before  # nothing stored by any of them
    good = actors.post(actors.hospital, "/hospital/prescriptions", prescription_body(encounter, cast=cast))
    assert good.status_code == 201, good.text


async def _send_large(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> list[str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent = []
    try:
        for topic, key, value in messages:
            try:
                await (await producer.send(topic, value=value, key=key))
                sent.append(key.decode())
            except Exception as exc:  # a broker with a smaller message limit refuses it: a refusal too
                sent.append(f"{key.decode()}: refused by the broker ({type(exc).__name__})")
    finally:
        await producer.stop()
    return sent


async def test_poison_over_kafka_is_dead_lettered_or_rejected_and_the_intake_goes_on(
        database: str, kafka_bootstrap: str, cast: Cast, application: RxTrail) -> None:
    hospital_topic = topics.inbound_topic(cast.hospital)
    nested, big, good = unique_id("nested"), unique_id("big"), unique_id("good")
    huge_name = {**visit(cast, big), "diagnosis_name": "y" * 1_500_000}
    not_json = b"{" + b"x" * (DLQ_VALUE_MAX + 10)
    junk = unique_id("junk")
    worker = await start_intake(database, kafka_bootstrap, cast, application)
    try:
        sent = await _send_large(kafka_bootstrap, [
            (hospital_topic, nested.encode(), b"[" * 100_000 + b"]" * 100_000),
            (hospital_topic, big.encode(), json.dumps(huge_name).encode()),
            (hospital_topic, junk.encode(), not_json),
            (hospital_topic, good.encode(), json.dumps(visit(cast, good)).encode()),
        ])
        await until(lambda: application.recorded_outcome(f"hospital:{cast.hospital}:{good}") is not None, 120)
        assert application.recorded_outcome(f"hospital:{cast.hospital}:{good}").ok  # type: ignore[union-attr]
        assert worker.intake.stats.failures == 0, (sent, worker.intake.stats)  # no batch failed, nothing rewound

        dead = {r.key: r for r in await read_all(kafka_bootstrap, topics.DLQ) if r.key in (nested.encode(),
                                                                                        junk.encode())}
        assert set(dead) == {nested.encode(), junk.encode()}, sent
        assert "nested too deeply" in dict(dead[nested.encode()].headers)["dlq_error"].decode()
        reference = json.loads(dead[junk.encode()].value)  # too large to carry: a reference instead
        assert reference["size"] == len(not_json) and reference["source"].startswith(hospital_topic)
        assert dict(dead[junk.encode()].headers)[DLQ_SIZE] == str(len(not_json)).encode()
        if big in sent:  # the broker took the 1.5 MB message: the intake refused it, naming the field
            rejections = {r.key: json.loads(r.value) for r in await read_all(kafka_bootstrap, topics.REJECTIONS)}
            assert "diagnosis_name" in rejections[big.encode()]["reason"]
    finally:
        await worker.stop()


@pytest.fixture
def trail(make_database: Callable[[], str]) -> Iterator[TrailStore]:
    s = TrailStore(make_database())
    yield s
    s.close()


async def test_relay_dead_letters_an_event_the_broker_refuses_and_goes_on(trail: TrailStore,
                                                                       kafka_bootstrap: str) -> None:
    topic = unique_topic("bounds")
    aggregate, other = uuid.uuid4(), uuid.uuid4()
    trail.append(aggregate)
    [too_large] = trail.recorder.insert_events([trail.event(aggregate, 2, trail.heads[aggregate][1],
                                                            "z" * 1_100_000)]) or [0]
    trail.append(other, 3)
    stats, stop = RelayStats(), asyncio.Event()
    task = asyncio.create_task(run_relay(config(trail.url, kafka_bootstrap, topic), stop, stats))
    try:
        messages = await read_topic(kafka_bootstrap, topic, lambda ms: len(ms) >= 4)
        assert len(messages) == 4 and all(len(m.value) < 1_000_000 for m in messages)
        await wait_until_async(lambda: stats.dead_lettered == 1, timeout=20)
        async with await psycopg.AsyncConnection.connect(trail.url) as conn:
            [letter] = await dead_letters(conn)
        assert (letter.notification_id, letter.aggregate_id, letter.version) == (too_large, str(aggregate), 2)
        assert letter.size > 1_000_000 and "TooLarge" in letter.error
        with psycopg.connect(trail.url) as sync:
            assert dead_letter_counts(sync) == {"relay": 1}  # what /health reports
        trail.append(other)  # and the relay keeps relaying
        await read_topic(kafka_bootstrap, topic, lambda ms: len(ms) >= 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_a_body_larger_than_any_valid_one_is_413_before_parsing(actors: Actors, cast: Cast) -> None:
    huge = b'{"visit_ref": "' + b"x" * (BODY_MAX + 1) + b'"}'
    r = actors.client.post("/hospital/visits", content=huge,
                           headers={"Authorization": f"Bearer {actors.hospital}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"visit_ref": "'
        for _ in range(5):
            yield b"x" * (BODY_MAX // 4)
        yield b'"}'

    r = actors.client.post("/hospital/visits", content=chunks(),
                           headers={"Authorization": f"Bearer {actors.hospital}", "Content-Type": "application/json"})
    assert r.status_code == 413
    good = actors.post(actors.hospital, "/hospital/visits", visit_body(cast))
    assert good.status_code == 201, good.text


def test_a_stored_event_a_projection_cannot_take_is_left_out_and_the_rest_applied(
        make_database: Callable[[], str]) -> None:
    """An event already recorded (before the bounds, or a sum past a column's range) that a view cannot take:
    the batch is applied without it, it is handed back for the dead-letter topic, and the stream's version moves
    past it, so neither the batch nor a gap read-through comes back to it."""
    from decimal import Decimal

    from events.encounter import ConsultationSettled
    from events.envelope import event_id
    from projections import registry
    from projections.base import Delivered, RunnerStats, apply_batch, ensure_schema
    from services.simulate import all_events, make_trails

    events = all_events(make_trails(4, seed=12))
    settled = [e for e in events if isinstance(e, ConsultationSettled)]
    assert len(settled) >= 2
    poison = settled[0].model_copy(update={"fund": Decimal("1000000000000000.00")})  # past numeric(16,2)
    batch = [Delivered(event=e, event_type=type(e).__name__, aggregate_id=e.originator_id,
                       version=e.originator_version, event_id=event_id(str(e.originator_id), e.originator_version),
                       timestamp=e.timestamp)
             for e in (poison if e is settled[0] else e for e in events)]
    projection = registry.build("hospital_settlement")
    schema = "bounds_hospital"
    tally = RunnerStats()
    with psycopg.connect(make_database()) as conn:
        with conn.transaction():
            ensure_schema(conn, projection, schema)
        with conn.transaction():
            applied = apply_batch(conn, projection, schema, batch, tally=tally)
        assert applied == len(batch)
        assert [(d.aggregate_id, d.version) for d, _ in tally.poisoned] == [(poison.originator_id,
                                                                             poison.originator_version)]
        assert "NumericValueOutOfRange" in tally.poisoned[0][1]
        fees = conn.execute(f"SELECT sum(consultation_fees) FROM {schema}.monthly").fetchone()
        assert fees is not None and fees[0] == sum(e.fund + e.personal_account + e.self_pay for e in settled[1:])
        with conn.transaction():  # delivered again: nothing new, the poison is not tried again
            assert apply_batch(conn, projection, schema, batch, tally=RunnerStats()) == 0


def test_a_stored_event_that_no_longer_decodes_is_passed_not_looped_on(make_database: Callable[[], str]) -> None:
    """The issue's fee, stored before the bounds, no longer decodes: the topic's copy is dead-lettered, and when the
    next version of its stream opens a gap, the read-through from the record gets a tombstone (not an exception that
    rolls the batch back forever): the version is passed, the tombstone dead-lettered, the next version applied."""
    from events.codec import to_json as encode
    from events.encounter import FollowUpVisitRecorded
    from events.envelope import event_id
    from projections import registry
    from projections.base import Delivered, RunnerStats, apply_batch, decode_stored_or_tombstone, ensure_schema
    from services.simulate import all_events, make_trails

    events = all_events(make_trails(2, seed=5))
    visit = next(e for e in events if isinstance(e, FollowUpVisitRecorded))
    stream = [e for e in events if e.originator_id == visit.originator_id]
    assert len(stream) >= 2 and stream[0] is visit
    stored = json.loads(encode(visit))
    stored["consultation_fee"] = "99999999999999.99"  # what the API accepted before the bounds
    topic = f"services.domain.encounter:{type(visit).__name__}"

    class Record:
        def read(self, aggregate_id: uuid.UUID, after_version: int, before_version: int) -> list[Delivered]:
            assert (aggregate_id, after_version, before_version) == (visit.originator_id, 0, 2)
            return [decode_stored_or_tombstone(1, aggregate_id, 1, topic, json.dumps(stored).encode())]

    second = stream[1]
    batch = [Delivered(event=second, event_type=type(second).__name__, aggregate_id=second.originator_id,
                       version=second.originator_version, event_id=event_id(str(second.originator_id), 2),
                       timestamp=second.timestamp)]
    projection = registry.build("traceability")
    tally = RunnerStats()
    with psycopg.connect(make_database()) as conn:
        with conn.transaction():
            ensure_schema(conn, projection, "bounds_trace")
        with conn.transaction():
            assert apply_batch(conn, projection, "bounds_trace", batch, missing=Record(), tally=tally) == 1
        [(tombstone, error)] = tally.poisoned
        assert (tombstone.version, tombstone.event) == (1, None) and "consultation_fee" in error
        row = conn.execute("SELECT version FROM bounds_trace.stream_versions WHERE aggregate_id = %s",
                           (visit.originator_id,)).fetchone()
        assert row == (2,)


def test_an_event_too_large_for_a_message_is_refused_before_saving(database: str, actors: Actors, cast: Cast,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces behind the types: the application measures every event before saving it."""
    import services.application.service as service

    body = visit_body(cast)  # registers the patient's insurance first (R17)
    monkeypatch.setattr(service, "EVENT_SIZE_MAX", 200)  # every real event is larger than this
    before = _event_count(database)
    r = actors.post(actors.hospital, "/hospital/visits", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "InvalidCommand" and "at most 200 bytes" in r.json()["reason"]
    assert _event_count(database) == before
