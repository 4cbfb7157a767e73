"""Access (issue 12 item 5) and the API under a PostgreSQL restart, on real PostgreSQL and Kafka.

- an agency's statements show only its pooling region's lines and totals, for a hospital serving two regions;
- odd input (NUL, 2 MB) on every regulator route is refused (404/422), never 500, and the query is recorded;
- 405 answers carry ``Allow``;
- PostgreSQL stopped under load: 503 with ``Retry-After`` within a short time, 2xx again once it is back, and every
  command either fully recorded (events and outcome) or not at all.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode
from uuid import UUID

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from events.base import RealNameMethod
from services.adapters.store import EVENTS_TABLE, FAIL_FAST_POOL_WAIT_S, OUTCOMES_TABLE
from services.api import create_app
from services.application import RxTrail
from services.application import commands as c
from services.bootstrap import run_projections
from services.infra.settings import Settings
from tests.support import unique_id, wait_until
from tests.support.cast import CHANGCHUN, JINAN, Cast, new_national_id, ok
from tests.support.flows import api_keys, auth, live_server, open_application, register_cast, visit_body
from tests.support.read_side import read_side

OTHER = JINAN  # the second pooling region the hospital serves (the cast's own is CHANGCHUN)


@contextmanager
def settlement_projections(settings: Settings) -> Iterator[None]:
    """The two settlement projections on the read side's events topic, in a thread, for the ``with`` block."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def body() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_projections(["hospital_settlement", "pharmacy_settlement"], settings, stop))
        except BaseException as exc:  # reported when the block ends
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=body, name="settlement-projections", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:
            pass
        thread.join(60)
    if failure:
        raise RuntimeError("the settlement projections failed") from failure[0]


@pytest.fixture(scope="module")
def keys(database: str, cast: Cast) -> dict[str, str]:
    return api_keys(database, f"hospital:{cast.hospital}", f"agency:{cast.region}", f"agency:{OTHER}",
                    "regulator:REG-ACCESS")


@pytest.fixture(scope="module")
def client(database: str, kafka_bootstrap: str, application: RxTrail) -> Iterator[TestClient]:
    with read_side(database, kafka_bootstrap) as settings, settlement_projections(settings), \
            TestClient(create_app(settings, application=application)) as client:
        yield client


def get(client: TestClient, token: str, path: str, **params: Any) -> httpx.Response:
    return client.get(path, params=params, headers=auth(token))


# --- agencies see their region's lines only -------------------------------------------------------------------


def consultation_fee(region: str) -> Decimal:
    """R15: the region's ordinary outpatient consultation price at a tertiary institution (region policy data)."""
    from services.reference.policies import InstitutionLevel, load_policy

    return load_policy(region).consultation_fee[InstitutionLevel.TERTIARY]


def consultation(app: RxTrail, cast: Cast, *, treated_in: str, insured_in: str, fund: str) -> UUID:
    """A settled follow-up of the cast's hospital in pooling region ``treated_in`` of a patient insured in
    ``insured_in`` (off-site when they differ: settled by the insured region's policy, R12)."""
    visit = cast.visit(pooling_region=treated_in, insured_region=insured_in,
                       patient=c.PatientIdentity(national_id=new_national_id(insured_in), name="李四"),
                       consultation_fee=consultation_fee(treated_in))  # R15: the treatment region's price
    encounter = ok(app.handle(visit)).aggregate_id
    assert encounter is not None
    ok(app.handle(cast.issue(encounter)))  # R15: only a follow-up that issued a prescription is paid
    ok(app.handle(c.SettleConsultation(
        encounter_id=encounter, patient_national_id=visit.patient.national_id,
        verification_method=RealNameMethod.E_VOUCHER, fund=Decimal(fund), personal_account=Decimal("4.00"),
        self_pay=consultation_fee(treated_in) - Decimal(fund) - Decimal("4.00"), policy_version="2025.1",
        policy_region=insured_in,
        settlement_ref=unique_id("S"))))
    return encounter


def institution_rows(client: TestClient, token: str, institution: str) -> list[dict[str, Any]]:
    """The agency's statement of a physical institution (issue 14: statements roll internet hospitals up to the
    physical institution, 000 §五(二))."""
    r = get(client, token, "/agency/statements")
    assert r.status_code == 200, r.text
    return [s for s in r.json()["items"] if s["party_kind"] == "physical_institution" and s["party_id"] == institution]


def hospital_rows(client: TestClient, token: str, hospital: str) -> list[dict[str, Any]]:
    return institution_rows(client, token, Cast.physical_of(hospital))


def test_agency_statements_show_only_the_agency_regions_lines(client: TestClient, application: RxTrail,
                                                              cast: Cast, keys: dict[str, str],
                                                              database: str) -> None:
    # One hospital serving two pooling regions: two consultations treated in CHANGCHUN (one of them of a patient
    # insured in JINAN: off-site, still a CHANGCHUN line: the treatment region's agency settles with the
    # hospital), one treated in JINAN; and a pharmacy line in CHANGCHUN.
    consultation(application, cast, treated_in=CHANGCHUN, insured_in=CHANGCHUN, fund="4.00")  # price 10.00
    consultation(application, cast, treated_in=CHANGCHUN, insured_in=OTHER, fund="3.00")
    jinan_visit = consultation(application, cast, treated_in=OTHER, insured_in=OTHER, fund="5.00")  # price 12.00
    jinan = application.history(jinan_visit)[0].physical_institution_id  # type: ignore[attr-defined]
    rx = cast.collected()
    ok(cast.settle(rx, fund="35.00", personal="10.00", self_pay="5.00"))

    own, other = keys[f"agency:{CHANGCHUN}"], keys[f"agency:{OTHER}"]
    wait_until(lambda: len(hospital_rows(client, own, cast.hospital)) == 1
               and hospital_rows(client, own, cast.hospital)[0]["figures"]["consultations"] == 2
               and len(institution_rows(client, other, jinan)) == 1
               and any(s["party_id"] == cast.pharmacy for s in get(client, own, "/agency/statements").json()["items"]),
               timeout=60, interval=0.2, what="the settlement projections to book the consultations and the sale")

    [mine] = hospital_rows(client, own, cast.hospital)
    assert mine["figures"]["consultations"] == 2
    assert Decimal(mine["figures"]["fund"]) == Decimal("7.00")
    assert Decimal(mine["figures"]["consultation_fees"]) == Decimal("20.00")  # two at Changchun's 10.00
    # Changchun's provider terms withhold no deposit (issue 14: the deposit is region policy; Jinan withholds 5%)
    assert Decimal(mine["figures"]["personal_account"]) == Decimal("8.00")
    assert Decimal(mine["figures"]["withheld_deposit"]) == Decimal("0.00")
    assert Decimal(mine["figures"]["payable"]) == Decimal("15.00") and mine["figures"]["status"] == "open"
    # the other agency's region withholds its own deposit on its own lines only
    [theirs_first] = institution_rows(client, other, jinan)
    rate = Decimal(theirs_first["figures"]["deposit_rate"])
    assert rate == Decimal("0.05")  # Jinan (003 art. 20): 5% of its lines' fund + personal account 9.00
    assert Decimal(theirs_first["figures"]["withheld_deposit"]) == Decimal("0.45")
    [theirs] = institution_rows(client, other, jinan)
    assert theirs["figures"]["consultations"] == 1
    assert Decimal(theirs["figures"]["fund"]) == Decimal("5.00")
    assert Decimal(theirs["figures"]["consultation_fees"]) == Decimal("12.00")
    # the pharmacy's line is CHANGCHUN's: the other agency does not get the pharmacy at all
    mine_all = get(client, own, "/agency/statements").json()
    theirs_all = get(client, other, "/agency/statements").json()
    assert mine_all["pooling_region"] == CHANGCHUN and theirs_all["pooling_region"] == OTHER
    [pharmacy] = [s for s in mine_all["items"] if s["party_id"] == cast.pharmacy]
    assert pharmacy["party_kind"] == "pharmacy" and Decimal(pharmacy["figures"]["fund"]) == Decimal("35.00")
    assert cast.pharmacy not in {s["party_id"] for s in theirs_all["items"]}
    assert all("pooling_region" not in s["figures"] for s in mine_all["items"] + theirs_all["items"])
    # the hospital's whole statement (what closing a month reads) holds both of its Changchun lines, the off-site one
    # included (the Jinan visit is at the cast's Jinan hospital, on its own physical institution)
    from projections.hospital_settlement import statements

    with psycopg.connect(database) as conn:
        [whole] = statements(conn, hospital_id=cast.hospital)
    assert whole["consultations"] == 2 and whole["fund"] == Decimal("7.00")


# --- regulator routes: odd ids and parameters are refused, never 500, and always recorded ----------------------

NUL = "%00"
HUGE = "9" * (2 * 1024 * 1024)  # a 2 MB id


def regulator_requests() -> list[tuple[str, dict[str, str]]]:
    """(path, query) for every regulator route, with NUL and 2 MB values where ids and parameters go."""
    out: list[tuple[str, dict[str, str]]] = []
    for bad in (NUL, HUGE):
        out += [(f"/regulator/prescriptions/{bad}/trail", {}),
                (f"/regulator/prescriptions/{bad}/verification", {}),
                (f"/regulator/findings/{bad}", {})]
    for bad in ("\x00", HUGE):
        out += [("/regulator/prescriptions", {"patient_ref": bad}),
                ("/regulator/prescriptions", {"hospital_id": bad, "trace_code": bad}),
                ("/regulator/flags", {"rule": bad}),
                ("/regulator/queries", {"regulator_id": bad}),
                ("/regulator/dashboard", {"region": bad}),
                ("/regulator/statements", {"region": bad, "month": bad}),
                ("/regulator/settlement-issues", {"region": bad}),
                ("/regulator/findings", {"concerns": bad, "subject": bad})]
    return out


def route_of(path: str) -> str:
    """The OpenAPI path a request of ``regulator_requests`` goes to."""
    name = "{finding_id}" if path.startswith("/regulator/findings/") else "{prescription_id}"
    return path.replace(NUL, name).replace(HUGE, name)


def asgi_get(client: TestClient, path: str, params: dict[str, str], token: str) -> int:
    """GET through the app itself (in the client's event loop), for requests httpx refuses to build (URLs past
    64 kB); returns the status."""
    statuses: list[int] = []

    async def call() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "root_path": "",
                 "query_string": urlencode(params).encode(), "client": ("127.0.0.1", 50000),
                 "server": ("testserver", 80), "headers": [(b"host", b"testserver"),
                                                           (b"authorization", f"Bearer {token}".encode())]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await client.app(scope, receive, send)

    client.portal.call(call)  # type: ignore[union-attr]
    return statuses[0]


def test_odd_ids_on_every_regulator_route_are_refused_and_recorded(client: TestClient, keys: dict[str, str],
                                                                    database: str) -> None:
    token = keys["regulator:REG-ACCESS"]
    tried = {route_of(path) for path, _ in regulator_requests()}
    assert tried == {p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/regulator/")}

    def recorded() -> int:
        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT count(*) FROM api.regulator_queries WHERE regulator_id = 'REG-ACCESS'"
                               ).fetchone()
        return int(row[0]) if row else 0

    for path, params in regulator_requests():
        before = recorded()
        if HUGE in path or HUGE in params.values():  # past any HTTP client's URL limit: straight to the app
            status = asgi_get(client, path, params, token)
        else:
            status = client.get(path, params=params, headers=auth(token)).status_code
        assert status in (404, 422), (path[:80], status)
        assert recorded() == before + 1, f"{path[:80]} was not recorded"
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT path, query FROM api.regulator_queries WHERE regulator_id = 'REG-ACCESS'"
                            ).fetchall()
    paths = [p for p, _ in rows]
    assert "/regulator/prescriptions/\\x00/trail" in paths  # NUL stored escaped
    bounded = re.compile(rf"\.\.\. \[{len(HUGE) + len('/regulator/prescriptions//trail')} characters, sha256 [0-9a-f]{{64}}\]$")
    assert any(bounded.search(p) for p in paths)  # 2 MB: its head, length and digest
    assert any(q.endswith("characters, sha256 " + q[-65:-1] + "]") for _, q in rows)
    assert all(len(p) < 3000 and len(q) < 3000 for p, q in rows)
    # the record itself reads back through the API
    r = get(client, token, "/regulator/queries", regulator_id="REG-ACCESS", limit=500)
    assert r.status_code == 200 and len(r.json()) == len(rows) + 1


# --- 405 carries Allow -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/hospital/prescriptions", {"GET", "POST"}),
    ("PUT", "/hospital/visits", {"GET", "POST"}),
    ("POST", "/agency/statements", {"GET"}),
    ("PATCH", "/regulator/flags", {"GET"}),
    ("GET", "/pharmacist/prescriptions/00000000-0000-4000-8000-000000000000/approval", {"POST"}),
    ("DELETE", "/health", {"GET"}),
    ("HEAD", "/regulator/queries", {"GET"}),
])
def test_405_lists_the_allowed_methods(client: TestClient, keys: dict[str, str], method: str, path: str,
                                       allowed: set[str]) -> None:
    r = client.request(method, path, headers=auth(keys[f"agency:{CHANGCHUN}"]))
    assert r.status_code == 405, r.text
    assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed


# --- PostgreSQL stopped and restarted under load -----------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL server of this test's own (it is stopped and started again), in /var/tmp like the session's
    (the server's system user must reach its data directory)."""
    from services.infra.embedded import EmbeddedPostgres
    from services.infra.ports import start_on_free_port

    base = Path("/var/tmp") / unique_id("rxtrail-pg-restart")

    def start(port: int) -> tuple[EmbeddedPostgres, str]:
        server = EmbeddedPostgres(base / f"pg-{port}", port)
        return server, server.start()

    server, _ = start_on_free_port(start)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_restart_under_load_answers_503_then_recovers_with_nothing_half_written(own_postgres: Any) -> None:
    url = own_postgres.url
    app = open_application(url, pool_wait_s=FAIL_FAST_POOL_WAIT_S)  # as `rxtrail run api` builds it
    cast = register_cast(app)
    token = api_keys(url, f"hospital:{cast.hospital}")[f"hospital:{cast.hospital}"]
    results: list[tuple[float, str, int, float, str | None]] = []  # (at, visit_ref, status, seconds, retry-after)
    lock = threading.Lock()
    stop = threading.Event()
    # patients insured before the load (visit_body registers its patient through the application, which would
    # fail in the client while PostgreSQL is down); each request is a new visit of one of them
    patients = [visit_body(cast) for _ in range(40)]
    turn = itertools.count()

    def load(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop.is_set():
                ref = unique_id("V")
                body = {**patients[next(turn) % len(patients)], "visit_ref": ref}
                started = time.monotonic()
                try:
                    r = http.post("/hospital/visits", json=body, headers=auth(token, key=ref))
                    status, retry = r.status_code, r.headers.get("Retry-After")
                except httpx.HTTPError as exc:
                    status, retry = -1, repr(exc)
                with lock:
                    results.append((started, ref, status, time.monotonic() - started, retry))
                if status == 503:
                    time.sleep(0.1)  # a client told to retry later does not spin

    def statuses(since: float) -> list[int]:
        with lock:
            return [s for at, _, s, _, _ in results if at >= since]

    try:
        with live_server(create_app(Settings(database_url=url), application=app)) as base:
            workers = [threading.Thread(target=load, args=(base,), daemon=True) for _ in range(4)]
            for w in workers:
                w.start()
            wait_until(lambda: statuses(0).count(201) >= 20, timeout=60, interval=0.1, what="traffic before")
            down_at = time.monotonic()
            own_postgres.stop()
            wait_until(lambda: statuses(down_at + 0.5).count(503) >= 8, timeout=60, interval=0.2,
                       what="503 answers while PostgreSQL is down")
            health = httpx.get(f"{base}/health", timeout=5)  # /health says so, it does not fail
            assert health.status_code == 200 and health.json()["database"] is False, health.text
            up_at = time.monotonic()
            own_postgres.start()
            wait_until(lambda: statuses(time.monotonic() - 1.0).count(201) >= 4, timeout=60, interval=0.2,
                       what="2xx answers again once PostgreSQL is back")
            recovered_at = time.monotonic()
            time.sleep(2.0)
            stop.set()
            for w in workers:
                w.join(60)
    finally:
        stop.set()
        app.close()

    with lock:
        done = list(results)
    down = [r for r in done if down_at + 0.5 <= r[0] and r[0] + r[3] < up_at]  # asked and answered while down
    assert all(status in (201, 503) for _, _, status, _, _ in done), [
        (s, round(at - down_at, 2), round(t, 2), r, round(up_at - down_at, 2)) for at, _, s, t, r in done
        if s not in (201, 503)]
    assert down and all(status == 503 for _, _, status, _, _ in down), [
        (s, round(at - down_at, 2), round(t, 2)) for at, _, s, t, _ in down if s != 503]
    assert all(retry is not None and int(retry) > 0 for _, _, status, _, retry in done if status == 503)
    assert max(seconds for _, _, _, seconds, _ in down) < 5, "a request hung while PostgreSQL was down"
    assert sum(seconds < 0.5 for _, _, _, seconds, _ in down) > len(down) / 2, "503s do not come at once"
    assert recovered_at - up_at < 30
    after = [status for at, _, status, _, _ in done if at >= recovered_at]
    assert after and all(status == 201 for status in after)

    # nothing half-written: every visit event has its outcome row and every outcome its event (one transaction);
    # a 503 visit was recorded whole or not at all, and a retry with its Idempotency-Key records it exactly once
    def counts() -> tuple[int, int]:
        with psycopg.connect(url) as conn:
            visits = conn.execute(f"SELECT count(*) FROM {EVENTS_TABLE} WHERE topic LIKE %s",
                                  ("%FollowUpVisitRecorded",)).fetchone()
            kept = conn.execute(f"SELECT count(*) FROM {OUTCOMES_TABLE}").fetchone()
        assert visits is not None and kept is not None
        return int(visits[0]), int(kept[0])

    visits, kept = counts()
    assert visits == kept >= sum(1 for r in done if r[2] == 201)
    app = open_application(url)
    try:
        with TestClient(create_app(Settings(database_url=url), application=app)) as again:
            for _, ref, status, _, _ in done:
                if status == 201:
                    continue
                r = again.post("/hospital/visits", json={**patients[0], "visit_ref": ref}, headers=auth(token, key=ref))
                assert r.status_code == 201, r.text
        assert counts() == (len(done), len(done)), "a visit recorded twice, or an event without its outcome"
    finally:
        app.close()

