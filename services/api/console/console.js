"use strict";
// The only endpoints this page calls (checked against the API's OpenAPI document by the tests).
const ENDPOINTS = {
  search: "/regulator/prescriptions",
  trail: "/regulator/prescriptions/{prescription_id}/trail",
  verification: "/regulator/prescriptions/{prescription_id}/verification",
  flags: "/regulator/flags",
  queries: "/regulator/queries",
  dashboard: "/regulator/dashboard",
  statements: "/regulator/statements",
  findings: "/regulator/findings",
  finding: "/regulator/findings/{finding_id}",
  settlementIssues: "/regulator/settlement-issues",
  registryChanges: "/registry/changes",
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
function yuan(v) {                                 // money arrives as a decimal string; shown with two decimals
  if (v == null || v === "") return "—";
  const n = Number(v);
  return isNaN(n) ? String(v) : "¥" + n.toLocaleString("zh-CN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
function splitOf(o) {                              // the fund / personal account / self-pay split, as badges
  return el("span", { class: "split" },
    el("span", { class: "money fund", text: "统筹基金 fund " + yuan(o.fund) }),
    el("span", { class: "money personal", text: "个人账户 personal " + yuan(o.personal_account) }),
    el("span", { class: "money selfpay", text: "自费 self-pay " + yuan(o.self_pay) }));
}

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
    const err = new Error("HTTP " + r.status + rule + ": " + why);
    err.status = r.status;
    throw err;
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
        el("td", { class: "num", text: yuan(rx.total) }),
        el("td", { class: "num", text: yuan(rx.fund) }),
        el("td", { class: "num", text: yuan(rx.personal_account) }),
        el("td", { class: "num", text: yuan(rx.self_pay) }),
        el("td", {}, ...(rx.flags || []).map((f) => el("span", { class: "badge bad", text: f }))),
        el("td", { class: "chain" }, el("button", { class: "link verify-row", text: "校验 verify",
                                                   onclick: (e) => verifyRow(rx.prescription_id, e.target.parentNode) }))));
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
// A dispense is one step: the TraceCodeSold / TraceCodeReturned events of the codes it lists are folded into it
// (a 60-pack sale is one row with its 60 codes behind a disclosure), never 60 rows.
function groupTrail(events) {
  const steps = [], byCode = new Map();
  for (const ev of events) {
    if (ev.event_type === "PrescriptionDispensed") {
      const step = { ev: ev, codes: [] };
      for (const line of (ev.data.lines || [])) {
        for (const code of (line.trace_codes || [])) byCode.set(code, step);
      }
      steps.push(step);
    }
  }
  const out = [];
  for (const ev of events) {
    if (ev.aggregate_type === "TraceCode" && byCode.has((ev.data || {}).code)) {
      byCode.get(ev.data.code).codes.push(ev);
    } else if (ev.event_type === "PrescriptionDispensed") {
      out.push(steps.find((s) => s.ev === ev));
    } else {
      out.push({ ev: ev, codes: null });
    }
  }
  return out;
}
function dispenseBody(step) {
  const ev = step.ev, box = el("div");
  const table = el("table", { class: "lines" });
  table.append(el("tr", {}, el("th", { text: "药品 Drug" }), el("th", { class: "num", text: "数量 Qty" }),
                          el("th", { class: "num", text: "单价 Unit price" }), el("th", { class: "num", text: "追溯码 Codes" })));
  for (const line of (ev.data.lines || [])) {
    table.append(el("tr", {}, el("td", { class: "mono", text: line.drug_code }),
                            el("td", { class: "num", text: line.quantity }),
                            el("td", { class: "num", text: yuan(line.unit_price) }),
                            el("td", { class: "num", text: (line.trace_codes || []).length })));
  }
  box.append(table);
  const sold = step.codes.filter((c) => c.event_type === "TraceCodeSold").length;
  const returned = step.codes.filter((c) => c.event_type === "TraceCodeReturned").length;
  const total = (ev.data.lines || []).reduce((n, l) => n + (l.trace_codes || []).length, 0);
  const list = el("ol", { class: "mono" });
  for (const line of (ev.data.lines || [])) {
    for (const code of (line.trace_codes || [])) {
      const states = step.codes.filter((c) => c.data.code === code).map((c) => c.event_type === "TraceCodeSold" ? "售出 sold" : "退回 returned");
      list.append(el("li", { text: code + " · " + (states.length ? states.join(", ") : "未登记 no sale recorded") }));
    }
  }
  box.append(el("details", { class: "codes" },
    el("summary", { text: total + " 个追溯码 trace codes (" + sold + " 售出 sold" + (returned ? ", " + returned + " 退回 returned" : "") + ")" }),
    list));
  return box;
}
async function openTrail(id) {
  id = String(id).trim();
  $("trail-id").value = id;
  say("trail-status", "加载中 loading…");
  try {
    const t = await api("trail", { prescription_id: id });
    $("trail-head").textContent = "处方 Prescription " + t.prescription_id + " · 状态 status: " + t.status;
    const list = clear($("trail-events"));
    clear($("trail-money"));
    for (const step of groupTrail(t.events)) {
      const ev = step.ev;
      const flagged = ev.event_type.endsWith("Flagged");
      const head = el("div", { class: "ev-head" },
        el("span", { class: "ev-type", text: ev.event_type + (ev.data.dispense_no ? " #" + ev.data.dispense_no : "") }),
        flagged && ev.data.rule_id ? el("span", { class: "badge bad", text: ev.data.rule_id }) : null,
        step.codes ? el("span", { class: "badge warn", text: step.codes.length + " codes folded" }) : null,
        el("span", { class: "ev-meta", text: when(ev.at) }),
        el("span", { class: "ev-meta", text: "执行方 actor: " + actorOf(ev) }));
      const item = el("li", { class: ev.aggregate_type + (flagged ? " flagged" : "") + (step.codes ? " dispense" : "") }, head);
      if (step.codes) item.append(dispenseBody(step));
      if (ev.event_type === "PrescriptionSettled" || ev.event_type === "ConsultationSettled") {
        item.append(el("div", {}, el("span", { class: "money", text: "合计 total " + yuan(ev.data.total) }), " ", splitOf(ev.data)));
        if (ev.event_type === "PrescriptionSettled") $("trail-money").append(splitOf(ev.data));
      }
      item.append(el("div", { class: "ev-meta mono",
                              text: "事件 event: " + ev.aggregate_type + " " + ev.aggregate_id + " v" + ev.version }),
                  el("details", {}, el("summary", { text: "数据 data" }),
                                    el("pre", { text: JSON.stringify(ev.data, null, 2) })));
      list.append(item);
    }
    renderVerification(t.verification, $("verification"));
    say("trail-status", t.events.length + " 个事件 events");
    $("trail").scrollIntoView();
  } catch (e) { say("trail-status", e.message, true); }
  refreshQueries();
}
async function verifyRow(id, cell) {                // the chain status of one trail, in its search row
  clear(cell).append(el("span", { class: "muted", text: "…" }));
  try {
    const v = await api("verification", { prescription_id: id });
    clear(cell).append(el("span", { class: "badge " + (v.verified ? "ok" : "bad"), text: v.verified ? "完整 intact" : "断裂 broken" }));
  } catch (e) { clear(cell).append(el("span", { class: "badge warn", text: e.message })); }
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

// --- dashboard ---------------------------------------------------------------------------------
const charts = {};
const PALETTE = ["#0b5cad", "#c77700", "#12784a", "#6b4fbb", "#b3261e", "#00838f"];
function drawChart(id, config) {
  if (typeof Chart === "undefined") return;        // the vendored library did not load: tables still show
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), config);
}
async function loadDashboard() {
  const form = $("dash-form");
  say("dash-status", "加载中 loading…");
  try {
    const d = await api("dashboard", null, { days: form.elements.days.value, region: form.elements.region.value.trim() });
    const tbody = clear($("dash-rows"));
    const sum = { issued: 0, settled: 0, fund: 0, personal_account: 0, self_pay: 0, flags: 0 };
    const days = [...new Set(d.days.map((r) => r.day))].sort();
    const regions = [...new Set(d.days.map((r) => r.region))].sort();
    for (const r of d.days) {
      for (const k of Object.keys(sum)) sum[k] += Number(r[k]);
      tbody.append(el("tr", {}, el("td", { text: r.day }), el("td", { text: r.region }),
        el("td", { class: "num", text: r.issued }), el("td", { class: "num", text: r.settled }),
        el("td", { class: "num", text: yuan(r.fund) }), el("td", { class: "num", text: yuan(r.personal_account) }),
        el("td", { class: "num", text: yuan(r.self_pay) }), el("td", { class: "num", text: yuan(r.total) }),
        el("td", { class: "num", text: r.flags })));
    }
    if (!d.days.length) tbody.append(el("tr", {}, el("td", { colspan: 9, class: "empty", text: "无数据 no activity since " + d.since })));
    const tiles = clear($("dash-totals"));
    for (const [label, v] of [["开具 issued", sum.issued], ["结算 settled", sum.settled], ["统筹基金 fund", yuan(sum.fund)],
                              ["个人账户 personal", yuan(sum.personal_account)], ["自费 self-pay", yuan(sum.self_pay)],
                              ["标记 flags", sum.flags]]) {
      tiles.append(el("div", { class: "tile" }, el("b", { text: v }), el("span", { text: label })));
    }
    const cell = (region, day, k) => { const r = d.days.find((x) => x.region === region && x.day === day); return r ? Number(r[k]) : 0; };
    drawChart("chart-fund", { type: "bar", options: { animation: false, responsive: true,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
      data: { labels: days, datasets: regions.map((reg, i) => ({ label: reg, backgroundColor: PALETTE[i % PALETTE.length],
        data: days.map((day) => cell(reg, day, "fund")) })) } });
    drawChart("chart-count", { type: "bar", options: { animation: false, responsive: true, scales: { y: { beginAtZero: true } } },
      data: { labels: days, datasets: [
        { label: "开具 issued", borderColor: PALETTE[0], backgroundColor: PALETTE[0],
          data: days.map((day) => regions.reduce((n, reg) => n + cell(reg, day, "issued"), 0)) },
        { label: "结算 settled", borderColor: PALETTE[2], backgroundColor: PALETTE[2],
          data: days.map((day) => regions.reduce((n, reg) => n + cell(reg, day, "settled"), 0)) }] } });
    say("dash-status", days.length + " 天 days, " + regions.length + " 个统筹区 regions" + (typeof Chart === "undefined" ? " (图表库未加载 charts unavailable)" : ""));
  } catch (e) { say("dash-status", e.message, true); }
  refreshQueries();
}

// --- findings (the fraud analytics projection) ----------------------------------------------------
function findingLinks(f) {                         // every prescription a finding names, as links into its trail
  return [...new Set(f.prescription_ids || [])];
}
function findingPeriod(f) {
  return f.first_at && f.last_at && f.first_at !== f.last_at ? when(f.first_at) + " – " + when(f.last_at) : when(f.first_at || f.last_at);
}
function showFinding(f) {
  const box = clear($("finding-detail"));
  box.classList.remove("hidden");
  box.append(el("h2", {}, el("span", { class: "badge sev-" + f.severity, text: f.severity }), " ",
                          el("span", { class: "mono", text: f.pattern }), f.rule ? el("span", { class: "badge bad", text: f.rule }) : null,
                          " ", el("span", { class: "en mono", text: f.finding_id })));
  box.append(el("p", { text: f.explanation }));
  box.append(el("p", { class: "muted", text: "时间 period: " + findingPeriod(f) }));
  if ((f.parties || []).length) box.append(el("p", { class: "mono", text: "当事方 parties: " + f.parties.join(", ") }));
  const links = new Set(findingLinks(f));
  box.append(el("h2", {}, "证据 ", el("span", { class: "en", text: "Evidence (events that prove it)" })));
  const list = el("ol", { class: "evidence" });
  for (const e of (f.evidence || [])) {
    const rx = links.has(e.aggregate_id) ? e.aggregate_id : null;
    list.append(el("li", { class: "mono" },
      e.event_type + " · " + e.aggregate_id + " v" + e.version + " · " + when(e.at) + " ",
      rx ? el("button", { class: "link evidence-trail", text: "轨迹 trail " + short(rx), title: rx, onclick: () => openTrail(rx) }) : null));
  }
  if (!(f.evidence || []).length) list.append(el("li", { class: "empty", text: "无事件证据 no event evidence listed" }));
  box.append(list);
  if (links.size) {
    box.append(el("div", { class: "row" }, ...[...links].map((rx) => el("button", { class: "ghost", text: "打开轨迹 open trail " + short(rx),
                                                                             title: rx, onclick: () => openTrail(rx) }))));
  }
  box.scrollIntoView();
}
async function openFinding(id) {
  say("findings-status", "加载中 loading…");
  try { showFinding(await api("finding", { finding_id: id })); say("findings-status", ""); }
  catch (e) { say("findings-status", e.message, true); }
  refreshQueries();
}
async function loadFindings(after) {
  const form = $("findings-form");
  const tbody = $("finding-results");
  if (!after) clear(tbody);
  if (!ENDPOINTS.findings) {
    tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty",
      text: "疑点分析尚未提供 findings are not available from this API yet" })));
    say("findings-status", "");
    return;
  }
  say("findings-status", "加载中 loading…");
  try {
    const query = { limit: 100, after: after || "" };
    for (const name of ["pattern", "severity", "concerns", "patient_ref"]) query[name] = form.elements[name].value.trim();
    const page = await api("findings", null, query);
    for (const f of page.items) {
      const links = findingLinks(f);
      tbody.append(el("tr", { class: "finding" },
        el("td", { text: findingPeriod(f) }),
        el("td", {}, el("span", { class: "badge sev-" + f.severity, text: f.severity })),
        el("td", { class: "mono" }, f.pattern, f.rule ? el("span", { class: "badge bad", text: f.rule }) : null),
        el("td", { text: f.explanation }),
        el("td", { class: "mono", text: (f.parties || []).join(", ") }),
        el("td", {}, el("button", { class: "link finding-open", text: "证据 evidence (" + (f.evidence || []).length + ")",
                                    onclick: () => openFinding(f.finding_id) }),
                     ...links.slice(0, 3).map((rx) => el("button", { class: "link mono", text: " " + short(rx), title: rx,
                                                                   onclick: () => openTrail(rx) })))));
    }
    if (!tbody.children.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty", text: "没有线索 no findings" })));
    $("findings-more").classList.toggle("hidden", page.next_cursor == null);
    $("findings-more").dataset.after = page.next_cursor == null ? "" : page.next_cursor;
    say("findings-status", tbody.querySelectorAll("tr.finding").length + " 条线索 findings");
  } catch (e) {
    if (e.status === 404) {
      tbody.append(el("tr", {}, el("td", { colspan: 6, class: "empty", text: "疑点分析尚未运行 the findings projection has no data yet" })));
      say("findings-status", "");
    } else say("findings-status", e.message, true);
  }
  refreshQueries();
}

// --- statements and settlement issues per region ------------------------------------------------
const STATEMENT_SHOWN = ["fund", "personal_account", "self_pay", "refused", "clawed_back", "payable"];
async function loadStatements() {
  const form = $("statements-form");
  const region = form.elements.region.value.trim(), month = form.elements.month.value.trim();
  say("statements-status", "加载中 loading…");
  try {
    const pages = await api("statements", null, { region: region, month: month });
    const tbody = clear($("statement-rows"));
    let n = 0;
    for (const page of pages) {
      for (const s of page.items) {
        n += 1;
        const other = Object.entries(s.figures).filter(([k]) => !STATEMENT_SHOWN.includes(k)).map(([k, v]) => k + "=" + v).join(", ");
        tbody.append(el("tr", {}, el("td", { text: page.pooling_region }),
          el("td", { class: "mono", text: s.party_kind + " " + s.party_id }), el("td", { text: s.month }),
          ...STATEMENT_SHOWN.map((k) => el("td", { class: "num", text: yuan(s.figures[k]) })),
          el("td", { class: "mono small", text: other })));
      }
    }
    if (!n) tbody.append(el("tr", {}, el("td", { colspan: 10, class: "empty", text: "没有对账单 no statements" })));
    say("statements-status", n + " 份对账单 statements, " + pages.length + " 个统筹区 regions");
  } catch (e) { say("statements-status", e.message, true); }
  const issues = clear($("issue-rows"));
  if (!ENDPOINTS.settlementIssues) {
    issues.append(el("tr", {}, el("td", { colspan: 5, class: "empty", text: "结算问题尚未提供 settlement issues are not available from this API yet" })));
  } else {
    try {
      const page = await api("settlementIssues", null, { region: region, include_resolved: "true" });
      for (const i of page.items) {
        const rx = i.subject_kind === "prescription" ? i.subject_id : null;
        issues.append(el("tr", {}, el("td", { text: when(i.failed_at) }), el("td", { text: i.pooling_region }),
          el("td", {}, i.rule_id ? el("span", { class: "badge bad", text: i.rule_id }) : null, " " + i.error + ": " + i.reason,
             el("span", { class: "badge " + (i.open ? "warn" : "ok"), text: i.open ? "未解决 open" : "已处理 resolved" })),
          el("td", {}, rx ? el("button", { class: "link mono", text: short(rx), title: rx, onclick: () => openTrail(rx) })
                          : el("span", { class: "mono", text: i.subject_kind + " " + short(i.subject_id) })),
          el("td", { class: "mono", text: "失败 failures: " + i.failures + " · " + i.trigger })));
      }
      if (!issues.children.length) issues.append(el("tr", {}, el("td", { colspan: 5, class: "empty", text: "没有结算问题 no settlement issues" })));
      say("issues-status", "");
    } catch (e) { say("issues-status", e.message, true); }
  }
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

// --- registry changes (the authority's facts: who changed which, when) ------------------------------
async function loadChanges() {
  say("changes-status", "加载中 loading…");
  try {
    const page = await api("registryChanges", null, { fact_id: $("changes-form").elements.fact_id.value.trim(), limit: 30 });
    const list = clear($("changes"));
    for (const ch of page.items) {
      list.append(el("li", {},
        el("div", { class: "muted", text: when(ch.recorded_at) + " · " + ch.changed_by +
                                          (ch.effective_from ? " · 自 from " + ch.effective_from : "") }),
        el("div", { class: "mono", text: ch.fact_kind + " " + ch.fact_id + ": " + ch.change })));
    }
    if (!page.items.length) list.append(el("li", { class: "empty", text: "没有变更 no changes" }));
    say("changes-status", "");
  } catch (e) { say("changes-status", e.message, true); }
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
  $("dash-form").addEventListener("submit", (e) => { e.preventDefault(); loadDashboard(); });
  $("findings-form").addEventListener("submit", (e) => { e.preventDefault(); loadFindings(); });
  $("findings-more").addEventListener("click", (e) => loadFindings(e.target.dataset.after));
  $("statements-form").addEventListener("submit", (e) => { e.preventDefault(); loadStatements(); });
  $("changes-form").addEventListener("submit", (e) => { e.preventDefault(); loadChanges(); });
  const start = new URLSearchParams(location.search);   // ?rx=<id> opens a trail, ?rule=R8 lists flags
  if (/^R\d{1,2}$/.test(start.get("rule") || "")) $("flag-rule").value = start.get("rule");
  if (!key()) return;
  if (start.get("rx")) openTrail(start.get("rx"));
  if (start.get("rule")) loadFlags();
  loadDashboard();
  loadFindings();
  loadStatements();
  loadChanges();
  if (!start.get("rx") && !start.get("rule")) refreshQueries();
});
