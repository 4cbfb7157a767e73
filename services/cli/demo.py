"""`rxtrail demo`: a scripted day of traffic against a running stack (`rxtrail up`).

The cast (a hospital with its physician and pharmacist, two designated pharmacies that declare their drug lists)
is registered through the application layer, API keys are created in the database, and then every party works
over HTTP as it would: the hospital records follow-up visits and issues prescriptions (half with the patient's
chosen pharmacy, half left to the routing rule), the pharmacist approves them (one is rejected), the ROUTER
worker routes them (seen on the pharmacies' feeds), the pharmacies accept, dispense with trace codes (one in two
parts), deliver with a fee (one is collected in person), and the SETTLEMENT worker settles them. One prescription
breaks R4 (57 days' supply) and is refused. Every reference is unique to the run, so the demo can run again.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from services.domain.rules import R4
from services.infra.settings import Settings

REGION = "220100"
REFUSED_DAYS = 57  # R4: at most 56 days' supply outside a declared emergency


class DemoError(RuntimeError):
    """The demo cannot go on (stack not running, a step answered unexpectedly, a worker did not act in time)."""


@dataclass(frozen=True)
class DemoDrug:
    code: str
    name: str
    spec: str
    category: str
    cap: Decimal


@dataclass
class DemoRx:
    index: int
    ref: str
    prescription_id: str = ""
    drug: DemoDrug | None = None
    quantity: int = 4
    preferred: str | None = None
    rejected: bool = False
    pharmacy_id: str | None = None
    routed_basis: str | None = None
    collect: bool = False
    partial: bool = False
    status: str = ""


@dataclass
class DemoReport:
    run: str
    hospital: str
    pharmacist: str
    pharmacies: list[str]
    prescriptions: list[DemoRx]
    steps: Counter[str] = field(default_factory=Counter)
    refused: list[dict[str, str]] = field(default_factory=list)
    trail_of: str = ""
    trail: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    regulator_key: str = ""

    def ids(self, status: str) -> list[str]:
        return [rx.prescription_id for rx in self.prescriptions if rx.status == status]


def _drugs(count: int = 3) -> list[DemoDrug]:
    """Catalog category A drugs with a default price cap (the first few, for a stable demo)."""
    from services.reference import load_reference

    ref = load_reference()
    caps = {c.drug_code: c.cap for c in ref.price_caps if c.institution_id == "*"}
    out = [DemoDrug(d.code, d.name, d.spec, str(d.category), caps[d.code]) for d in ref.drugs
           if str(d.category) == "A" and d.code in caps]
    seen: set[str] = set()
    picked: list[DemoDrug] = []
    for d in out:  # different drug names read better in the summary
        if d.name not in seen:
            seen.add(d.name)
            picked.append(d)
        if len(picked) == count:
            break
    if not picked:
        raise DemoError("the reference catalog has no category A drug with a price cap")
    return picked


def _trace_codes(n: int) -> list[str]:
    return [f"{secrets.randbelow(9 * 10**19) + 10**19:020d}" for _ in range(n)]


class _Client:
    """Thin HTTP helper: each call names the step it belongs to and checks the expected status."""

    def __init__(self, api: str, report: DemoReport, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=api, timeout=timeout_s)
        self.report = report
        self.calls = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    def post(self, step: str, token: str, path: str, body: dict[str, Any], expect: int = 200) -> Any:
        r = self.http.post(path, json=body, headers={"Authorization": f"Bearer {token}",
                                                      "Idempotency-Key": f"{self.report.run}:{next(self.calls)}"})
        if r.status_code != expect:
            raise DemoError(f"{step}: POST {path} answered {r.status_code} (expected {expect}): {r.text}")
        self.report.steps[step] += 1
        return r.json()

    def get(self, token: str, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        if r.status_code != 200:
            raise DemoError(f"GET {path} answered {r.status_code}: {r.text}")
        return r.json()


def check_stack(api: str, database_url: str) -> None:
    """A clear error when the stack is not up: the API's health and a database connection."""
    import psycopg

    try:
        health = httpx.get(f"{api}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DemoError(f"no rxtrail API answers at {api} ({exc.__class__.__name__}); "
                        "start the stack with `rxtrail up` (or pass --api)") from exc
    if not health.get("database"):
        raise DemoError(f"the API at {api} reports no database: {health}")
    try:
        with psycopg.connect(database_url, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        raise DemoError(f"cannot reach PostgreSQL at {database_url}; is `rxtrail up` running? ({exc})") from exc


def _keys(database_url: str, parties: list[str], run: str) -> dict[str, str]:
    import psycopg

    from services.adapters.api_keys import create_key, ensure_schema, parse_party

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schema(conn)
        return {p: create_key(conn, parse_party(p), datetime.now(UTC), label=f"demo {run}") for p in parties}


def _wait(what: str, check: Any, timeout_s: float, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def run_demo(prescriptions: int = 20, api: str | None = None, settings: Settings | None = None,
             progress: Any = None, timeout_s: float = 60.0) -> DemoReport:
    """Drive the day; returns the report (raises DemoError when a step goes wrong)."""
    from services.application.registries import starter_commands
    from services.bootstrap import build_application

    if prescriptions < 1:
        raise DemoError("--prescriptions must be at least 1")
    say = progress or (lambda _msg: None)
    settings = settings or Settings()
    database_url = settings.resolved_database_url()
    api = (api or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
    check_stack(api, database_url)
    started = time.monotonic()

    run = f"{datetime.now(UTC):%m%d%H%M%S}{secrets.token_hex(2).upper()}"
    hospital, physician, pharmacist = f"H-DEMO-{run}", f"DR-DEMO-{run}", f"PHM-DEMO-{run}"
    pharmacies = [f"PY-DEMO-{run}-A", f"PY-DEMO-{run}-B"]
    drugs = _drugs()
    codes = tuple(d.code for d in drugs)
    report = DemoReport(run=run, hospital=hospital, pharmacist=pharmacist, pharmacies=list(pharmacies),
                        prescriptions=[])

    # --- the cast, through the application layer ----------------------------------------------------------
    say(f"registering the cast of run {run}")
    app = build_application(settings)
    try:
        outcomes = app.apply_batch(starter_commands(
            changed_by=f"agency:{REGION}", region=REGION, hospital=hospital, physicians=[physician],
            pharmacist=pharmacist, pharmacies=pharmacies, drug_codes=codes, key_prefix=f"demo:{run}"))
    finally:
        app.close()
    for o in outcomes:
        if not o.ok:
            raise DemoError(f"registering the cast failed: {o}")
    report.steps["cast registered"] = len(outcomes)
    regulator = f"REG-DEMO-{run}"
    keys = _keys(database_url, [f"hospital:{hospital}", f"pharmacist:{pharmacist}", f"regulator:{regulator}",
                                *[f"pharmacy:{p}" for p in pharmacies]], run)
    report.steps["API keys created"] = len(keys)
    h, ph, reg = keys[f"hospital:{hospital}"], keys[f"pharmacist:{pharmacist}"], keys[f"regulator:{regulator}"]
    pharmacy_keys = {p: keys[f"pharmacy:{p}"] for p in pharmacies}
    report.regulator_key = reg

    http = _Client(api, report)
    try:
        # --- hospital: visits and prescriptions ---------------------------------------------------------------
        say(f"hospital: {prescriptions} follow-up visits and prescriptions")
        rxs: list[DemoRx] = []
        for i in range(prescriptions):
            rx = DemoRx(index=i, ref=f"RX-{run}-{i:03d}", drug=drugs[i % len(drugs)], quantity=2 + i % 3,
                        preferred=pharmacies[0] if i % 2 == 0 else None)
            encounter = _visit(http, h, run, i, physician)
            body = _prescription(rx, encounter, days=28)
            rx.prescription_id = http.post("prescription issued", h, "/hospital/prescriptions", body, 201)[
                "aggregate_id"]
            rxs.append(rx)
        report.prescriptions = rxs
        # the deliberate violation: 57 days' supply (R4), refused with its rule id
        encounter = _visit(http, h, run, prescriptions, physician)
        bad = DemoRx(index=prescriptions, ref=f"RX-{run}-R4", drug=drugs[0])
        r = http.http.post("/hospital/prescriptions", json=_prescription(bad, encounter, days=REFUSED_DAYS),
                           headers={"Authorization": f"Bearer {h}"})
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 409 or body.get("rule") != R4:
            raise DemoError(f"a {REFUSED_DAYS}-day prescription should be refused with R4; got {r.status_code} "
                            f"{r.text}")
        report.refused.append({"step": "prescription issued", "ref": bad.ref, "rule": str(body.get("rule")),
                               "reason": str(body.get("reason", ""))})
        report.steps["refused by a rule"] += 1

        # --- pharmacist review: one rejected -------------------------------------------------------------
        say("pharmacist: review queue, approvals, one rejection")
        issued = {rx.prescription_id for rx in rxs}
        queued: set[str] = set()

        def in_queue() -> bool:  # the queue is read side: it shows new prescriptions a moment later
            queued.update(str(i["prescription_id"]) for i in http.get(ph, "/pharmacist/review-queue", limit=500)["items"])
            return issued <= queued

        _wait("the review queue to show the issued prescriptions (is the projections service running? see "
              "<data dir>/logs/projection-traceability.log)", in_queue, timeout_s)
        report.steps["seen in review queue"] = len(queued & issued)
        reject_at = 1 if len(rxs) > 2 else -1
        for rx in rxs:
            if rx.index == reject_at:
                http.post("rejected by pharmacist", ph, f"/pharmacist/prescriptions/{rx.prescription_id}/rejection",
                          {"reasons": ["dose not justified by the recorded diagnosis (demo)"]})
                rx.rejected, rx.status = True, "rejected"
            else:
                http.post("approved by pharmacist", ph, f"/pharmacist/prescriptions/{rx.prescription_id}/approval",
                          {})
        approved = [rx for rx in rxs if not rx.rejected]

        # --- the router worker routes; each pharmacy sees it on its feed -----------------------------------
        say(f"router: waiting for {len(approved)} routings on the pharmacy feeds")
        _await_routing(http, h, approved, pharmacy_keys, database_url, run, report, timeout_s)

        # --- the pharmacies: accept, dispense, deliver or hand over ---------------------------------------
        say("pharmacies: accept, dispense with trace codes, deliver")
        partial_done = collect_done = False
        for rx in approved:
            token = pharmacy_keys[str(rx.pharmacy_id)]
            base = f"/pharmacy/prescriptions/{rx.prescription_id}"
            http.post("accepted by pharmacy", token, f"{base}/acceptance", {})
            assert rx.drug is not None
            if not partial_done and rx.quantity > 1:
                rx.partial, partial_done = True, True
                http.post("dispensed (partial)", token, f"{base}/dispenses", _dispense(rx, 1), 201)
                http.post("dispensed (completion)", token, f"{base}/dispenses", _dispense(rx, rx.quantity - 1), 201)
            else:
                http.post("dispensed", token, f"{base}/dispenses", _dispense(rx, rx.quantity), 201)
            if not collect_done and rx is approved[-1] and len(approved) > 1:
                collect_done = rx.collect = True
                http.post("collected in person", token, f"{base}/collection", {"verification_method": "e_voucher"})
            else:
                http.post("delivery arranged", token, f"{base}/delivery",
                          {"delivery_enterprise_id": "DE-DEMO-EXPRESS", "delivery_fee": "6.00",
                           "fee_disclosed": True})
                http.post("delivered", token, f"{base}/delivered", {"delivery_enterprise_id": "DE-DEMO-EXPRESS"})

        # --- the settlement worker settles ------------------------------------------------------------------
        say(f"settlement: waiting for {len(approved)} settlements")

        def settled() -> bool:
            for rx in approved:
                if rx.status != "settled":
                    rx.status = http.get(h, f"/hospital/prescriptions/{rx.prescription_id}")["status"]
            return all(rx.status == "settled" for rx in approved)

        _wait("the settlement worker to settle every delivered or collected prescription", settled, timeout_s)
        report.steps["settled by settlement worker"] = len(approved)

        # --- one trail, as the regulator sees it -----------------------------------------------------------
        shown = next((rx for rx in approved if rx.partial), approved[0])
        report.trail_of = shown.prescription_id

        def traced() -> bool:  # the trail is read side: it shows the settlement a moment later
            report.trail = http.get(reg, f"/regulator/prescriptions/{shown.prescription_id}/trail")
            return any(e["event_type"] == "PrescriptionSettled" for e in report.trail.get("events", []))

        _wait("the regulator's trail to show the settlement (see <data dir>/logs/projection-traceability.log)", traced, timeout_s)
    finally:
        http.close()
    report.elapsed_s = time.monotonic() - started
    return report


def _visit(http: _Client, token: str, run: str, i: int, physician: str) -> str:
    body = {
        "visit_ref": f"V-{run}-{i:03d}",
        "physical_institution_id": f"PI-DEMO-{run}",
        "institution_ownership": "public",
        "pooling_region": REGION,
        "insured_region": REGION,
        "insurance_type": "employee",
        "patient": {"national_id": f"22010219800101{run}{i:03d}", "name": f"Patient {i} (demo)"},
        "physician_id": physician,
        "physician_signature": "sig-demo",
        "diagnosis_code": "E11.9",
        "diagnosis_name": "type 2 diabetes",
        "original_diagnosis_code": "E11.9",
        "original_diagnosis_date": (date.today() - timedelta(days=30)).isoformat(),
        "original_institution_id": "OFFLINE-DEMO-1",
        "verification_method": "e_voucher",
        "consultation_fee": "20.00",
    }
    return str(http.post("visit recorded", token, "/hospital/visits", body, 201)["aggregate_id"])


def _prescription(rx: DemoRx, encounter: str, *, days: int) -> dict[str, Any]:
    assert rx.drug is not None
    d = rx.drug
    body: dict[str, Any] = {
        "prescription_ref": rx.ref,
        "encounter_id": encounter,
        "physician_signature": "sig-demo",
        "items": [{"drug_code": d.code, "name": d.name, "spec": d.spec, "quantity": rx.quantity,
                   "days_supply": days, "unit_price": str(d.cap), "category": d.category}],
        "first_visit_drug_codes": [d.code],
    }
    if rx.preferred:
        body["preferred_pharmacy_id"] = rx.preferred
    return body


def _dispense(rx: DemoRx, quantity: int) -> dict[str, Any]:
    assert rx.drug is not None
    return {"lines": [{"drug_code": rx.drug.code, "quantity": quantity, "unit_price": str(rx.drug.cap),
                       "price_cap": str(rx.drug.cap), "trace_codes": _trace_codes(quantity)}]}


def _await_routing(http: _Client, hospital_token: str, approved: list[DemoRx], pharmacy_keys: dict[str, str],
                   database_url: str, run: str, report: DemoReport, timeout_s: float) -> None:
    """Poll the pharmacies' feeds until every approved prescription shows up routed there. The routing rule may
    pick a pharmacy designated earlier in the region (an earlier demo run's): it gets a key when that happens."""
    waiting = {rx.prescription_id: rx for rx in approved}
    cursors = {p: 0 for p in pharmacy_keys}
    deadline = time.monotonic() + timeout_s
    checked_hospital_at = time.monotonic()
    while waiting:
        for pharmacy, token in list(pharmacy_keys.items()):
            page = http.get(token, "/pharmacy/feed", after=cursors[pharmacy], limit=500,
                            wait=0.5 if len(pharmacy_keys) == 1 else 0)
            cursors[pharmacy] = page["cursor"]
            for item in page["items"]:
                rx = waiting.get(str(item["prescription_id"]))
                if rx is not None and item["event_type"] == "PrescriptionRouted":
                    rx.pharmacy_id, rx.routed_basis, rx.status = pharmacy, item["data"].get("basis"), "routed"
                    report.steps[f"routed by router ({rx.routed_basis})"] += 1
                    del waiting[rx.prescription_id]
        if waiting and time.monotonic() - checked_hospital_at > 2:
            checked_hospital_at = time.monotonic()
            for rx in list(waiting.values()):  # routed to a pharmacy this run has no key for?
                seen = http.get(hospital_token, f"/hospital/prescriptions/{rx.prescription_id}")
                other = seen.get("dispenser_id")
                if seen["status"] != "approved" and other and other not in pharmacy_keys:
                    pharmacy_keys.update({other: _keys(database_url, [f"pharmacy:{other}"], run)[
                        f"pharmacy:{other}"]})
                    cursors[other] = 0
                    report.pharmacies.append(other)
        if waiting and time.monotonic() > deadline:
            raise DemoError(f"the router did not route {len(waiting)} approved prescription(s) within "
                            f"{timeout_s:.0f}s (is the router service running? see <data dir>/logs/router.log)")
        if waiting:
            time.sleep(0.2)


def print_report(report: DemoReport, console: Any) -> None:
    from rich.table import Table

    steps = Table(title=f"rxtrail demo run {report.run}", show_lines=False)
    steps.add_column("step")
    steps.add_column("count", justify="right")
    for step, n in report.steps.items():
        steps.add_row(step, str(n))
    console.print(steps)
    if report.refused:
        refused = Table(title="refused")
        for col in ("step", "reference", "rule", "reason"):
            refused.add_column(col)
        for r in report.refused:
            refused.add_row(r["step"], r["ref"], r["rule"], r["reason"])
        console.print(refused)
    if report.trail:
        trail = Table(title=f"trail of {report.trail_of} (regulator view, "
                            f"verified={report.trail.get('verification', {}).get('verified')})")
        for col in ("at", "stream", "v", "event"):
            trail.add_column(col)
        for e in report.trail.get("events", []):
            trail.add_row(str(e["at"])[:23], e["aggregate_type"], str(e["version"]), e["event_type"])
        console.print(trail)
    # one plain line for scripts (and the end-to-end test): never wrapped, never highlighted
    console.print(f"demo run={report.run} hospital={report.hospital} pharmacist={report.pharmacist} "
                  f"pharmacies={','.join(report.pharmacies)} trail={report.trail_of}",
                  highlight=False, soft_wrap=True, markup=False)
    console.print(f"[bold green]demo done[/] in {report.elapsed_s:.1f}s: {len(report.prescriptions)} prescriptions, "
                  f"{len(report.ids('settled'))} settled, {len(report.ids('rejected'))} rejected, "
                  f"{len(report.refused)} refused by a rule")
