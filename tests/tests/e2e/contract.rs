//! The external contracts: Coder's JSON shape, the CLI, settings, force, gRPC health and
//! reflection, the loopback-only default, and watchers.

use std::time::Duration;

use serde_json::{Value, json};
use vantage_proto::pb;
use vantage_testkit::eventually;
use vantage_tests::{Server, cli};

/// The shape of a JSON value: key names and types, not values.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => json!([a.first().map_or(json!("empty"), shape)]),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

async fn settled(server: &Server) -> Value {
    eventually(
        Duration::from_secs(20),
        "the server's own vantage to report",
        || async {
            let r = server.report().await;
            (r["access_url"]["vantage_reports"].get("server").is_some()
                && r["websocket"]["vantage_reports"].get("server").is_some()
                && r["database"]["vantage_reports"].get("server").is_some()
                && r["derp"]["vantage_reports"].get("server").is_some())
            .then_some(r)
        },
    )
    .await
}

#[tokio::test]
async fn the_embedded_default_keeps_coders_json_shape() {
    let server = Server::start(&[]).await;
    let healthz = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(healthz.text().await.unwrap(), "OK");
    let r = settled(&server).await;

    // Coder's keys and types for the top level and the two sections built here.
    let mut top: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    top.sort_unstable();
    assert_eq!(
        top,
        vec![
            "access_url",
            "coder_version",
            "database",
            "derp",
            "healthy",
            "provisioner_daemons",
            "revision",
            "severity",
            "time",
            "vantages",
            "websocket",
            "workspace_proxy"
        ]
    );
    let mut access = shape(&r["access_url"]);
    access.as_object_mut().unwrap().remove("vantage_reports");
    assert_eq!(
        access,
        json!({
            "healthy": "bool", "severity": "string", "warnings": ["empty"], "dismissed": "bool",
            "access_url": "string", "reachable": "bool", "status_code": "number", "healthz_response": "string"
        })
    );
    let mut ws = shape(&r["websocket"]);
    ws.as_object_mut().unwrap().remove("vantage_reports");
    assert_eq!(
        ws,
        json!({
            "healthy": "bool", "severity": "string", "warnings": ["empty"], "dismissed": "bool", "body": "string", "code": "number"
        })
    );
    assert_eq!(r["access_url"]["access_url"], server.url);
    assert_eq!(r["access_url"]["status_code"], 200);
    assert_eq!(r["access_url"]["healthz_response"], "OK");
    assert_eq!(r["websocket"]["code"], 101);
    // The embedded default says honestly that nothing is durable.
    assert_eq!(r["database"]["warnings"][0]["code"], "EDB03");
    assert_eq!(r["database"]["severity"], "warning");
    assert_eq!(
        r["workspace_proxy"]["workspace_proxies"]["regions"],
        json!([])
    );
    assert!(r["time"].as_str().unwrap().contains('T'));

    // Coder's encoding: tab indentation; `?format=text`; invalid formats are a 400.
    let body = reqwest::get(format!("{}/api/v2/debug/health", server.url))
        .await
        .unwrap();
    assert_eq!(
        body.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(body.text().await.unwrap().starts_with("{\n\t\"time\""));
    let text = reqwest::get(format!("{}/api/v2/debug/health?format=text", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\naccess_url: true\n") && text.contains("\nwebsocket: true\n"),
        "{text}"
    );
    let bad = reqwest::get(format!("{}/api/v2/debug/health?format=yaml", server.url))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["message"], "Invalid format option \"yaml\".");
}

#[tokio::test]
async fn the_cli_reports_tables_exact_json_and_exit_codes() {
    let server = Server::start(&["--interval", "1h"]).await;
    settled(&server).await;
    let url = server.url.as_str();

    let out = cli(&["--server", url, "report"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "EDB03 makes the embedded default a warning"
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("SECTION")
            && table.contains("SERVER")
            && table.contains("Database: warning: EDB03"),
        "{table}"
    );

    // --json prints exactly the body of /api/v2/debug/health (the state is quiet now).
    let out = cli(&["--server", url, "report", "--json"]).await;
    let http = reqwest::get(format!("{url}/api/v2/debug/health"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), http);

    let out = cli(&["--server", url, "vantages"]).await;
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        list.starts_with("NAME") && list.contains("server") && list.contains("fresh"),
        "{list}"
    );

    let out = cli(&["--server", url, "report", "--force"]).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn settings_dismiss_and_restore_over_http_grpc_and_cli() {
    let server = Server::start(&["--interval", "1h"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v2/debug/health/settings", server.url);
    assert_eq!(
        server.get_json("/api/v2/debug/health/settings").await,
        json!({"dismissed_healthchecks": []})
    );

    let put = http
        .put(&url)
        .json(&json!({"dismissed_healthchecks": ["DERP", "ProvisionerDaemons"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let same = http
        .put(&url)
        .json(&json!({"dismissed_healthchecks": ["ProvisionerDaemons", "DERP"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 204, "no change is 204");
    let bad = http
        .put(&url)
        .json(&json!({"dismissed_healthchecks": ["Pubsub"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert!(
        bad["detail"]
            .as_str()
            .unwrap()
            .contains("unknown healthcheck section: \"Pubsub\""),
        "{bad}"
    );

    let r = server.report().await;
    assert_eq!(
        (
            r["derp"]["dismissed"].clone(),
            r["provisioner_daemons"]["dismissed"].clone(),
            r["access_url"]["dismissed"].clone()
        ),
        (json!(true), json!(true), json!(false))
    );

    let client = vantage_client::Client::connect(&server.url, None)
        .await
        .unwrap();
    let mut names = client.settings().await.unwrap().dismissed_healthchecks;
    names.sort();
    assert_eq!(names, vec!["DERP", "ProvisionerDaemons"]);
    let err = client
        .update_settings(vec!["Nope".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dismissed_healthchecks"), "{err}");

    let out = cli(&["--server", &server.url, "settings", "undismiss", "derp"]).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "dismissed: ProvisionerDaemons\n"
    );
    assert_eq!(server.report().await["derp"]["dismissed"], false);
}

#[tokio::test]
async fn force_waits_for_every_vantage_or_names_the_ones_still_running() {
    let server = Server::start(&["--interval", "1h", "--force-timeout", "1s"]).await;
    settled(&server).await;
    let ok = reqwest::get(format!("{}/api/v2/debug/health?force=true", server.url))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // A probe that attaches and never answers run-now.
    let mut client = pb::probe_service_client::ProbeServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ProbeMessage {
        msg: Some(pb::probe_message::Msg::Hello(pb::Hello {
            name: "lazy-1".into(),
            region: "x".into(),
            instance_id: "i".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let _down = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    let slow = reqwest::get(format!("{}/api/v2/debug/health?force=true", server.url))
        .await
        .unwrap();
    assert_eq!(slow.status(), 503);
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["message"], "Healthcheck timed out.");
    assert_eq!(body["detail"], "Still running: lazy-1");
    let mut health = pb::health_service_client::HealthServiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let err = health
        .get_report(pb::GetReportRequest { force: true })
        .await
        .unwrap_err();
    assert!(err.message().contains("lazy-1"), "{err}");
    drop(tx);
}

#[tokio::test]
async fn grpc_health_and_reflection_answer() {
    let server = Server::start(&["--interval", "1h"]).await;
    settled(&server).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut services = vec![String::new()];
    services.extend(
        [
            "AccessURL",
            "Database",
            "DERP",
            "Websocket",
            "WorkspaceProxy",
            "ProvisionerDaemons",
            "Deployment",
        ]
        .map(|s| format!("vantage.v1.{s}")),
    );
    for service in &services {
        let r = eventually(Duration::from_secs(10), "a health status", || {
            let mut health = health.clone();
            let service = service.clone();
            async move {
                health
                    .check(tonic_health::pb::HealthCheckRequest { service })
                    .await
                    .ok()
            }
        })
        .await;
        assert_eq!(
            r.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "vantage.v1.Pubsub".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "vantage.v1.HealthService",
            "vantage.v1.ProbeService",
            "vantage.v1.RegistryService"
        ]
    );
}

#[tokio::test]
async fn grpc_health_empty_service_is_vantaged_not_the_deployment() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // The only DERP region's only node is a closed port: the deployment is at error.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("derp.json");
    let port = vantage_testkit::closed_tcp_port();
    std::fs::write(
        &map,
        json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "dead", "RegionName": "Dead", "Nodes": [
            {"Name": "1a", "RegionID": 1, "HostName": "127.0.0.1", "DERPPort": port, "ForceHTTP": true, "STUNPort": -1}
        ]}}})
        .to_string(),
    )
    .unwrap();
    let server = Server::start(&[
        "--interval",
        "1h",
        "--embedded-relay",
        "false",
        "--derp-map",
        map.to_str().unwrap(),
    ])
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().status)
        }
    };
    eventually(
        Duration::from_secs(20),
        "DERP and the deployment NOT_SERVING",
        || async {
            (status("vantage.v1.DERP").await == Some(ServingStatus::NotServing as i32)
                && status("vantage.v1.Deployment").await == Some(ServingStatus::NotServing as i32))
            .then_some(())
        },
    )
    .await;
    let report = server.report().await;
    assert_eq!(report["severity"], "error", "{report}");
    assert_eq!(
        status("").await,
        Some(ServingStatus::Serving as i32),
        "service \"\" describes vantaged, which serves"
    );

    // Reflection answers in v1alpha too (grpcurl 1.8, Python's grpcio-reflection).
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "vantage.v1.HealthService"),
        "{names:?}"
    );
}

/// Run `vantaged ARGS`, expect a usage error (exit 64), return what it said.
async fn usage_error(args: &[&str]) -> String {
    let out = tokio::process::Command::new(vantage_tests::bin("vantaged"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_non_loopback_listener_needs_an_explicit_opt_out() {
    let err = usage_error(&["--listen", "0.0.0.0:0"]).await;
    assert!(
        err.contains("--insecure-no-auth") && err.contains("listen"),
        "{err}"
    );

    let err = usage_error(&["--interval", "soon"]).await;
    assert!(err.contains("\"soon\""), "{err}");
}

#[tokio::test]
async fn a_broken_derp_map_at_start_is_a_warning_not_an_exit() {
    // The map is read again every --derp-map-refresh: vantaged starts without it and says why
    // (EDERP05), naming the problem.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.json");
    std::fs::write(&map, r#"{"Regions": {"7": {"RegionID": 8, "Nodes": []}}}"#).unwrap();
    let server = Server::start(&["--derp-map", map.to_str().unwrap()]).await;
    let derp = eventually(Duration::from_secs(20), "EDERP05", || async {
        let report = server.report().await;
        let found = report["derp"]["warnings"]
            .as_array()?
            .iter()
            .any(|w| w["code"] == "EDERP05");
        found.then(|| report["derp"].clone())
    })
    .await;
    let text = derp.to_string();
    assert!(
        text.contains("RegionID") && text.contains("map.json"),
        "{text}"
    );
    assert_eq!(derp["severity"], "warning", "{derp}");
}

#[tokio::test]
async fn watchers_get_state_then_changes_and_a_stuck_one_slows_nothing() {
    let server = Server::start(&["--interval", "100ms"]).await;
    settled(&server).await;
    let client = vantage_client::Client::connect(&server.url, None)
        .await
        .unwrap();
    // One watcher that never reads, for the whole test.
    let _stuck = client.watch(pb::WatchRequest::default()).await.unwrap();

    // The CLI prints the current state, then one line per change.
    let mut watch = tokio::process::Command::new(vantage_tests::bin("vantage"))
        .args(["--server", &server.url, "watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["report"]["access_url"]["severity"], "ok");
    let _probe = vantage_tests::Probe::start(&server.url, "fra-1", "fra");
    let attached = next_line_matching(&mut lines, Duration::from_secs(20), |v| {
        v["type"] == "vantage_change" && v["vantage"] == "fra-1" && v["change"] == "attached"
    })
    .await;
    assert!(attached["revision"].as_u64().unwrap() > first["revision"].as_u64().unwrap());

    // Ingestion keeps its pace while the stuck watcher holds its subscription.
    let applied = |vs: Vec<pb::Vantage>| {
        vs.into_iter()
            .find(|v| v.name == "fra-1")
            .map_or(0, |v| v.applied)
    };
    let before = applied(client.vantages().await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = applied(client.vantages().await.unwrap());
    // Two checks every ~100 ms: far more than 10 in 2 s unless something stalls.
    assert!(
        after - before >= 10,
        "applied only {} observations in 2s",
        after - before
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vantage_watchers ") && l != "vantage_watchers 0"),
        "{metrics}"
    );
    // Per vantage and target: the latest check's outcome and duration.
    let success = format!(
        "vantage_check_success{{vantage=\"fra-1\",section=\"AccessURL\",target=\"{}\",region=\"fra\"}} 1",
        server.url
    );
    assert!(
        metrics.lines().any(|l| l == success),
        "{success} in {metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "vantage_check_duration_seconds{vantage=\"server\",section=\"Websocket\""
        )),
        "{metrics}"
    );

    // A server restart: the CLI reconnects by itself and resyncs (the new server's history
    // does not reach back to the revision it saw).
    let mut server = server;
    server.restart().await;
    let resync = next_line_matching(&mut lines, Duration::from_secs(30), |v| {
        v["type"] == "snapshot" && v["resync"] == true
    })
    .await;
    assert!(resync["report"].is_object());
}

/// Watchers that share one HTTP/2 connection are woken by that connection's task, together:
/// each gets every change, and those that leave hold up none of the others.
#[tokio::test]
async fn watchers_sharing_a_connection_each_get_every_change_and_leavers_stop_nobody() {
    use futures::StreamExt as _;
    use vantage_proto::report::VantageChange;

    let server = Server::start(&["--interval", "100ms"]).await;
    settled(&server).await;
    // One client is one connection: its twenty watch streams share it.
    let client = vantage_client::Client::connect(&server.url, None)
        .await
        .unwrap();
    let mut watchers = Vec::new();
    for i in 0..20 {
        let mut w = Box::pin(client.watch(pb::WatchRequest::default()).await.unwrap());
        let first = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap_or_else(|_| panic!("watcher {i}: no snapshot in 10s"))
            .unwrap()
            .unwrap();
        assert!(
            matches!(first.event, Some(pb::watch_event::Event::Snapshot(_))),
            "watcher {i} began with {first:?}"
        );
        watchers.push(w);
    }
    // Half of them leave: their streams end while the rest wait.
    watchers.truncate(10);

    async fn next_change<S>(w: &mut S, i: usize, want: VantageChange)
    where
        S: futures::Stream<Item = Result<pb::WatchEvent, tonic::Status>> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ev = tokio::time::timeout_at(deadline, w.next())
                .await
                .unwrap_or_else(|_| panic!("watcher {i}: no {want:?} of fra-1 in 20s"))
                .expect("the watch ended")
                .unwrap();
            if let Some(pb::watch_event::Event::VantageChange(c)) = &ev.event
                && c.vantage == "fra-1"
                && VantageChange::of(c) == Some(want)
            {
                return;
            }
        }
    }

    let mut probe = vantage_tests::Probe::start(&server.url, "fra-1", "fra");
    for (i, w) in watchers.iter_mut().enumerate() {
        next_change(w, i, VantageChange::Attached).await;
    }
    probe.kill().await;
    for (i, w) in watchers.iter_mut().enumerate() {
        next_change(w, i, VantageChange::Detached).await;
    }
}

/// Read NDJSON lines until one matches, within a deadline.
async fn next_line_matching<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("no matching line in time")
            .unwrap()
            .expect("the watch ended");
        let v: Value = serde_json::from_str(&line).unwrap();
        if pred(&v) {
            return v;
        }
    }
}
