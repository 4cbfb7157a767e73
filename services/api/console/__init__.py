"""The regulator console: one self-contained page (no build, no CDN) from the files beside this module.

``index.html`` is the page, ``console.css`` and ``console.js`` its style and vanilla script; they are put inline
into the page when it is first served, so a strict Content-Security-Policy can allow exactly them by their hashes
(inline script and style by hash only; fetches only to this origin). The dashboard's charts are drawn with
Chart.js, vendored here as ``chart.umd.min.js`` (v4.5.1 from the npm package, MIT: ``chart.js-LICENSE.md``) and
served by this API at ``/console/chart.umd.min.js`` with its Subresource Integrity hash — no CDN.
``GET /console`` serves the page without a key: it
holds no data. In the browser the regulator pastes their API key (kept in ``sessionStorage`` only; ``#key=rx_...``
in the URL is accepted once and then removed from the address bar), and the page calls the regulator endpoints of
this API with it: search, a prescription's trail as a timeline, its hash-chain verification, rule flags and the
regulator query record. Every value from the API is put into the page with ``textContent``, never as markup.

The endpoints the page may call are the ``ENDPOINTS`` table of the script; tests check each against the app's
OpenAPI document, so the page cannot drift from the API silently. The rule filter lists the rule catalogue's ids.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from services.domain.rules import RULES

ENDPOINT_TABLE = re.compile(r"const ENDPOINTS = \{(.*?)\};", re.S)


def _asset(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CHART_JS = "chart.umd.min.js"


@cache
def chart_js() -> bytes:
    return files(__name__).joinpath(CHART_JS).read_bytes()


def _sri(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


@cache
def page() -> tuple[str, dict[str, str]]:
    """The page as served and its response headers (the CSP names the inline script's and style's hashes)."""
    style, script = _asset("console.css"), _asset("console.js")
    options = "".join(f'<option value="{rule_id}">{rule_id}</option>' for rule_id in RULES)
    html = (_asset("index.html").replace("@@RULE_OPTIONS@@", options)
            .replace("@@STYLE@@", style).replace("@@SCRIPT@@", script).replace("@@CHART_SRI@@", _sri(chart_js())))
    csp = ("default-src 'none'; "
           f"script-src 'self' {_sha256(script)}; style-src {_sha256(style)}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
               "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
    return html, headers


PAGE, HEADERS = page()
CSP = HEADERS["Content-Security-Policy"]


def endpoints() -> dict[str, str]:
    """The script's ``ENDPOINTS`` table, parsed from the page as served (for tests and tooling)."""
    match = ENDPOINT_TABLE.search(PAGE)
    assert match is not None
    return dict(re.findall(r'(\w+):\s*"([^"]+)"', match.group(1)))


router = APIRouter()


@router.get("/console", response_class=HTMLResponse, include_in_schema=False)
def console() -> HTMLResponse:
    """The regulator console page (no data in it; the browser fetches with the regulator's key)."""
    return HTMLResponse(PAGE, headers=HEADERS)


@router.get("/console/" + CHART_JS, include_in_schema=False)
def chart() -> Response:
    """The vendored Chart.js the dashboard draws with (same origin; the page pins it by its SRI hash)."""
    return Response(chart_js(), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
