//! Alerts that page someone: vantaged pushing to a real Alertmanager (0.25, Debian) on
//! loopback, and a real Prometheus scraping `/metrics` with the shipped rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vantage_testkit::{CutProxy, PromChild, eventually, prom};
use vantage_tests::Server;

/// `--alert-resend` of these tests.
const RESEND: Duration = Duration::from_secs(1);

/// The firing alerts Alertmanager holds named `alertname`.
async fn am_alerts(am: &PromChild, alertname: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!("{}/api/v2/alerts", am.url))
        .query(&[("filter", format!("alertname=\"{alertname}\""))])
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json::<Vec<Value>>().await.unwrap()
}

/// A sample of a `/metrics` body whose line starts with `prefix` (name and labels).
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The alert's `runbook_url` is served, and its anchor is the id of an element on that page
/// (the code's entry on `/health/codes`).
async fn assert_runbook_served(alert: &Value, code: &str) {
    let url = alert["annotations"]["runbook_url"]
        .as_str()
        .unwrap_or_else(|| panic!("runbook_url in {alert}"));
    let (page, anchor) = url.split_once('#').unwrap();
    assert!(page.ends_with("/health/codes"), "{url}");
    assert_eq!(anchor, code.to_ascii_lowercase(), "{url}");
    let r = reqwest::get(page).await.unwrap();
    assert!(r.status().is_success(), "GET {page}: {}", r.status());
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("id=\"{anchor}\"")),
        "#{anchor} is an element id on {page}"
    );
}

/// A DERP region (id 1, code `edge`) whose one node is a relay reached through a proxy the
/// test can make refuse connections: the region goes down and comes back on command.
struct Region {
    _relay: Server,
    proxy: CutProxy,
    _dir: tempfile::TempDir,
    map: PathBuf,
}

impl Region {
    async fn start() -> Region {
        let relay = Server::start(&["--interval", "1h", "--server-vantage", "false"]).await;
        let upstream = relay.url.trim_start_matches("http://").parse().unwrap();
        let proxy = CutProxy::start(upstream, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("derp.json");
        let json = serde_json::json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "edge", "RegionName": "Edge", "Nodes": [
            {"Name": "1a", "RegionID": 1, "HostName": "127.0.0.1", "DERPPort": proxy.port(), "ForceHTTP": true, "STUNPort": -1}
        ]}}});
        std::fs::write(&map, json.to_string()).unwrap();
        Region {
            _relay: relay,
            proxy,
            _dir: dir,
            map,
        }
    }

    fn down(&self) {
        self.proxy.refuse(true);
        self.proxy.cut();
    }

    fn up(&self) {
        self.proxy.refuse(false);
    }
}

/// Severity of DERP region 1 in a server's report.
async fn region_severity(server: &Server) -> String {
    let r = server.report().await;
    r["derp"]["regions"]["1"]["severity"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn vantaged(region: &Region, alertmanagers: &[&str], extra: &[&str]) -> Server {
    let mut args = vec![
        "--interval",
        "1s",
        "--derp-node-timeout",
        "2s",
        "--derp-map",
        region.map.to_str().unwrap(),
        "--alert-resend",
        "1s",
        "--deployment-name",
        "e2e",
    ];
    for am in alertmanagers {
        args.extend(["--alertmanager-url", am]);
    }
    args.extend(extra);
    Server::start(&args).await
}

async fn put_settings(server: &Server, body: Value) -> (reqwest::StatusCode, String) {
    let r = reqwest::Client::new()
        .put(format!("{}/api/v2/debug/health/settings", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_dismissal_note_that_does_not_fit_is_refused_naming_the_field() {
    let server = Server::start(&["--interval", "1h"]).await;
    for (body, field) in [
        (
            serde_json::json!({"dismissed_healthchecks": [], "dismissals": [{"section": "DERP", "reason": "x"}]}),
            "dismissals[0].section",
        ),
        (
            serde_json::json!({"dismissed_healthchecks": ["DERP"], "dismissals": [{"section": "DERP", "until": "2001-01-01T00:00:00Z"}]}),
            "dismissals[0].until",
        ),
        (
            serde_json::json!({"dismissed_healthchecks": ["DERP"], "dismissals": [{"section": "Nope"}]}),
            "dismissals[0].section",
        ),
    ] {
        let (status, text) = put_settings(&server, body).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(field), "{field} in {text}");
    }
    let out = vantage_tests::cli(&[
        "--server",
        &server.url,
        "settings",
        "dismiss",
        "DERP",
        "--for",
        "soon",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--for"),
        "{out:?}"
    );
    // Coder's shape still works, and a plain dismissal has no notes.
    let (status, text) = put_settings(
        &server,
        serde_json::json!({"dismissed_healthchecks": ["DERP"]}),
    )
    .await;
    assert!(status.is_success(), "{text}");
    assert_eq!(
        text.trim(),
        "{\n\t\"dismissed_healthchecks\": [\n\t\t\"DERP\"\n\t]\n}",
        "{text}"
    );
}

#[tokio::test]
async fn a_derp_region_down_pages_alertmanager_resolves_and_is_silenced_by_a_dismissal() {
    let am = prom::alertmanager().await;
    let region = Region::start().await;
    let server = vantaged(&region, &[&am.url], &[]).await;
    eventually(Duration::from_secs(30), "region 1 healthy", || async {
        (region_severity(&server).await == "ok").then_some(())
    })
    .await;
    assert!(
        am_alerts(&am, "VantageDerpRegionUnhealthy")
            .await
            .is_empty()
    );

    region.down();
    eventually(Duration::from_secs(30), "region 1 at error", || async {
        (region_severity(&server).await == "error").then_some(())
    })
    .await;
    let seen = Instant::now();
    let alert = eventually(Duration::from_secs(10), "the region alert", || async {
        am_alerts(&am, "VantageDerpRegionUnhealthy").await.pop()
    })
    .await;
    let within = seen.elapsed();
    assert!(within <= RESEND * 3, "alert after {within:?}");
    let labels = &alert["labels"];
    assert_eq!(labels["region_id"], "1", "{alert}");
    assert_eq!(labels["region_code"], "edge");
    assert_eq!(labels["deployment"], "e2e");
    assert_eq!(labels["severity"], "error");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("DERP region 1 (edge) is at error, seen by "),
        "{alert}"
    );
    assert_runbook_served(&alert, "EDERP04").await;
    assert!(
        alert["annotations"]["vantages"]
            .as_str()
            .unwrap()
            .contains("server"),
        "{alert}"
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .ends_with("/health#derp"),
        "{alert}"
    );
    let section = eventually(Duration::from_secs(10), "the section alert", || async {
        am_alerts(&am, "VantageSectionUnhealthy")
            .await
            .into_iter()
            .find(|a| a["labels"]["section"] == "DERP")
    })
    .await;
    assert_eq!(section["labels"]["severity"], "error", "{section}");
    assert_eq!(section["labels"]["codes"], "EDERP04", "{section}");
    assert_eq!(
        section["annotations"]["summary"], "DERP is at error",
        "{section}"
    );
    assert_runbook_served(&section, "EDERP04").await;
    let description = section["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains("region 1 (edge): node 1a:"),
        "{section}"
    );
    // A firing alert's endsAt is four re-sends ahead (Alertmanager keeps it until then).
    let (starts, ends) = (
        alert["startsAt"].as_str().unwrap(),
        alert["endsAt"].as_str().unwrap(),
    );
    assert!(ends > starts, "{alert}");

    region.up();
    eventually(
        Duration::from_secs(30),
        "the region alert resolved",
        || async {
            am_alerts(&am, "VantageDerpRegionUnhealthy")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let am_metrics = metrics(&am.url).await;
    assert!(
        sample(
            &am_metrics,
            "alertmanager_alerts_received_total{status=\"resolved\",version=\"v2\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "Alertmanager received a resolve"
    );

    // Down again: it fires; dismissing DERP (a maintenance window) resolves it at once, and
    // its region alert too, while the report still shows the failure.
    region.down();
    eventually(
        Duration::from_secs(30),
        "the region alert again",
        || async {
            (!am_alerts(&am, "VantageDerpRegionUnhealthy")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    // A maintenance window of a few seconds, from the CLI, with a reason.
    let out = vantage_tests::cli(&[
        "--server",
        &server.url,
        "settings",
        "dismiss",
        "DERP",
        "--for",
        "6s",
        "--reason",
        "relay upgrade",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("dismissed: DERP"), "{printed}");
    assert!(printed.contains("relay upgrade"), "{printed}");
    let dismissed = Instant::now();
    let settings = server.get_json("/api/v2/debug/health/settings").await;
    assert_eq!(
        settings["dismissed_healthchecks"],
        serde_json::json!(["DERP"])
    );
    assert_eq!(
        settings["dismissals"][0]["reason"], "relay upgrade",
        "{settings}"
    );
    assert!(settings["dismissals"][0]["until"].is_string(), "{settings}");
    assert!(
        settings["dismissals"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("grpc"),
        "{settings}"
    );
    eventually(
        Duration::from_secs(10),
        "the alerts resolved by the window",
        || async {
            let region = am_alerts(&am, "VantageDerpRegionUnhealthy").await;
            let section = am_alerts(&am, "VantageSectionUnhealthy").await;
            (region.is_empty() && !section.iter().any(|a| a["labels"]["section"] == "DERP"))
                .then_some(())
        },
    )
    .await;
    assert!(
        dismissed.elapsed() <= RESEND * 3,
        "resolved after {:?}",
        dismissed.elapsed()
    );
    // Silent while the window lasts, although the report still shows the failure.
    while dismissed.elapsed() < Duration::from_secs(4) {
        assert!(
            am_alerts(&am, "VantageDerpRegionUnhealthy")
                .await
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(region_severity(&server).await, "error");
    // The window ends by itself and the alert fires again.
    eventually(
        Duration::from_secs(15),
        "the alert after the window",
        || async {
            (!am_alerts(&am, "VantageDerpRegionUnhealthy")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    assert!(
        dismissed.elapsed() >= Duration::from_secs(6),
        "{:?}",
        dismissed.elapsed()
    );
    let settings = server.get_json("/api/v2/debug/health/settings").await;
    assert_eq!(
        settings["dismissed_healthchecks"],
        serde_json::json!([]),
        "{settings}"
    );
    let body = metrics(&server.url).await;
    assert!(
        sample(
            &body,
            &format!("vantage_alerts_sent_total{{alertmanager=\"{}/\"}}", am.url)
        )
        .unwrap_or(0.0)
            > 0.0,
        "{body}"
    );
}

#[tokio::test]
async fn two_replicas_produce_one_alert() {
    let db = vantage_testkit::test_db!();
    let am = prom::alertmanager().await;
    let region = Region::start().await;
    let url = db.url();
    let a = vantaged(
        &region,
        &[&am.url],
        &["--database-url", &url, "--server-vantage-name", "server-a"],
    )
    .await;
    let b = vantaged(
        &region,
        &[&am.url],
        &["--database-url", &url, "--server-vantage-name", "server-b"],
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "region 1 healthy on both",
        || async {
            (region_severity(&a).await == "ok" && region_severity(&b).await == "ok").then_some(())
        },
    )
    .await;
    region.down();
    eventually(
        Duration::from_secs(30),
        "both replicas sent the alert",
        || async {
            let mut both = true;
            for s in [&a, &b] {
                let body = metrics(&s.url).await;
                both &= sample(&body, "vantage_alerts_sent_total").unwrap_or(0.0) > 0.0
                    && sample(&body, "vantage_alerts_firing").unwrap_or(0.0) > 0.0;
            }
            both.then_some(())
        },
    )
    .await;
    let alerts = eventually(Duration::from_secs(10), "the region alert", || async {
        let v = am_alerts(&am, "VantageDerpRegionUnhealthy").await;
        (!v.is_empty()).then_some(v)
    })
    .await;
    tokio::time::sleep(RESEND * 2).await;
    let alerts_later = am_alerts(&am, "VantageDerpRegionUnhealthy").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts_later.len(), 1, "{alerts_later:?}");

    // A maintenance window set on one replica holds on both and ends on both.
    let out = vantage_tests::cli(&[
        "--server", &a.url, "settings", "dismiss", "DERP", "--for", "5s",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set = Instant::now();
    eventually(
        Duration::from_secs(5),
        "DERP dismissed on the other replica",
        || async {
            let s = b.get_json("/api/v2/debug/health/settings").await;
            (s["dismissed_healthchecks"] == serde_json::json!(["DERP"])).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(5), "the alert resolved", || async {
        am_alerts(&am, "VantageDerpRegionUnhealthy")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the window over on both",
        || async {
            let mut over = true;
            for s in [&a, &b] {
                over &= s.report().await["derp"]["dismissed"] == false;
            }
            over.then_some(())
        },
    )
    .await;
    assert!(
        set.elapsed() >= Duration::from_secs(4),
        "{:?}",
        set.elapsed()
    );
    let again = eventually(Duration::from_secs(10), "one alert again", || async {
        let v = am_alerts(&am, "VantageDerpRegionUnhealthy").await;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(again.len(), 1, "{again:?}");
}

/// A stand-in Alertmanager that answers every POST with 400 and counts them.
async fn refusing_alertmanager() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    "\"start time must be before end time\"",
                )
            }
        }),
    );
    let (listener, addr) = vantage_testkit::loopback_listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn an_alertmanager_down_or_answering_400_is_retried_counted_and_never_slows_ingestion() {
    let (bad, hits) = refusing_alertmanager().await;
    let down = format!("http://127.0.0.1:{}", vantage_testkit::closed_tcp_port());
    let region = Region::start().await;
    let server = vantaged(&region, &[&bad, &down], &[]).await;
    region.down();
    let body = eventually(
        Duration::from_secs(30),
        "failures counted for both",
        || async {
            let body = metrics(&server.url).await;
            let ok = [&bad, &down].iter().all(|u| {
                sample(
                    &body,
                    &format!("vantage_alerts_failed_total{{alertmanager=\"{u}/\"}}"),
                )
                .unwrap_or(0.0)
                    > 0.0
            });
            ok.then_some(body)
        },
    )
    .await;
    assert!(
        sample(&body, "vantage_alerts_sent_total").unwrap_or(1.0) == 0.0,
        "{body}"
    );
    eventually(
        Duration::from_secs(30),
        "a retry of the refused batch, and a drop",
        || async {
            let body = metrics(&server.url).await;
            (hits.load(Ordering::SeqCst) >= 2
                && sample(&body, "vantage_alerts_dropped_total").unwrap_or(0.0) > 0.0)
                .then_some(())
        },
    )
    .await;
    // Ingestion goes on at its pace: observations keep being applied and reads stay fast.
    let before = sample(
        &metrics(&server.url).await,
        "vantage_observations_applied_total ",
    )
    .unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let started = Instant::now();
        server.report().await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a report took {:?}",
            started.elapsed()
        );
    }
    eventually(
        Duration::from_secs(5),
        "observations still applied",
        || async {
            let now = sample(
                &metrics(&server.url).await,
                "vantage_observations_applied_total ",
            )
            .unwrap();
            (now >= before + 3.0).then_some(())
        },
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// `deploy/prometheus/` in the repository.
fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

async fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(prom::PROMTOOL)
        .args(args)
        .current_dir(deploy_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool is installed (tests/run.sh installs prometheus)");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .await
        .unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("promtool finished")
        .unwrap()
}

#[tokio::test]
async fn the_shipped_rules_and_config_pass_promtool_check_and_their_unit_tests() {
    for args in [
        &["check", "rules", "rules.yml"][..],
        &["check", "config", "prometheus.yml"],
        &["test", "rules", "rules.test.yml"],
    ] {
        let out = promtool(args, None).await;
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_metrics_and_the_shipped_rules_fire_on_the_failure() {
    let region = Region::start().await;
    let server = vantaged(&region, &[], &[]).await;
    eventually(Duration::from_secs(30), "region 1 healthy", || async {
        (region_severity(&server).await == "ok").then_some(())
    })
    .await;
    // The exposition is clean under promtool's linter.
    let body = metrics(&server.url).await;
    let out = promtool(&["check", "metrics"], Some(&body)).await;
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "vantage_build_info{",
        "vantage_section_dismissed{section=\"DERP\"} 0",
        "vantage_last_seen_timestamp_seconds{vantage=\"server\"",
        "vantage_probe_connected{vantage=\"server\"",
        "vantage_probe_observations_applied_total{vantage=\"server\"",
        "vantage_section_severity_by_vantage{section=\"DERP\",vantage=\"server\"} 0",
        "vantage_check_success{vantage=\"server\",section=\"DERP\",target=\"derp/1/1a\",region=\"server\",region_id=\"1\",region_code=\"edge\",node=\"1a\",host=\"127.0.0.1\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(family)),
            "{family} in {body}"
        );
    }

    assert!(
        !body.contains("vantage_vantage_"),
        "no doubled names: {body}"
    );
    let target = server.url.trim_start_matches("http://").to_owned();
    // The shipped rules, with every `for:` shortened so that they fire in a test's time.
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.yml");
    let shipped = std::fs::read_to_string(deploy_dir().join("rules.yml")).unwrap();
    let short: Vec<String> = shipped
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 3s"),
            _ => l.to_owned(),
        })
        .collect();
    assert!(short.iter().any(|l| l.ends_with("for: 3s")), "{shipped}");
    std::fs::write(&rules, short.join("\n")).unwrap();
    let prometheus = prom::prometheus(&target, &[rules]).await;
    let client = reqwest::Client::new();
    let query = |q: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/v1/query", prometheus.url);
        async move {
            let r: Value = client
                .get(url)
                .query(&[("query", q)])
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            r["data"]["result"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned()
        }
    };
    eventually(
        Duration::from_secs(30),
        "Prometheus scraped vantaged",
        || async { query("vantage_section_severity{section=\"DERP\"} == 0").await },
    )
    .await;

    region.down();
    let alert = eventually(
        Duration::from_secs(60),
        "VantageSectionError for DERP firing",
        || async {
            let r: Value = client
                .get(format!("{}/api/v1/alerts", prometheus.url))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            r["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "VantageSectionError"
                        && a["labels"]["section"] == "DERP"
                        && a["state"] == "firing"
                })
                .cloned()
        },
    )
    .await;
    assert_eq!(alert["labels"]["severity"], "error", "{alert}");
    let failing = query("vantage_check_success{section=\"DERP\",region_id=\"1\"} == 0").await;
    assert!(
        failing.is_some(),
        "the node's failure is a series Prometheus holds"
    );
}

#[tokio::test]
async fn a_probe_that_falls_silent_pages_as_a_stale_vantage() {
    let am = prom::alertmanager().await;
    let server = Server::start(&[
        "--interval",
        "1s",
        "--alertmanager-url",
        &am.url,
        "--alert-resend",
        "1s",
        "--deployment-name",
        "e2e",
    ])
    .await;
    let mut probe = vantage_tests::Probe::start(&server.url, "fra-1", "fra");
    eventually(Duration::from_secs(30), "fra-1 fresh", || async {
        let r = server.report().await;
        vantage_tests::vantage(&r, "fra-1")
            .is_some_and(|v| v["state"] == "fresh")
            .then_some(())
    })
    .await;
    assert!(am_alerts(&am, "VantageVantageStale").await.is_empty());
    probe.kill().await;
    let alert = eventually(Duration::from_secs(20), "the stale alert", || async {
        am_alerts(&am, "VantageVantageStale").await.pop()
    })
    .await;
    assert_eq!(alert["labels"]["vantage"], "fra-1", "{alert}");
    assert_eq!(alert["labels"]["region"], "fra", "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .split(" since ")
            .next(),
        Some("Vantage fra-1 is stale"),
        "{alert}"
    );
    assert_runbook_served(&alert, "EVNT01").await;
    // Back: resolved.
    let _probe = vantage_tests::Probe::start(&server.url, "fra-1", "fra");
    eventually(
        Duration::from_secs(30),
        "the stale alert resolved",
        || async {
            am_alerts(&am, "VantageVantageStale")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_workspace_proxy_pages_with_its_name() {
    let am = prom::alertmanager().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vantage.toml");
    let dead = vantage_testkit::closed_tcp_port();
    std::fs::write(
        &config,
        format!(
            "proxies_all_vantages = true\n[[workspace_proxies]]\nname = \"sydney\"\ndisplay_name = \"Sydney\"\nurl = \"http://127.0.0.1:{dead}\"\nregion = \"syd\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--interval",
        "1s",
        "--alertmanager-url",
        &am.url,
        "--alert-resend",
        "1s",
    ])
    .await;
    let alert = eventually(Duration::from_secs(30), "the proxy alert", || async {
        am_alerts(&am, "VantageWorkspaceProxyUnhealthy").await.pop()
    })
    .await;
    assert_eq!(alert["labels"]["proxy"], "sydney", "{alert}");
    assert_eq!(alert["labels"]["severity"], "error", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"], "Workspace proxy sydney is at error",
        "{alert}"
    );
    assert_runbook_served(&alert, "EWP04").await;
    // The default deployment label is the access URL's host:port.
    let host_port = server.url.trim_start_matches("http://");
    assert_eq!(alert["labels"]["deployment"], host_port, "{alert}");
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .ends_with("/health#workspace_proxy"),
        "{alert}"
    );
    // Dismissing WorkspaceProxy silences it.
    let (status, text) = put_settings(
        &server,
        serde_json::json!({"dismissed_healthchecks": ["WorkspaceProxy"]}),
    )
    .await;
    assert!(status.is_success(), "{text}");
    eventually(
        Duration::from_secs(10),
        "the proxy alert resolved",
        || async {
            am_alerts(&am, "VantageWorkspaceProxyUnhealthy")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// The password vantaged gives Alertmanager, and its bcrypt hash (cost 4) for Alertmanager's
/// `basic_auth_users`, which takes only bcrypt hashes. Made once, offline, with Python's
/// `crypt.crypt(AM_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`.
const AM_PASSWORD: &str = "am-secret";
const AM_PASSWORD_BCRYPT: &str = "$2b$04$AFvQ0wP3jf7E3ydzXmxBEOD4yqFam08OCH8GgX9PzmBzsW.WAqjbq";

/// A client trusting the test CA in `ca`.
fn client_trusting(ca: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_alertmanager_behind_tls_and_basic_auth_gets_the_alert_and_a_wrong_password_fails() {
    let pki = crate::security::Pki::new();
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  vantage: {AM_PASSWORD_BCRYPT}\n",
        pki.s("server.pem"),
        pki.s("server.key")
    );
    let am = prom::alertmanager_with_web_config(Some(&web)).await;
    assert!(am.url.starts_with("https://"), "{}", am.url);
    let client = client_trusting(&pki.path("ca.pem"));
    let alerts_url = format!("{}/api/v2/alerts", am.url);
    // The web configuration is in force: no credentials, no alerts.
    let anonymous = client.get(&alerts_url).send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);

    let ca = pki.s("ca.pem");
    let common = [
        "--interval",
        "1s",
        "--alert-resend",
        "1s",
        "--deployment-name",
        "e2e",
        "--alertmanager-url",
        &am.url,
        "--alertmanager-ca-file",
        &ca,
        "--alertmanager-username",
        "vantage",
        "--alertmanager-password",
    ];
    let good = Server::start(&[&common[..], &[AM_PASSWORD]].concat()).await;
    let bad = Server::start(&[&common[..], &["not-the-password"]].concat()).await;

    // Without a database the Database section warns (EDB03): a section alert at once.
    let alert = eventually(
        Duration::from_secs(30),
        "the Database alert in Alertmanager",
        || async {
            let r = client
                .get(&alerts_url)
                .basic_auth("vantage", Some(AM_PASSWORD))
                .query(&[("filter", "alertname=\"VantageSectionUnhealthy\"")])
                .send()
                .await
                .ok()?;
            let v: Vec<Value> = r.json().await.ok()?;
            // (Before the server's own vantage reports, the section is EVNT02's.)
            v.into_iter()
                .find(|a| a["labels"]["section"] == "Database" && a["labels"]["codes"] == "EDB03")
        },
    )
    .await;
    assert_eq!(alert["labels"]["codes"], "EDB03", "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(alert["labels"]["deployment"], "e2e", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"], "Database is at warning",
        "{alert}"
    );
    assert_runbook_served(&alert, "EDB03").await;

    let counted = |url: String, name: &'static str| async move {
        sample(&metrics(&url).await, &format!("{name}{{")).unwrap_or(0.0)
    };
    eventually(
        Duration::from_secs(30),
        "the right password sent, the wrong one failed",
        || async {
            let ok = counted(good.url.clone(), "vantage_alerts_sent_total").await > 0.0
                && counted(bad.url.clone(), "vantage_alerts_failed_total").await > 0.0;
            ok.then_some(())
        },
    )
    .await;
    assert_eq!(
        counted(good.url.clone(), "vantage_alerts_failed_total").await,
        0.0
    );
    assert_eq!(
        counted(bad.url.clone(), "vantage_alerts_sent_total").await,
        0.0
    );
}

/// A stand-in Alertmanager that accepts every POST and records its `Authorization` header and
/// body.
async fn recording_alertmanager() -> (String, Arc<std::sync::Mutex<Vec<(String, Value)>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/api/v2/alerts",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    s.lock().unwrap().push((auth, body));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let (listener, addr) = vantage_testkit::loopback_listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_bearer_token_is_sent_to_the_alertmanager() {
    let (url, seen) = recording_alertmanager().await;
    let server = Server::start(&[
        "--interval",
        "1s",
        "--alert-resend",
        "1s",
        "--alertmanager-url",
        &url,
        "--alertmanager-bearer-token",
        "am-bearer-secret",
    ])
    .await;
    // Every POST carries the token; one carries the Database alert once the server's own
    // vantage reported (EDB03; EVNT02 before).
    let database = eventually(
        Duration::from_secs(30),
        "the Database alert posted",
        || async {
            let seen = seen.lock().unwrap();
            for (auth, _) in seen.iter() {
                assert_eq!(auth, "Bearer am-bearer-secret");
            }
            seen.iter()
                .filter_map(|(_, body)| body.as_array())
                .flatten()
                .find(|a| a["labels"]["section"] == "Database" && a["labels"]["codes"] == "EDB03")
                .cloned()
        },
    )
    .await;
    assert_eq!(database["labels"]["severity"], "warning", "{database}");
    assert!(database["endsAt"].is_string(), "{database}");
    eventually(Duration::from_secs(10), "counted as sent", || async {
        (sample(&metrics(&server.url).await, "vantage_alerts_sent_total{").unwrap_or(0.0) > 0.0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_tokens_the_audit_names_the_token_that_dismissed() {
    let pki = crate::security::Pki::new();
    let (admin, entry) =
        crate::security::new_token(&["--name", "ops-alice", "--role", "admin"]).await;
    let tokens = pki.path("tokens.toml");
    std::fs::write(&tokens, entry).unwrap();
    let mut args = pki.server_args();
    args.extend([
        "--token-file".into(),
        tokens.display().to_string(),
        "--interval".into(),
        "1h".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args).await;
    let ca = pki.s("ca.pem");
    let cli_args = |more: &[&'static str]| {
        let mut v = vec![
            "--server".to_owned(),
            server.url.clone(),
            "--ca-file".to_owned(),
            ca.clone(),
            "--token".to_owned(),
            admin.clone(),
            "settings".to_owned(),
        ];
        v.extend(more.iter().map(|s| (*s).to_owned()));
        v
    };

    // Over gRPC (the CLI): a maintenance window with a reason.
    let argv = cli_args(&[
        "dismiss",
        "DERP",
        "--for",
        "2h",
        "--reason",
        "relay upgrade",
    ]);
    let out = vantage_tests::cli(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv = cli_args(&[]);
    let out = vantage_tests::cli(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("by ops-alice: relay upgrade"), "{shown}");

    // Over HTTP with the same token: the note of Websocket names it too.
    let client = client_trusting(&pki.path("ca.pem"));
    let settings = format!("{}/api/v2/debug/health/settings", server.url);
    let r = client
        .put(&settings)
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "dismissed_healthchecks": ["DERP", "Websocket"],
            "dismissals": [{"section": "Websocket", "reason": "proxy swap"}]
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let now: Value = client
        .get(&settings)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws = now["dismissals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["section"] == "Websocket")
        .unwrap_or_else(|| panic!("Websocket's note in {now}"));
    assert_eq!(ws["actor"], "ops-alice", "{now}");
    assert_eq!(ws["reason"], "proxy swap", "{now}");
}
