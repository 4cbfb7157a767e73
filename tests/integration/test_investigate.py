"""`rxtrail investigate` as a regulator runs it, against a real PostgreSQL event store and the traceability and fraud
projections rebuilt from it: --trace-code shows the sale and every refused attempt, --json for tools, --as-of, patient
lookups by national id that never print it, and --bundle verified offline (and refused once tampered with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from services.application.privacy import pseudonym
from services.integrity.checkpoint import PUBLIC_KEY_FILE
from services.replay import replay
from tests.support.fraud import T0, Planted, plant
from tests.support.trails import store

SECRET = b"investigate-test-pseudonym-secret-32"
NATIONAL_ID = "370102198801017777"


@pytest.fixture(scope="module")
def world(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Planted, dict[str, str]]:
    planted = plant()
    patient = pseudonym(SECRET, NATIONAL_ID)
    for i in range(2):
        rx = planted.issue(T0 + timedelta(days=i), physician=planted.id("DOC1"), hospital=planted.id("H1"),
                           patient=patient)
        planted.dispense(rx, T0 + timedelta(days=i, hours=1), dispenser=planted.id("PHA"))
    planted.events.sort(key=lambda e: e.timestamp)
    db = make_database()
    store(db, planted.events)
    for name in ("traceability", "fraud"):
        [result] = replay(name, db, None, from_store=True, progress=False)
        assert result.applied == len(planted.events)
    data = tmp_path_factory.mktemp("rxtrail-investigate")
    env = {**os.environ, "RXTRAIL_DATABASE_URL": db, "RXTRAIL_DATA_DIR": str(data),
           "RXTRAIL_PSEUDONYM_SECRET": SECRET.decode(), "COLUMNS": "220"}
    return planted, env


def rxtrail(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def investigate_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    r = rxtrail(env, "investigate", *args, "--json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_trace_code_shows_the_sale_and_every_refused_attempt(world: tuple[Planted, dict[str, str]]) -> None:
    planted, env = world
    code, sold_on, tried_on = planted.expect["code"]
    report = investigate_json(env, "--trace-code", code)
    shown = report["trace_code"]
    assert [(s["event_type"], s["prescription_id"]) for s in shown["sales"]] == [("TraceCodeSold", str(sold_on))]
    assert [a["aggregate_id"] for a in shown["refused_attempts"]] == [str(tried_on)] * 2
    assert {rx["prescription_id"] for rx in report["prescriptions"]} == {str(sold_on), str(tried_on)}
    assert [f["pattern"] for f in report["findings"]] == ["FR-TC-REPEAT"]
    table = rxtrail(env, "investigate", "--trace-code", code)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("refused (R8)") == 2 and "TraceCodeSold" in table.stdout
    assert "FR-TC-REPEAT" in table.stdout


def test_as_of_shows_only_what_had_happened(world: tuple[Planted, dict[str, str]]) -> None:
    planted, env = world
    code, _, _ = planted.expect["code"]
    between = T0 + timedelta(days=1, minutes=90)  # after the first refused attempt, before the second
    report = investigate_json(env, "--trace-code", code, "--as-of", between.isoformat())
    assert len(report["trace_code"]["refused_attempts"]) == 1
    assert report["as_of"] == between.isoformat()


def test_patients_are_found_by_national_id_and_shown_only_as_their_pseudonym(
        world: tuple[Planted, dict[str, str]]) -> None:
    _, env = world
    r = rxtrail(env, "investigate", "--patient", NATIONAL_ID, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    ref = pseudonym(SECRET, NATIONAL_ID)
    assert report["query"] == {"patient": ref}
    assert len(report["prescriptions"]) == 2 and {rx["patient_ref"] for rx in report["prescriptions"]} == {ref}
    table = rxtrail(env, "investigate", "--patient", NATIONAL_ID)
    assert NATIONAL_ID not in r.stdout + r.stderr + table.stdout + table.stderr


def test_physician_investigation_shows_the_suspension_finding(world: tuple[Planted, dict[str, str]]) -> None:
    planted, env = world
    physician, before, after, _ = planted.expect["suspended"]
    report = investigate_json(env, "--physician", physician)
    assert {rx["prescription_id"] for rx in report["prescriptions"]} == {str(before), str(after)}
    assert [f["pattern"] for f in report["findings"]] == ["FR-SUSPENDED-ACTIVE"]


def test_bundle_of_everything_shown_verifies_offline_and_fails_once_tampered(
        world: tuple[Planted, dict[str, str]], tmp_path: Path) -> None:
    planted, env = world
    code, sold_on, tried_on = planted.expect["code"]
    bundle = tmp_path / "evidence.json"
    r = rxtrail(env, "investigate", "--trace-code", code, "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    doc = json.loads(bundle.read_text())
    assert doc["format"] == "rxtrail.investigation/1"
    proven = {t["aggregate_id"] for t in doc["trails"]}
    assert {str(sold_on), str(tried_on)} <= proven
    assert {s["aggregate_id"] for s in doc["shown"]["trace_code"]["sales"]} <= proven
    public_key = Path(env["RXTRAIL_DATA_DIR"]) / PUBLIC_KEY_FILE
    offline = {k: v for k, v in env.items() if not k.startswith("RXTRAIL_")}  # no database
    good = rxtrail(offline, "verify", "--bundle", str(bundle), "--public-key", str(public_key))
    assert good.returncode == 0 and "INTACT" in good.stdout, good.stdout + good.stderr

    shown = json.loads(bundle.read_text())  # the shown report changed: the export signature no longer holds
    shown["shown"]["trace_code"]["refused_attempts"] = shown["shown"]["trace_code"]["refused_attempts"][:1]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(shown))
    bad = rxtrail(offline, "verify", "--bundle", str(edited), "--public-key", str(public_key))
    assert bad.returncode == 1 and "export signature" in bad.stderr

    dropped = json.loads(bundle.read_text())  # a trail left out: its events are cited but not proven
    dropped["trails"] = [t for t in dropped["trails"] if t["aggregate_id"] != str(tried_on)]
    dropped_path = tmp_path / "dropped.json"
    dropped_path.write_text(json.dumps(dropped))
    worse = rxtrail(offline, "verify", "--bundle", str(dropped_path), "--public-key", str(public_key))
    assert worse.returncode == 1 and "does not prove" in worse.stderr


@pytest.fixture(scope="module")
def refused_world(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[str, UUID, list[UUID], dict[str, str]]:
    """Through the application: a pack sold on one prescription, then scanned on two others (refused R8)."""
    from services.adapters.patient_keys import PostgresPatientKeyStore
    from services.adapters.store import open_store
    from services.application.privacy import PatientVault
    from tests.support.cast import Cast, new_app, ok
    from tests.support.domain import item, line, trace_codes

    db = make_database()
    app = new_app(open_store(db), PatientVault(SECRET, PostgresPatientKeyStore(db)))
    try:
        cast = Cast(app).register()
        [code] = trace_codes(1)
        sold, *tried = (cast.accepted(item(quantity=1, days_supply=7)) for _ in range(3))
        ok(cast.dispense(sold, line(codes=(code,), quantity=1)))
        for rx in tried:
            outcome = cast.dispense(rx, line(codes=(code,), quantity=1))
            assert outcome.status == "rejected" and outcome.rule_id == "R8", outcome
    finally:
        app.close()
    for name in ("traceability", "fraud"):
        replay(name, db, None, from_store=True, progress=False)
    data = tmp_path_factory.mktemp("rxtrail-investigate-app")
    env = {**os.environ, "RXTRAIL_DATABASE_URL": db, "RXTRAIL_DATA_DIR": str(data),
           "RXTRAIL_PSEUDONYM_SECRET": SECRET.decode(), "COLUMNS": "220"}
    return code, sold, tried, env


def test_r8_refusals_recorded_by_the_application_are_shown_and_bundled(
        refused_world: tuple[str, UUID, list[UUID], dict[str, str]], tmp_path: Path) -> None:
    code, sold, tried, env = refused_world
    bundle = tmp_path / "r8.json"
    r = rxtrail(env, "investigate", "--trace-code", code, "--json", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    shown = report["trace_code"]
    assert [s["prescription_id"] for s in shown["sales"]] == [str(sold)]
    assert sorted(a["aggregate_id"] for a in shown["refused_attempts"]) == sorted(str(t) for t in tried)
    [finding] = report["findings"]
    assert finding["pattern"] == "FR-TC-REPEAT" and finding["severity"] == "high"
    public_key = Path(env["RXTRAIL_DATA_DIR"]) / PUBLIC_KEY_FILE
    offline = {k: v for k, v in env.items() if not k.startswith("RXTRAIL_")}
    good = rxtrail(offline, "verify", "--bundle", str(bundle), "--public-key", str(public_key))
    assert good.returncode == 0 and "INTACT" in good.stdout, good.stdout + good.stderr


def test_with_region_shards_the_bundle_proves_each_trail_in_its_own_store(
        make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A pack sold in Changchun and scanned again in Jinan: the two prescriptions live in two stores, the trace code
    in the global one; the investigation shows both and its bundle proves each under its own store's checkpoint."""
    from services.application.sharding import GLOBAL
    from services.bootstrap import build_application, shard_database_urls
    from services.domain.clock import FixedClock
    from services.infra.settings import Settings
    from tests.integration.test_sharding import NOW
    from tests.support.cast import CHANGCHUN, JINAN, METFORMIN, Cast, item, line, ok, trace_codes

    shards = {GLOBAL: make_database(), CHANGCHUN: make_database(), JINAN: make_database()}
    settings = Settings(database_url=shards[GLOBAL], pseudonym_secret=SECRET,
                        data_dir=tmp_path_factory.mktemp("shard-keys"),
                        shards={CHANGCHUN: shards[CHANGCHUN], JINAN: shards[JINAN]})
    app = build_application(settings, clock=FixedClock(NOW))
    try:
        changchun, jinan = Cast(app, region=CHANGCHUN).register(), Cast(app, region=JINAN).register()
        first, second = changchun.accepted(item(METFORMIN, 4)), jinan.accepted(item(METFORMIN, 4))
        codes = trace_codes(4)
        ok(changchun.dispense(first, line(METFORMIN, 4, codes=codes)))
        assert jinan.dispense(second, line(METFORMIN, 4, codes=codes)).rule_id == "R8"
    finally:
        app.close()
    stores = shard_database_urls(settings)
    for name in ("traceability", "fraud"):
        replay(name, shards[GLOBAL], None, from_store=True, progress=False, stores=stores)
    env = {**os.environ, "RXTRAIL_DATABASE_URL": shards[GLOBAL], "RXTRAIL_DATA_DIR": str(settings.data_dir),
           "RXTRAIL_PSEUDONYM_SECRET": SECRET.decode(), "RXTRAIL_SHARDS": json.dumps(settings.shards),
           "COLUMNS": "220"}
    bundle = tmp_path / "sharded.json"
    r = rxtrail(env, "investigate", "--trace-code", codes[0], "--json", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [s["prescription_id"] for s in report["trace_code"]["sales"]] == [str(first)]
    assert [a["aggregate_id"] for a in report["trace_code"]["refused_attempts"]] == [str(second)]
    proven = {t["aggregate_id"]: json.loads(t["checkpoint"]["payload"]).get("store")
              for t in json.loads(bundle.read_text())["trails"]}
    assert proven[str(first)] == CHANGCHUN and proven[str(second)] == JINAN
    offline = {k: v for k, v in env.items() if not k.startswith("RXTRAIL_")}
    good = rxtrail(offline, "verify", "--bundle", str(bundle), "--public-key",
                   str(Path(settings.data_dir) / PUBLIC_KEY_FILE))
    assert good.returncode == 0 and "INTACT" in good.stdout, good.stdout + good.stderr
