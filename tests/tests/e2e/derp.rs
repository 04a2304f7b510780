//! DERP and STUN end to end: probes and `vantage netcheck` against the embedded relay, through
//! real nginx refusing upgrades, and STUN against real coturn.

use std::time::Duration;

use serde_json::Value;
use vantage_testkit::{Coturn, Nginx, NginxMode, closed_udp_port, eventually, random_port};
use vantage_tests::{Probe, Server, cli};

fn node<'a>(report: &'a Value, vantage: &str, region: &str) -> Option<&'a Value> {
    report["derp"]["vantage_reports"][vantage]["regions"][region]["node_reports"].get(0)
}

#[tokio::test]
async fn a_probe_exchanges_packets_through_the_embedded_relay() {
    let server = Server::start(&["--interval", "500ms", "--derp-all-vantages"]).await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    let report = eventually(Duration::from_secs(30), "fra-1's DERP report", || async {
        let r = server.report().await;
        node(&r, "fra-1", "999").is_some().then_some(r)
    })
    .await;
    let n = node(&report, "fra-1", "999").unwrap();
    assert_eq!(n["can_exchange_messages"], true, "{n}");
    assert_eq!(n["uses_websocket"], false);
    assert!(n["round_trip_ping_ms"].as_i64().unwrap() >= 0);
    assert_eq!(n["node"]["Name"], "999b");
    let region = &report["derp"]["regions"]["999"];
    assert_eq!(region["region"]["RegionName"], "Embedded Relay");
    assert_eq!(region["region"]["EmbeddedRelay"], true);
    assert_eq!(report["derp"]["severity"], "ok");
}

/// A DERP map whose one region is the embedded relay, reached through `addr`.
fn map_via(addr: std::net::SocketAddr) -> String {
    serde_json::json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "edge", "RegionName": "Edge", "Nodes": [
        {"Name": "1a", "RegionID": 1, "HostName": "127.0.0.1", "DERPPort": addr.port(), "ForceHTTP": true, "STUNPort": -1}
    ]}}})
    .to_string()
}

#[tokio::test]
async fn netcheck_behind_nginx_falls_back_to_websockets_or_names_the_refusal() {
    let server = Server::start(&["--interval", "1h"]).await;
    let upstream: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // nginx refuses `Upgrade: DERP` but passes WebSockets: EDERP01, packets still flow.
    let nginx = Nginx::start(NginxMode::BlockDerpUpgrade(upstream)).await;
    let path = dir.path().join("ws.json");
    std::fs::write(&path, map_via(nginx.addr)).unwrap();
    let out = cli(&["netcheck", "--derp-map", path.to_str().unwrap()]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &report["derp"]["regions"]["1"]["node_reports"][0];
    assert_eq!(n["uses_websocket"], true, "{n}");
    assert_eq!(n["can_exchange_messages"], true, "{n}");
    assert_eq!(n["warnings"][0]["code"], "EDERP01");
    assert_eq!(report["derp"]["severity"], "warning");
    assert_eq!(out.status.code(), Some(1));

    // nginx refuses every upgrade: the node cannot exchange, and says why.
    let nginx = Nginx::start(NginxMode::BlockAllUpgrades(upstream)).await;
    let path = dir.path().join("none.json");
    std::fs::write(&path, map_via(nginx.addr)).unwrap();
    let out = cli(&[
        "netcheck",
        "--derp-map",
        path.to_str().unwrap(),
        "--node-timeout",
        "3s",
    ])
    .await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &report["derp"]["regions"]["1"]["node_reports"][0];
    assert_eq!(n["can_exchange_messages"], false, "{n}");
    assert_eq!(n["healthy"], false);
    assert_eq!(
        n["severity"], "error",
        "refusing every upgrade is an error, not a warning"
    );
    assert_eq!(out.status.code(), Some(2));
    let errs = n["client_errs"].to_string();
    assert!(errs.contains("403"), "the refusal is named: {errs}");

    // Without --derp-map, netcheck uses the server's effective map (the embedded relay).
    let out = cli(&["--server", &server.url, "netcheck"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["derp"]["regions"]["999"]["node_reports"][0]["can_exchange_messages"],
        true
    );
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn stun_against_real_coturn_and_nothing_answering() {
    let coturn = Coturn::start().await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], closed_udp_port()));
    let server = Server::start(&[
        "--interval",
        "1h",
        "--stun-servers",
        &coturn.addr.to_string(),
    ])
    .await;
    let report = eventually(
        Duration::from_secs(30),
        "the STUN-only region's report",
        || async {
            let r = server.report().await;
            (node(&r, "server", "1000").is_some() && node(&r, "server", "999").is_some())
                .then_some(r)
        },
    )
    .await;
    let n = node(&report, "server", "1000").unwrap();
    assert_eq!(n["stun"]["Enabled"], true);
    assert_eq!(n["stun"]["CanSTUN"], true, "{n}");
    assert_eq!(n["stun"]["Error"], Value::Null);
    assert_eq!(
        report["derp"]["severity"], "ok",
        "{}",
        report["derp"]["warnings"]
    );

    // No STUN server answering: ESTUN01.
    let server = Server::start(&[
        "--interval",
        "1h",
        "--derp-node-timeout",
        "3s",
        "--stun-servers",
        &dead.to_string(),
    ])
    .await;
    let report = eventually(
        Duration::from_secs(30),
        "the dead STUN region's report",
        || async {
            let r = server.report().await;
            node(&r, "server", "1000").is_some().then_some(r)
        },
    )
    .await;
    let warnings = report["derp"]["warnings"].to_string();
    assert!(warnings.contains("ESTUN01"), "{warnings}");
    assert_eq!(
        node(&report, "server", "1000").unwrap()["stun"]["CanSTUN"],
        false
    );
}

#[tokio::test]
async fn the_server_answers_stun_on_its_own_udp_port() {
    // A random high port; retried when taken (vantaged exits 64 if it cannot bind it).
    for _ in 0..8 {
        let addr = format!("127.0.0.1:{}", random_port());
        let Some(server) = Server::try_start(&[
            "--interval",
            "1h",
            "--stun-listen",
            &addr,
            "--stun-servers",
            &addr,
        ])
        .await
        else {
            continue;
        };
        let report = eventually(
            Duration::from_secs(30),
            "the server's STUN region",
            || async {
                let r = server.report().await;
                node(&r, "server", "1000").is_some().then_some(r)
            },
        )
        .await;
        let n = node(&report, "server", "1000").unwrap();
        assert_eq!(n["stun"]["CanSTUN"], true, "{n}");
        return;
    }
    panic!("no free UDP port found for --stun-listen");
}
