//! The `/health` page in a real headless Chromium driven over the DevTools protocol: the
//! report, the vantage × section matrix, history strips, force refresh, dismiss, the DERP
//! region detail with a dead node's error, a stale vantage's EVNT01 message, an unreachable
//! proxy drawn like its section, the token prompt; screenshots at 1400×1000 and 390×844 under
//! `target/test-artefacts/`.

use std::time::Duration;

use serde_json::{Value, json};
use vantage_testkit::{closed_tcp_port, eventually};
use vantage_tests::{Probe, Server, vantage};

use crate::browser::Browser;

const WIDE: (u32, u32) = (1400, 1000);
const PHONE: (u32, u32) = (390, 844);

async fn both_reporting(server: &Server, names: &[&str]) {
    eventually(
        Duration::from_secs(30),
        "every vantage reporting",
        || async {
            let r = server.report().await;
            names
                .iter()
                .all(|n| r["access_url"]["vantage_reports"].get(*n).is_some())
                .then_some(())
        },
    )
    .await;
}

/// How many check outcomes the Access URL strip draws.
const ACCESS_MARKS: &str =
    "document.querySelectorAll('[data-strip=access_url] .marks:last-child .mark').length";

#[tokio::test]
async fn the_health_page_renders_the_report_refreshes_and_dismisses_in_a_real_browser() {
    // Checks run once an hour: only a forced refresh adds check outcomes.
    let server = Server::start(&["--interval", "1h"]).await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    both_reporting(&server, &["server", "fra-1"]).await;
    let mut b = Browser::launch(WIDE.0, WIDE.1).await;
    b.goto(&format!("{}/health", server.url)).await;
    b.wait_for(
        "document.getElementById('status')?.textContent === 'Healthy'",
        "the status",
    )
    .await;
    let status_class = b.eval("document.getElementById('status').className").await;
    assert_eq!(status_class, "warning", "healthy with warnings");
    let matrix = b
        .eval("[...document.querySelectorAll('#matrix th[data-vantage]')].map(e => e.dataset.vantage)")
        .await;
    assert_eq!(
        matrix,
        serde_json::json!(["fra-1", "server"]),
        "the matrix lists both vantages"
    );
    let before = b
        .wait_for(ACCESS_MARKS, "check outcomes in the strip")
        .await;
    let first_change = b
        .eval("document.querySelector('[data-strip=access_url] .since').textContent")
        .await;
    assert!(
        first_change.as_str().unwrap().contains("since"),
        "the strip says since when: {first_change}"
    );
    b.screenshot("page-overview-1400x1000").await;

    // Force refresh: every vantage runs now, so more outcomes appear.
    b.eval("document.getElementById('refresh').click()").await;
    let after = b
        .wait_for(
            &format!("{ACCESS_MARKS} > {before} && {ACCESS_MARKS}"),
            "new check outcomes after a forced refresh",
        )
        .await;
    assert!(after.as_u64() > before.as_u64(), "{before} -> {after}");

    // The database section: its EDB03 links to its documentation; dismiss it.
    b.eval("location.hash = '#database'").await;
    b.wait_for("document.getElementById('dismiss')", "the dismiss control")
        .await;
    let text = b.text().await;
    assert!(text.contains("Dismiss warnings"), "{text}");
    let link = b
        .eval("!!document.querySelector('#view-section a[href=\"/health/codes#edb03\"]')")
        .await;
    assert_eq!(
        link,
        Value::Bool(true),
        "EDB03 links to its documentation: {text}"
    );
    b.eval("document.getElementById('dismiss').click()").await;
    b.wait_for(
        "document.getElementById('dismiss') && document.getElementById('dismiss').textContent === 'Enable warnings'",
        "the section dismissed",
    )
    .await;
    let settings = server.get_json("/api/v2/debug/health/settings").await;
    assert_eq!(
        settings["dismissed_healthchecks"],
        serde_json::json!(["Database"])
    );
    let text = b.text().await;
    assert!(!text.contains("Failed to load the report"), "{text}");
    b.resize(PHONE.0, PHONE.1).await;
    b.eval("location.hash = '#overview'").await;
    b.screenshot("page-overview-390x844").await;
}

/// A DERP map with one region whose only node refuses connections.
fn dead_region_map() -> String {
    serde_json::json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "fra", "RegionName": "Frankfurt", "Nodes": [
        {"Name": "1a", "RegionID": 1, "HostName": "127.0.0.1", "DERPPort": closed_tcp_port(), "ForceHTTP": true, "STUNPort": -1}
    ]}}})
    .to_string()
}

#[tokio::test]
async fn the_page_shows_a_dead_node_a_stale_vantage_and_an_unreachable_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("derp.json");
    std::fs::write(&map, dead_region_map()).unwrap();
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[[workspace_proxies]]\nname = \"fra-proxy\"\ndisplay_name = \"Frankfurt\"\nurl = \"http://127.0.0.1:{}\"\nregion = \"fra\"\n",
            closed_tcp_port()
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--interval",
        "1s",
        "--stale-after",
        "3s",
        "--forget-after",
        "1h",
        "--derp-node-timeout",
        "3s",
        "--server-checks-derp",
        "--derp-map",
        map.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let _fra = Probe::start(&server.url, "fra-1", "fra");
    let mut ams = Probe::start(&server.url, "ams-1", "ams");
    both_reporting(&server, &["server", "fra-1", "ams-1"]).await;
    ams.kill().await;
    eventually(
        Duration::from_secs(30),
        "ams-1 stale, the dead node and the proxy reported",
        || async {
            let r = server.report().await;
            let stale = vantage(&r, "ams-1").is_some_and(|v| v["state"] == "stale");
            let dead = r["derp"]["regions"]["1"]["node_reports"][0]["error"].is_string();
            let proxy = r["workspace_proxy"]["workspace_proxies"]["regions"][0]["status"]["status"]
                != "unknown";
            (stale && dead && proxy).then_some(())
        },
    )
    .await;
    let report = server.report().await;
    let evnt = report["vantages"]["warnings"].to_string();
    assert!(evnt.contains("EVNT01"), "{evnt}");

    let mut b = Browser::launch(WIDE.0, WIDE.1).await;
    b.goto(&format!("{}/health#derp", server.url)).await;
    b.wait_for(
        "document.querySelector('.region-row[data-region=\"1\"]')",
        "the DERP matrix",
    )
    .await;
    b.eval("document.querySelector('.region-row[data-region=\"1\"]').click()")
        .await;
    b.wait_for(
        "document.querySelector('#derp-region tr[data-node=\"1a\"]')",
        "the region's nodes",
    )
    .await;
    let node_error = b
        .eval("document.querySelector('#derp-region tr[data-node=\"1a\"] .node-error').innerText")
        .await;
    let stored =
        report["derp"]["vantage_reports"]["server"]["regions"]["1"]["node_reports"][0]["error"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(
        !stored.is_empty() && node_error.as_str().unwrap().contains(&stored),
        "the dead node's error is visible: {node_error} (report: {stored})"
    );
    let text = b.text().await;
    assert!(
        text.contains("EVNT01"),
        "the stale vantage's message is visible: {text}"
    );
    b.screenshot("page-derp-1400x1000").await;
    b.resize(PHONE.0, PHONE.1).await;
    b.screenshot("page-derp-390x844").await;
    b.resize(WIDE.0, WIDE.1).await;

    b.eval("location.hash = '#vantages'").await;
    let row = b
        .wait_for(
            "document.querySelector('#vantage-table tr[data-vantage=\"ams-1\"]')?.innerText",
            "the vantages table",
        )
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains("stale") && row.contains(" s ago"), "{row}");
    b.screenshot("page-vantages-1400x1000").await;

    b.eval("location.hash = '#components'").await;
    let proxy = b
        .wait_for(
            "document.querySelector('[data-proxy=\"fra-proxy\"]')?.className",
            "the proxy",
        )
        .await;
    let section = report["workspace_proxy"]["severity"].as_str().unwrap();
    assert_ne!(section, "ok", "{}", report["workspace_proxy"]);
    assert_eq!(
        proxy,
        Value::String(format!("item {section}")),
        "drawn like its section"
    );
    let errors =
        report["workspace_proxy"]["workspace_proxies"]["regions"][0]["status"]["report"]["errors"]
            [0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        b.text().await.contains(&errors),
        "the proxy's error in full: {errors}"
    );
    b.screenshot("page-components-1400x1000").await;

    // Readable: every visible text keeps a contrast of at least 4.5:1 with what is behind it,
    // in light and in dark, on every view.
    for scheme in ["light", "dark"] {
        b.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
        for view in [
            "#overview",
            "#derp",
            "#vantages",
            "#components",
            "#access_url",
        ] {
            b.eval(&format!("location.hash = '{view}'")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let low = b.eval(LOW_CONTRAST).await;
            assert_eq!(low, json!([]), "{scheme} {view}: texts below 4.5:1");
        }
        b.screenshot(&format!("page-overview-{scheme}-1400x1000"))
            .await;
    }
}

/// The visible elements whose own text has a WCAG contrast below 4.5:1 against the first
/// opaque background behind them (white when none), as "tag.class: ratio \"text\"".
const LOW_CONTRAST: &str = r#"(() => {
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(",").map((x) => parseFloat(x));
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a >= 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const st = getComputedStyle(el);
    if (st.display === "none" || st.visibility === "hidden" || el.getClientRects().length === 0) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const fg = parse(st.color);
    if (!fg) continue;
    const a = lum(fg), b = lum(behind(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName.toLowerCase()}.${el.className}: ${ratio.toFixed(2)} "${el.textContent.trim().slice(0, 40)}"`);
  }
  return low;
})()"#;
