"""The regulator console: one self-contained page (HTML, CSS and vanilla JS inline; no build, no CDN).

``GET /console`` serves the page itself without a key: it holds no data. In the browser the regulator pastes
their API key (kept in ``sessionStorage`` only; ``#key=rx_...`` in the URL is accepted once and then removed
from the address bar), and the page calls the regulator endpoints of this API with it: search, a
prescription's trail as a timeline, its hash-chain verification, rule flags and the regulator query record.
Every value from the API is put into the page with ``textContent``, never as markup, and a strict
Content-Security-Policy (script and style allowed only by their hashes; fetches only to this origin) backs that up.

The endpoints the page may call are the ``ENDPOINTS`` table of the script; tests check each against the
app's OpenAPI document, so the page cannot drift from the API silently.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

_STYLE = """
:root { --ink:#1d2733; --muted:#5b6876; --line:#d8dee6; --bg:#f4f6f9; --card:#fff; --accent:#0b5cad;
        --ok:#12784a; --okbg:#e3f5ec; --bad:#b3261e; --badbg:#fbe7e6; --warn:#8a5a00; --warnbg:#fff4d6; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; color:var(--ink);
       background:var(--bg); }
header { display:flex; align-items:center; gap:16px; padding:10px 18px; background:#13304f; color:#fff; }
header h1 { font-size:17px; margin:0; font-weight:600; }
header .sub { color:#b9c8d8; font-size:12px; }
header form { margin-left:auto; display:flex; gap:6px; align-items:center; }
header input { width:260px; }
main { display:grid; grid-template-columns: minmax(0,1fr) 330px; gap:14px; padding:14px 18px; }
section.card, aside.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 14px;
                           margin-bottom:14px; }
h2 { font-size:15px; margin:0 0 8px; }
h2 .en { color:var(--muted); font-weight:400; }
label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
input, select, button { font:inherit; padding:4px 7px; border:1px solid var(--line); border-radius:4px; }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
button.link { background:none; color:var(--accent); border:none; padding:0; text-decoration:underline; }
button.ghost { background:#fff; color:var(--accent); }
.row { display:flex; flex-wrap:wrap; gap:8px; align-items:flex-end; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:500; font-size:12px; }
.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px; word-break:break-all; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.ok { background:var(--okbg); color:var(--ok); }
.badge.bad { background:var(--badbg); color:var(--bad); }
.badge.warn { background:var(--warnbg); color:var(--warn); }
.status { min-height:18px; font-size:12px; }
.status.err { color:var(--bad); }
ol.timeline { list-style:none; margin:0; padding:0 0 0 14px; border-left:3px solid var(--line); }
ol.timeline li { position:relative; padding:4px 0 10px 12px; }
ol.timeline li::before { content:""; position:absolute; left:-22px; top:9px; width:11px; height:11px;
                         border-radius:50%; background:var(--accent); border:2px solid #fff; }
ol.timeline li.Encounter::before { background:#6b4fbb; }
ol.timeline li.TraceCode::before { background:#c77700; }
ol.timeline li.flagged::before { background:var(--bad); }
.ev-head { display:flex; flex-wrap:wrap; gap:10px; align-items:baseline; }
.ev-type { font-weight:600; }
.ev-meta { font-size:12px; color:var(--muted); }
details summary { cursor:pointer; color:var(--accent); font-size:12px; }
pre { margin:4px 0 0; padding:6px; background:#f7f9fb; border:1px solid var(--line); border-radius:4px;
      max-height:220px; overflow:auto; font-size:12px; }
aside ol { margin:0; padding-left:18px; font-size:12px; }
aside li { margin-bottom:4px; }
.hidden { display:none; }
"""

_SCRIPT = r"""
"use strict";
// The only endpoints this page calls (checked against the API's OpenAPI document by the tests).
const ENDPOINTS = {
  search: "/regulator/prescriptions",
  trail: "/regulator/prescriptions/{prescription_id}/trail",
  verification: "/regulator/prescriptions/{prescription_id}/verification",
  flags: "/regulator/flags",
  queries: "/regulator/queries",
};
const KEY = "rxtrail.console.key", REG = "rxtrail.console.regulator";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {            // builds nodes; text only ever goes in as textContent
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v == null ? "" : String(v);
    else if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function say(id, text, isError) { const n = $(id); n.textContent = text || ""; n.className = "status" + (isError ? " err" : ""); }
const CN_TIME = { timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
                  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString("zh-CN", CN_TIME) + " (UTC+8)";
}
function short(id) { return String(id).slice(0, 8); }

function key() { return sessionStorage.getItem(KEY) || ""; }
function regulatorId() { return sessionStorage.getItem(REG) || ""; }

async function api(name, pathParams, query) {
  let path = ENDPOINTS[name];
  for (const [k, v] of Object.entries(pathParams || {})) path = path.replace("{" + k + "}", encodeURIComponent(v));
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== "" && v != null) qs.append(k, v);
  const url = path + (qs.toString() ? "?" + qs.toString() : "");
  if (!key()) throw new Error("请先输入 API 密钥 / enter your API key first");
  const r = await fetch(url, { headers: { "Authorization": "Bearer " + key(), "Accept": "application/json" },
                               cache: "no-store", credentials: "omit" });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const why = body && (body.reason || body.detail) ? (body.reason || JSON.stringify(body.detail)) : r.statusText;
    const rule = body && body.rule ? " [" + body.rule + "]" : "";
    throw new Error("HTTP " + r.status + rule + ": " + why);
  }
  return body;
}

// --- key ---------------------------------------------------------------------------------------
function takeFragment() {                         // #key=rx_...&regulator=REG1 : stored, then wiped from the URL
  if (!location.hash || location.hash.length < 2) return;
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.get("key")) sessionStorage.setItem(KEY, p.get("key").trim());
  if (p.get("regulator")) sessionStorage.setItem(REG, p.get("regulator").trim());
  history.replaceState(null, "", location.pathname + location.search);
}
function showKeyState() {
  $("key-state").textContent = key() ? "密钥已设置 key set (" + key().slice(0, 19) + "…)" : "未设置密钥 no key";
  $("regulator-id").value = regulatorId();
}

// --- search ------------------------------------------------------------------------------------
let searchQuery = null;
async function search(after) {
  const form = $("search-form");
  const query = {};
  for (const name of ["patient_ref", "physician_id", "pharmacy_id", "hospital_id", "trace_code"]) {
    const v = form.elements[name].value.trim();
    if (v) query[name] = v;
  }
  if (after) Object.assign(query, searchQuery, { after: after }); else searchQuery = Object.assign({}, query);
  say("search-status", "查询中 searching…");
  try {
    const page = await api("search", null, Object.assign({ limit: 50 }, query));
    const tbody = $("search-results");
    if (!after) clear(tbody);
    for (const rx of page.items) {
      tbody.append(el("tr", {},
        el("td", {}, el("button", { class: "link mono", text: short(rx.prescription_id), title: rx.prescription_id,
                                    onclick: () => openTrail(rx.prescription_id) })),
        el("td", { text: rx.status }),
        el("td", { text: rx.hospital_id }),
        el("td", { text: rx.physician_id }),
        el("td", { text: rx.dispenser_id || "—" }),
        el("td", { class: "mono", text: short(rx.patient_ref) + "…", title: rx.patient_ref }),
        el("td", { text: rx.total == null ? "—" : rx.total }),
        el("td", {}, ...(rx.flags || []).map((f) => el("span", { class: "badge bad", text: f })))));
    }
    $("search-more").classList.toggle("hidden", page.next_cursor == null);
    $("search-more").dataset.after = page.next_cursor == null ? "" : page.next_cursor;
    say("search-status", tbody.children.length + " 张处方 prescriptions");
  } catch (e) { say("search-status", e.message, true); }
  refreshQueries();
}

// --- trail and verification --------------------------------------------------------------------
const ACTORS = ["hospital_id", "physician_id", "pharmacist_id", "dispenser_id", "pharmacy_id",
                "delivery_enterprise_id", "seller_id", "agency_id", "regulator_id", "settlement_ref"];
function actorOf(ev) {
  const d = ev.data || {};
  const found = ACTORS.filter((k) => d[k]).map((k) => k.replace(/_id$|_ref$/, "") + ": " + d[k]);
  return found.length ? found.join(", ") : "—";
}
function renderVerification(v, target) {
  clear(target);
  if (v.verified) {
    target.append(el("span", { class: "badge ok", text: "哈希链完整 Intact" }),
                  " ", el("span", { class: "muted", text: v.aggregates + " 条事件流 streams checked" }));
  } else {
    target.append(el("span", { class: "badge bad", text: "链断裂 Broken link" }));
    const list = el("ul");
    for (const b of v.broken) {
      list.append(el("li", { class: "mono", text: b.aggregate_id + " v" + b.version + ": " + b.reason }));
    }
    target.append(list);
  }
}
async function openTrail(id) {
  id = String(id).trim();
  $("trail-id").value = id;
  say("trail-status", "加载中 loading…");
  try {
    const t = await api("trail", { prescription_id: id });
    $("trail-head").textContent = "处方 Prescription " + t.prescription_id + " · 状态 status: " + t.status;
    const list = clear($("trail-events"));
    for (const ev of t.events) {
      const flagged = ev.event_type.endsWith("Flagged");
      list.append(el("li", { class: ev.aggregate_type + (flagged ? " flagged" : "") },
        el("div", { class: "ev-head" },
          el("span", { class: "ev-type", text: ev.event_type }),
          flagged && ev.data.rule_id ? el("span", { class: "badge bad", text: ev.data.rule_id }) : null,
          el("span", { class: "ev-meta", text: when(ev.at) }),
          el("span", { class: "ev-meta", text: "执行方 actor: " + actorOf(ev) })),
        el("div", { class: "ev-meta mono",
                    text: "事件 event: " + ev.aggregate_type + " " + ev.aggregate_id + " v" + ev.version }),
        el("details", {}, el("summary", { text: "数据 data" }),
                          el("pre", { text: JSON.stringify(ev.data, null, 2) }))));
    }
    renderVerification(t.verification, $("verification"));
    say("trail-status", t.events.length + " 个事件 events");
  } catch (e) { say("trail-status", e.message, true); }
  refreshQueries();
}
async function verifyAgain() {
  const id = $("trail-id").value.trim();
  if (!id) return;
  say("trail-status", "校验中 verifying…");
  try {
    renderVerification(await api("verification", { prescription_id: id }), $("verification"));
    say("trail-status", "已重新校验 verified again at " + when(new Date().toISOString()));
  } catch (e) { say("trail-status", e.message, true); }
  refreshQueries();
}

// --- flags -------------------------------------------------------------------------------------
async function loadFlags(after) {
  const rule = $("flag-rule").value;
  say("flags-status", "加载中 loading…");
  try {
    const page = await api("flags", null, { rule: rule, after: after || "", limit: 100 });
    const tbody = $("flag-results");
    if (!after) clear(tbody);
    for (const f of page.items) {
      const details = Object.entries(f.details || {}).map(([k, v]) => k + "=" + v).join(", ");
      tbody.append(el("tr", {},
        el("td", { text: when(f.at) }),
        el("td", {}, el("span", { class: "badge bad", text: f.rule })),
        el("td", {}, el("button", { class: "link mono", text: short(f.prescription_id), title: f.prescription_id,
                                    onclick: () => openTrail(f.prescription_id) })),
        el("td", { text: f.reason }),
        el("td", { class: "mono", text: details })));
    }
    $("flags-more").classList.toggle("hidden", page.next_cursor == null);
    $("flags-more").dataset.after = page.next_cursor == null ? "" : page.next_cursor;
    say("flags-status", tbody.children.length + " 条标记 flags");
  } catch (e) { say("flags-status", e.message, true); }
  refreshQueries();
}

// --- the regulator's own query record ------------------------------------------------------------
let queriesTimer = null;
function refreshQueries() {                        // coalesced: one record query after a burst of calls
  clearTimeout(queriesTimer);
  queriesTimer = setTimeout(loadQueries, 150);
}
async function loadQueries() {
  if (!key()) return;
  const who = regulatorId();
  $("queries-scope").textContent = who ? "监管员 regulator " + who : "全部监管员 all regulators (set your id to filter)";
  try {
    const rows = await api("queries", null, { regulator_id: who, limit: 30 });
    const list = clear($("queries"));
    for (const q of rows) {
      list.append(el("li", {},
        el("div", { class: "muted", text: when(q.at) + " · " + q.regulator_id }),
        el("div", { class: "mono", text: q.method + " " + q.path + (q.query ? "?" + q.query : "") })));
    }
    say("queries-status", "");
  } catch (e) { say("queries-status", e.message, true); }
}

// --- wiring ------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  takeFragment();
  showKeyState();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("api-key").value.trim();
    if (v) sessionStorage.setItem(KEY, v);
    $("api-key").value = "";
    showKeyState();
    refreshQueries();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY); sessionStorage.removeItem(REG); showKeyState(); clear($("queries"));
  });
  $("regulator-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("regulator-id").value.trim();
    if (v) sessionStorage.setItem(REG, v); else sessionStorage.removeItem(REG);
    refreshQueries();
  });
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("search-more").addEventListener("click", (e) => search(e.target.dataset.after));
  $("trail-form").addEventListener("submit", (e) => { e.preventDefault(); openTrail($("trail-id").value); });
  $("verify-again").addEventListener("click", verifyAgain);
  $("flags-form").addEventListener("submit", (e) => { e.preventDefault(); loadFlags(); });
  $("flags-more").addEventListener("click", (e) => loadFlags(e.target.dataset.after));
  $("refresh-queries").addEventListener("click", refreshQueries);
  const start = new URLSearchParams(location.search);   // ?rx=<id> opens a trail, ?rule=R8 lists flags
  if (/^R\d{1,2}$/.test(start.get("rule") || "")) $("flag-rule").value = start.get("rule");
  if (!key()) return;
  if (start.get("rx")) openTrail(start.get("rx"));
  if (start.get("rule")) loadFlags();
  if (!start.get("rx") && !start.get("rule")) refreshQueries();
});
"""

_RULES = "".join(f'<option value="R{i}">R{i}</option>' for i in range(1, 15))

_BODY = f"""
<header>
  <div><h1>处方流转监管台 Regulator console</h1><div class="sub">rxtrail · 只读 read-only · 每次查询均被记录
  every query is recorded</div></div>
  <form id="key-form" autocomplete="off">
    <input id="api-key" type="password" placeholder="API 密钥 key rx_…" aria-label="API key">
    <button type="submit">使用 Use</button>
    <button type="button" class="ghost" id="forget-key">清除 Forget</button>
    <span id="key-state" class="sub"></span>
  </form>
</header>
<main>
  <div>
    <section class="card" id="search">
      <h2>处方检索 <span class="en">Search prescriptions</span></h2>
      <form id="search-form" class="row" autocomplete="off">
        <label>患者假名 Patient pseudonym<input name="patient_ref" maxlength="128"></label>
        <label>医师 Physician<input name="physician_id" maxlength="200"></label>
        <label>药店 Pharmacy<input name="pharmacy_id" maxlength="200"></label>
        <label>医院 Hospital<input name="hospital_id" maxlength="200"></label>
        <label>追溯码 Trace code<input name="trace_code" pattern="\\d{{20}}" maxlength="20"></label>
        <button type="submit">检索 Search</button>
      </form>
      <div id="search-status" class="status"></div>
      <table><thead><tr><th>处方 Rx</th><th>状态 Status</th><th>医院 Hospital</th><th>医师 Physician</th>
        <th>药店 Dispenser</th><th>患者 Patient</th><th>金额 Total</th><th>标记 Flags</th></tr></thead>
        <tbody id="search-results"></tbody></table>
      <button type="button" class="ghost hidden" id="search-more">更多 More</button>
    </section>
    <section class="card" id="trail">
      <h2>处方流转轨迹 <span class="en">Trail</span></h2>
      <form id="trail-form" class="row" autocomplete="off">
        <label>处方编号 Prescription id<input id="trail-id" size="40" maxlength="36"></label>
        <button type="submit">打开 Open</button>
        <button type="button" class="ghost" id="verify-again">重新校验 Verify again</button>
      </form>
      <div id="trail-status" class="status"></div>
      <h2>校验 <span class="en">Verification</span></h2>
      <div id="verification" class="muted">—</div>
      <p id="trail-head" class="muted"></p>
      <ol id="trail-events" class="timeline"></ol>
    </section>
    <section class="card" id="flags">
      <h2>规则标记 <span class="en">Rule flags</span></h2>
      <form id="flags-form" class="row">
        <label>规则 Rule<select id="flag-rule" name="rule"><option value="">全部 all</option>{_RULES}</select></label>
        <button type="submit">查看 Show</button>
      </form>
      <div id="flags-status" class="status"></div>
      <table><thead><tr><th>时间 Time</th><th>规则 Rule</th><th>处方 Rx</th><th>原因 Reason</th>
        <th>详情 Details</th></tr></thead><tbody id="flag-results"></tbody></table>
      <button type="button" class="ghost hidden" id="flags-more">更多 More</button>
    </section>
  </div>
  <aside class="card" id="record">
    <h2>我的查询记录 <span class="en">My query record</span></h2>
    <form id="regulator-form" class="row" autocomplete="off">
      <label>监管员编号 Regulator id<input id="regulator-id" maxlength="64"></label>
      <button type="submit" class="ghost">筛选 Filter</button>
      <button type="button" class="ghost" id="refresh-queries">刷新 Refresh</button>
    </form>
    <p id="queries-scope" class="muted"></p>
    <div id="queries-status" class="status"></div>
    <ol id="queries"></ol>
  </aside>
</main>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = (f'<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">'
        f"<title>rxtrail 监管台 Regulator console</title><style>{_STYLE}</style></head>"
        f"<body>{_BODY}<script>{_SCRIPT}</script></body></html>\n")

CSP = ("default-src 'none'; "
       f"script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}

ENDPOINT_TABLE = re.compile(r"const ENDPOINTS = \{(.*?)\};", re.S)


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
