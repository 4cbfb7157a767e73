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
