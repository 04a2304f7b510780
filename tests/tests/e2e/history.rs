//! History: section transitions and per-check outcomes over HTTP
//! (`/api/v2/debug/health/history`), gRPC (`GetHistory`, through `vantage history`), and the
//! 400s that name a bad parameter; with PostgreSQL, the history survives a restart.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use vantage_testkit::{closed_tcp_port, eventually, test_db};
use vantage_tests::{Probe, Server, cli};

#[tokio::test]
async fn history_holds_transitions_and_check_outcomes_over_http_and_the_cli() {
    let server = Server::start(&["--interval", "500ms"]).await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    let history = eventually(
        Duration::from_secs(30),
        "several Access URL outcomes from both vantages",
        || async {
            let h = server
                .get_json("/api/v2/debug/health/history?section=AccessURL&since=1h")
                .await;
            let series = h["checks"].as_array()?.clone();
            let enough = ["server", "fra-1"].iter().all(|v| {
                series.iter().any(|s| {
                    s["vantage"] == *v && s["samples"].as_array().is_some_and(|a| a.len() >= 3)
                })
            });
            enough.then_some(h)
        },
    )
    .await;
    for s in history["checks"].as_array().unwrap() {
        assert_eq!(s["section"], "access_url", "{s}");
        let samples = s["samples"].as_array().unwrap();
        assert!(
            samples
                .iter()
                .all(|x| x["ok"] == true && x["duration_ms"].as_f64() > Some(0.0)),
            "{s}"
        );
        let times: Vec<&str> = samples
            .iter()
            .map(|x| x["time"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "oldest first: {times:?}"
        );
    }
    let transitions = history["transitions"].as_array().unwrap();
    let first = transitions
        .iter()
        .find(|t| t["vantage"] == "")
        .unwrap_or_else(|| panic!("the aggregate's first evaluation: {history}"));
    assert_eq!(
        (first["section"].as_str(), first["from"].as_str()),
        (Some("access_url"), Some(""))
    );
    assert!(
        transitions.iter().all(|t| t["section"] == "access_url"),
        "{history}"
    );

    // A time in the future selects nothing.
    let none = server
        .get_json("/api/v2/debug/health/history?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(none["checks"], serde_json::json!([]), "{none}");
    assert_eq!(none["transitions"], serde_json::json!([]), "{none}");

    // Bad parameters are 400s that name the parameter and the value.
    let http = reqwest::Client::new();
    for (query, name, value) in [
        ("since=yesterday", "since", "yesterday"),
        ("section=Pubsub", "section", "Pubsub"),
    ] {
        let r = http
            .get(format!(
                "{}/api/v2/debug/health/history?{query}",
                server.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        let text = body.to_string();
        assert!(
            text.contains(name) && text.contains(value),
            "{query}: {text}"
        );
    }

    // The CLI: a table, and JSON.
    let out = cli(&[
        "--server",
        &server.url,
        "history",
        "--section",
        "AccessURL",
        "--since",
        "1h",
    ])
    .await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("(aggregate)") && table.contains("fra-1") && table.contains("+++"),
        "{table}"
    );
    let out = cli(&["--server", &server.url, "history", "--json"]).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|s| s["vantage"] == "fra-1")),
        "{json}"
    );
    let out = cli(&["--server", &server.url, "history", "--since", "soon"]).await;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--since") && err.contains("\"soon\""), "{err}");
}

fn time_of(v: &Value) -> DateTime<Utc> {
    v["time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("a time: {v}"))
}

/// The DERP section's transitions to error and the dead node's failed samples, in `h`, from
/// before `before`.
fn derp_failures_before(h: &Value, before: DateTime<Utc>) -> (usize, usize) {
    let transitions = h["transitions"].as_array().map_or(0, |ts| {
        ts.iter()
            .filter(|t| t["section"] == "derp" && t["to"] == "error" && time_of(t) < before)
            .count()
    });
    let samples = h["checks"].as_array().map_or(0, |cs| {
        cs.iter()
            .filter(|c| c["vantage"] == "server" && c["section"] == "derp")
            .flat_map(|c| c["samples"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["ok"] == false && s["error"] != "" && time_of(s) < before)
            .count()
    });
    (transitions, samples)
}

#[tokio::test]
async fn with_postgres_the_history_survives_a_restart() {
    let db = test_db!();
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("derp.json");
    std::fs::write(
        &map,
        serde_json::json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "fra", "RegionName": "Frankfurt", "Nodes": [
            {"Name": "1a", "RegionID": 1, "HostName": "127.0.0.1", "DERPPort": closed_tcp_port(), "ForceHTTP": true, "STUNPort": -1}
        ]}}})
        .to_string(),
    )
    .unwrap();
    // `--history 1`: the in-memory event ring reloads one event at start, so what comes from
    // before the restart is read from the database.
    let mut server = Server::start(&[
        "--database-url",
        &db.url(),
        "--interval",
        "500ms",
        "--history",
        "1",
        "--derp-node-timeout",
        "2s",
        "--server-checks-derp",
        "--derp-map",
        map.to_str().unwrap(),
    ])
    .await;
    let path = "/api/v2/debug/health/history?section=DERP&since=1h";
    let before = eventually(
        Duration::from_secs(30),
        "the dead node's failures and DERP in error, stored",
        || async {
            let h = server.get_json(path).await;
            let (t, s) = derp_failures_before(&h, Utc::now());
            (t >= 2 && s >= 3).then_some(h)
        },
    )
    .await;
    let restarted_at = Utc::now();
    server.restart().await;

    let after = server.get_json(path).await;
    let (transitions, samples) = derp_failures_before(&after, restarted_at);
    let (had_transitions, had_samples) = derp_failures_before(&before, restarted_at);
    assert!(
        transitions >= had_transitions && samples >= had_samples && transitions >= 2,
        "after the restart: {transitions} transitions, {samples} samples from before it \
         (before: {had_transitions}, {had_samples}): {after}"
    );
    assert!(
        after["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["vantage"] == "" && t["to"] == "error" && time_of(t) < restarted_at),
        "the aggregate's transition to error, from before the restart: {after}"
    );
    assert!(
        after["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["section"] == "derp"),
        "{after}"
    );
    // Samples of a series are oldest first, across the restart too.
    let node = after["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["vantage"] == "server")
        .unwrap_or_else(|| panic!("the server's DERP series: {after}"));
    let times: Vec<DateTime<Utc>> = node["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(time_of)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // And over gRPC, through the CLI.
    let out = cli(&[
        "--server",
        &server.url,
        "history",
        "--section",
        "DERP",
        "--since",
        "1h",
        "--json",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let grpc_transitions = json["transitions"].as_array().map_or(0, Vec::len);
    assert!(grpc_transitions >= transitions, "{json}");
}
