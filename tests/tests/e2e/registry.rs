//! Workspace proxies in two regions polled by real probes (real HTTP stand-ins and a real
//! nginx answering 502), and provisioner daemons announced through the CLI.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use vantage_testkit::{Nginx, NginxMode, closed_tcp_port, eventually, loopback_listener};
use vantage_tests::{Probe, Server, cli};

async fn serve(router: Router) -> std::net::SocketAddr {
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn proxy<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["workspace_proxy"]["workspace_proxies"]["regions"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[tokio::test]
async fn proxies_in_two_regions_are_polled_by_their_probes() {
    let healthy = serve(Router::new().route(
        "/healthz-report",
        get(|| async { axum::Json(json!({"errors": [], "warnings": []})) }),
    ))
    .await;
    let html = serve(Router::new().route(
        "/healthz-report",
        get(|| async { axum::response::Html("<html>login</html>") }),
    ))
    .await;
    let closed = ([127, 0, 0, 1], closed_tcp_port()).into();
    let nginx = Nginx::start(NginxMode::BadGateway(closed)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[workspace_proxies]]
name = "fra-proxy"
display_name = "Frankfurt"
url = "http://{healthy}"
region = "fra"

[[workspace_proxies]]
name = "iad-proxy"
display_name = "Virginia"
url = "http://{html}"
region = "iad"

[[workspace_proxies]]
name = "iad-gw"
display_name = "Virginia gateway"
url = "http://{}"
region = "iad"
"#,
            nginx.addr
        ),
    )
    .unwrap();
    let server =
        Server::start(&["--interval", "500ms", "--config", config.to_str().unwrap()]).await;
    let _fra = Probe::start(&server.url, "fra-1", "fra");
    let _iad = Probe::start(&server.url, "iad-1", "iad");
    let report = eventually(
        Duration::from_secs(30),
        "all three proxies polled",
        || async {
            let r = server.report().await;
            ["fra-proxy", "iad-proxy", "iad-gw"]
                .iter()
                .all(|n| proxy(&r, n).is_some_and(|p| p["status"]["status"] != "unknown"))
                .then_some(r)
        },
    )
    .await;
    let fra = proxy(&report, "fra-proxy").unwrap();
    assert_eq!(
        (
            fra["status"]["status"].clone(),
            fra["healthy"].clone(),
            fra["display_name"].clone()
        ),
        (json!("ok"), json!(true), json!("Frankfurt"))
    );
    let iad = proxy(&report, "iad-proxy").unwrap();
    assert_eq!(iad["status"]["status"], "unhealthy");
    let why = iad["status"]["report"]["errors"].to_string();
    assert!(why.contains("text/html"), "HTML is explained: {why}");
    let gw = proxy(&report, "iad-gw").unwrap();
    assert_eq!(gw["status"]["status"], "unhealthy");
    assert!(
        gw["status"]["report"]["errors"]
            .to_string()
            .contains("unexpected status code 502"),
        "{gw}"
    );
    let section = &report["workspace_proxy"];
    assert_eq!(section["severity"], "warning");
    assert!(
        section["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "EWP04")
    );
    // Each probe polled only its region's proxies.
    let fra_view = section["vantage_reports"]["fra-1"]["workspace_proxies"]["regions"]
        .as_array()
        .unwrap();
    assert_eq!(fra_view.len(), 1);
    assert_eq!(
        section["vantage_reports"]["iad-1"]["workspace_proxies"]["regions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn provisioner_heartbeats_from_the_cli_go_stale_and_follow_coders_rules() {
    let server = Server::start(&[
        "--interval",
        "1h",
        "--provisioner-daemons-required",
        "--provisioner-stale-after",
        "2s",
    ])
    .await;
    let url = server.url.clone();
    let section = |r: &Value| r["provisioner_daemons"].clone();
    let r = eventually(Duration::from_secs(10), "EPD01 with no daemon", || async {
        let r = server.report().await;
        (section(&r)["severity"] == "error").then_some(r)
    })
    .await;
    assert_eq!(section(&r)["warnings"][0]["code"], "EPD01");
    assert_eq!(section(&r)["items"], json!([]));

    let beat = |name: &'static str, version: &'static str, api: &'static str| {
        let url = url.clone();
        async move {
            let out = cli(&[
                "--server",
                &url,
                "provisioner",
                "heartbeat",
                "--name",
                name,
                "--version",
                version,
                "--api-version",
                api,
                "--provisioner",
                "terraform",
                "--tag",
                "scope=organization",
            ])
            .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    beat("alpha", "v0.1.3", "1.9").await;
    let r = eventually(Duration::from_secs(10), "alpha active", || async {
        let r = server.report().await;
        (section(&r)["severity"] == "ok").then_some(r)
    })
    .await;
    assert_eq!(
        section(&r)["items"][0]["provisioner_daemon"]["name"],
        "alpha"
    );
    assert_eq!(
        section(&r)["items"][0]["provisioner_daemon"]["tags"]["scope"],
        "organization"
    );

    beat("beta", "v9.9.0", "1.9").await;
    beat("gamma", "v0.1.0", "2.0").await;
    let r = eventually(
        Duration::from_secs(10),
        "mismatch and deprecation",
        || async {
            let r = server.report().await;
            (section(&r)["items"]
                .as_array()
                .is_some_and(|i| i.len() == 3))
            .then_some(r)
        },
    )
    .await;
    let s = section(&r);
    assert_eq!(s["severity"], "warning");
    let codes: Vec<&str> = s["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"EPD02") && codes.contains(&"EPD03"),
        "{codes:?}"
    );
    let names: Vec<&str> = s["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provisioner_daemon"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alpha", "beta", "gamma"], "sorted by name");

    // No more heartbeats: after 2 s they are stale and EPD01 returns.
    eventually(Duration::from_secs(15), "every daemon stale", || async {
        let r = server.report().await;
        (section(&r)["severity"] == "error" && section(&r)["items"] == json!([])).then_some(())
    })
    .await;

    let bad = cli(&[
        "--server",
        &server.url,
        "provisioner",
        "heartbeat",
        "--name",
        "bad name",
        "--version",
        "v1",
        "--api-version",
        "1.0",
    ])
    .await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("name"));
}
