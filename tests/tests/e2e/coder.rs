//! Attach mode against the Coder stand-in (`vantage_tests::coder`): vantaged imports the
//! deployment's version, workspace proxies, provisioner daemons and replicas and follows them;
//! real probes in two regions check the proxies of their regions; every failure of the import
//! is data in the report's `coder` block.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use vantage_testkit::{closed_tcp_port, eventually, loopback_listener};
use vantage_tests::coder::{
    CoderStandIn, MEMBER_TOKEN, NO_DERP_NO_DAEMON_TOKEN, NO_PROXY_TOKEN, OWNER_TOKEN, daemon,
    proxy, replica,
};
use vantage_tests::{Probe, Server};

async fn healthy_proxy() -> std::net::SocketAddr {
    let (listener, addr) = loopback_listener().await;
    let router = Router::new().route(
        "/healthz-report",
        get(|| async { axum::Json(json!({"errors": [], "warnings": []})) }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn attach(coder: &CoderStandIn, token: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--interval",
        "500ms",
        "--coder-url",
        &coder.url,
        "--coder-token",
        token,
        "--coder-refresh",
        "300ms",
    ];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

fn codes(block: &Value) -> Vec<String> {
    block["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|m| m["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn coder_proxy<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["coder"]["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn section_proxy<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["workspace_proxy"]["workspace_proxies"]["regions"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[tokio::test]
async fn an_enterprise_deployment_is_imported_followed_and_its_failures_are_data() {
    let coder = CoderStandIn::start("v2.26.0+abc1234").await;
    let fra = healthy_proxy().await;
    let dead = format!("http://127.0.0.1:{}", closed_tcp_port());
    coder.with(|d| {
        d.bare_proxy_list = true;
        d.proxies = vec![
            proxy("fra", &format!("http://{fra}"), "ok", &[]),
            // Coder says ok, the probes of iad cannot reach it: a disagreement.
            proxy("iad", &dead, "ok", &[]),
        ];
        d.daemons = vec![daemon("builder-1", "v2.26.1")];
        d.replicas = vec![
            replica("coderd-a", ""),
            replica("coderd-b", "dial coderd-a: connection refused"),
        ];
    });
    // `[coder] proxy_regions` sends a proxy to probes of another region than its name.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        "[coder]\nproxy_regions = { \"fra-2\" = \"fra\" }\n",
    )
    .unwrap();
    let server = attach(
        &coder,
        OWNER_TOKEN,
        &[
            "--config",
            config.to_str().unwrap(),
            "--embedded-relay-region",
            "900",
        ],
    )
    .await;
    let _fra = Probe::start(&server.url, "fra-1", "fra");
    let _iad = Probe::start(&server.url, "iad-1", "iad");
    let report = eventually(
        Duration::from_secs(30),
        "both proxies polled and compared",
        || async {
            let r = server.report().await;
            ["fra", "iad"]
                .iter()
                .all(|n| coder_proxy(&r, n).is_some_and(|p| p["probe_status"] != ""))
                .then_some(r)
        },
    )
    .await;
    // The deployment's version, not vantage's: no false EPD02.
    assert_eq!(report["coder_version"], "v2.26.0+abc1234");
    let pd = &report["provisioner_daemons"];
    assert_eq!(pd["severity"], "ok", "{pd}");
    assert_eq!(
        pd["items"][0]["provisioner_daemon"]["name"], "builder-1",
        "{pd}"
    );
    let block = &report["coder"];
    assert_eq!(block["url"], coder.url.as_str());
    assert_eq!(block["version"], "v2.26.0+abc1234");
    assert!(block["imported_at"].is_string(), "{block}");
    assert_eq!(block["severity"], "warning");
    let found = codes(block);
    assert!(found.contains(&"ECDR04".to_owned()), "{block}");
    assert!(found.contains(&"ECDR05".to_owned()), "{block}");
    assert!(!found.contains(&"ECDR03".to_owned()), "{block}");
    assert!(
        block["warnings"].to_string().contains("coderd-b"),
        "{block}"
    );
    assert_eq!(block["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(report["severity"], "warning");
    let (f, i) = (
        coder_proxy(&report, "fra").unwrap(),
        coder_proxy(&report, "iad").unwrap(),
    );
    assert_eq!(
        (&f["coder_status"], &f["probe_status"], &f["region"]),
        (&json!("ok"), &json!("ok"), &json!("fra"))
    );
    assert_eq!(
        (&i["coder_status"], &i["probe_status"]),
        (&json!("ok"), &json!("unreachable"))
    );
    // Each proxy was checked by the probe of its region only.
    let section = &report["workspace_proxy"]["vantage_reports"];
    assert_eq!(
        section["fra-1"]["workspace_proxies"]["regions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        section_proxy(&report, "fra").unwrap()["status"]["status"],
        "ok"
    );

    // Coder's own report is one more vantage, `coderd`, beside the regions'.
    let report = eventually(
        Duration::from_secs(10),
        "coderd's database failing",
        || async {
            coder.with(|d| d.database_error = Some("EDB01: ping: connection refused".into()));
            let r = server.report().await;
            r["database"]["vantage_reports"]["coderd"]["reachable"]
                .as_bool()
                .is_some_and(|ok| !ok)
                .then_some(r)
        },
    )
    .await;
    assert!(vantage_tests::vantage(&report, "coderd").is_some());
    assert_eq!(
        report["access_url"]["vantage_reports"]["coderd"]["status_code"],
        200
    );
    assert_eq!(
        report["database"]["severity"], "error",
        "{}",
        report["database"]
    );
    coder.with(|d| d.database_error = None);

    // A proxy added at Coder is assigned and polled within a refresh or so.
    let fra2 = healthy_proxy().await;
    coder.with(|d| {
        d.proxies
            .push(proxy("fra-2", &format!("http://{fra2}"), "ok", &[]))
    });
    eventually(Duration::from_secs(10), "the new proxy polled", || async {
        let r = server.report().await;
        section_proxy(&r, "fra-2")
            .is_some_and(|p| p["status"]["status"] == "ok")
            .then_some(())
    })
    .await;

    // Coder goes away: ECDR01, and the last inventory stays.
    let imported_at = server.report().await["coder"]["imported_at"].clone();
    coder.with(|d| d.away = true);
    let report = eventually(Duration::from_secs(10), "ECDR01", || async {
        let r = server.report().await;
        codes(&r["coder"])
            .contains(&"ECDR01".to_owned())
            .then_some(r)
    })
    .await;
    assert_eq!(report["coder"]["version"], "v2.26.0+abc1234");
    assert_eq!(
        report["coder"]["proxies"].as_array().unwrap().len(),
        3,
        "{}",
        report["coder"]
    );
    assert!(section_proxy(&report, "fra-2").is_some());
    assert_eq!(
        report["provisioner_daemons"]["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(report["coder"]["imported_at"].as_str() >= imported_at.as_str());

    // Back, then the token is revoked: ECDR02, inventory still kept.
    coder.with(|d| d.away = false);
    coder.revoke(OWNER_TOKEN);
    let report = eventually(Duration::from_secs(10), "ECDR02", || async {
        let r = server.report().await;
        codes(&r["coder"])
            .contains(&"ECDR02".to_owned())
            .then_some(r)
    })
    .await;
    assert!(
        report["coder"]["warnings"].to_string().contains("401"),
        "{}",
        report["coder"]
    );
    assert_eq!(report["coder"]["proxies"].as_array().unwrap().len(), 3);
    assert_eq!(report["coder_version"], "v2.26.0+abc1234");
    // The token only ever went to Coder, and never appears in what vantaged serves.
    let body = reqwest::get(format!("{}/api/v2/debug/health", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(OWNER_TOKEN));
    coder.with(|d| {
        assert!(
            d.requests
                .iter()
                .any(|(p, tok)| p == "/api/v2/replicas" && *tok)
        )
    });
}

#[tokio::test]
async fn an_open_source_deployment_with_a_member_token_stays_ok() {
    let coder = CoderStandIn::start("v2.26.0").await;
    coder.with(|d| {
        d.oss = true;
        d.daemons = vec![daemon("builder-1", "v2.26.0")];
    });
    let db = vantage_testkit::test_db!();
    let url = db.url();
    let server = attach(
        &coder,
        MEMBER_TOKEN,
        &[
            "--database-url",
            &url,
            "--embedded-relay-region",
            "900",
            "--database-threshold",
            "5s",
        ],
    )
    .await;
    let report = eventually(Duration::from_secs(30), "imported and checked", || async {
        let r = server.report().await;
        // The daemons reach their section through the registry's follower, just after the
        // import's own block.
        (r["coder"]["imported_at"].is_string()
            && r["access_url"]["healthy"] == true
            && r["database"]["severity"] != Value::Null
            && r["provisioner_daemons"]["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty()))
        .then_some(r)
    })
    .await;
    let block = &report["coder"];
    assert_eq!(block["severity"], "ok", "{block}");
    assert!(codes(block).is_empty(), "{block}");
    let parts: Vec<&str> = block["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["part"].as_str().unwrap())
        .collect();
    assert_eq!(
        parts,
        vec![
            "workspace_proxies",
            "replicas",
            "coderd_report",
            "websocket_echo"
        ],
        "{block}"
    );
    assert!(
        block["unavailable"]
            .to_string()
            .contains("Route not found."),
        "{block}"
    );
    assert_eq!(report["coder_version"], "v2.26.0");
    assert_eq!(report["provisioner_daemons"]["severity"], "ok");
    assert_eq!(
        report["provisioner_daemons"]["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let sev = eventually(Duration::from_secs(30), "the report at ok", || async {
        let r = server.report().await;
        (r["severity"] == "ok").then_some(r["severity"].clone())
    })
    .await;
    assert_eq!(sev, "ok");
    // Everything else still works: the probes' sections are checked as without Coder.
    let report = server.report().await;
    assert_eq!(report["access_url"]["healthy"], true);
    assert_eq!(report["derp"]["healthy"], true);
}

#[tokio::test]
async fn missing_permissions_give_ecdr03_only_where_vantage_needs_them() {
    let coder = CoderStandIn::start("v2.26.0").await;
    coder.with(|d| d.proxies = vec![proxy("syd", "http://127.0.0.1:9", "ok", &[])]);
    // A Member may read the proxies and daemons; the replicas are hidden from it (404).
    // With a database: the imported proxies are stored in the registry like the others.
    let db = vantage_testkit::test_db!();
    let url = db.url();
    let member = attach(&coder, MEMBER_TOKEN, &["--database-url", &url]).await;
    let block = eventually(Duration::from_secs(20), "imported", || async {
        let r = member.report().await;
        // The proxy reaches its section through the registry's follower, just after the
        // import's own block.
        (r["coder"]["imported_at"].is_string() && section_proxy(&r, "syd").is_some())
            .then(|| r["coder"].clone())
    })
    .await;
    assert!(codes(&block).is_empty(), "{block}");
    assert_eq!(block["unavailable"][0]["part"], "replicas", "{block}");
    assert_eq!(block["unavailable"][1]["part"], "coderd_report", "{block}");
    assert!(
        block["unavailable"][1]["reason"]
            .to_string()
            .contains("403"),
        "{block}"
    );
    assert_eq!(block["proxies"][0]["coder_status"], "ok");
    let report = member.report().await;
    assert!(
        section_proxy(&report, "syd").is_some(),
        "{}",
        report["workspace_proxy"]
    );
    // A role without workspace_proxy:read: the proxies come from /regions, without status.
    let limited = attach(&coder, NO_PROXY_TOKEN, &[]).await;
    let block = eventually(Duration::from_secs(20), "ECDR03", || async {
        let r = limited.report().await;
        codes(&r["coder"])
            .contains(&"ECDR03".to_owned())
            .then(|| r["coder"].clone())
    })
    .await;
    let text = block["warnings"].to_string();
    assert!(
        text.contains("/api/v2/workspaceproxies") && text.contains("workspace_proxy:read"),
        "{text}"
    );
    assert_eq!(block["proxies"][0]["name"], "syd");
    assert_eq!(block["proxies"][0]["coder_status"], "");
    assert_eq!(block["severity"], "warning");
    drop(limited);
    // A role that may not read the DERP map nor the daemons: ECDR03 for each, naming the
    // endpoint and what is missing; the proxies, which it may read, are no ECDR03.
    let limited = attach(&coder, NO_DERP_NO_DAEMON_TOKEN, &[]).await;
    let block = eventually(Duration::from_secs(20), "ECDR03 twice", || async {
        let r = limited.report().await;
        (codes(&r["coder"]).iter().filter(|c| *c == "ECDR03").count() == 2)
            .then(|| r["coder"].clone())
    })
    .await;
    let text = block["warnings"].to_string();
    assert!(
        text.contains("/api/v2/workspaceagents/connection"),
        "{text}"
    );
    assert!(
        text.contains("/provisionerdaemons") && text.contains("provisioner_daemon:read"),
        "{text}"
    );
    assert!(!text.contains("/api/v2/workspaceproxies"), "{text}");
    assert_eq!(block["proxies"][0]["coder_status"], "ok", "{block}");
}

fn derp_region(id: i64, code: &str, port: u16) -> Value {
    json!({
        "RegionID": id, "RegionCode": code, "RegionName": code.to_uppercase(), "EmbeddedRelay": false,
        "Nodes": [{"Name": format!("{id}a"), "RegionID": id, "HostName": "127.0.0.1",
                   "DERPPort": port, "STUNPort": -1, "ForceHTTP": true}]
    })
}

fn derp_node<'a>(report: &'a Value, vantage: &str, region: &str) -> Option<&'a Value> {
    report["derp"]["vantage_reports"][vantage]["regions"][region]["node_reports"].get(0)
}

#[tokio::test]
async fn coders_derp_map_is_followed_and_checked_by_the_probes_of_each_region() {
    let coder = CoderStandIn::start("v2.26.0").await;
    coder.with(|d| {
        d.derp_map = json!({"Regions": {"999": {
            "RegionID": 999, "RegionCode": "coder", "RegionName": "Coder Embedded Relay",
            "EmbeddedRelay": true, "Nodes": []}}})
    });
    let server = attach(&coder, OWNER_TOKEN, &["--server-checks-derp", "false"]).await;
    let _fra = Probe::start(&server.url, "fra-1", "fra");
    let _iad = Probe::start(&server.url, "iad-1", "iad");
    // Coder's 999 wins: vantage's own embedded relay is not in the effective map.
    let map = eventually(Duration::from_secs(20), "Coder's map served", || async {
        let m = server.get_json("/api/v2/debug/derp-map").await;
        (m["Regions"]["999"]["RegionCode"] == "coder").then_some(m)
    })
    .await;
    assert_eq!(map["Regions"].as_object().unwrap().len(), 1, "{map}");
    // Regions added at Coder: fra's node is vantaged's real relay, iad's a dead port.
    let dead = closed_tcp_port();
    coder.with(|d| {
        d.derp_map["Regions"]["1"] = derp_region(1, "fra", server.port);
        d.derp_map["Regions"]["2"] = derp_region(2, "iad", dead);
    });
    let report = eventually(Duration::from_secs(30), "both regions checked", || async {
        let r = server.report().await;
        (derp_node(&r, "fra-1", "1").is_some() && derp_node(&r, "iad-1", "2").is_some())
            .then_some(r)
    })
    .await;
    assert_eq!(
        derp_node(&report, "fra-1", "1").unwrap()["can_exchange_messages"],
        true
    );
    assert_eq!(
        derp_node(&report, "iad-1", "2").unwrap()["can_exchange_messages"],
        false
    );
    // Each region only by the probes of its code.
    assert!(derp_node(&report, "fra-1", "2").is_none());
    assert!(derp_node(&report, "iad-1", "1").is_none());
    assert_eq!(
        report["derp"]["regions"]["1"]["region"]["RegionName"],
        "FRA"
    );
    assert_eq!(
        derp_node(&report, "fra-1", "1").unwrap()["uses_websocket"],
        false
    );
    // Coder forces WebSockets: the probes connect the way Coder's agents would.
    coder.with(|d| d.derp_force_websockets = true);
    eventually(
        Duration::from_secs(20),
        "the relay used over WebSocket",
        || async {
            let r = server.report().await;
            derp_node(&r, "fra-1", "1")
                .is_some_and(|n| {
                    n["client_logs"].to_string().contains("over WebSocket")
                        && !n["client_logs"].to_string().contains("Upgrade: DERP")
                        && n["can_exchange_messages"] == true
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_embedded_relay_joins_an_attached_map_with_a_free_region_id() {
    let coder = CoderStandIn::start("v2.26.0").await;
    let server = attach(&coder, OWNER_TOKEN, &["--embedded-relay-region", "900"]).await;
    let report = eventually(Duration::from_secs(30), "the relay checked", || async {
        let r = server.report().await;
        r["derp"]["regions"]["900"]["node_reports"][0]["can_exchange_messages"]
            .as_bool()
            .filter(|ok| *ok)
            .map(|_| r)
    })
    .await;
    assert_eq!(
        report["derp"]["regions"]["900"]["region"]["EmbeddedRelay"],
        true
    );
    assert!(report["derp"]["regions"].get("999").is_none());
}

#[tokio::test]
async fn the_database_section_pings_the_database_it_is_given() {
    let db = vantage_testkit::test_db!();
    let url = db.url();
    // vantage's own store stays in memory; the Database section pings the given database.
    let server = Server::start(&[
        "--interval",
        "500ms",
        "--check-database-url",
        &url,
        "--database-threshold",
        "5s",
    ])
    .await;
    let section = eventually(Duration::from_secs(20), "the database pinged", || async {
        let r = server.report().await;
        (r["database"]["reachable"] == true).then(|| r["database"].clone())
    })
    .await;
    assert_eq!(section["severity"], "ok", "{section}");
    assert!(
        !section["warnings"].to_string().contains("EDB03"),
        "{section}"
    );
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        closed_tcp_port()
    );
    let server = Server::start(&["--interval", "500ms", "--check-database-url", &closed]).await;
    let section = eventually(Duration::from_secs(20), "EDB01", || async {
        let r = server.report().await;
        r["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("EDB01"))
            .then(|| r["database"].clone())
    })
    .await;
    assert_eq!(section["severity"], "error", "{section}");
}

/// The websocket section's report of `vantage`.
fn echo_of<'a>(report: &'a Value, vantage: &str) -> &'a Value {
    &report["websocket"]["vantage_reports"][vantage]
}

fn unavailable_parts(report: &Value) -> Vec<String> {
    report["coder"]["unavailable"]
        .as_array()
        .map(|u| {
            u.iter()
                .map(|p| p["part"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn coders_dashboard_url_is_checked_and_its_echo_runs_only_with_an_owner_token_over_tls() {
    let coder = CoderStandIn::start("v2.26.0").await;
    let host = coder.url.trim_end_matches('/').to_owned();

    // Plaintext, no websocket token: Coder's URL is the access URL; the echo is reached, not
    // run, and the section says so without failing.
    let server = attach(&coder, MEMBER_TOKEN, &[]).await;
    let _fra = Probe::start(&server.url, "fra-1", "fra");
    let report = eventually(
        Duration::from_secs(20),
        "fra-1 checks Coder's access URL and echo",
        || async {
            let r = server.report().await;
            // Both checks have run against Coder's URL (the first may still have targeted the
            // listen URL, before the first import).
            let access = r["access_url"]["vantage_reports"]["fra-1"]["access_url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&host));
            (access && echo_of(&r, "fra-1")["code"] == 401).then_some(r)
        },
    )
    .await;
    let access = &report["access_url"]["vantage_reports"]["fra-1"];
    assert!(
        access["access_url"].as_str().unwrap().starts_with(&host),
        "{access}"
    );
    assert_eq!(access["healthz_response"], "OK", "{access}");
    let echo = echo_of(&report, "fra-1");
    assert_eq!(echo["severity"], "ok", "{echo}");
    assert!(
        echo["not_checked"].as_str().unwrap().contains("Owner"),
        "{echo}"
    );
    assert_eq!(report["websocket"]["severity"], "ok");
    assert!(
        unavailable_parts(&report).contains(&"websocket_echo".to_owned()),
        "{}",
        report["coder"]
    );
    // An open-source-like view with a member token stays at ok.
    assert_eq!(report["coder"]["severity"], "ok", "{}", report["coder"]);
    assert_eq!(coder.with(|d| d.echoes), 0);
    drop(server);

    // Over TLS with `[coder] websocket_token`: the probe runs Coder's echo.
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!("[coder]\nwebsocket_token = \"{OWNER_TOKEN}\"\n"),
    )
    .unwrap();
    let (c, k, f) = (
        cert_pem.to_str().unwrap(),
        key_pem.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let server = attach(
        &coder,
        MEMBER_TOKEN,
        &["--tls-cert", c, "--tls-key", k, "--config", f],
    )
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let _probe = tokio::process::Command::new(vantage_tests::bin("vantage-probe"))
        .args(["--server", &server.url, "--ca-file", c])
        .args(["--name", "fra-1", "--region", "fra"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/api/v2/debug/health", server.url);
    let report = eventually(Duration::from_secs(20), "fra-1 echoes at Coder", || async {
        let r: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
        (echo_of(&r, "fra-1")["code"] == 101).then_some(r)
    })
    .await;
    let echo = echo_of(&report, "fra-1");
    assert_eq!(echo["severity"], "ok", "{echo}");
    assert!(echo.get("not_checked").is_none(), "{echo}");
    assert!(coder.with(|d| d.echoes) > 0);
    assert!(
        !unavailable_parts(&report).contains(&"websocket_echo".to_owned()),
        "{}",
        report["coder"]
    );
    assert!(!report.to_string().contains(OWNER_TOKEN));
}
