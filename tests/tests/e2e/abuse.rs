//! Anonymous abuse against a real `vantaged`, each shown refused or bounded: names held by a
//! live session, reserved names, hidden instance ids and the sequence window, streams that
//! end with a status instead of OK, the vantage cap (memory measured), HTTP input, the
//! WebSocket echo's caps, forget, force and proxy URLs.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use vantage_proto::pb;
use vantage_proto::pb::probe_message::Msg as Up;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_testkit::eventually;
use vantage_tests::{Probe, Server, cli, metric, rss_bytes};

const WAIT: Duration = Duration::from_secs(20);

fn hello(name: &str, instance: &str) -> pb::ProbeMessage {
    pb::ProbeMessage {
        msg: Some(Up::Hello(pb::Hello {
            name: name.into(),
            region: "fra".into(),
            instance_id: instance.into(),
            ..Default::default()
        })),
    }
}

/// An open attach: the sender (kept to keep the stream open) and the server's answer.
struct Raw {
    up: mpsc::Sender<pb::ProbeMessage>,
    down: Result<tonic::Streaming<pb::ServerMessage>, tonic::Status>,
}

async fn attach(url: &str, first: Vec<pb::ProbeMessage>) -> Raw {
    let mut client = pb::probe_service_client::ProbeServiceClient::connect(url.to_owned())
        .await
        .unwrap()
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let (up, rx) = mpsc::channel(16);
    for m in first {
        up.send(m).await.unwrap();
    }
    let down = client
        .attach(ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    Raw { up, down }
}

impl Raw {
    /// The welcome (the attach must have been accepted).
    async fn welcome(&mut self) -> pb::Welcome {
        let down = self.down.as_mut().expect("attach accepted");
        loop {
            match tokio::time::timeout(WAIT, down.message()).await {
                Ok(Ok(Some(pb::ServerMessage {
                    msg: Some(Down::Welcome(w)),
                }))) => return w,
                Ok(Ok(Some(_))) => continue,
                other => panic!("no welcome: {other:?}"),
            }
        }
    }

    /// The status the stream ends with; panics when it ends OK.
    async fn end(self) -> tonic::Status {
        let mut down = match self.down {
            Err(status) => return status,
            Ok(d) => d,
        };
        loop {
            match tokio::time::timeout(WAIT, down.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the stream ended with OK"),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the stream did not end within {WAIT:?}"),
            }
        }
    }
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn vantages(server: &Server) -> Vec<pb::Vantage> {
    let mut c = pb::health_service_client::HealthServiceClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    c.list_vantages(pb::ListVantagesRequest {})
        .await
        .unwrap()
        .into_inner()
        .vantages
}

#[tokio::test]
async fn two_probes_with_one_name_do_not_evict_each_other() {
    let server = Server::start(&["--interval", "2s"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = Probe::start_logged(&server.url, "fra-1", "fra", &log_a);
    eventually(WAIT, "the first probe to attach", || async {
        let log = std::fs::read_to_string(&log_a).unwrap_or_default();
        log.contains("attached").then_some(())
    })
    .await;
    let mut b = Probe::start_logged(&server.url, "fra-1", "iad", &log_b);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let held = metric(
        &metrics(&server).await,
        "vantage_attach_refused_total{reason=\"held\"}",
    );
    let log_b_text = std::fs::read_to_string(&log_b).unwrap();
    println!("8 s of a duplicate name: {held} refusals");
    assert!(
        (1.0..=20.0).contains(&held),
        "the second probe retries with backoff, not in a storm: {held}"
    );
    assert!(
        log_b_text.contains("ERROR")
            && log_b_text.contains("AlreadyExists")
            && log_b_text.contains("held by a live session")
            && log_b_text.contains("region \"fra\""),
        "the refused probe logs why: {log_b_text}"
    );
    assert!(
        !log_b_text.contains("\nattached") && !log_b_text.contains(" attached"),
        "the second probe never attached: {log_b_text}"
    );
    let log_a_text = std::fs::read_to_string(&log_a).unwrap();
    assert!(
        !log_a_text.contains("replaced"),
        "the holder was never evicted: {log_a_text}"
    );
    // The holder goes away: the other gets the name within seconds.
    a.kill().await;
    eventually(WAIT, "the second probe to take the name", || async {
        let log = std::fs::read_to_string(&log_b).unwrap_or_default();
        log.contains(" attached").then_some(())
    })
    .await;
    b.kill().await;
}

#[tokio::test]
async fn reserved_names_and_instances_are_protected() {
    let server = Server::start(&["--interval", "1h"]).await;
    for name in ["Server", "SERVER-x", "server"] {
        let s = attach(&server.url, vec![hello(name, "i")])
            .await
            .end()
            .await;
        assert_eq!(s.code(), Code::InvalidArgument, "{name}: {s:?}");
        assert!(s.message().contains("reserved"), "{}", s.message());
    }
    // The victim holds its name; its instance id is not shown to readers.
    let mut victim = attach(&server.url, vec![hello("fra-1", "victim-instance")]).await;
    let welcome = victim.welcome().await;
    let listed = vantages(&server).await;
    assert!(listed.iter().any(|v| v.name == "fra-1"));
    assert!(
        listed.iter().all(|v| v.instance_id.is_empty()),
        "{listed:?}"
    );
    // A forger with the victim's name and instance id is refused, naming the holder.
    let s = attach(&server.url, vec![hello("fra-1", "victim-instance")])
        .await
        .end()
        .await;
    assert_eq!(s.code(), Code::AlreadyExists);
    assert!(
        s.message().contains("127.0.0.1:") && s.message().contains("\"fra\""),
        "{}",
        s.message()
    );
    // A jump to u64::MAX is refused, not applied.
    let check = welcome
        .assignment
        .unwrap()
        .checks
        .into_iter()
        .find(|c| c.section == pb::Section::AccessUrl as i32)
        .unwrap();
    let obs = |seq: u64, status: i32| pb::Observation {
        seq,
        check_id: check.id.clone(),
        section: pb::Section::AccessUrl as i32,
        target: server.url.clone(),
        result: Some(pb::observation::Result::AccessUrl(pb::AccessUrlResult {
            access_url: server.url.clone(),
            reachable: true,
            status_code: status,
            ..Default::default()
        })),
        ..Default::default()
    };
    let batch = |o: Vec<pb::Observation>| pb::ProbeMessage {
        msg: Some(Up::Observations(pb::ObservationBatch { observations: o })),
    };
    victim.up.send(batch(vec![obs(1, 200)])).await.unwrap();
    victim
        .up
        .send(batch(vec![obs(u64::MAX, 503)]))
        .await
        .unwrap();
    eventually(WAIT, "the jump to be refused", || async {
        let m = metrics(&server).await;
        (metric(
            &m,
            "vantage_observations_rejected_total{reason=\"seq_window\"}",
        ) == 1.0)
            .then_some(())
    })
    .await;
    let v = vantages(&server).await;
    let v = v.iter().find(|v| v.name == "fra-1").unwrap();
    assert_eq!(v.last_applied_seq, 1, "the sequence stayed where it was");
}

#[tokio::test]
async fn bad_streams_end_with_a_status_not_ok() {
    let server = Server::start(&["--interval", "1h"]).await;
    // Over the 1 MiB message limit.
    let mut big = attach(&server.url, vec![hello("big-1", "i")]).await;
    big.welcome().await;
    let huge = pb::Observation {
        seq: 1,
        check_id: "x".into(),
        result: Some(pb::observation::Result::UnknownError("x".repeat(2 << 20))),
        ..Default::default()
    };
    big.up
        .send(pb::ProbeMessage {
            msg: Some(Up::Observations(pb::ObservationBatch {
                observations: vec![huge],
            })),
        })
        .await
        .unwrap();
    let s = big.end().await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");

    // More observations in one batch than allowed.
    let mut many = attach(&server.url, vec![hello("many-1", "i")]).await;
    many.welcome().await;
    let one = |seq| pb::Observation {
        seq,
        check_id: "x".into(),
        result: Some(pb::observation::Result::UnknownError("e".into())),
        ..Default::default()
    };
    many.up
        .send(pb::ProbeMessage {
            msg: Some(Up::Observations(pb::ObservationBatch {
                observations: (1..=1025).map(one).collect(),
            })),
        })
        .await
        .unwrap();
    let s = many.end().await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("at most 1024"), "{}", s.message());

    // A second hello on one stream.
    let mut twice = attach(&server.url, vec![hello("twice-1", "i")]).await;
    twice.welcome().await;
    twice.up.send(hello("twice-1", "i")).await.unwrap();
    let s = twice.end().await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("second hello"), "{}", s.message());

    // Invalid UTF-8 in the hello's name.
    let s = invalid_utf8_hello(&server.url).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
}

/// The wire form of a hello whose name is not UTF-8 (what a `string` field may not hold).
#[derive(Clone, PartialEq, prost::Message)]
struct RawHello {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    instance_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawProbeMessage {
    #[prost(message, optional, tag = "1")]
    hello: Option<RawHello>,
}

async fn invalid_utf8_hello(url: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let msg = RawProbeMessage {
        hello: Some(RawHello {
            name: vec![b'a', 0xff, 0xfe],
            instance_id: b"i".to_vec(),
        }),
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(msg).await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawProbeMessage, pb::ServerMessage>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/vantage.v1.ProbeService/Attach");
    let r = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await;
    let status = match r {
        Err(s) => s,
        Ok(resp) => {
            let mut down = resp.into_inner();
            loop {
                match down.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("ended OK"),
                    Err(s) => break s,
                }
            }
        }
    };
    drop(tx);
    status
}

#[tokio::test]
async fn the_vantage_cap_bounds_memory_and_the_report() {
    let server = Server::start(&["--interval", "1h", "--max-vantages", "500"]).await;
    let before = rss_bytes(server.pid());
    let started = Instant::now();
    let url = server.url.clone();
    let outcomes = futures::stream::iter(0..5000)
        .map(|i| {
            let url = url.clone();
            async move {
                let raw = attach(&url, vec![hello(&format!("flood-{i}"), "i")]).await;
                raw.down.err()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let refused: Vec<_> = outcomes.into_iter().flatten().collect();
    let after = rss_bytes(server.pid());
    let listed = vantages(&server).await;
    let report = reqwest::get(format!("{}/api/v2/debug/health", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m = metrics(&server).await;
    println!(
        "5000 one-shot hellos in {:?}: RSS {} -> {} MiB, {} vantages, report {} KiB, /metrics {} lines, {} refused",
        started.elapsed(),
        before >> 20,
        after >> 20,
        listed.len(),
        report.len() >> 10,
        m.lines().count(),
        refused.len()
    );
    assert_eq!(
        listed.len(),
        500,
        "the cap holds (the server's own vantage counts)"
    );
    assert_eq!(refused.len(), 4501);
    assert!(refused.iter().all(
        |s| s.code() == Code::ResourceExhausted && s.message().contains("max_vantages is 500")
    ));
    assert_eq!(
        metric(&m, "vantage_attach_refused_total{reason=\"max_vantages\"}"),
        4501.0
    );
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "RSS grew by {} MiB",
        (after - before) >> 20
    );
    assert!(report.len() < 4 << 20, "report {} bytes", report.len());
    // The CLI still decodes the list (exit 1: some of those vantages may be stale by now).
    let out = cli(&["--server", &server.url, "vantages"]).await;
    assert!(
        matches!(out.status.code(), Some(0 | 1)) && out.stdout.starts_with(b"NAME"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn http_refuses_what_it_does_not_serve() {
    let server = Server::start(&["--interval", "1h"]).await;
    let http = reqwest::Client::new();
    let nope = http
        .get(format!("{}/no/such/path", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);
    let bogus = http
        .get(format!("{}/api/v2/debug/health?force=bogus", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 400);
    let body: Value = bogus.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("force"),
        "{body}"
    );
    let settings = format!("{}/api/v2/debug/health/settings", server.url);
    let body = r#"{"dismissed_healthchecks":["DERP"]}"#;
    let plain = http
        .put(&settings)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 415);
    let detail: Value = plain.json().await.unwrap();
    assert!(
        detail["detail"].as_str().unwrap().contains("Content-Type"),
        "{detail}"
    );
    let rebound = http
        .put(&settings)
        .header("content-type", "application/json")
        .header("host", "evil.example:80")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let detail: Value = rebound.json().await.unwrap();
    assert!(
        detail["detail"].as_str().unwrap().contains("Host"),
        "{detail}"
    );
    // Nothing changed; the real thing works.
    let s: Value = reqwest::get(&settings).await.unwrap().json().await.unwrap();
    assert_eq!(s["dismissed_healthchecks"], serde_json::json!([]));
    let ok = http
        .put(&settings)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn the_websocket_echo_caps_messages_and_sockets() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&["--interval", "1h"]).await;
    let ws_url = format!("ws://127.0.0.1:{}/api/v2/debug/ws", server.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(Message::text("0")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("0"));
    ws.send(Message::text("x".repeat(70 * 1024))).await.unwrap();
    let closed = match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(frame))) => frame,
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(u16::from(closed.unwrap().code), 1009);
    // At most 256 sockets at once.
    let mut open = Vec::new();
    for _ in 0..256 {
        open.push(tokio_tungstenite::connect_async(&ws_url).await.unwrap().0);
    }
    let refused = tokio_tungstenite::connect_async(&ws_url).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("503")),
        "{:?}",
        refused.map(|_| ())
    );
    drop(open);
}

#[tokio::test]
async fn forget_refuses_live_vantages_unless_forced() {
    let server = Server::start(&["--interval", "1h"]).await;
    eventually(WAIT, "the own vantage", || async {
        vantages(&server)
            .await
            .iter()
            .any(|v| v.name == "server")
            .then_some(())
    })
    .await;
    let out = cli(&["--server", &server.url, "vantages", "forget", "server"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connected") && err.contains("--force") || err.contains("force"),
        "{err}"
    );
    assert!(vantages(&server).await.iter().any(|v| v.name == "server"));
    // An admin may force it: the stream is closed.
    let mut gone = attach(&server.url, vec![hello("gone-1", "i")]).await;
    gone.welcome().await;
    let out = cli(&[
        "--server",
        &server.url,
        "vantages",
        "forget",
        "gone-1",
        "--force",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = gone.end().await;
    assert_eq!(s.code(), Code::Aborted, "{s:?}");
    assert!(!vantages(&server).await.iter().any(|v| v.name == "gone-1"));
}

async fn force(server: &Server) -> (u16, Value, Duration) {
    let t = Instant::now();
    let r = reqwest::get(format!("{}/api/v2/debug/health?force=true", server.url))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap(), t.elapsed())
}

#[tokio::test]
async fn force_is_coalesced_and_a_silent_vantage_holds_nobody_twice() {
    let server = Server::start(&["--interval", "1h", "--force-timeout", "20s"]).await;
    assert_eq!(force(&server).await.0, 200);
    let applied = |m: &str| metric(m, "vantage_observations_applied_total");
    let before = applied(&metrics(&server).await);
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(force(&server).await.0, 200);
    }
    let runs = applied(&metrics(&server).await) - before;
    println!(
        "100 forces in {:?}: {runs} observations applied",
        t.elapsed()
    );
    assert!(runs < 50.0, "coalesced per vantage: {runs} observations");
    // A vantage that never answers (nor acknowledges) RunNow: even the first force waits
    // for it only as long as a probe takes to acknowledge (2 s), not the 20 s timeout.
    let mut lazy = attach(&server.url, vec![hello("lazy-1", "i")]).await;
    lazy.welcome().await;
    let (status, body, took) = force(&server).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (503, Some("Still running: lazy-1"))
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, body, took) = force(&server).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (503, Some("Still running: lazy-1"))
    );
    assert!(took < Duration::from_secs(2), "not held again: {took:?}");
    drop(lazy);
}

#[tokio::test]
async fn proxy_urls_to_metadata_or_with_credentials_are_refused() {
    let register = |url: &'static str, server: String| async move {
        let mut c = pb::registry_service_client::RegistryServiceClient::connect(server)
            .await
            .unwrap();
        c.register_workspace_proxy(pb::RegisterWorkspaceProxyRequest {
            name: "p1".into(),
            url: url.into(),
            ..Default::default()
        })
        .await
    };
    let server = Server::start(&["--interval", "1h"]).await;
    for url in [
        "http://169.254.169.254/latest",
        "http://[fe80::1]:8080",
        "http://metadata.google.internal",
        "http://[::ffff:169.254.169.254]",
    ] {
        let e = register(url, server.url.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}");
        assert!(
            e.message().contains("allowed_proxy_networks"),
            "{}",
            e.message()
        );
    }
    let e = register("https://user:secret@proxy.example.com", server.url.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("user information"), "{}", e.message());
    assert!(!e.message().contains("secret"), "the secret is not echoed");
    let e = register("ftp://proxy.example.com", server.url.clone())
        .await
        .unwrap_err();
    assert!(e.message().contains("http"), "{}", e.message());
    let allowed = Server::start(&[
        "--interval",
        "1h",
        "--allowed-proxy-networks",
        "169.254.0.0/16",
    ])
    .await;
    register("http://169.254.169.254/latest", allowed.url.clone())
        .await
        .expect("allowed by allowed_proxy_networks");
}

/// `n` vantages `<prefix>-<i>`, each sending one access-URL observation whose body is `len`
/// bytes; their streams, held open.
async fn vantages_with_bodies(server: &Server, prefix: &str, n: usize, len: usize) -> Vec<Raw> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut raw = attach(&server.url, vec![hello(&format!("{prefix}-{i}"), "i")]).await;
        let welcome = raw.welcome().await;
        let check = welcome
            .assignment
            .unwrap()
            .checks
            .into_iter()
            .find(|c| c.section == pb::Section::AccessUrl as i32)
            .unwrap();
        let observation = pb::Observation {
            seq: 1,
            check_id: check.id,
            section: pb::Section::AccessUrl as i32,
            target: server.url.clone(),
            result: Some(pb::observation::Result::AccessUrl(pb::AccessUrlResult {
                reachable: true,
                status_code: 200,
                healthz_response: "x".repeat(len),
                ..Default::default()
            })),
            ..Default::default()
        };
        raw.up
            .send(pb::ProbeMessage {
                msg: Some(Up::Observations(pb::ObservationBatch {
                    observations: vec![observation],
                })),
            })
            .await
            .unwrap();
        held.push(raw);
    }
    held
}

/// The largest report a reader can fetch, asked for by 100 readers at once: it is encoded once
/// and shared, so memory does not grow with the readers (760 MB peak for 100 concurrent GETs
/// of a 9.7 MB report when each request encoded its own copy).
#[tokio::test]
async fn concurrent_readers_of_a_large_report_share_one_encoding() {
    let server = Server::start(&["--interval", "1h"]).await;
    // Just under the 64 KiB a body may have.
    let held = vantages_with_bodies(&server, "big", 60, 60_000).await;
    let url = format!("{}/api/v2/debug/health", server.url);
    let size = eventually(WAIT, "every big body in the report", || async {
        let body = reqwest::get(&url).await.ok()?.bytes().await.ok()?;
        (body.len() > 60 * 60_000).then_some(body.len())
    })
    .await;
    let pid = server.pid();
    let before = rss_bytes(pid);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let http = reqwest::Client::new();
    let lengths = futures::future::join_all((0..100).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }
    }))
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(rss_bytes(pid));
    println!(
        "100 concurrent GETs of a {} KiB report: RSS {} MiB before, peak {} MiB",
        size >> 10,
        before >> 20,
        peak >> 20
    );
    // Every reader got the whole report (its length moves with the report's times).
    assert!(lengths.iter().all(|&n| n > 60 * 60_000), "{lengths:?}");
    assert!(
        peak.saturating_sub(before) < 64 << 20,
        "RSS peaked {} MiB above {} MiB",
        peak.saturating_sub(before) >> 20,
        before >> 20
    );
    drop(held);
}

#[tokio::test]
async fn oversized_bodies_are_not_kept() {
    let server = Server::start(&["--interval", "1h"]).await;
    let before = rss_bytes(server.pid());
    let held = vantages_with_bodies(&server, "fat", 60, 900_000).await;
    eventually(WAIT, "every fat body to be rejected", || async {
        let m = metrics(&server).await;
        (metric(
            &m,
            "vantage_observations_rejected_total{reason=\"body_size\"}",
        ) == 60.0)
            .then_some(())
    })
    .await;
    let after = rss_bytes(server.pid());
    let report = reqwest::get(format!("{}/api/v2/debug/health", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    println!(
        "60 vantages with 900 kB bodies: RSS {} -> {} MiB, report {} KiB",
        before >> 20,
        after >> 20,
        report.len() >> 10
    );
    assert!(report.len() < 1 << 20, "report {} bytes", report.len());
    // Nothing is kept; what remains is each open stream's decode buffer (up to one 1 MiB
    // message each) — 243 MB before the server enforced the body cap.
    assert!(
        after.saturating_sub(before) < 100 << 20,
        "RSS grew by {} MiB",
        (after - before) >> 20
    );
    drop(held);
}

#[tokio::test]
async fn big_echo_messages_do_not_grow_memory() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&["--interval", "1h"]).await;
    let ws_url = format!("ws://127.0.0.1:{}/api/v2/debug/ws", server.port);
    let before = rss_bytes(server.pid());
    let closes = futures::future::join_all((0..16).map(|_| {
        let ws_url = ws_url.clone();
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
            let _ = tokio::time::timeout(WAIT, ws.send(Message::binary(vec![7u8; 4 << 20]))).await;
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => Some(u16::from(frame.code)),
                _ => None,
            }
        }
    }))
    .await;
    let after = rss_bytes(server.pid());
    println!(
        "16 echo sockets sending 4 MiB messages: RSS {} -> {} MiB, closes {closes:?}",
        before >> 20,
        after >> 20
    );
    assert!(
        closes.iter().all(|c| *c == Some(1009)),
        "closed as too big: {closes:?}"
    );
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "RSS grew by {} MiB",
        (after - before) >> 20
    );
}

/// The registry is bounded: 10 000 daemons and 10 000 proxies at most, the next one refused
/// with RESOURCE_EXHAUSTED naming the bound; memory is measured at the bound: right after the
/// burst, and what stays must fall under 128 MiB within 20 s as the allocator hands the burst's
/// garbage back (about 85 MiB stays in a debug build).
#[tokio::test]
async fn the_registry_is_bounded_and_its_memory_measured() {
    const MAX: usize = 10_000;
    const SETTLED: u64 = 128 << 20;
    let server = Server::start(&["--interval", "1h"]).await;
    let before = rss_bytes(server.pid());
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let registry = pb::registry_service_client::RegistryServiceClient::new(channel);
    let started = Instant::now();
    let outcomes: Vec<Result<(), tonic::Status>> = futures::stream::iter(0..=MAX)
        .map(|i| {
            let mut r = registry.clone();
            async move {
                r.provisioner_heartbeat(pb::ProvisionerHeartbeatRequest {
                    name: format!("daemon-{i}"),
                    version: "v2.26.0".into(),
                    api_version: "1.9".into(),
                    provisioners: vec!["terraform".into()],
                    ..Default::default()
                })
                .await
                .map(|_| ())?;
                r.register_workspace_proxy(pb::RegisterWorkspaceProxyRequest {
                    name: format!("proxy-{i}"),
                    url: format!("http://127.0.0.1:9/{i}"),
                    region: "syd".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let peak = rss_bytes(server.pid());
    let took = started.elapsed();
    // What stays: the allocator hands the burst's garbage back to the system within seconds
    // (jemalloc's background purge), so wait for the RSS to come down to the bound, 20 s at most.
    let settle = Instant::now();
    let mut after = peak;
    while after.saturating_sub(before) >= SETTLED && settle.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_bytes(server.pid());
    }
    let refused: Vec<&tonic::Status> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    println!(
        "{MAX} daemons and proxies registered in {took:?}: RSS {} -> {} MiB right after, {} MiB \
         {:?} later",
        before >> 20,
        peak >> 20,
        after >> 20,
        settle.elapsed()
    );
    // The last of the 10 001 is refused (the daemon first, so its proxy is never sent).
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].code(),
        Code::ResourceExhausted,
        "{:?}",
        refused[0]
    );
    assert!(
        refused[0].message().contains("10000"),
        "{}",
        refused[0].message()
    );
    let mut r = registry.clone();
    let more = r
        .register_workspace_proxy(pb::RegisterWorkspaceProxyRequest {
            name: "one-too-many".into(),
            url: "http://127.0.0.1:9/x".into(),
            region: "syd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(more.code(), Code::ResourceExhausted, "{more:?}");
    assert!(
        after.saturating_sub(before) < SETTLED,
        "RSS grew by {} MiB for {MAX} daemons and {MAX} proxies, and stayed there for {:?}",
        after.saturating_sub(before) >> 20,
        settle.elapsed()
    );
}
