//! History: section transitions and per-check outcomes over HTTP
//! (`/api/v2/debug/health/history`), gRPC (`GetHistory`, through `vantage history`), and the
//! 400s that name a bad parameter.

use std::time::Duration;

use serde_json::Value;
use vantage_testkit::eventually;
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
