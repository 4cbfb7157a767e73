"""The regulator console page: served as HTML without a key, calls only endpoints the API documents, escapes
what it shows, and renders in a real headless browser (when /usr/bin/chromium is installed) on real data."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api import create_app
from services.api.console import PAGE, endpoints
from services.application import RxTrail
from services.infra.settings import Settings
from tests.support.flows import Actors, api_keys, dispense_body, live_server, register_cast, trace_codes
from tests.support.read_side import read_side, wait_caught_up

CHROMIUM = Path("/usr/bin/chromium")
SEARCH_FIELDS = ("patient_ref", "physician_id", "pharmacy_id", "hospital_id", "trace_code")


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str) -> Iterator[Settings]:
    with read_side(database, kafka_bootstrap) as settings:  # what the page reads: trails, search, flags
        yield settings


@pytest.fixture(scope="module")
def api(settings: Settings, application: RxTrail) -> object:
    return create_app(settings, application=application)


@pytest.fixture(scope="module")
def client(api: object) -> Iterator[TestClient]:
    with TestClient(api) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture(scope="module")
def actors(database: str, application: RxTrail, client: TestClient) -> Actors:
    cast = register_cast(application)
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"agency:{cast.region}", "regulator:CONSOLE-REG")
    return Actors(client, cast, keys)


def script_of(html: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    return scripts[0]


def openapi_get(app: object, path: str) -> dict[str, object]:
    paths = app.openapi()["paths"]  # type: ignore[attr-defined]
    assert path in paths, f"the console calls {path}, which the API does not document"
    assert "get" in paths[path], f"the console GETs {path}, which the API does not offer"
    return paths[path]["get"]  # type: ignore[no-any-return]


def test_page_is_html_without_a_key_and_holds_no_data(client: TestClient) -> None:
    r = client.get("/console")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    html = r.text
    assert html == PAGE
    assert 'id="search-form"' in html and 'id="api-key"' in html
    for field in SEARCH_FIELDS:
        assert f'name="{field}"' in html
    for label in ("处方流转轨迹", "Trail", "规则标记", "Rule flags", "我的查询记录"):
        assert label in html
    for path in endpoints().values():
        assert path in html
    assert "/console" not in client.get("/openapi.json").json()["paths"]


def test_page_calls_only_documented_endpoints_with_documented_parameters(api: object) -> None:
    script = script_of(PAGE)
    table = endpoints()
    assert {"search", "trail", "verification", "flags", "queries", "dashboard", "statements", "findings",
            "finding"} <= set(table)
    for path in table.values():
        openapi_get(api, path)
    # no path is spelled anywhere else in the script: every call goes through the one table and one fetch
    spelled = set(re.findall(r'"(/[A-Za-z0-9_{}/\-]*)"', script))
    assert spelled == set(table.values())
    assert script.count("fetch(") == 1 and "innerHTML" not in script and "outerHTML" not in script
    assert "insertAdjacentHTML" not in script and "document.write" not in script and "eval(" not in script
    # the query parameters the page sends exist on the endpoint they go to
    params = {p["name"] for p in openapi_get(api, table["search"])["parameters"]}  # type: ignore[index]
    assert set(SEARCH_FIELDS) | {"after", "limit"} <= params
    params = {p["name"] for p in openapi_get(api, table["flags"])["parameters"]}  # type: ignore[index]
    assert {"rule", "after", "limit"} <= params
    params = {p["name"] for p in openapi_get(api, table["queries"])["parameters"]}  # type: ignore[index]
    assert {"regulator_id", "limit"} <= params
    params = {p["name"] for p in openapi_get(api, table["dashboard"])["parameters"]}  # type: ignore[index]
    assert {"days", "region"} <= params
    params = {p["name"] for p in openapi_get(api, table["statements"])["parameters"]}  # type: ignore[index]
    assert {"region", "month"} <= params
    params = {p["name"] for p in openapi_get(api, table["findings"])["parameters"]}  # type: ignore[index]
    assert {"pattern", "severity", "concerns", "patient_ref", "after", "limit"} <= params
    openapi_get(api, table["finding"])
    changes = {p["name"] for p in openapi_get(api, table["registryChanges"])["parameters"]}  # type: ignore[index]
    assert {"fact_id", "limit"} <= changes
    for name in re.findall(r'<input name="(\w+)"', PAGE.split('id="findings-form"')[1].split("</form>")[0]):
        assert name in params, name
    rule_pattern = next(p for p in openapi_get(api, table["flags"])["parameters"]  # type: ignore[attr-defined]
                        if p["name"] == "rule")["schema"]["anyOf"][0]["pattern"]
    for rule in re.findall(r'<option value="(R\d+)">', PAGE):
        assert re.match(rule_pattern, rule)


def test_chart_library_is_served_locally_and_pinned(client: TestClient) -> None:
    """The dashboard's Chart.js comes from this API (vendored file), pinned by its SRI hash; no other host."""
    html = client.get("/console").text
    srcs = re.findall(r'<script src="([^"]+)" integrity="([^"]+)"', html)
    assert srcs == [("/console/chart.umd.min.js", srcs[0][1])]
    r = client.get(srcs[0][0])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert srcs[0][1] == "sha384-" + base64.b64encode(hashlib.sha384(r.content).digest()).decode()
    assert b"Chart.js v4" in r.content[:200]
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    csp = client.get("/console").headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in csp and "connect-src 'self'" in csp


def test_page_declares_a_cjk_font_stack() -> None:
    style = re.search(r"<style>(.*?)</style>", PAGE, re.S).group(1)  # type: ignore[union-attr]
    for family in ("Noto Sans CJK SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei"):
        assert family in style


def test_docs_and_redoc_load_only_local_assets(client: TestClient) -> None:
    """/docs and /redoc name only this API's own asset URLs (no CDN, no Google fonts), and each of them loads."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200, page
        urls = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', r.text)
        urls += re.findall(r"(?:url|spec-url)\s*[:=]\s*['\"]([^'\"]+)['\"]", r.text)
        assert urls, page
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from another host"
            assert client.get(url).status_code == 200, url
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text
    assert "/docs-assets/swagger-ui-bundle.js" in client.get("/docs").text
    assert "/docs-assets/redoc.standalone.js" in client.get("/redoc").text
    assert b"cdn.redoc.ly/redoc/logo-mini.svg" not in client.get("/docs-assets/redoc.standalone.js").content
    assert client.get("/docs-assets/../../etc/passwd").status_code == 404
    assert client.get("/docs-assets/core.py").status_code == 404


def test_dashboard_and_statements_answer_a_regulator(actors: Actors, database: str) -> None:
    rx = actors.accepted()
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(2))
    wait_caught_up(database)
    r = actors.get(actors.regulator, "/regulator/dashboard", days=7)
    assert r.status_code == 200, r.text
    days = r.json()["days"]
    assert any(d["region"] == actors.cast.region and d["issued"] >= 1 for d in days), days
    for d in days:
        assert {"fund", "personal_account", "self_pay", "total", "settled", "flags"} <= set(d)
    assert actors.get(actors.regulator, "/regulator/dashboard", days=0).status_code == 422
    r = actors.get(actors.regulator, "/regulator/statements")
    assert r.status_code == 200, r.text
    assert actors.cast.region in [page["pooling_region"] for page in r.json()]
    assert actors.get(actors.regulator, "/regulator/statements", region="37").status_code == 422
    assert actors.get(actors.hospital, "/regulator/dashboard").status_code == 403


def test_page_endpoints_answer_a_regulator_key(actors: Actors, database: str) -> None:
    """What the page fetches, fetched the way the page does (Bearer key), answers 200 on real data."""
    rx = actors.accepted()
    actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses", dispense_body(2))
    wait_caught_up(database)
    table = endpoints()
    for name in ("trail", "verification"):
        r = actors.get(actors.regulator, table[name].replace("{prescription_id}", rx))
        assert r.status_code == 200, r.text
    assert actors.get(actors.regulator, table["search"], physician_id=actors.cast.physician).json()["items"]
    assert actors.get(actors.regulator, table["flags"], rule="R8").status_code == 200
    recorded = actors.get(actors.regulator, table["queries"], regulator_id="CONSOLE-REG", limit=5).json()
    assert [q["path"] for q in recorded[:2]] == [table["queries"], table["flags"]]
    assert actors.get(actors.hospital, table["trail"].replace("{prescription_id}", rx)).status_code == 403


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium to render the page with")
def test_page_renders_a_real_trail_in_headless_chromium(actors: Actors, api: object, tmp_path: Path,
                                                        database: str) -> None:
    rx = actors.accepted()
    codes = trace_codes(2)
    assert actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{rx}/dispenses",
                       dispense_body(2, codes)).status_code == 201
    other = actors.accepted()
    assert actors.post(actors.pharmacy, f"/pharmacy/prescriptions/{other}/dispenses",  # R8: sold twice
                       dispense_body(1, codes[:1])).status_code == 409
    wait_caught_up(database)  # the page reads the trail and the flags from the read side
    shot = tmp_path / "console.png"
    with live_server(api) as base, tempfile.TemporaryDirectory() as profile:
        url = f"{base}/console?rx={rx}&rule=R8#key={actors.regulator}&regulator=CONSOLE-REG"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--virtual-time-budget=8000", "--window-size=1280,1400"]
        shot_run = subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", url],
                                  capture_output=True, timeout=120, env={**os.environ, "HOME": profile})
        dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", url], capture_output=True, timeout=120,
                             env={**os.environ, "HOME": profile}, text=True)
        recorded = actors.get(actors.regulator, "/regulator/queries", regulator_id="CONSOLE-REG", limit=50).json()
    assert shot_run.returncode == 0, shot_run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the browser, holding the key from the fragment, fetched the trail and rendered it as a timeline
    assert "PrescriptionIssued" in html and "PrescriptionDispensed" in html and "TraceCodeSold" in html
    assert "哈希链完整 Intact" in html
    assert f"Prescription {rx}" in html
    assert actors.cast.pharmacy in html  # an actor, shown
    assert f'title="{other}"' in html  # the R8 flag of the second sale, listed (?rule=R8)
    assert "/regulator/prescriptions/" in html  # the query record panel lists the page's own calls
    # and those calls were recorded as this regulator's queries
    assert {f"/regulator/prescriptions/{rx}/trail", "/regulator/flags"} <= {q["path"] for q in recorded}
    assert actors.regulator not in html  # the key itself never lands in the page
