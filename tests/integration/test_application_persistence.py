"""The stored form (the relay's contract), upcasting on load, hash-chain verification and crypto-shredding."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from events import GENESIS_HASH
from events.encounter import FollowUpVisitRecorded
from events.prescription import PrescriptionRejected
from services.adapters.event_log import load_stream
from services.adapters.patient_keys import PostgresPatientKeyStore
from services.adapters.store import EVENTS_TABLE, open_store
from services.application import RxTrail
from services.application import commands as c
from services.application.privacy import PatientForgotten, PatientVault
from services.domain.prescription import project_prescription
from services.integrity import verify_aggregate, verify_store
from tests.support.cast import SECRET, Cast, new_app, ok


@pytest.fixture
def own_db(make_database: Callable[[], str]) -> Iterator[tuple[str, RxTrail]]:
    """A database of its own, so the whole notification log belongs to the test."""
    url = make_database()
    store = open_store(url)
    yield url, new_app(store, PatientVault(SECRET, PostgresPatientKeyStore(url)))
    store.close()


def raw_rows(url: str, aggregate_id: object) -> list[tuple[int, str, bytes]]:
    with psycopg.connect(url) as conn:
        return [
            (v, t, bytes(s))
            for v, t, s in conn.execute(
                f"SELECT originator_version, topic, state FROM {EVENTS_TABLE} WHERE originator_id = %s "
                "ORDER BY originator_version",
                (aggregate_id,),
            )
        ]


def test_stored_events_are_plain_json_of_the_model_under_the_class_topic(app: RxTrail, pg_url: str) -> None:
    cast = Cast(app).register()
    rx = cast.approved()
    rows = raw_rows(pg_url, rx)
    events = load_stream(app.store, rx)
    assert [t for _, t, _ in rows] == ["events.prescription:PrescriptionIssued",
                                      "events.prescription:PrescriptionApproved"]
    for (_, _, state), event in zip(rows, events, strict=True):
        assert json.loads(state.decode("utf-8")) == event.model_dump(mode="json")


def test_an_old_schema_version_is_upcast_on_load_and_its_hash_still_verifies(app: RxTrail) -> None:
    aggregate_id = uuid4()
    v1 = {
        "originator_id": str(aggregate_id), "originator_version": 1,
        "timestamp": datetime(2024, 1, 2, tzinfo=UTC).isoformat().replace("+00:00", "Z"),
        "schema_version": 1, "prev_hash": GENESIS_HASH, "business_type": "internet",
        "pharmacist_id": "RPH-1", "reason": "dose too high",
    }
    canonical = json.dumps({"event_type": "PrescriptionRejected", **v1}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    v1["hash"] = hashlib.sha256(canonical).hexdigest()
    app.store.recorder.insert_events([StoredEvent(aggregate_id, 1, "events.prescription:PrescriptionRejected",
                                                  json.dumps(v1).encode())])
    (event,) = load_stream(app.store, aggregate_id)
    assert isinstance(event, PrescriptionRejected)
    assert event.schema_version == 2 and event.reasons == ("dose too high",)
    assert verify_aggregate(app.store, aggregate_id) is None


def test_verify_store_walks_the_log_and_finds_tampering(own_db: tuple[str, RxTrail]) -> None:
    url, app = own_db
    cast = Cast(app).register()
    rx, other = cast.collected(), cast.collected()
    ok(cast.settle(rx))
    clean = verify_store(url)
    assert clean.ok and clean.events > 20 and clean.streams >= 10

    with psycopg.connect(url) as conn:
        state = bytes(conn.execute(f"SELECT state FROM {EVENTS_TABLE} WHERE originator_id = %s AND "
                                   "originator_version = 7", (rx,)).fetchone()[0])  # type: ignore[index]
        forged = json.loads(state)
        forged["fund"] = "45.00"
        forged["self_pay"] = "0.00"
        conn.execute(f"UPDATE {EVENTS_TABLE} SET state = %s WHERE originator_id = %s AND originator_version = 7",
                     (json.dumps(forged).encode(), rx))
        conn.execute(f"DELETE FROM {EVENTS_TABLE} WHERE originator_id = %s AND originator_version = 3", (other,))
    report = verify_store(url)
    assert {(f.aggregate_id, f.version) for f in report.findings} == {(str(rx), 7), (str(other), 4)}
    reasons = {f.aggregate_id: f.reason for f in report.findings}
    assert "hash does not match" in reasons[str(rx)] and "follows 2" in reasons[str(other)]
    assert verify_aggregate(app.store, rx) is not None


def test_forgetting_a_patient_shreds_personal_fields_but_every_trail_still_verifies(
    own_db: tuple[str, RxTrail],
) -> None:
    url, app = own_db
    cast = Cast(app).register()
    rx = cast.collected()
    ok(cast.settle(rx))
    state = app.store.repository.get(rx, projector_func=project_prescription)
    encounter_id = state.encounter_id
    (visit,) = load_stream(app.store, encounter_id)
    assert isinstance(visit, FollowUpVisitRecorded) and visit.patient_sealed
    everything = b"".join(s for _, _, s in raw_rows(url, encounter_id) + raw_rows(url, rx))
    for secret in (cast.national_id, "张三", "13800138000"):
        assert secret.encode() not in everything
    assert visit.patient_ref == cast.patient_ref
    assert app.vault.unseal(visit.patient_ref, visit.patient_sealed) == {
        "name": "张三", "id_number": cast.national_id, "phone": "13800138000"}
    before = verify_store(url)

    assert app.vault.forget_patient(cast.patient_ref) == 1
    with pytest.raises(PatientForgotten, match="forgotten"):
        app.vault.unseal(visit.patient_ref, visit.patient_sealed)

    after = verify_store(url)
    assert after.ok and (after.events, after.streams) == (before.events, before.streams)
    assert verify_aggregate(app.store, rx) is None and verify_aggregate(app.store, encounter_id) is None
    reloaded = app.store.repository.get(rx, projector_func=project_prescription)
    assert (reloaded.total, reloaded.fund, reloaded.personal_account, reloaded.self_pay) == (
        state.total, state.fund, state.personal_account, state.self_pay)
    refused = ok(app.handle(c.RefuseFeesInAudit(prescription_id=rx, amount="1.00", reason="audit", audit_ref="A")))
    assert refused.events[0].event_type == "FeesRefusedInAudit"


def test_patient_key_store_gives_one_key_per_patient_even_under_a_race(vault: PatientVault) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    ref = vault.patient_ref(f"race-{uuid4()}")
    barrier = threading.Barrier(8)

    def first_visit(_: int) -> tuple[str, bytes]:
        barrier.wait()
        return vault.keys.key_for_sealing(ref)

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(first_visit, range(8)))
    assert len(keys) == 1
    ((key_id, key),) = keys
    assert vault.keys.key(ref, key_id) == key and len(key) == 32
    assert vault.forget_patient(ref) == 1 and vault.keys.key(ref, key_id) is None
    assert vault.keys.key_for_sealing(ref)[0] != key_id
