//! The `/health` page (Coder's per-section views plus a vantage × section matrix; refreshes
//! itself, force-refresh button, dismiss toggles) and the `/health/codes` documentation.

use std::fmt::Write as _;

use vantage_proto::codes::CATALOGUE;

pub const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Deployment health · vantage</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;min-height:100vh;background:#0f1115;color:#e6e6e6}
aside{width:260px;background:#171a21;padding:20px;box-sizing:border-box}
main{flex:1;padding:24px;overflow:auto}
.ok{color:#3fb950}.warning{color:#d29922}.error{color:#f85149}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.dot.ok{background:#3fb950}.dot.warning{background:#d29922}.dot.error{background:#f85149}
nav a{display:block;color:#e6e6e6;text-decoration:none;padding:6px 4px;border-radius:4px;cursor:pointer}
nav a.active{background:#262b36}
button{background:#262b36;color:#e6e6e6;border:1px solid #3a4150;border-radius:4px;padding:6px 10px;cursor:pointer}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #2d3340;padding:6px 10px;text-align:left}
.alert{border-left:4px solid;padding:8px 12px;margin:8px 0;background:#1b1f27}
.alert.error{border-color:#f85149}.alert.warning{border-color:#d29922}
pre{background:#1b1f27;padding:10px;white-space:pre-wrap}
</style></head>
<body>
<aside>
  <div id="status" style="font-size:22px;font-weight:600">Loading…</div>
  <div id="subtitle" style="opacity:.8;margin:6px 0 12px"></div>
  <div>Last check: <span id="time">–</span></div>
  <div>Version: <span id="version">–</span></div>
  <div style="margin:12px 0"><button id="refresh" title="Refresh health checks">Refresh</button></div>
  <nav id="nav"></nav>
</aside>
<main>
  <div id="error" class="alert error" style="display:none"></div>
  <h2>Vantages × sections</h2>
  <table id="matrix"></table>
  <div id="section"></div>
</main>
<script>
const SECTIONS=[["access_url","Access URL","AccessURL"],["database","Database","Database"],["derp","DERP","DERP"],["provisioner_daemons","Provisioner Daemons","ProvisionerDaemons"],["websocket","Websocket","Websocket"],["workspace_proxy","Workspace Proxy","WorkspaceProxy"]];
let report=null, current=(location.hash||"#access_url").slice(1);
function esc(s){return String(s??"").replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]))}
function dot(sev){return `<span class="dot ${esc(sev)}" title="${esc(sev)}"></span>`}
function msgs(ws){return (ws||[]).map(w=>`<div class="alert warning"><b>${esc(w.code)}</b>: ${esc(w.message)} <a href="/health/codes#${esc((w.code||"EUNKNOWN").toLowerCase())}">Docs for ${esc(w.code)}</a></div>`).join("")}
// With --token-file the data needs a reader token: kept in localStorage, asked for on a 401.
function authed(o){o=o||{};const t=localStorage.getItem("vantage_token");if(t)o.headers=Object.assign({},o.headers,{Authorization:"Bearer "+t});return o}
async function api(path,o){let r=await fetch(path,authed(o));if(r.status===401){const t=prompt("This server needs a token (role reader, or admin to change settings):");if(t){localStorage.setItem("vantage_token",t.trim());r=await fetch(path,authed(o));}}return r}
async function load(force){
  const btn=document.getElementById("refresh"); btn.disabled=true; btn.textContent=force?"Refreshing…":"Refresh";
  try{
    const r=await api("/api/v2/debug/health"+(force?"?force=true":""));
    const body=await r.json();
    if(!r.ok) throw new Error(body.message+" "+(body.detail||""));
    report=body; document.getElementById("error").style.display="none"; render();
  }catch(e){const el=document.getElementById("error"); el.textContent="Failed to load the report: "+e.message; el.style.display="block";}
  finally{btn.disabled=false; btn.textContent="Refresh";}
}
async function toggleDismiss(name,dismiss){
  const cur=await (await api("/api/v2/debug/health/settings")).json();
  let list=cur.dismissed_healthchecks.filter(s=>s!==name); if(dismiss) list.push(name);
  await api("/api/v2/debug/health/settings",{method:"PUT",headers:{"Content-Type":"application/json"},body:JSON.stringify({dismissed_healthchecks:list})});
  await load(false);
}
function render(){
  const st=document.getElementById("status");
  st.textContent=report.healthy?"Healthy":"Unhealthy"; st.className=report.severity;
  const anyWarn=SECTIONS.some(([k])=>report[k].warnings&&report[k].warnings.length);
  document.getElementById("subtitle").textContent=!report.healthy?"Some issues have been detected":anyWarn?"All systems operational, but performance might be degraded":"All systems operational";
  document.getElementById("time").textContent=new Date(report.time).toLocaleString();
  document.getElementById("version").textContent=report.coder_version;
  document.getElementById("nav").innerHTML=SECTIONS.map(([k,t])=>`<a href="#${k}" data-section="${k}" class="${k===current?"active":""}">${dot(report[k].severity)}${esc(t)}${report[k].dismissed?" 🔕":""}</a>`).join("");
  const names=(report.vantages.items||[]).map(v=>v.name);
  let m=`<tr><th>vantage</th><th>region</th><th>state</th>${SECTIONS.map(([,t])=>`<th>${esc(t)}</th>`).join("")}</tr>`;
  for(const v of report.vantages.items||[]){
    m+=`<tr data-vantage="${esc(v.name)}"><td>${esc(v.name)}</td><td>${esc(v.region)}</td><td class="${v.state==="stale"?"warning":"ok"}">${esc(v.state)}${v.stale_since?" since "+esc(new Date(v.stale_since).toLocaleTimeString()):""}</td>`+
      SECTIONS.map(([k])=>{const r=(report[k].vantage_reports||{})[v.name]; return `<td>${r?dot(r.severity)+esc(r.severity):"–"}</td>`}).join("")+"</tr>";
  }
  m+=`<tr><th colspan="3">aggregate</th>${SECTIONS.map(([k])=>`<td>${dot(report[k].severity)}${esc(report[k].severity)}</td>`).join("")}</tr>`;
  document.getElementById("matrix").innerHTML=m;
  const found=SECTIONS.find(([k])=>k===current)||SECTIONS[0]; const [key,title,setting]=found; const s=report[key];
  let h=`<h2>${dot(s.severity)}${esc(title)} <button id="dismiss" data-dismissed="${s.dismissed}">${s.dismissed?"Enable warnings":"Dismiss warnings"}</button></h2>`;
  if(s.error) h+=`<div class="alert error">${esc(s.error)}</div>`;
  h+=msgs(s.warnings);
  if(key==="access_url") h+=`<table><tr><th>Severity</th><td>${esc(s.severity)}</td></tr><tr><th>Access URL</th><td>${esc(s.access_url)}</td></tr><tr><th>Reachable</th><td>${s.reachable?"Yes":"No"}</td></tr><tr><th>Status Code</th><td>${esc(s.status_code)}</td></tr></table>`;
  if(key==="database") h+=`<table><tr><th>Reachable</th><td>${s.reachable?"Yes":"No"}</td></tr><tr><th>Latency</th><td>${esc(s.latency_ms)}ms</td></tr><tr><th>Threshold</th><td>${esc(s.threshold_ms)}ms</td></tr></table>`;
  if(key==="websocket") h+=`<p>Code: <b>${esc(s.code)}</b></p><pre>${s.body?esc(s.body):"No body message"}</pre>`;
  if(key==="derp") h+=Object.entries(s.regions||{}).map(([id,r])=>`<div>${dot(r.severity)}${esc(r.region&&r.region.RegionName||id)} — ${(r.node_reports||[]).map(n=>esc(n.node&&n.node.HostName)+" "+(n.round_trip_ping_ms||0)+"ms"+(n.uses_websocket?" (websocket)":"")).join(", ")}</div>`).join("")+`<pre>${esc((s.netcheck_logs||[]).join("\n")||"No logs available")}</pre>`;
  if(key==="workspace_proxy") h+=((s.workspace_proxies&&s.workspace_proxies.regions)||[]).map(p=>`<div class="alert ${p.healthy?"":"warning"}">${esc(p.display_name||p.name)} — ${esc(p.status.status)} ${(p.status.report.errors||[]).concat(p.status.report.warnings||[]).map(esc).join("; ")}</div>`).join("");
  if(key==="provisioner_daemons") h+=(s.items||[]).map(i=>`<div class="alert ${i.warnings.length?"warning":""}">${esc(i.provisioner_daemon.name)} ${esc(i.provisioner_daemon.version)} — ${i.warnings.length?i.warnings.map(w=>esc(w.code+": "+w.message)).join("; "):"No warnings"}</div>`).join("");
  h+=`<h3>Per vantage</h3>`+Object.entries(s.vantage_reports||{}).map(([n,r])=>`<div>${dot(r.severity)}<b>${esc(n)}</b> ${r.error?esc(r.error):""} ${(r.warnings||[]).map(w=>esc(w.code)).join(" ")}</div>`).join("");
  document.getElementById("section").innerHTML=h;
  document.getElementById("dismiss").onclick=()=>toggleDismiss(setting,!s.dismissed);
}
window.addEventListener("hashchange",()=>{current=location.hash.slice(1);if(report)render();});
document.getElementById("refresh").onclick=()=>load(true);
load(false); setInterval(()=>load(false),30000);
</script></body></html>
"##;

/// The code documentation page; each code is an anchor (`#eacs04`).
pub fn codes_page() -> String {
    let mut o = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Health codes · vantage</title></head><body style=\"font-family:system-ui,sans-serif;max-width:56em;margin:2em auto\"><h1>Health codes</h1>",
    );
    for d in CATALOGUE {
        let _ = write!(
            o,
            "<section id=\"{}\"><h2>{} — {}</h2><p><i>Section: {}</i></p><p>{}</p></section>",
            d.code.to_ascii_lowercase(),
            d.code,
            d.title,
            d.section,
            d.description
        );
    }
    o.push_str("</body></html>");
    o
}
