//! Several real `vantaged` replicas on one real PostgreSQL, with real probes: one aggregate on
//! every replica, cluster-wide revisions for `Watch`, settings in effect everywhere, restarts
//! that keep what was acknowledged, and a database outage that degrades but never stops.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use vantage_proto::pb;
use vantage_testkit::{CutProxy, eventually, test_db};
use vantage_tests::{Probe, Server, vantage};

fn fresh(r: &Value, name: &str) -> bool {
    vantage(r, name).is_some_and(|v| v["state"] == "fresh")
        && r["access_url"]["vantage_reports"].get(name).is_some()
}

fn names(r: &Value) -> Vec<String> {
    let mut n: Vec<String> = r["vantages"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn two_replicas_serve_one_aggregate_and_one_event_history() {
    let db = test_db!();
    let a = Server::start(&[
        "--database-url",
        &db.url(),
        "--interval",
        "500ms",
        "--server-vantage-name",
        "server-a",
        // Pings of a loaded machine may pass 15 ms (EDB02): not what this test is about.
        "--database-threshold",
        "5s",
    ])
    .await;
    let b = Server::start(&[
        "--database-url",
        &db.url(),
        "--interval",
        "500ms",
        "--server-vantage-name",
        "server-b",
        // Pings of a loaded machine may pass 15 ms (EDB02): not what this test is about.
        "--database-threshold",
        "5s",
    ])
    .await;
    let _fra = Probe::start(&a.url, "fra-1", "fra");
    let _iad = Probe::start(&b.url, "iad-1", "iad");
    let everyone = ["server-a", "server-b", "fra-1", "iad-1"];
    for s in [&a, &b] {
        eventually(
            Duration::from_secs(30),
            "every vantage fresh on the replica",
            || async {
                let r = s.report().await;
                everyone.iter().all(|n| fresh(&r, n)).then_some(())
            },
        )
        .await;
    }
    let (ra, rb) = (a.report().await, b.report().await);
    assert_eq!(names(&ra), names(&rb));
    for section in ["access_url", "websocket", "database", "derp"] {
        assert_eq!(
            ra[section]["severity"], rb[section]["severity"],
            "{section}"
        );
    }
    assert_eq!(
        ra["database"]["severity"], "ok",
        "a database is configured: no EDB03"
    );

    // A watch on B sees, in revision order, a change caused on A.
    let client_b = vantage_client::Client::connect(&b.url, None).await.unwrap();
    let mut watch = Box::pin(client_b.watch(pb::WatchRequest::default()).await.unwrap());
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::watch_event::Event::Snapshot(_))
    ));
    let _syd = Probe::start(&a.url, "syd-1", "syd");
    let mut last = first.revision;
    let attached = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        assert!(
            ev.revision > last,
            "revisions increase: {} after {last}",
            ev.revision
        );
        last = ev.revision;
        if let Some(pb::watch_event::Event::VantageChange(c)) = &ev.event
            && c.vantage == "syd-1"
            && c.change == "attached"
        {
            // The typed kind travels with the name, through the other replica's event log.
            assert_eq!(c.kind, pb::VantageChangeKind::Attached as i32, "{c:?}");
            break ev;
        }
    };
    // The same revision, in the same epoch, on the other replica: resume there from just before.
    let client_a = vantage_client::Client::connect(&a.url, None).await.unwrap();
    let mut resumed = Box::pin(
        client_a
            .watch(pb::WatchRequest {
                since_revision: attached.revision - 1,
                since_epoch: attached.epoch.clone(),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let again = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.revision, again.event.clone()),
        (attached.revision, attached.event.clone())
    );

    // A settings change on A is in effect on B at once.
    let put = reqwest::Client::new()
        .put(format!("{}/api/v2/debug/health/settings", a.url))
        .json(&json!({"dismissed_healthchecks": ["Websocket"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    eventually(Duration::from_secs(5), "the setting on B", || async {
        (b.report().await["websocket"]["dismissed"] == true).then_some(())
    })
    .await;

    // The registries are shared: a daemon announced to A shows on B.
    let out = vantage_tests::cli(&[
        "--server",
        &a.url,
        "provisioner",
        "heartbeat",
        "--name",
        "d1",
        "--version",
        "v0.1.0",
        "--api-version",
        "1.9",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(10), "the daemon on B", || async {
        let r = b.report().await;
        (r["provisioner_daemons"]["items"][0]["provisioner_daemon"]["name"] == "d1").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replica_restart_keeps_what_it_acknowledged() {
    let db = test_db!();
    let mut a = Server::start(&["--database-url", &db.url(), "--interval", "200ms"]).await;
    let _probe = Probe::start(&a.url, "fra-1", "fra");
    let url = a.url.clone();
    eventually(Duration::from_secs(30), "fra-1 applying", || async {
        vantage_list(&url)
            .await
            .into_iter()
            .find(|v| v.name == "fra-1" && v.applied >= 6)
            .map(|_| ())
    })
    .await;
    a.kill().await;
    // What the killed replica had stored of fra-1. It acknowledged no more than that, but it
    // may have stored more than the probe saw acknowledged (killed between the commit and the
    // ack's delivery): the restarted replica promises what is stored, and the probe resends
    // from there.
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT applied_seq FROM vantage_vantages WHERE name = 'fra-1'",
            &[],
        )
        .await
        .expect("fra-1's stored sequence")
        .get(0);
    let stored = u64::try_from(stored).expect("a sequence is not negative");
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.restart().await;
    // Before the probe is back, the replica already knows it from the database.
    let v = eventually(Duration::from_secs(30), "fra-1 re-attached", || async {
        vantage_list(&url)
            .await
            .into_iter()
            .find(|v| v.name == "fra-1" && v.connected && v.applied >= 3)
    })
    .await;
    assert!(v.resumed_from_seq > 0, "{v:?}");
    assert!(
        v.resumed_from_seq <= stored,
        "everything acknowledged was stored ({stored}): {v:?}"
    );
    assert_eq!(
        v.first_applied_seq,
        stored + 1,
        "continues right after what was stored and acked: {v:?}"
    );
    assert_eq!(
        v.applied,
        v.last_applied_seq - v.first_applied_seq + 1,
        "{v:?}"
    );
    assert_eq!(v.gaps, 0, "{v:?}");
    eventually(Duration::from_secs(20), "a whole report", || async {
        let r = a.report().await;
        (fresh(&r, "server") && fresh(&r, "fra-1")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_database_outage_degrades_the_section_and_recovers_without_a_restart() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let server = Server::start(&[
        "--database-url",
        &db.url_via(proxy.port()),
        "--interval",
        "300ms",
        "--database-threshold",
        "5s",
    ])
    .await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    eventually(
        Duration::from_secs(30),
        "healthy with the database",
        || async {
            let r = server.report().await;
            (fresh(&r, "fra-1") && r["database"]["severity"] == "ok").then_some(())
        },
    )
    .await;
    let client = vantage_client::Client::connect(&server.url, None)
        .await
        .unwrap();
    let mut watch = client.watch(pb::WatchRequest::default()).await.unwrap();
    let _snapshot = watch.next().await.unwrap().unwrap();

    proxy.refuse(true);
    proxy.cut();
    let r = eventually(
        Duration::from_secs(20),
        "EDB01 during the outage",
        || async {
            let r = server.report().await;
            (r["database"]["severity"] == "error").then_some(r)
        },
    )
    .await;
    assert!(
        r["database"]["error"]
            .as_str()
            .unwrap()
            .starts_with("EDB01"),
        "{}",
        r["database"]
    );
    // Ingestion goes on from memory.
    let applied = |vs: Vec<pb::Vantage>| {
        vs.into_iter()
            .find(|v| v.name == "fra-1")
            .map_or(0, |v| v.applied)
    };
    let before = applied(client.vantages().await.unwrap());
    eventually(
        Duration::from_secs(10),
        "ingestion during the outage",
        || async { (applied(client.vantages().await.unwrap()) > before + 3).then_some(()) },
    )
    .await;
    // The watcher keeps hearing of changes from memory: the Database section going to error,
    // as a change or in the resync snapshot of the provisional epoch.
    let database_error = |r: &pb::Report| {
        r.sections.iter().any(|s| {
            s.section == pb::Section::Database as i32 && s.severity == pb::Severity::Error as i32
        })
    };
    let saw = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = watch.next().await.unwrap().unwrap();
            match &ev.event {
                Some(pb::watch_event::Event::SectionChange(c))
                    if c.section == pb::Section::Database as i32
                        && c.to == pb::Severity::Error as i32 =>
                {
                    return ev;
                }
                Some(pb::watch_event::Event::Snapshot(s))
                    if s.report.as_ref().is_some_and(database_error) =>
                {
                    return ev;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        saw.is_ok(),
        "the watcher saw the Database section fail during the outage"
    );

    proxy.refuse(false);
    eventually(
        Duration::from_secs(30),
        "the Database section recovers",
        || async { (server.report().await["database"]["severity"] == "ok").then_some(()) },
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vantage_store_writes_queued"), "{metrics}");
}

async fn vantage_list(url: &str) -> Vec<pb::Vantage> {
    match vantage_client::Client::connect(url, None).await {
        Ok(c) => c.vantages().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
