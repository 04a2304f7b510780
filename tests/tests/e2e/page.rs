//! The `/health` page in a real headless Chromium: the script renders the report, the
//! vantage × section matrix and the dismiss toggle.

use std::time::Duration;

use vantage_testkit::eventually;
use vantage_tests::{Probe, Server};

#[tokio::test]
async fn the_health_page_renders_the_report_in_a_real_browser() {
    let server = Server::start(&["--interval", "1s"]).await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    eventually(
        Duration::from_secs(30),
        "both vantages reporting",
        || async {
            let r = server.report().await;
            ["server", "fra-1"]
                .iter()
                .all(|n| r["access_url"]["vantage_reports"].get(*n).is_some())
                .then_some(())
        },
    )
    .await;
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("{}/health#database", server.url))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 90s")
    .expect("chromium is installed (apt-get install chromium)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains(r#"<div id="status" style="font-size:22px;font-weight:600" class="warning">Healthy</div>"#), "{dom}");
    assert!(
        dom.contains(r#"data-vantage="fra-1""#) && dom.contains(r#"data-vantage="server""#),
        "the matrix lists both vantages: {dom}"
    );
    assert!(dom.contains("Dismiss warnings"), "{dom}");
    assert!(
        dom.contains("/health/codes#edb03"),
        "EDB03 links to its documentation: {dom}"
    );
    assert!(!dom.contains(">Failed to load the report"), "{dom}");
}
