"""The regulator console as a regulator uses it, in a real browser: Playwright (Python) driving Debian's Chromium
(``/usr/bin/chromium``; Playwright downloads no browser of its own), against the API served by uvicorn on real
PostgreSQL and Kafka with the read side running.

The regulator opens the console with their key, searches a trace code, opens the trail (the dispense is one step
with its codes folded, the hash chain intact), opens a finding and reaches its evidence, and sees a tampered trail
marked broken; ``/docs`` and ``/redoc`` render with the network unplugged (every request to another host aborted,
and none attempted). Screenshots go to ``artifacts/screenshots/`` (``RXTRAIL_ARTIFACTS`` overrides the directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from services.adapters.store import EVENTS_TABLE
from services.api import create_app
from services.api.console import endpoints
from services.application import RxTrail
from services.infra.settings import Settings
from tests.support.flows import Actors, api_keys, dispense_body, live_server, register_cast, trace_codes
from tests.support.read_side import read_side, wait_caught_up

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (pip install -e '.[dev]')")

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("RXTRAIL_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")) / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
REGULATOR = "CONSOLE-PW"
SCHEMAS = ("traceability", "gateway", "fraud")  # what the console reads

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str) -> Iterator[Settings]:
    with read_side(database, kafka_bootstrap, projections=("traceability", "fraud")) as settings:
        yield settings


@pytest.fixture(scope="module")
def api(settings: Settings, application: RxTrail) -> Any:
    return create_app(settings, application=application)


@pytest.fixture(scope="module")
def actors(database: str, application: RxTrail, api: Any) -> Iterator[Actors]:
    cast = register_cast(application)
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"agency:{cast.region}", f"regulator:{REGULATOR}")
    with TestClient(api) as client:
        yield Actors(client, cast, keys)


@pytest.fixture(scope="module")
def world(actors: Actors, database: str) -> dict[str, Any]:
    """A dispensed prescription (its codes), a refused second sale of one of them (R8: a flag, and the fraud
    projection's FR-TC-REPEAT finding), and a tampered trail."""
    sold = actors.accepted()
    codes = trace_codes(4)
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{sold}/dispenses", dispense_body(4, codes))
    assert r.status_code == 201, r.text
    again = actors.accepted()
    r = actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{again}/dispenses", dispense_body(1, codes[:1]))
    assert r.status_code == 409 and r.json()["rule"] == "R8", r.text
    tampered = actors.accepted()
    with psycopg.connect(database) as conn:  # an insider rewrites the approval's pharmacist in place
        row = conn.execute(f"SELECT originator_version, state FROM {EVENTS_TABLE} WHERE originator_id = %s"
                           " ORDER BY originator_version LIMIT 1 OFFSET 1", (tampered,)).fetchone()
        assert row is not None
        doc = json.loads(bytes(row[1]))
        doc["pharmacist_id"] = "PHM-FORGED"
        conn.execute(f"UPDATE {EVENTS_TABLE} SET state = %s WHERE originator_id = %s AND originator_version = %s",
                     (json.dumps(doc, ensure_ascii=False).encode(), tampered, row[0]))
    wait_caught_up(database, SCHEMAS)
    return {"sold": sold, "codes": codes, "again": again, "tampered": tampered}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Unplugged:
    """A page whose every request to a host other than this machine is aborted and recorded."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN",
                                           timezone_id="Asia/Shanghai")
        self.foreign: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("internetdisconnected")

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True, timeout=90_000)
        assert path.stat().st_size > 10_000, path
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def unplugged(browser: Any) -> Iterator[Unplugged]:
    u = Unplugged(browser)
    yield u
    u.close()


def test_regulator_searches_a_code_opens_the_trail_and_sees_a_tampered_one_broken(
        api: Any, actors: Actors, world: dict[str, Any], unplugged: Unplugged) -> None:
    page = unplugged.page
    with live_server(api) as base:
        page.goto(f"{base}/console#key={actors.regulator}&regulator={REGULATOR}")
        page.wait_for_selector("#dash-rows tr")
        assert "密钥已设置" in page.inner_text("#key-state")
        assert actors.regulator not in page.content()  # the key left the address bar and never lands in the page
        page.wait_for_function("document.querySelector('#chart-fund') && window.Chart !== undefined")
        unplugged.shot("console-01-dashboard")

        # search a trace code: the one sale of it
        page.fill("#search-form input[name=trace_code]", world["codes"][0])
        page.click("#search-form button[type=submit]")
        row = page.locator("#search-results tr", has_text=str(world["sold"])[:8])
        row.wait_for()
        assert page.locator("#search-results tr").count() == 1
        assert "统筹 Fund" in page.inner_text("#search table thead")
        row.locator("button.verify-row").click()  # the chain status of the trail, in its row
        row.locator("td.chain .badge.ok").wait_for()
        unplugged.shot("console-02-search-trace-code")

        # open the trail: the dispense is ONE step with its four codes folded, the chain intact
        row.locator("button.link").first.click()
        page.wait_for_selector("#trail-events li.dispense")
        assert page.locator("#trail-events li.dispense").count() == 1
        assert page.locator("#trail-events li.TraceCode").count() == 0  # no row per code
        dispense = page.locator("#trail-events li.dispense")
        assert "4 个追溯码 trace codes (4 售出 sold)" in dispense.inner_text()
        dispense.locator("details.codes summary").click()
        for code in world["codes"]:
            assert code in dispense.inner_text()
        assert "哈希链完整 Intact" in page.inner_text("#verification")
        assert "PrescriptionIssued" in page.inner_text("#trail-events")
        unplugged.shot("console-03-trail-grouped-codes")

        # a tampered trail: marked broken, naming the stream and version
        page.fill("#trail-id", str(world["tampered"]))
        page.click("#trail-form button[type=submit]")
        page.wait_for_selector("#verification .badge.bad")
        assert "链断裂 Broken link" in page.inner_text("#verification")
        assert f"{world['tampered']} v2" in page.inner_text("#verification")
        unplugged.shot("console-04-tampered-trail-broken")

        # the registries' record: who changed which fact when (the cast's registrations, at least)
        page.wait_for_selector("#changes li:not(.empty)")
        assert actors.cast.physician in page.inner_text("#changes") or "agency:" in page.inner_text("#changes")

        # the regulator's own query log lists what the page asked
        page.wait_for_function(
            "document.querySelector('#queries').innerText.includes('/regulator/prescriptions/')")
        recorded = actors.get(actors.regulator, "/regulator/queries", regulator_id=REGULATOR, limit=100).json()
        assert {f"/regulator/prescriptions/{world['sold']}/trail", "/regulator/prescriptions",
                "/regulator/dashboard"} <= {q["path"] for q in recorded}
    assert unplugged.foreign == [] and unplugged.errors == []


def test_regulator_opens_a_finding_and_reaches_its_evidence(
        api: Any, actors: Actors, world: dict[str, Any], unplugged: Unplugged) -> None:
    assert "findings" in endpoints(), "the console has no findings endpoint to call"
    page = unplugged.page
    with live_server(api) as base:
        page.goto(f"{base}/console#key={actors.regulator}&regulator={REGULATOR}")
        page.wait_for_selector("#finding-results tr.finding")
        unplugged.shot("console-05-findings")
        page.locator("#finding-results tr.finding button.finding-open").first.click()
        page.wait_for_selector("#finding-detail ol.evidence li")
        detail = page.inner_text("#finding-detail")
        assert "证据" in detail and " v" in detail
        unplugged.shot("console-06-finding-evidence")
        link = page.locator("#finding-detail button.evidence-trail").first
        link.click()
        page.wait_for_selector("#trail-events li")
        assert "Prescription" in page.inner_text("#trail-head")
    assert unplugged.foreign == [] and unplugged.errors == []


def test_docs_and_redoc_render_with_the_network_unplugged(api: Any, unplugged: Unplugged) -> None:
    page = unplugged.page
    with live_server(api) as base:
        page.goto(f"{base}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert "rxtrail" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-tag-section")
        assert page.locator(".opblock").count() > 10
        unplugged.shot("docs-swagger-offline")
        page.goto(f"{base}/redoc")
        page.wait_for_selector("h1", timeout=20_000)
        page.wait_for_function("document.body.innerText.includes('/regulator/prescriptions')", timeout=20_000)
        assert "rxtrail" in page.inner_text("h1")
        unplugged.shot("docs-redoc-offline")
    assert unplugged.foreign == [], unplugged.foreign
