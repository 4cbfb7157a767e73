"""Fraud projection on real Kafka + PostgreSQL: every pattern found from planted events (with the events that prove
it), honest traffic left alone, and the findings equal to a replay (from the store, another batch size) and as of a
time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from events import topics
from events.envelope import event_id
from projections import registry
from projections.fraud import finding, finding_page
from services.infra.kafka_admin import ensure_topics_async
from services.replay import as_of_schema, replay_async
from tests.support import unique_topic
from tests.support.fraud import T0, Planted, plant
from tests.support.trails import dump, publish, run_to_idle, store, version_total

SCHEMA = "fraud"


@dataclass
class Built:
    planted: Planted
    db: str
    topic: str
    reference: dict[str, list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
async def built(make_database: Callable[[], str], kafka_bootstrap: str) -> Built:
    planted = plant()
    topic = unique_topic(topics.EVENTS)
    await ensure_topics_async(kafka_bootstrap, [topic, topic + ".dlq"], partitions=3)
    await publish(kafka_bootstrap, topic, planted.events)
    db = make_database()
    for _ in range(5):  # small batches: findings are computed across many batches and partitions
        await run_to_idle(registry.build("fraud"), db, kafka_bootstrap, topic, max_records=9, group="fraud-ref")
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT coalesce(sum(version), 0) FROM fraud.stream_versions").fetchone()
        if row and row[0] >= version_total(planted.events):
            break
    return Built(planted, db, topic, dump(db, SCHEMA))


def _findings(db: str, **filters: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db) as conn:
        return finding_page(conn, SCHEMA, limit=1000, **filters)


def _ids(links: list[dict[str, Any]]) -> set[str]:
    return {link["aggregate_id"] for link in links}


def test_r8_repeated_trace_code_attempts_are_one_finding_with_the_sale_and_each_attempt(built: Built) -> None:
    code, sold_on, tried_on = built.planted.expect["code"]
    [f] = _findings(built.db, pattern="FR-TC-REPEAT", subject=code)
    assert f["rule_id"] == "R8" and f["severity"] == "high"
    assert {str(sold_on), str(tried_on)} == {str(x) for x in f["prescription_ids"]}
    kinds = sorted(link["event_type"] for link in f["evidence"])
    assert kinds == ["RuleFlagged", "RuleFlagged", "TraceCodeSold"]
    flagged = [link for link in f["evidence"] if link["event_type"] == "RuleFlagged"]
    assert {link["event_id"] for link in flagged} == {event_id(str(tried_on), v) for v in (2, 3)}
    assert code in f["explanation"] and "2 time(s)" in f["explanation"]
    with psycopg.connect(built.db) as conn:
        assert finding(conn, SCHEMA, f["finding_id"]) == f


def test_r8_a_code_sold_twice_without_a_return_is_critical(built: Built) -> None:
    [f] = _findings(built.db, pattern="FR-TC-DUPSALE")
    assert f["subject"] == built.planted.expect["dup"] and f["severity"] == "critical"
    assert [link["event_type"] for link in f["evidence"]] == ["TraceCodeSold", "TraceCodeSold"]


def test_doctor_shopping_across_physicians_and_hospitals_is_found(built: Built) -> None:
    shopper, rx_ids, generic = built.planted.expect["shopper"]
    [f] = _findings(built.db, pattern="FR-DOCTOR-SHOP")
    assert f["patient_ref"] == shopper and f["subject"] == f"{shopper}|{generic}"
    assert {str(x) for x in f["prescription_ids"]} == {str(x) for x in rx_ids}
    assert {p for p in f["parties"] if p.startswith("hospital:")} == {f"hospital:{built.planted.id('H1')}",
                                                                      f"hospital:{built.planted.id('H2')}"}
    assert f["severity"] == "high" and "2 physicians" in f["explanation"]
    assert [link["event_type"] for link in f["evidence"]] == ["PrescriptionDispensed"] * 2


def test_honest_repeat_prescriptions_are_not_doctor_shopping(built: Built) -> None:
    honest = built.planted.expect["honest"]
    assert _findings(built.db, patient_ref=honest) == []
    assert _findings(built.db, party=f"patient:{honest}") == []
    assert _findings(built.db, patient_ref=built.planted.expect["withdrawn"]) == []  # a withdrawn dispense


def test_a_suspended_physician_still_issuing_is_found_with_the_suspension_and_the_events_after_it(
        built: Built) -> None:
    physician, before, after, registry_stream = built.planted.expect["suspended"]
    [f] = _findings(built.db, pattern="FR-SUSPENDED-ACTIVE", subject=physician)
    assert f["parties"] == [f"physician:{physician}"]
    assert _ids(f["evidence"]) == {str(registry_stream), str(after)}
    assert str(before) not in _ids(f["evidence"])
    assert f["evidence"][0]["event_type"] == "PhysicianSuspended"
    assert "1 event(s) after it" in f["explanation"]


def test_a_reinstatement_ends_the_suspension_and_a_suspended_pharmacy_dispensing_is_found(built: Built) -> None:
    paused, during, later = built.planted.expect["paused"]
    [f] = _findings(built.db, pattern="FR-SUSPENDED-ACTIVE", subject=paused)
    assert str(during) in _ids(f["evidence"]) and str(later) not in _ids(f["evidence"])
    shut, rx = built.planted.expect["pharmacy_suspended"]
    [g] = _findings(built.db, pattern="FR-SUSPENDED-ACTIVE", subject=shut)
    assert g["parties"] == [f"pharmacy:{shut}"] and str(rx) in _ids(g["evidence"])
    assert {link["event_type"] for link in g["evidence"]} == {"PharmacyAgreementSuspended", "PrescriptionDispensed"}


def test_r5_and_r7_patterns_per_physician_and_pharmacy(built: Built) -> None:
    [r5] = _findings(built.db, pattern="FR-R5-RATE")
    assert r5["subject"] == built.planted.expect["r5"] and "3 of 5" in r5["explanation"]
    assert len(r5["evidence"]) == 3
    cap, above = built.planted.expect["prices"]
    [at_cap] = _findings(built.db, pattern="FR-AT-CAP")
    assert at_cap["subject"] == cap and "21 of 21" in at_cap["explanation"] and at_cap["rule_id"] == "R7"
    [r7] = _findings(built.db, pattern="FR-R7-RATE")
    assert r7["subject"] == above and "2 of 5" in r7["explanation"] and len(r7["evidence"]) == 2


def test_volume_jump_against_the_partys_own_history(built: Built) -> None:
    physician, day = built.planted.expect["volume"]
    [f] = _findings(built.db, pattern="FR-VOLUME")
    assert f["subject"] == f"physician:{physician}|{day.isoformat()}"
    assert "15 prescriptions" in f["explanation"] and "median + 5·MAD" in f["explanation"]
    assert len(f["evidence"]) == 15


def test_many_patients_delivered_to_one_address(built: Built) -> None:
    many, few = built.planted.expect["address"]
    [f] = _findings(built.db, pattern="FR-ADDRESS")
    assert f["subject"] == many and f["parties"] == [f"address:{many}"] and "5 different patients" in f["explanation"]
    assert _findings(built.db, party=f"address:{few}") == []


def test_nothing_else_is_found(built: Built) -> None:
    patterns = sorted(f["pattern"] for f in _findings(built.db))
    assert patterns == sorted(["FR-TC-REPEAT", "FR-TC-DUPSALE", "FR-DOCTOR-SHOP", "FR-R5-RATE", "FR-AT-CAP",
                               "FR-R7-RATE", "FR-VOLUME", "FR-ADDRESS", *["FR-SUSPENDED-ACTIVE"] * 3])


async def test_the_projection_equals_a_replay_from_the_store(built: Built, make_database: Callable[[], str],
                                                            kafka_bootstrap: str) -> None:
    db = make_database()
    store(db, built.planted.events)
    [result] = await replay_async("fraud", db, kafka_bootstrap, from_store=True, topic=built.topic, progress=False,
                                  batch_size=64)
    assert result.applied == len(built.planted.events)
    assert dump(db, SCHEMA) == built.reference


async def test_as_of_replay_shows_the_findings_as_they_stood(built: Built, kafka_bootstrap: str) -> None:
    as_of = T0 + timedelta(days=2)
    [result] = await replay_async("fraud", built.db, kafka_bootstrap, as_of=as_of, topic=built.topic, progress=False)
    assert result.schema == as_of_schema("fraud", as_of)
    with psycopg.connect(built.db) as conn:
        then = {f["pattern"] for f in finding_page(conn, result.schema, limit=1000)}
    assert "FR-TC-REPEAT" in then and "FR-TC-DUPSALE" in then
    assert not then & {"FR-DOCTOR-SHOP", "FR-SUSPENDED-ACTIVE", "FR-VOLUME", "FR-AT-CAP"}


def test_regulators_read_findings_over_http_with_filters_and_by_id(built: Built) -> None:
    from fastapi.testclient import TestClient

    from services.adapters.api_keys import create_key, ensure_schema, parse_party
    from services.api import create_app
    from services.bootstrap import build_application
    from services.infra.settings import Settings

    settings = Settings(database_url=built.db, pseudonym_secret=b"fraud-test-pseudonym-secret-32b!".decode())
    with psycopg.connect(built.db, autocommit=True) as conn:
        ensure_schema(conn)
        regulator = create_key(conn, parse_party("regulator:REG-F"), datetime.now(UTC), label="test")
        pharmacy = create_key(conn, parse_party("pharmacy:PH-F"), datetime.now(UTC), label="test")
    application = build_application(settings)
    try:
        with TestClient(create_app(settings, application=application)) as client:
            def get(path: str, token: str = regulator, **params: Any) -> Any:
                return client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})

            physician = built.planted.expect["suspended"][0]
            page = get("/regulator/findings", concerns=f"physician:{physician}").json()
            assert [f["pattern"] for f in page["items"]] == ["FR-SUSPENDED-ACTIVE"]
            one = page["items"][0]
            assert get(f"/regulator/findings/{one['finding_id']}").json() == one
            assert one["evidence"][0]["event_type"] == "PhysicianSuspended"
            r8 = get("/regulator/findings", rule="R8", limit=1).json()
            assert len(r8["items"]) == 1 and r8["next_cursor"] == r8["items"][0]["cursor"]
            rest = get("/regulator/findings", rule="R8", after=r8["next_cursor"]).json()
            assert {f["pattern"] for f in r8["items"] + rest["items"]} == {"FR-TC-REPEAT", "FR-TC-DUPSALE"}
            assert [f["severity"] for f in get("/regulator/findings", severity="critical").json()["items"]] == [
                "critical"]
            assert get("/regulator/findings/FR-VOLUME-000000000000").status_code == 404
            assert get("/regulator/findings", pattern="FR-NOPE").status_code == 422
            assert get("/regulator/findings", token=pharmacy).status_code == 403
    finally:
        application.close()
