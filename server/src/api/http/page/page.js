// The /health page: from where is what broken, and since when. Reads the report
// (/api/v2/debug/health) and the history (/api/v2/debug/health/history); sends
// "Authorization: Bearer <token>" when localStorage["vantage.token"] is set.
"use strict";

const SECTIONS = [
  ["access_url", "Access URL", "AccessURL"],
  ["database", "Database", "Database"],
  ["derp", "DERP", "DERP"],
  ["provisioner_daemons", "Provisioner Daemons", "ProvisionerDaemons"],
  ["websocket", "Websocket", "Websocket"],
  ["workspace_proxy", "Workspace Proxy", "WorkspaceProxy"],
];
const TOKEN_KEY = "vantage.token";
const REFRESH_EVERY_MS = 30000;
const STRIP_MARKS = 40;
const $ = (id) => document.getElementById(id);
let report = null;
let history = null;
let openRegion = null;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function sevClass(s) { return ["ok", "warning", "error"].includes(s) ? s : "none"; }
function badge(sev, text) {
  return `<span class="badge ${sevClass(sev)}">${esc(text ?? sev ?? "none")}</span>`;
}
function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function when(t) {
  return t ? `${esc(new Date(t).toLocaleString())} <span class="age" data-time="${esc(t)}">(${ago(t)})</span>` : "–";
}
function docs(code) {
  const c = String(code || "EUNKNOWN");
  return `<a href="/health/codes#${esc(c.toLowerCase())}">Docs for ${esc(c)}</a>`;
}
function messages(list, sev) {
  return (list || []).map((w) => `<div class="banner ${sev || "warning"}"><span class="code">${esc(w.code)}</span>: ${esc(w.message)} ${docs(w.code)}</div>`).join("");
}
function errorBanner(error) {
  if (!error) return "";
  const code = String(error).split(":")[0];
  return `<div class="banner error">${esc(error)} ${/^E[A-Z]+\d+$/.test(code) ? docs(code) : ""}</div>`;
}
function cellCode(r) {
  if (!r) return "";
  if (r.error) return String(r.error).split(":")[0];
  return (r.warnings && r.warnings[0] && r.warnings[0].code) || "";
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) opts.headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, opts);
  if (r.status === 401 || r.status === 403) {
    const e = new Error(r.status === 401 ? "This server needs an API token." : "The saved token is not allowed to read this.");
    e.auth = true;
    throw e;
  }
  return r;
}
async function apiJson(path, options) {
  const r = await api(path, options);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
  if (!r.ok) throw new Error(`${(body && body.message) || r.status} ${(body && body.detail) || ""}`.trim());
  return body;
}

function showAuth(message) {
  $("content").hidden = true;
  $("token-reason").textContent = message;
  $("token-form").hidden = false;
  $("status").textContent = "Token needed";
  $("status").className = "pending";
}
function showError(message) {
  const el = $("error");
  el.textContent = `Failed to load the report: ${message}`;
  el.hidden = false;
}

async function load(force) {
  const btn = $("refresh");
  btn.disabled = true;
  btn.textContent = force ? "Refreshing…" : "Refresh";
  try {
    report = await apiJson(`/api/v2/debug/health${force ? "?force=true" : ""}`);
    try { history = await apiJson("/api/v2/debug/health/history?since=1h"); } catch (e) {
      if (e.auth) throw e;
      history = null;
    }
    $("error").hidden = true;
    $("token-form").hidden = true;
    $("content").hidden = false;
    render();
  } catch (e) {
    if (e.auth) showAuth(e.message); else showError(e.message);
  } finally {
    btn.disabled = false;
    btn.textContent = "Refresh";
  }
}

async function toggleDismiss(name, dismiss) {
  try {
    const cur = await apiJson("/api/v2/debug/health/settings");
    const list = (cur.dismissed_healthchecks || []).filter((s) => s !== name);
    if (dismiss) list.push(name);
    await apiJson("/api/v2/debug/health/settings", {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dismissed_healthchecks: list }),
    });
  } catch (e) {
    if (e.auth) { showAuth(e.message); return; }
    showError(e.message);
  }
  await load(false);
}

function view() {
  const h = location.hash.slice(1) || "overview";
  if (["overview", "derp", "vantages", "components"].includes(h)) return [h, null];
  const key = h.startsWith("s-") ? h.slice(2) : h;
  if (SECTIONS.some(([k]) => k === key)) return ["section", key];
  return ["overview", null];
}

function render() {
  if (!report) return;
  const anyWarn = SECTIONS.some(([k]) => report[k] && (report[k].warnings || []).length);
  const st = $("status");
  st.textContent = report.healthy ? "Healthy" : "Unhealthy";
  st.className = sevClass(report.severity);
  $("subtitle").textContent = !report.healthy ? "Some issues have been detected"
    : anyWarn ? "All systems operational, but performance might be degraded" : "All systems operational";
  $("time").textContent = new Date(report.time).toLocaleString();
  $("age").dataset.time = report.time;
  $("age").textContent = `(${ago(report.time)})`;
  $("version").textContent = report.coder_version || "–";
  $("revision").textContent = report.revision ?? "–";
  $("section-tabs").innerHTML = SECTIONS.map(([k, t]) => {
    const s = report[k] || {};
    return `<a href="#s-${k}" data-view="${k}" data-section="${k}"><span class="badge ${sevClass(s.severity)}">${esc(s.severity || "none")}</span> ${esc(t)}${s.dismissed ? " (dismissed)" : ""}</a>`;
  }).join("");
  const vs = report.vantages || {};
  $("vantage-messages").innerHTML = messages(vs.warnings, sevClass(vs.severity) === "error" ? "error" : "warning");
  renderOverview();
  renderDerp();
  renderVantages();
  renderComponents();
  renderSection();
  showView();
}

function showView() {
  const [v, key] = view();
  document.querySelectorAll("[data-panel]").forEach((p) => { p.hidden = p.dataset.panel !== v; });
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", key ? a.dataset.section === key : a.dataset.view === v);
  });
}

function vantageNames() { return ((report.vantages || {}).items || []).map((v) => v.name); }

function renderOverview() {
  const items = (report.vantages || {}).items || [];
  let m = `<tr><th>Section</th><th>All vantages</th>${items.map((v) =>
    `<th data-vantage="${esc(v.name)}">${esc(v.name)}<br><span class="age">${esc(v.region)} · ${esc(v.state)}</span></th>`).join("")}</tr>`;
  for (const [k, t] of SECTIONS) {
    const s = report[k] || {};
    m += `<tr><th><a href="#s-${k}">${esc(t)}</a></th><td class="${sevClass(s.severity)}">${esc(s.severity || "none")} ${esc(cellCode(s))}${s.dismissed ? " (dismissed)" : ""}</td>`;
    m += items.map((v) => {
      const r = (s.vantage_reports || {})[v.name];
      return r ? `<td class="${sevClass(r.severity)}" data-vantage="${esc(v.name)}">${esc(r.severity)} ${esc(cellCode(r))}</td>` : `<td class="none">–</td>`;
    }).join("") + "</tr>";
  }
  $("matrix").innerHTML = m;
  $("strips").innerHTML = SECTIONS.map(([k, t]) => strip(k, t)).join("");
}

function strip(key, title) {
  const trans = ((history && history.transitions) || []).filter((x) => x.section === key && !x.vantage);
  const samples = ((history && history.checks) || []).filter((c) => c.section === key)
    .flatMap((c) => c.samples.map((s) => Object.assign({ vantage: c.vantage, target: c.target }, s)))
    .sort((a, b) => String(a.time).localeCompare(String(b.time))).slice(-STRIP_MARKS);
  const last = trans[trans.length - 1];
  const hourAgo = Date.now() - 3600e3;
  const flaps = trans.filter((x) => new Date(x.time).getTime() >= hourAgo).length;
  const marks = trans.slice(-STRIP_MARKS).map((x) =>
    `<span class="mark ${sevClass(x.to)}" title="${esc(new Date(x.time).toLocaleString())}: ${esc(x.from || "start")} to ${esc(x.to)}${x.error ? " — " + esc(x.error) : ""}">${esc((x.to || "?")[0].toUpperCase())}</span>`).join("");
  const checks = samples.map((s) =>
    `<span class="mark ${s.ok ? "ok" : "error"}" title="${esc(new Date(s.time).toLocaleString())} ${esc(s.vantage)} ${esc(s.target)}: ${s.ok ? "ok" : esc(s.error)} (${Number(s.duration_ms).toFixed(1)} ms)">${s.ok ? "+" : "x"}</span>`).join("");
  const since = last ? `${esc(last.to)} since ${when(last.time)}; ${flaps} change${flaps === 1 ? "" : "s"} in the last hour${flaps >= 3 ? " — flapping" : ""}` : "no change in the last hour";
  return `<div class="strip" data-strip="${key}"><div><a href="#s-${key}">${esc(title)}</a></div>
    <div class="marks" aria-label="${esc(title)} changes">${marks || '<span class="age">no transitions</span>'}</div>
    <div class="since">${since}</div>
    <div class="marks" aria-label="${esc(title)} checks">${checks || '<span class="age">no check outcomes</span>'}</div></div>`;
}

function nodeRtt(n) {
  return n && !n.error && (n.can_exchange_messages || n.round_trip_ping_ms > 0) ? Number(n.round_trip_ping_ms || 0) : null;
}
function regionName(id, r) { return (r && r.region && r.region.RegionName) || `region ${id}`; }

function renderDerp() {
  const derp = report.derp || {};
  const names = Object.keys(derp.vantage_reports || {});
  const regions = Object.entries(derp.regions || {});
  let m = `<tr><th>Region</th><th>All vantages</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>`;
  for (const [id, r] of regions) {
    m += `<tr class="region-row" tabindex="0" data-region="${esc(id)}"><th>${esc(regionName(id, r))} <span class="age">(${esc(id)})</span></th>`;
    m += `<td class="${sevClass(r.severity)}">${esc(r.severity)} ${esc(cellCode(r))}</td>`;
    m += names.map((n) => {
      const vr = ((derp.vantage_reports[n] || {}).regions || {})[id];
      if (!vr) return `<td class="none">not checked</td>`;
      const rtts = (vr.node_reports || []).map(nodeRtt).filter((x) => x !== null);
      const text = rtts.length ? `${Math.min(...rtts)} ms` : (cellCode(vr) || "no answer");
      return `<td class="${sevClass(vr.severity)}" data-vantage="${esc(n)}">${esc(text)}</td>`;
    }).join("") + "</tr>";
  }
  $("derp-matrix").innerHTML = m;
  document.querySelectorAll(".region-row").forEach((row) => {
    const open = () => { openRegion = row.dataset.region === openRegion ? null : row.dataset.region; renderDerpRegion(); };
    row.onclick = open;
    row.onkeydown = (e) => { if (e.key === "Enter") open(); };
  });
  renderDerpRegion();
  $("netcheck-logs").innerHTML = names.map((n) => {
    const vr = derp.vantage_reports[n] || {};
    const logs = (vr.netcheck_logs || []).join("\n");
    return `<h3>${esc(n)}</h3>${vr.netcheck_err ? errorBanner(vr.netcheck_err) : ""}<pre>${esc(logs || "This vantage sent no netcheck log.")}</pre>`;
  }).join("") || "<p>No vantage checks DERP.</p>";
}

function renderDerpRegion() {
  const derp = report.derp || {};
  const el = $("derp-region");
  if (openRegion === null || !(derp.regions || {})[openRegion]) { el.innerHTML = ""; return; }
  const agg = derp.regions[openRegion];
  let h = `<h2>${esc(regionName(openRegion, agg))}: nodes</h2>${errorBanner(agg.error)}${messages(agg.warnings)}`;
  for (const [n, vrep] of Object.entries(derp.vantage_reports || {})) {
    const vr = (vrep.regions || {})[openRegion];
    if (!vr) continue;
    h += `<h3>From ${esc(n)} ${badge(vr.severity)}</h3>${errorBanner(vr.error)}${messages(vr.warnings)}`;
    h += `<div class="scroll"><table class="nodes"><tr><th>Node</th><th>Host</th><th>Ports (DERP / STUN)</th><th>Round trip</th><th>WebSocket</th><th>STUN</th><th>Error</th></tr>`;
    for (const nr of vr.node_reports || []) {
      const node = nr.node || {};
      const stun = nr.stun || {};
      const stunText = !stun.Enabled ? "disabled" : stun.CanSTUN ? "ok" : `failed${stun.Error ? ": " + stun.Error : ""}`;
      const rtt = nodeRtt(nr);
      h += `<tr data-node="${esc(node.Name)}"><td class="${sevClass(nr.severity)}">${esc(node.Name)}</td><td>${esc(node.HostName)}</td>`
        + `<td>${esc(node.DERPPort || 443)} / ${esc(node.STUNPort === -1 ? "off" : (node.STUNPort || 3478))}</td>`
        + `<td>${rtt === null ? "–" : esc(rtt) + " ms"}</td><td>${nr.uses_websocket ? "yes" : "no"}</td>`
        + `<td class="${stun.Enabled && !stun.CanSTUN ? "error" : ""}">${esc(stunText)}</td>`
        + `<td class="node-error">${esc(nr.error || "")}${(nr.warnings || []).map((w) => `<div>${esc(w.code)}: ${esc(w.message)}</div>`).join("")}</td></tr>`;
    }
    h += "</table></div>";
  }
  el.innerHTML = h;
}

function renderVantages() {
  const items = (report.vantages || {}).items || [];
  let m = "<tr><th>Name</th><th>State</th><th>Connected</th><th>Region</th><th>Version</th><th>Last seen</th><th>Stale since</th></tr>";
  for (const v of items) {
    const cls = v.state === "fresh" ? "ok" : "warning";
    m += `<tr data-vantage="${esc(v.name)}"><td>${esc(v.name)}</td><td class="${cls}">${esc(v.state)}</td><td>${v.connected ? "yes" : "no"}</td>`
      + `<td>${esc(v.region)}</td><td>${esc(v.version)}</td><td>${when(v.last_seen)}</td><td>${v.stale_since ? when(v.stale_since) : "–"}</td></tr>`;
  }
  $("vantage-table").innerHTML = items.length ? m : "<tr><td>No vantage has reported yet.</td></tr>";
}

// An item with problems takes its section's severity (or warning when the section is fine).
function itemSeverity(section, failing) {
  if (!failing) return "ok";
  return ["warning", "error"].includes(section.severity) ? section.severity : "warning";
}

function renderComponents() {
  const wp = report.workspace_proxy || {};
  const proxies = (wp.workspace_proxies && wp.workspace_proxies.regions) || [];
  $("proxies").innerHTML = errorBanner(wp.error) + messages(wp.warnings) + (proxies.map((p) => {
    const rep = (p.status && p.status.report) || {};
    const errs = rep.errors || [];
    const warns = rep.warnings || [];
    const sev = itemSeverity(wp, errs.length || warns.length || !p.healthy);
    return `<div class="item ${sev}" data-proxy="${esc(p.name)}"><b>${esc(p.display_name || p.name)}</b> ${badge(sev, (p.status && p.status.status) || sev)}
      <span class="age">${esc(p.path_app_url)} · version ${esc(p.version || "–")} · checked ${when(p.status && p.status.checked_at)}</span>
      ${errs.length ? `<ul class="error">${errs.map((e) => `<li>${esc(e)}</li>`).join("")}</ul>` : ""}
      ${warns.length ? `<ul class="warning">${warns.map((e) => `<li>${esc(e)}</li>`).join("")}</ul>` : ""}</div>`;
  }).join("") || "<p>No workspace proxies.</p>");
  const pd = report.provisioner_daemons || {};
  $("daemons").innerHTML = errorBanner(pd.error) + messages(pd.warnings) + ((pd.items || []).map((i) => {
    const d = i.provisioner_daemon || {};
    const sev = itemSeverity(pd, (i.warnings || []).length);
    return `<div class="item ${sev}" data-daemon="${esc(d.name)}"><b>${esc(d.name)}</b> ${badge(sev)}
      <span class="age">version ${esc(d.version || "–")} · ${esc((d.provisioners || []).join(", "))} · last seen ${when(d.last_seen_at)}</span>
      ${(i.warnings || []).length ? `<ul class="${sev}">${i.warnings.map((w) => `<li>${esc(w.code)}: ${esc(w.message)} ${docs(w.code)}</li>`).join("")}</ul>` : ""}</div>`;
  }).join("") || "<p>No provisioner daemons.</p>");
  $("coder").innerHTML = report.coder ? renderCoder(report.coder) : "";
}

// Attached to Coder: its inventory with its age, what it says of its proxies beside what the
// probes saw, its replicas, and what this deployment or token does not offer.
function renderCoder(c) {
  const proxies = (c.proxies || []).map((p) => {
    const differ = p.probe_status && p.coder_status && p.probe_status !== p.coder_status;
    return `<tr data-coder-proxy="${esc(p.name)}"><td>${esc(p.name)}</td><td>${esc(p.region)}</td>
      <td>${esc(p.coder_status || "–")} ${(p.coder_errors || []).map((e) => `<div class="error">${esc(e)}</div>`).join("")}</td>
      <td>${esc(p.probe_status || "not polled")}${differ ? ` ${badge("warning", "disagree")}` : ""}</td></tr>`;
  }).join("");
  const replicas = (c.replicas || []).map((r) => `<tr><td>${esc(r.hostname)}</td><td>${esc(r.region_id)}</td>
      <td>${esc(r.relay_address)}</td><td>${esc(r.database_latency)}</td><td class="${r.error ? "error" : ""}">${esc(r.error || "–")}</td></tr>`).join("");
  const missing = (c.unavailable || []).map((u) => `<li><b>${esc(u.part)}</b> (${esc(u.endpoint)}): ${esc(u.reason)}</li>`).join("");
  return `<h2>Coder's view ${badge(c.severity)}</h2>
    <p class="age">${esc(c.url)} · version ${esc(c.version || "–")} · inventory imported <span id="coder-imported">${when(c.imported_at)}</span> · last asked ${when(c.attempted_at)}</p>
    ${messages(c.warnings)}
    ${proxies ? `<table><thead><tr><th>Proxy</th><th>Probe region</th><th>Coder says</th><th>Probes saw</th></tr></thead><tbody>${proxies}</tbody></table>` : ""}
    ${replicas ? `<table><thead><tr><th>Replica</th><th>Region</th><th>Relay</th><th>DB latency (ms)</th><th>Error</th></tr></thead><tbody>${replicas}</tbody></table>` : ""}
    ${missing ? `<p>Not available here:</p><ul>${missing}</ul>` : ""}`;
}

function renderSection() {
  const [v, key] = view();
  const el = $("view-section");
  if (v !== "section") { el.innerHTML = ""; return; }
  const [, title, setting] = SECTIONS.find(([k]) => k === key);
  const s = report[key] || {};
  let h = `<h2>${esc(title)} ${badge(s.severity)} <button id="dismiss" type="button" data-dismissed="${!!s.dismissed}">${s.dismissed ? "Enable warnings" : "Dismiss warnings"}</button></h2>`;
  h += errorBanner(s.error) + messages(s.warnings);
  if (key === "access_url") h += `<table><tr><th>Access URL</th><td>${esc(s.access_url)}</td></tr><tr><th>Reachable</th><td>${s.reachable ? "Yes" : "No"}</td></tr><tr><th>Status code</th><td>${esc(s.status_code)}</td></tr></table>`;
  if (key === "database") h += `<table><tr><th>Reachable</th><td>${s.reachable ? "Yes" : "No"}</td></tr><tr><th>Latency</th><td>${esc(s.latency_ms)} ms</td></tr><tr><th>Threshold</th><td>${esc(s.threshold_ms)} ms</td></tr></table>`;
  if (key === "websocket") h += `<p>Code: <b>${esc(s.code)}</b></p>${s.not_checked ? `<p class="not-checked">${esc(s.not_checked)}</p>` : ""}<pre>${s.body ? esc(s.body) : "No body message"}</pre>`;
  h += "<h3>Per vantage</h3><table><tr><th>Vantage</th><th>Severity</th><th>Error and warnings</th></tr>";
  h += Object.entries(s.vantage_reports || {}).map(([n, r]) => `<tr data-vantage="${esc(n)}"><td>${esc(n)}</td><td class="${sevClass(r.severity)}">${esc(r.severity)}</td><td>${esc(r.error || "")} ${(r.warnings || []).map((w) => `<div>${esc(w.code)}: ${esc(w.message)} ${docs(w.code)}</div>`).join("")}</td></tr>`).join("");
  h += "</table>";
  el.innerHTML = h;
  $("dismiss").onclick = () => toggleDismiss(setting, !s.dismissed);
}

function tickAges() {
  document.querySelectorAll("[data-time]").forEach((e) => { e.textContent = `(${ago(e.dataset.time)})`; });
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (t) localStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  load(false);
});
window.addEventListener("hashchange", () => { if (report) { renderSection(); showView(); } });
$("refresh").onclick = () => load(true);
load(false);
setInterval(() => load(false), REFRESH_EVERY_MS);
setInterval(tickAges, 1000);
