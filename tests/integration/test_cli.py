"""The operator's and regulator's commands, run as a person would: `rxtrail schemas | checkpoint | verify |
export-trail | replay | asyncapi | forget-patient` against a real PostgreSQL (and Kafka where they need it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from events import EVENT_TYPES, topics
from events.codec import current_schema_version
from events.prescription import RoutingBasis
from services.adapters.patient_keys import PostgresPatientKeyStore
from services.adapters.store import open_store
from services.application import commands as c
from services.application.privacy import PatientVault
from services.integrity.checkpoint import PUBLIC_KEY_FILE
from tests.support.cast import AMLODIPINE, METFORMIN, Cast, item, line, new_app, ok

SECRET = b"cli-test-pseudonym-secret-32-bytes!!"


@pytest.fixture(scope="module")
def db(make_database: object) -> str:
    return make_database()  # type: ignore[operator]


@pytest.fixture(scope="module")
def env(db: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("rxtrail-cli")
    return {**os.environ, "RXTRAIL_DATABASE_URL": db, "RXTRAIL_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "RXTRAIL_DATA_DIR": str(data), "RXTRAIL_PSEUDONYM_SECRET": SECRET.decode(), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def trail(db: str) -> Iterator[tuple[UUID, Cast]]:
    store = open_store(db)
    app = new_app(store, PatientVault(SECRET, PostgresPatientKeyStore(db)))
    cast = Cast(app).register()
    encounter = ok(app.handle(cast.visit())).aggregate_id
    assert encounter is not None
    rx = ok(app.handle(cast.issue(encounter, item(METFORMIN, 4, "12.50"), item(AMLODIPINE, 2, "5.00")))).aggregate_id
    assert rx is not None
    ok(app.handle(c.ApprovePrescription(prescription_id=rx, pharmacist_id=cast.pharmacist)))
    ok(app.handle(c.RoutePrescription(prescription_id=rx, pharmacy_id=cast.pharmacy, basis=RoutingBasis.PATIENT_CHOICE)))
    ok(app.handle(c.AcceptPrescription(prescription_id=rx, dispenser_id=cast.pharmacy)))
    ok(cast.dispense(rx, line(METFORMIN, 4, "12.50", codes=4), line(AMLODIPINE, 2, "5.00", codes=2)))
    ok(app.handle(c.ArrangeDelivery(prescription_id=rx, delivery_enterprise_id="DE-1", delivery_fee=Decimal("8.00"),
                                    fee_disclosed=True)))
    ok(app.handle(c.MarkDelivered(prescription_id=rx, delivery_enterprise_id="DE-1")))
    yield rx, cast
    app.close()


def rxtrail(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_schemas_writes_one_json_schema_per_event(env: dict[str, str], tmp_path: Path) -> None:
    r = rxtrail(env, "schemas", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(written) == len(EVENT_TYPES)
    assert written == sorted(f"{name}.v{current_schema_version(cls)}.json" for name, cls in EVENT_TYPES.items())
    issued = json.loads((tmp_path / "PrescriptionIssued.v3.json").read_text())  # v3: the prescription number
    assert issued["x-schema-version"] == 3
    assert "patient_ref" in issued["properties"] and "national_id" not in json.dumps(issued)


def test_export_and_offline_bundle_verification(env: dict[str, str], trail: tuple[UUID, Cast],
                                                tmp_path: Path) -> None:
    rx, _ = trail
    assert rxtrail(env, "checkpoint").returncode == 0
    bundle = tmp_path / "trail.json"
    r = rxtrail(env, "export-trail", str(rx), "--out", str(bundle))
    assert r.returncode == 0, r.stderr
    public_key = Path(env["RXTRAIL_DATA_DIR"]) / PUBLIC_KEY_FILE
    assert public_key.exists()
    key_args = ["--public-key", str(public_key)]
    offline = {k: v for k, v in env.items() if not k.startswith("RXTRAIL_")}  # no database, no broker
    good = rxtrail(offline, "verify", "--bundle", str(bundle), *key_args)
    assert good.returncode == 0 and "INTACT" in good.stdout, good.stdout + good.stderr
    assert "no trusted key" not in good.stdout
    raw = bytearray(bundle.read_bytes())
    at = raw.index(b'"amount"') if b'"amount"' in raw else raw.index(b"12.50")
    raw[at + 2] = ord("9") if raw[at + 2] != ord("9") else ord("8")
    bundle.write_bytes(bytes(raw))
    bad = rxtrail(offline, "verify", "--bundle", str(bundle), *key_args)
    assert bad.returncode == 1


def test_replay_from_store_and_asyncapi(env: dict[str, str], trail: tuple[UUID, Cast], tmp_path: Path) -> None:
    rx, _ = trail
    r = rxtrail(env, "replay", "traceability", "--from-store")
    assert r.returncode == 0, r.stderr
    assert "traceability:" in r.stdout and "events applied" in r.stdout
    with psycopg.connect(env["RXTRAIL_DATABASE_URL"]) as conn:
        steps = conn.execute("SELECT count(*) FROM traceability.steps WHERE stream_id = %s", (rx,)).fetchone()
    assert steps is not None and steps[0] == 7
    out = tmp_path / "asyncapi.json"
    a = rxtrail(env, "asyncapi", "--out", str(out))
    assert a.returncode == 0, a.stderr
    channels = json.dumps(json.loads(out.read_text())["channels"])
    for topic in topics.CORE_TOPICS:
        assert topic in channels


def test_forget_patient_keeps_every_chain_verifiable(env: dict[str, str], trail: tuple[UUID, Cast]) -> None:
    _, cast = trail
    r = rxtrail(env, "forget-patient", "--national-id", cast.national_id)
    assert r.returncode == 0 and "1 key(s) deleted" in r.stdout, r.stdout + r.stderr
    assert cast.national_id not in r.stdout + r.stderr
    v = rxtrail(env, "verify")
    assert v.returncode == 0 and "INTACT" in v.stdout, v.stdout + v.stderr


def test_verify_names_the_tampered_prescription_and_version(env: dict[str, str], trail: tuple[UUID, Cast]) -> None:
    rx, _ = trail
    with psycopg.connect(env["RXTRAIL_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "UPDATE rxtrail_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
            "'\"DE-1\"', '\"DE-X\"'), 'UTF8') WHERE originator_id = %s AND originator_version = 7", (rx,))
    r = rxtrail(env, "verify")
    assert r.returncode == 1
    assert f"{rx} v7" in " ".join((r.stdout + r.stderr).split())
