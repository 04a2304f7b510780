//! Durability under database faults: a database that stalls (accepts, never answers) heals
//! by itself once it answers again.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use vantage_proto::pb;
use vantage_testkit::{CutProxy, eventually, test_db};
use vantage_tests::{Probe, Server};

fn fresh(r: &Value, name: &str) -> bool {
    r["vantages"]["items"].as_array().is_some_and(|vs| {
        vs.iter()
            .any(|v| v["name"] == name && v["state"] == "fresh")
    })
}

fn is_resync(ev: &pb::WatchEvent) -> bool {
    matches!(&ev.event, Some(pb::watch_event::Event::Snapshot(s)) if s.resync)
}

#[tokio::test]
async fn a_stalled_database_heals_without_a_restart_and_watchers_resync_at_most_once() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let server = Server::start(&[
        "--database-url",
        &db.url_via(proxy.port()),
        "--interval",
        "1s",
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
    let mut watch = Box::pin(client.watch(pb::WatchRequest::default()).await.unwrap());
    let _snapshot = watch.next().await.unwrap().unwrap();
    let resyncs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = resyncs.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(ev)) = watch.next().await {
            if is_resync(&ev) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });

    proxy.stall(true);
    eventually(
        Duration::from_secs(25),
        "EDB01 during the stall",
        || async {
            let r = server.report().await;
            (r["database"]["severity"] == "error").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.stall(false);
    let released = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the Database section recovers",
        || async { (server.report().await["database"]["severity"] == "ok").then_some(()) },
    )
    .await;
    println!("recovered {:?} after the stall ended", released.elapsed());
    // And it stays recovered: no flapping once the database answers again.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(15) {
        let r = server.report().await;
        assert_eq!(r["database"]["severity"], "ok", "{}", r["database"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n = resyncs.load(std::sync::atomic::Ordering::SeqCst);
    println!("the watcher resynced {n} times");
    assert!(n <= 1, "the watcher resynced {n} times for one outage");
    watcher.abort();
}
