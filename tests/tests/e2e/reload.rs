//! Configuration that follows change: the DERP map read again every `--derp-map-refresh`
//! (EDERP05 while it cannot be read, also at start), and SIGHUP reloading the `--config` file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use vantage_testkit::eventually;
use vantage_tests::Server;

/// A DERP map URL on port 0 that answers 503 while its map is `None`.
struct MapServer {
    map: Arc<Mutex<Option<Value>>>,
    url: String,
}

impl MapServer {
    async fn start() -> MapServer {
        let map: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
        async fn serve(State(map): State<Arc<Mutex<Option<Value>>>>) -> Response {
            match map.lock().unwrap().clone() {
                Some(m) => axum::Json(m).into_response(),
                None => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            }
        }
        let app = Router::new()
            .route("/derp.json", get(serve))
            .with_state(map.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/derp.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        MapServer { map, url }
    }

    fn set(&self, map: Option<Value>) {
        *self.map.lock().unwrap() = map;
    }
}

/// A region whose one node is vantaged's own embedded relay on `port`.
fn region(id: i64, code: &str, port: u16) -> Value {
    json!({
        "RegionID": id, "RegionCode": code, "RegionName": code.to_uppercase(),
        "Nodes": [{"Name": format!("{id}a"), "RegionID": id, "HostName": "127.0.0.1",
                   "DERPPort": port, "STUNPort": -1, "ForceHTTP": true}]
    })
}

/// The DERP section's EDERP05 message, if any.
fn ederp05(report: &Value) -> Option<String> {
    report["derp"]["warnings"]
        .as_array()?
        .iter()
        .find(|w| w["code"] == "EDERP05")
        .map(|w| w["message"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_derp_map_url_down_at_start_is_a_warning_and_is_read_again_until_it_answers() {
    let maps = MapServer::start().await;
    let server = Server::start(&[
        "--interval",
        "500ms",
        "--derp-map",
        &maps.url,
        "--derp-map-refresh",
        "300ms",
    ])
    .await;
    // vantaged serves with the embedded relay only, and says why the map is missing.
    let warning = eventually(Duration::from_secs(20), "EDERP05 in the report", || async {
        ederp05(&server.report().await)
    })
    .await;
    assert!(warning.contains("503"), "{warning}");
    let report = server.report().await;
    assert_eq!(report["derp"]["severity"], "warning", "{}", report["derp"]);
    let map = server.get_json("/api/v2/debug/derp-map").await;
    assert!(map["Regions"]["999"].is_object() && map["Regions"]["1"].is_null());

    // The URL answers: its region is checked and the warning clears, within a few refreshes.
    maps.set(Some(
        json!({"Regions": {"1": region(1, "fra", server.port)}}),
    ));
    eventually(Duration::from_secs(20), "region 1 checked", || async {
        let r = server.report().await;
        (r["derp"]["regions"]["1"]["severity"] == "ok" && ederp05(&r).is_none()).then_some(())
    })
    .await;
    let map = server.get_json("/api/v2/debug/derp-map").await;
    assert_eq!(map["Regions"]["1"]["RegionCode"], "fra", "{map}");

    // Down again: the last map stays, with the warning.
    maps.set(None);
    eventually(Duration::from_secs(20), "EDERP05 again", || async {
        ederp05(&server.report().await)
    })
    .await;
    let map = server.get_json("/api/v2/debug/derp-map").await;
    assert_eq!(map["Regions"]["1"]["RegionCode"], "fra", "{map}");

    // A changed map is followed: a second region appears.
    maps.set(Some(json!({"Regions": {
        "1": region(1, "fra", server.port),
        "2": region(2, "iad", server.port),
    }})));
    eventually(Duration::from_secs(20), "region 2 checked", || async {
        let r = server.report().await;
        (r["derp"]["regions"]["2"]["severity"] == "ok" && ederp05(&r).is_none()).then_some(())
    })
    .await;
}

/// The names of the proxies in the report's Workspace Proxy section.
fn proxies(report: &Value) -> Vec<String> {
    report["workspace_proxy"]["workspace_proxies"]["regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A proxy of region `syd` named `name` at `url`.
fn proxy_table(name: &str, url: &str) -> String {
    format!("[[workspace_proxies]]\nname = \"{name}\"\nurl = \"{url}\"\nregion = \"syd\"\n")
}

#[tokio::test]
async fn sighup_applies_the_files_proxies_map_and_intervals_and_an_invalid_file_changes_nothing() {
    // A workspace proxy that answers healthy.
    let healthy = Router::new().route(
        "/healthz-report",
        get(|| async { axum::Json(json!({"errors": [], "warnings": []})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, healthy).await });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "interval = \"1h\"\nstale_after = \"2h\"\n{}",
            proxy_table("syd-a", &proxy_url)
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]).await;
    let _probe = vantage_tests::Probe::start(&server.url, "syd-1", "syd");
    let checked = |name: &'static str| {
        let server = &server;
        move || async move {
            let r = server.report().await;
            let view = &r["workspace_proxy"]["vantage_reports"]["syd-1"]["workspace_proxies"];
            view["regions"]
                .as_array()?
                .iter()
                .any(|p| p["name"] == name)
                .then_some(())
        }
    };
    eventually(
        Duration::from_secs(20),
        "syd-a checked by syd-1",
        checked("syd-a"),
    )
    .await;

    // A second proxy, a DERP map file and a shorter interval: applied on SIGHUP, and the
    // probe gets its new assignment at once (its interval is 30m or more: only a new
    // assignment makes it check syd-b).
    let map = dir.path().join("derp.json");
    std::fs::write(
        &map,
        json!({"Regions": {"1": region(1, "fra", server.port)}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "interval = \"30m\"\nstale_after = \"2h\"\nderp_map = \"{}\"\n\
             [sections.derp]\ninterval = \"1s\"\n{}{}",
            map.display(),
            proxy_table("syd-a", &proxy_url),
            proxy_table("syd-b", &proxy_url)
        ),
    )
    .unwrap();
    server.hangup();
    eventually(
        Duration::from_secs(20),
        "syd-b checked by syd-1",
        checked("syd-b"),
    )
    .await;
    let m = server.get_json("/api/v2/debug/derp-map").await;
    assert_eq!(m["Regions"]["1"]["RegionCode"], "fra", "{m}");
    eventually(Duration::from_secs(20), "region 1 checked", || async {
        let r = server.report().await;
        (r["derp"]["regions"]["1"]["severity"] == "ok").then_some(())
    })
    .await;

    // An invalid file: nothing changes, and vantaged keeps serving.
    std::fs::write(
        &config,
        format!(
            "interval = \"30m\"\n[sections.derp]\ntimeout = \"1h\"\n{}",
            proxy_table("syd-c", &proxy_url)
        ),
    )
    .unwrap();
    server.hangup();
    // A valid SIGHUP after it still works, so the invalid one was handled (and refused).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = server.report().await;
    let mut names = proxies(&r);
    names.sort();
    assert_eq!(names, vec!["syd-a", "syd-b"], "{}", r["workspace_proxy"]);
    std::fs::write(
        &config,
        format!(
            "interval = \"30m\"\nstale_after = \"2h\"\nderp_map = \"{}\"\n{}",
            map.display(),
            proxy_table("syd-c", &proxy_url)
        ),
    )
    .unwrap();
    server.hangup();
    eventually(Duration::from_secs(20), "only syd-c configured", || async {
        let mut names = proxies(&server.report().await);
        names.sort();
        (names == ["syd-c"]).then_some(())
    })
    .await;
}
