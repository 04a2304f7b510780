//! Aggregator behaviour through its public handle: exactly-once ingestion, staleness (paused
//! time), quorum, force, and watchers that never slow ingestion.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_proto::{Section, Severity, pb};
use vantage_server::aggregator::{
    Aggregator, AggregatorConfig, AssignedCheck, Outgoing, ProbeCommand, SessionTx,
};
use vantage_server::api::App;
use vantage_server::api::grpc::watch::{Filter, watch_stream};
use vantage_server::store::MemoryStore;

mod fuzz_corpus;
mod guard;

fn config() -> AggregatorConfig {
    AggregatorConfig {
        quorum: 1,
        stale_after: Duration::from_secs(3),
        forget_after: Duration::from_secs(3600),
        raise_after: 1,
        clear_after: 1,
        history: 10_000,
        version: "v0.1.0".into(),
        expected: vec![Section::AccessUrl],
        derp_regions: vec![],
        derp_has_nodes: true,
        epoch: None,
        dedicated_thread: false,
        max_vantages: 10_000,
        holder_silence: Duration::from_secs(7),
        force_join: Duration::from_secs(30),
        max_report_bytes: vantage_server::aggregator::MAX_REPORT_BYTES,
    }
}

fn hello(name: &str, instance: &str, acked: u64) -> pb::Hello {
    pb::Hello {
        name: name.into(),
        region: "fra".into(),
        instance_id: instance.into(),
        last_acked_seq: acked,
        ..Default::default()
    }
}

fn obs(seq: u64, status: i32) -> pb::Observation {
    pb::Observation {
        seq,
        check_id: "access_url".into(),
        section: pb::Section::AccessUrl as i32,
        target: "http://x".into(),
        result: Some(ObsResult::AccessUrl(pb::AccessUrlResult {
            reachable: true,
            status_code: status,
            ..Default::default()
        })),
        ..Default::default()
    }
}

struct Probe {
    name: String,
    session_id: u64,
    rx: mpsc::Receiver<Outgoing>,
    applied_seq: u64,
}

async fn attach(agg: &Aggregator, name: &str, instance: &str, acked: u64) -> Probe {
    attach_queue(agg, name, instance, acked, 1024).await
}

/// [`attach`] with a session queue of `capacity` messages.
async fn attach_queue(
    agg: &Aggregator,
    name: &str,
    instance: &str,
    acked: u64,
    capacity: usize,
) -> Probe {
    let (tx, rx): (SessionTx, _) = mpsc::channel(capacity);
    let a = agg.attach(hello(name, instance, acked), tx).await.unwrap();
    agg.send(ProbeCommand::Assigned {
        name: name.into(),
        check_ids: vec![AssignedCheck {
            id: "access_url".into(),
            section: Section::AccessUrl,
            targets: ["http://x".to_owned()].into(),
        }],
    })
    .await
    .unwrap();
    Probe {
        name: name.into(),
        session_id: a.session_id,
        rx,
        applied_seq: a.applied_seq,
    }
}

async fn ingest(agg: &Aggregator, p: &Probe, observations: Vec<pb::Observation>) {
    agg.ingest(p.name.clone(), p.session_id, observations)
        .await
        .unwrap();
}

async fn vantage(agg: &Aggregator, name: &str) -> pb::Vantage {
    agg.vantages()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.name == name)
        .unwrap()
}

/// The last ack the probe has been sent.
fn last_ack(p: &mut Probe) -> u64 {
    let mut last = 0;
    while let Ok(Ok(m)) = p.rx.try_recv().map(|m| *m) {
        if let Some(Down::Ack(a)) = m.msg {
            last = a.seq;
        }
    }
    last
}

#[tokio::test]
async fn observations_apply_exactly_once_by_sequence() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut p = attach(&agg, "fra-1", "inst-a", 0).await;
    assert_eq!(p.applied_seq, 0);
    ingest(&agg, &p, (1..=5).map(|s| obs(s, 200)).collect()).await;
    // A resend overlapping what was applied: 3..=5 are duplicates, 6..=7 are new.
    ingest(&agg, &p, (3..=7).map(|s| obs(s, 200)).collect()).await;
    let v = vantage(&agg, "fra-1").await;
    assert_eq!(
        (
            v.first_applied_seq,
            v.last_applied_seq,
            v.applied,
            v.duplicates,
            v.gaps
        ),
        (1, 7, 7, 3, 0)
    );
    assert_eq!(last_ack(&mut p), 7);

    // The same instance reattaching (its connection gone) is told what was applied.
    p.rx.close();
    let mut p2 = attach(&agg, "fra-1", "inst-a", 5).await;
    assert_eq!(p2.applied_seq, 7);
    p2.rx.close();

    // A server that lost its state (here: a new instance) continues after the probe's ack.
    let p3 = attach(&agg, "fra-1", "inst-b", 0).await;
    assert_eq!(p3.applied_seq, 0);
    ingest(&agg, &p3, vec![obs(1, 200), obs(3, 200)]).await;
    let v = vantage(&agg, "fra-1").await;
    assert_eq!(
        (v.applied, v.gaps),
        (2, 1),
        "a gap in sequence numbers is counted"
    );
}

#[tokio::test]
async fn a_stale_session_cannot_ingest() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut old = attach(&agg, "fra-1", "i", 0).await;
    old.rx.close();
    let new = attach(&agg, "fra-1", "i", 0).await;
    ingest(&agg, &old, vec![obs(1, 503)]).await;
    assert_eq!(vantage(&agg, "fra-1").await.applied, 0);
    ingest(&agg, &new, vec![obs(1, 200)]).await;
    assert_eq!(vantage(&agg, "fra-1").await.applied, 1);
}

#[tokio::test(start_paused = true)]
async fn silent_vantages_go_stale_leave_the_aggregate_and_come_back() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let good = attach(&agg, "fra-1", "a", 0).await;
    let bad = attach(&agg, "iad-1", "b", 0).await;
    ingest(&agg, &good, vec![obs(1, 200)]).await;
    ingest(&agg, &bad, vec![obs(1, 503)]).await;
    let (r, _) = agg.report().await.unwrap();
    assert_eq!(r.access_url.report.base.severity, Severity::Warning);
    assert_eq!(r.access_url.vantage_reports.len(), 2);

    // fra-1 keeps reporting, iad-1 falls silent.
    for seq in 2..=5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ingest(&agg, &good, vec![obs(seq, 200)]).await;
    }
    let (r, _) = agg.report().await.unwrap();
    let iad = r.vantages.items.iter().find(|v| v.name == "iad-1").unwrap();
    assert_eq!(iad.state, "stale");
    assert!(iad.stale_since.is_some());
    assert_eq!(r.vantages.severity, Severity::Warning);
    assert!(
        r.vantages
            .warnings
            .iter()
            .any(|w| w.code == "EVNT01" && w.message.contains("iad-1"))
    );
    assert_eq!(
        r.access_url.report.base.severity,
        Severity::Ok,
        "the stale vantage left the aggregate"
    );
    assert!(!r.access_url.vantage_reports.contains_key("iad-1"));

    // It reports again: fresh, and back in the aggregate.
    ingest(&agg, &bad, vec![obs(2, 503)]).await;
    let (r, _) = agg.report().await.unwrap();
    assert!(r.vantages.warnings.is_empty());
    assert_eq!(r.access_url.report.base.severity, Severity::Warning);
}

#[tokio::test(start_paused = true)]
async fn nothing_covering_a_section_is_evnt02() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let p = attach(&agg, "fra-1", "a", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (r, _) = agg.report().await.unwrap();
    assert_eq!(r.access_url.report.base.warnings[0].code, "EVNT02");
}

#[tokio::test]
async fn quorum_two_turns_a_lone_failure_into_a_named_warning() {
    let agg = Aggregator::spawn(
        AggregatorConfig {
            quorum: 2,
            ..config()
        },
        vec![],
    )
    .expect("aggregator");
    let a = attach(&agg, "fra-1", "a", 0).await;
    let b = attach(&agg, "iad-1", "b", 0).await;
    let c = attach(&agg, "syd-1", "c", 0).await;
    ingest(&agg, &a, vec![obs(1, 200)]).await;
    ingest(&agg, &b, vec![obs(1, 200)]).await;
    let mut failing = obs(1, 200);
    failing.result = Some(ObsResult::AccessUrl(pb::AccessUrlResult {
        failure: Some(pb::Message {
            code: "EACS03".into(),
            message: "get healthz endpoint: refused".into(),
        }),
        ..Default::default()
    }));
    ingest(&agg, &c, vec![failing]).await;
    let (r, _) = agg.report().await.unwrap();
    let base = &r.access_url.report.base;
    assert_eq!(base.severity, Severity::Warning);
    let w = base.warnings.iter().find(|w| w.code == "EVNT03").unwrap();
    assert!(
        w.message.contains("syd-1") && w.message.contains("EACS03"),
        "{}",
        w.message
    );
    assert!(
        !r.healthy,
        "AccessURL at warning makes healthy false, as in Coder"
    );
}

#[tokio::test]
async fn force_asks_every_session_and_waits_for_completion() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut a = attach(&agg, "fra-1", "a", 0).await;
    let mut pending = agg.force().await.unwrap().pending;
    assert_eq!(
        pending.borrow().iter().cloned().collect::<Vec<_>>(),
        vec!["fra-1".to_owned()]
    );
    let request_id = loop {
        match a.rx.recv().await.map(|m| *m).unwrap().unwrap().msg {
            Some(Down::RunNow(r)) => break r.request_id,
            _ => continue,
        }
    };
    agg.send(ProbeCommand::RunComplete {
        name: "fra-1".into(),
        request_id,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), pending.wait_for(|p| p.is_empty()))
        .await
        .unwrap()
        .unwrap();
}

fn app(agg: &Aggregator) -> App {
    App {
        agg: agg.clone(),
        writer: None,
        store: Arc::new(MemoryStore::default()),
        force_timeout: Duration::from_secs(30),
        watchers: Arc::new(AtomicUsize::new(0)),
        cancel: CancellationToken::new(),
        alerts: None,
        report_json: Arc::default(),
    }
}

fn is_snapshot(ev: &pb::WatchEvent) -> Option<bool> {
    match &ev.event {
        Some(pb::watch_event::Event::Snapshot(s)) => Some(s.resync),
        _ => None,
    }
}

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_slow_ingestion_and_is_resynced() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let app = app(&agg);
    let p = attach(&agg, "fra-1", "a", 0).await;
    let sub = agg.subscribe(0, "").await.unwrap();
    let stuck = watch_stream(&app, sub, Filter::default(), 0);
    // Flip the section's severity 20 000 times (far more events than the broadcast holds)
    // while the watcher reads nothing.
    let n = 20_000u64;
    let started = std::time::Instant::now();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(1) {
        ingest(
            &agg,
            &p,
            chunk
                .iter()
                .map(|s| obs(*s, if s % 2 == 0 { 200 } else { 503 }))
                .collect(),
        )
        .await;
    }
    let v = vantage(&agg, "fra-1").await;
    assert_eq!(v.applied, n, "every observation was applied");
    eprintln!(
        "ingested {n} flipping observations in {:?} with a stuck watcher",
        started.elapsed()
    );
    assert!(agg.stats().events >= n, "each flip is an event");

    // When the stuck watcher finally reads: its snapshot, then a resync snapshot.
    let mut stuck = std::pin::pin!(stuck);
    let first = stuck.next().await.unwrap().unwrap();
    assert_eq!(is_snapshot(&first), Some(false));
    let second = stuck.next().await.unwrap().unwrap();
    assert_eq!(
        is_snapshot(&second),
        Some(true),
        "a lagging watcher is told to resync"
    );
}

#[tokio::test]
async fn a_batchs_events_reach_a_watcher_as_one_broadcast_in_revision_order() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let app = app(&agg);
    let p = attach(&agg, "fra-1", "a", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    let mut raw = agg.subscribe(0, "").await.unwrap();
    let sub = agg.subscribe(0, "").await.unwrap();
    let filter = Filter {
        sections: vec![Section::AccessUrl],
        ..Default::default()
    };
    let mut stream = std::pin::pin!(watch_stream(&app, sub, filter, 0));
    assert_eq!(
        is_snapshot(&stream.next().await.unwrap().unwrap()),
        Some(false)
    );

    // One batch that turns the access URL from OK to failing: the vantage's section and the
    // aggregate change, in one broadcast.
    ingest(&agg, &p, vec![obs(2, 503)]).await;
    let group = raw.events.recv().await.unwrap();
    let changes: Vec<(u64, String)> = group
        .iter()
        .filter_map(|e| match &e.event.event {
            Some(pb::watch_event::Event::SectionChange(c)) => Some((e.revision, c.vantage.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes.iter().any(|(_, v)| v.is_empty()),
        "the aggregate's: {changes:?}"
    );
    assert!(
        changes.iter().any(|(_, v)| v == "fra-1"),
        "the vantage's: {changes:?}"
    );
    let revisions: Vec<u64> = group.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive revisions: {revisions:?}"
    );

    // The watcher gets both, once each, in that order.
    let mut got = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the watcher gets the batch's events")
            .unwrap()
            .unwrap();
        got.push(ev.revision);
    }
    let want: Vec<u64> = changes.iter().map(|(r, _)| *r).collect();
    assert_eq!(got, want);
}

/// Batches that reach the aggregator in one command (they arrived together) are applied each
/// as if it came alone: every transition between them is an event of its own, and the
/// session gets one cumulative ack for them all.
#[tokio::test]
async fn batches_sent_together_keep_every_transition_and_are_acked_once() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let mut p = attach(&agg, "fra-1", "a", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    vantage(&agg, "fra-1").await;
    assert_eq!(last_ack(&mut p), 1);
    let mut raw = agg.subscribe(0, "").await.unwrap();

    // Failing, OK, failing again: three messages, one command.
    agg.send(ProbeCommand::Ingest {
        name: p.name.clone(),
        session_id: p.session_id,
        batch: agg.batch(vec![obs(2, 503)]),
        then: vec![agg.batch(vec![obs(3, 200)]), agg.batch(vec![obs(4, 503)])],
    })
    .await
    .unwrap();
    let mut vantage_changes = Vec::new();
    while vantage_changes.len() < 3 {
        let group = tokio::time::timeout(Duration::from_secs(5), raw.events.recv())
            .await
            .expect("an event group per batch")
            .unwrap();
        vantage_changes.extend(group.iter().filter_map(|e| match &e.event.event {
            Some(pb::watch_event::Event::SectionChange(c)) if c.vantage == "fra-1" => {
                Some((c.from, c.to))
            }
            _ => None,
        }));
    }
    let ok = pb::Severity::Ok as i32;
    let failing = vantage_changes[0].1;
    assert_ne!(failing, ok);
    assert_eq!(
        vantage_changes,
        vec![(ok, failing), (failing, ok), (ok, failing)],
        "no transition is lost between the batches"
    );

    let v = vantage(&agg, "fra-1").await;
    assert_eq!((v.applied, v.last_applied_seq), (4, 4));
    let mut acks = Vec::new();
    while let Ok(Ok(m)) = p.rx.try_recv().map(|m| *m) {
        if let Some(Down::Ack(a)) = m.msg {
            acks.push(a.seq);
        }
    }
    assert_eq!(acks, vec![4], "one cumulative ack for the command");
}

#[tokio::test]
async fn watch_resumes_from_history_or_resyncs() {
    let agg = Aggregator::spawn(
        AggregatorConfig {
            history: 16,
            ..config()
        },
        vec![],
    )
    .expect("aggregator");
    let app = app(&agg);
    let p = attach(&agg, "fra-1", "a", 0).await;
    for s in 1..=4u64 {
        ingest(&agg, &p, vec![obs(s, if s % 2 == 0 { 200 } else { 503 })]).await;
    }
    let (r, _) = agg.report().await.unwrap();
    let now = r.revision;
    // Within the history: exactly the events after the revision.
    for s in 5..=6u64 {
        ingest(&agg, &p, vec![obs(s, if s % 2 == 0 { 200 } else { 503 })]).await;
    }
    let sub = agg.subscribe(now, "").await.unwrap();
    assert!(sub.snapshot.is_none());
    let backlog: Vec<u64> = sub.backlog.iter().map(|e| e.revision).collect();
    assert!(
        !backlog.is_empty() && backlog.iter().all(|r| *r > now),
        "{backlog:?}"
    );
    let mut stream = std::pin::pin!(watch_stream(
        &app,
        sub,
        Filter {
            sections: vec![Section::AccessUrl],
            ..Default::default()
        },
        now
    ));
    let ev = stream.next().await.unwrap().unwrap();
    assert!(ev.revision > now);
    assert!(matches!(
        ev.event,
        Some(pb::watch_event::Event::SectionChange(_))
    ));

    // Too far back for a history of 16: a resync snapshot.
    for s in 7..=60u64 {
        ingest(&agg, &p, vec![obs(s, if s % 2 == 0 { 200 } else { 503 })]).await;
    }
    let sub = agg.subscribe(1, "").await.unwrap();
    assert_eq!(sub.snapshot.as_ref().map(|s| s.0), Some(true));
}

#[tokio::test]
async fn a_revision_from_another_epoch_resyncs() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let p = attach(&agg, "fra-1", "a", 0).await;
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    let sub = agg.subscribe(1, "another-server-lifetime").await.unwrap();
    assert_eq!(sub.snapshot.as_ref().map(|s| s.0), Some(true));
    let (_, report) = agg.report().await.unwrap();
    let sub = agg.subscribe(report.revision, &report.epoch).await.unwrap();
    assert!(sub.snapshot.is_none() && sub.backlog.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_timed_dismissal_ends_on_the_aggregators_own_clock() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    let until = chrono::Utc::now() + chrono::Duration::hours(2);
    let mut both = vec![Section::Derp, Section::Database];
    both.sort();
    let s = agg
        .dismiss(both.clone(), vec![(Section::Derp, until)])
        .await
        .unwrap();
    assert_eq!(s.dismissed, both);

    // Just before the end: still dismissed.
    tokio::time::sleep(Duration::from_secs(2 * 3600 - 5)).await;
    assert_eq!(agg.settings(None).await.unwrap().dismissed, both);
    let (r, _) = agg.report().await.unwrap();
    assert!(r.derp.report.base.dismissed);

    // Just after: DERP is back, the untimed dismissal stays.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        agg.settings(None).await.unwrap().dismissed,
        vec![Section::Database]
    );
    let (r, _) = agg.report().await.unwrap();
    assert!(!r.derp.report.base.dismissed);
    assert!(r.database.report.base.dismissed);

    // A window that has already ended (a replica reloading old settings) dismisses nothing.
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let s = agg
        .dismiss(vec![Section::Derp], vec![(Section::Derp, past)])
        .await
        .unwrap();
    assert!(s.dismissed.is_empty());
}

/// The alerts a report calls for, named `VantageSectionUnhealthy` for AccessURL.
async fn access_url_alert(agg: &Aggregator) -> Option<vantage_server::alerts::Alert> {
    use vantage_server::alerts::{Context, model};
    let (report, _) = agg.report().await.unwrap();
    let held = agg.held_severities().await.unwrap();
    let ctx = Context {
        base: "http://vantage".into(),
        deployment: "test".into(),
    };
    model::desired(&report, &held, &ctx)
        .into_iter()
        .find(|a| a.labels.get("section").is_some_and(|s| s == "AccessURL"))
}

#[tokio::test]
async fn a_section_alert_fires_only_after_raise_after_evaluations_and_clears_after_clear_after() {
    let agg = Aggregator::spawn(
        AggregatorConfig {
            raise_after: 3,
            clear_after: 2,
            ..config()
        },
        vec![],
    )
    .expect("aggregator");
    let p = attach(&agg, "fra-1", "a", 0).await;
    // Before the probe reports, nothing covers AccessURL (EVNT02): two healthy evaluations
    // clear that.
    ingest(&agg, &p, vec![obs(1, 200)]).await;
    ingest(&agg, &p, vec![obs(2, 200)]).await;
    let first = access_url_alert(&agg).await;
    assert!(first.is_none(), "{first:?}");
    // 502 is EACS04 (warning): the raw report shows it at once, the alert waits.
    for seq in 3..=4 {
        ingest(&agg, &p, vec![obs(seq, 502)]).await;
        let (r, _) = agg.report().await.unwrap();
        assert_eq!(r.access_url.report.base.severity, Severity::Warning);
        assert!(
            access_url_alert(&agg).await.is_none(),
            "evaluation {} of 3",
            seq - 2
        );
    }
    ingest(&agg, &p, vec![obs(5, 502)]).await;
    let a = access_url_alert(&agg).await.expect("fires at the third");
    assert_eq!(a.labels["severity"], "warning");
    assert_eq!(a.labels["codes"], "EACS04");
    // Clearing needs two healthy evaluations.
    ingest(&agg, &p, vec![obs(6, 200)]).await;
    assert!(access_url_alert(&agg).await.is_some(), "one of two");
    ingest(&agg, &p, vec![obs(7, 200)]).await;
    assert!(access_url_alert(&agg).await.is_none(), "cleared at two");
}

/// A report over its bound leaves out the per-vantage section reports and says so (EVNT05);
/// the aggregates stay, and back under the bound the vantages' reports return.
#[tokio::test]
async fn a_report_over_its_bound_leaves_out_the_vantages_reports() {
    let agg = Aggregator::spawn(
        AggregatorConfig {
            max_report_bytes: 50_000,
            ..config()
        },
        vec![],
    )
    .expect("aggregator");
    let body = |seq: u64, len: usize| {
        let mut o = obs(seq, 200);
        if let Some(ObsResult::AccessUrl(r)) = o.result.as_mut() {
            r.healthz_response = "x".repeat(len);
        }
        o
    };
    // Two vantages with 30 kB bodies: about 90 kB of JSON in all (the aggregate shows one).
    let a = attach(&agg, "fra-1", "a", 0).await;
    let b = attach(&agg, "fra-2", "b", 0).await;
    ingest(&agg, &a, vec![body(1, 30_000)]).await;
    ingest(&agg, &b, vec![body(1, 30_000)]).await;
    let (report, pb_report) = agg.report().await.unwrap();
    assert!(
        pb_report.json.len() <= 50_000,
        "{} bytes",
        pb_report.json.len()
    );
    assert!(report.access_url.vantage_reports.is_empty());
    assert_eq!(
        report.access_url.report.status_code, 200,
        "the aggregate stays"
    );
    assert_eq!(report.vantages.items.len(), 2, "the vantage list stays");
    let cut = report
        .vantages
        .warnings
        .iter()
        .find(|w| w.code == "EVNT05")
        .expect("EVNT05");
    assert!(
        cut.message.contains("over its bound of 48 KiB"),
        "{}",
        cut.message
    );
    assert_eq!(report.vantages.severity, vantage_proto::Severity::Warning);
    // Small bodies again: the vantages' own reports are back, and the warning gone.
    ingest(&agg, &a, vec![body(2, 10)]).await;
    ingest(&agg, &b, vec![body(2, 10)]).await;
    let (report, _) = agg.report().await.unwrap();
    assert_eq!(report.access_url.vantage_reports.len(), 2);
    assert!(report.vantages.warnings.iter().all(|w| w.code != "EVNT05"));
}

#[tokio::test(start_paused = true)]
async fn an_ack_that_finds_the_session_queue_full_is_sent_once_there_is_room() {
    let agg = Aggregator::spawn(config(), vec![]).expect("aggregator");
    // A session queue of one: the first ack fills it.
    let mut p = attach_queue(&agg, "fra-1", "inst-a", 0, 1).await;
    for seq in 1..=3 {
        ingest(&agg, &p, vec![obs(seq, 200)]).await;
    }
    assert_eq!(vantage(&agg, "fra-1").await.applied, 3);
    let acks = |rx: &mut mpsc::Receiver<Outgoing>| {
        let mut seen = Vec::new();
        while let Ok(Ok(m)) = rx.try_recv().map(|m| *m) {
            if let Some(Down::Ack(a)) = m.msg {
                seen.push(a.seq);
            }
        }
        seen
    };
    assert_eq!(acks(&mut p.rx), [1], "2 and 3 found the queue full");
    // There is room now: the aggregator's next tick sends the latest ack again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(acks(&mut p.rx), [3]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(acks(&mut p.rx).is_empty(), "sent once");
}
