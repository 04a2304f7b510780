//! `Store::history` over PostgreSQL: section transitions and per-check samples written over a
//! span of days, read back by time and section, oldest first, within the documented bounds.
//! The memory store logs no history (the aggregator's ring answers instead).

use prost::Message as _;
use vantage_server::aggregator::{HistoryFilter, MAX_SAMPLES, MAX_TRANSITIONS};

use super::*;

/// 2026-11-01T00:00:00Z: the start of the simulated span.
const T0: i64 = 1_793_491_200;
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("valid time")
}

fn secs(t: Option<&prost_types::Timestamp>) -> i64 {
    t.expect("a time").seconds
}

fn change(time: i64, section: pb::Section, vantage: &str, to: pb::Severity) -> NewEvent {
    let ev = pb::WatchEvent {
        revision: 0,
        epoch: String::new(),
        time: ts(time),
        event: Some(pb::watch_event::Event::SectionChange(pb::SectionChange {
            section: section.into(),
            vantage: vantage.into(),
            from: pb::Severity::Ok.into(),
            to: to.into(),
            error: if to == pb::Severity::Error {
                "EDERP01 down".into()
            } else {
                String::new()
            },
            warnings: Vec::new(),
        })),
    };
    NewEvent {
        payload: ev.encode_to_vec(),
    }
}

fn other_event(time: i64) -> NewEvent {
    let ev = pb::WatchEvent {
        time: ts(time),
        event: Some(pb::watch_event::Event::VantageChange(pb::VantageChange {
            vantage: "fra-1".into(),
            change: "attached".into(),
            kind: 0,
        })),
        ..Default::default()
    };
    NewEvent {
        payload: ev.encode_to_vec(),
    }
}

/// A DERP node outcome of `fra-1` at `time`: failing with "down" when `fail`.
fn derp(seq: u64, time: i64, fail: bool) -> NewObservation {
    NewObservation {
        vantage: "fra-1".into(),
        instance_id: "i1".into(),
        observation: pb::Observation {
            seq,
            check_id: "derp-1".into(),
            section: pb::Section::Derp.into(),
            target: "derp/1/a".into(),
            observed_at: ts(time),
            elapsed: Some(prost_types::Duration {
                seconds: 0,
                nanos: 25_000_000,
            }),
            result: Some(ObsResult::DerpNode(Box::new(pb::DerpNodeResult {
                error: if fail { "down".into() } else { String::new() },
                ..Default::default()
            }))),
        },
    }
}

/// An Access URL outcome of `fra-1` at `time` (always fine).
fn access(seq: u64, time: i64) -> NewObservation {
    NewObservation {
        vantage: "fra-1".into(),
        instance_id: "i1".into(),
        observation: pb::Observation {
            seq,
            check_id: "access-url".into(),
            section: pb::Section::AccessUrl.into(),
            target: String::new(),
            observed_at: ts(time),
            elapsed: None,
            result: Some(ObsResult::AccessUrl(pb::AccessUrlResult {
                reachable: true,
                status_code: 200,
                ..Default::default()
            })),
        },
    }
}

#[tokio::test]
async fn the_memory_store_leaves_history_to_the_ring() {
    let store = MemoryStore::default();
    assert!(
        store
            .history(HistoryFilter::default())
            .await
            .expect("read")
            .is_none()
    );
}

/// 130 DERP outcomes an hour apart (5.4 days; every third fails), 6 Access URL outcomes a day
/// apart, and section changes over six days.
async fn write_span(store: &dyn Store) {
    let mut batch = Vec::new();
    let mut seq = 0;
    for i in 0..130 {
        seq += 1;
        batch.push(derp(seq, T0 + i * HOUR, i % 3 == 2));
        if i % 24 == 0 {
            seq += 1;
            batch.push(access(seq, T0 + (i / 24) * DAY + 60));
        }
    }
    // Written in several batches, out of time order across batches.
    let (first, second) = batch.split_at(70);
    store
        .append_observations(second.to_vec())
        .await
        .expect("append");
    store
        .append_observations(first.to_vec())
        .await
        .expect("append");
    let mut events = Vec::new();
    for d in 0..6 {
        let to = if d % 2 == 0 {
            pb::Severity::Error
        } else {
            pb::Severity::Ok
        };
        events.push(change(T0 + d * DAY + 30, pb::Section::Derp, "", to));
        events.push(change(T0 + d * DAY + 40, pb::Section::Derp, "fra-1", to));
        events.push(other_event(T0 + d * DAY + 50));
        events.push(change(
            T0 + d * DAY + 70,
            pb::Section::AccessUrl,
            "",
            pb::Severity::Ok,
        ));
    }
    store.append_events(events).await.expect("events");
}

#[tokio::test]
async fn postgres_answers_history_from_its_logs_by_time_and_section() {
    let db = test_db!();
    let store = pg_store(&db).await;
    write_span(&*store).await;

    let all = store
        .history(HistoryFilter::default())
        .await
        .expect("read")
        .expect("postgres logs history");
    // 18 section changes, oldest first; the vantage change is no transition.
    assert_eq!(all.transitions.len(), 18);
    let times: Vec<i64> = all
        .transitions
        .iter()
        .map(|t| secs(t.time.as_ref()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let first = &all.transitions[0];
    assert_eq!(
        (
            first.section,
            first.vantage.as_str(),
            first.to,
            first.error.as_str()
        ),
        (
            i32::from(pb::Section::Derp),
            "",
            i32::from(pb::Severity::Error),
            "EDERP01 down"
        )
    );
    // Two series, by vantage, section and target; DERP keeps its newest MAX_SAMPLES.
    assert_eq!(all.checks.len(), 2);
    let (url, node) = (&all.checks[0], &all.checks[1]);
    assert_eq!(url.section, i32::from(pb::Section::AccessUrl));
    assert_eq!(url.samples.len(), 6);
    assert!(url.samples.iter().all(|s| s.ok && s.error.is_empty()));
    assert_eq!(
        (node.vantage.as_str(), node.target.as_str()),
        ("fra-1", "derp/1/a")
    );
    assert_eq!(node.samples.len(), MAX_SAMPLES);
    let hours: Vec<i64> = node
        .samples
        .iter()
        .map(|s| (secs(s.time.as_ref()) - T0) / HOUR)
        .collect();
    assert_eq!(
        hours,
        (10..130).collect::<Vec<_>>(),
        "the newest, oldest first"
    );
    for (s, h) in node.samples.iter().zip(&hours) {
        let fail = h % 3 == 2;
        assert_eq!(s.ok, !fail, "hour {h}");
        assert_eq!(s.error, if fail { "down" } else { "" }, "hour {h}");
        assert_eq!(s.duration.map(|d| d.nanos), Some(25_000_000));
    }

    // A `since` before anything PostgreSQL can store selects everything.
    let earliest = store
        .history(HistoryFilter {
            section: None,
            since: Some(DateTime::<Utc>::MIN_UTC),
        })
        .await
        .expect("read")
        .expect("postgres logs history");
    assert_eq!(earliest, all);

    // Since day 3, DERP only.
    let since = at(T0 + 3 * DAY);
    let derp_only = store
        .history(HistoryFilter {
            section: Some(Section::Derp),
            since: Some(since),
        })
        .await
        .expect("read")
        .expect("postgres logs history");
    assert_eq!(derp_only.transitions.len(), 6, "days 3, 4 and 5, two each");
    assert!(derp_only.transitions.iter().all(|t| {
        t.section == i32::from(pb::Section::Derp) && secs(t.time.as_ref()) >= T0 + 3 * DAY
    }));
    assert_eq!(derp_only.checks.len(), 1);
    let samples = &derp_only.checks[0].samples;
    assert_eq!(samples.len(), 130 - 72);
    assert_eq!(secs(samples[0].time.as_ref()), T0 + 72 * HOUR);

    // Access URL since day 3: its own transitions and samples.
    let url = store
        .history(HistoryFilter {
            section: Some(Section::AccessUrl),
            since: Some(since),
        })
        .await
        .expect("read")
        .expect("postgres logs history");
    assert_eq!(url.transitions.len(), 3);
    assert_eq!(url.checks.len(), 1);
    assert_eq!(url.checks[0].samples.len(), 3);

    // Nothing after the span; a forgotten vantage's series are gone, its transitions stay.
    let later = HistoryFilter {
        section: None,
        since: Some(at(T0 + 30 * DAY)),
    };
    let none = store.history(later).await.expect("read").expect("logs");
    assert!(none.transitions.is_empty() && none.checks.is_empty());
    assert!(store.forget_vantage("fra-1".into()).await.expect("forget"));
    let forgotten = store
        .history(HistoryFilter::default())
        .await
        .expect("read")
        .expect("logs");
    assert!(forgotten.checks.is_empty());
    assert_eq!(forgotten.transitions.len(), 18);
}

#[tokio::test]
async fn postgres_history_keeps_the_newest_transitions() {
    let db = test_db!();
    let store = pg_store(&db).await;
    let n = i64::try_from(MAX_TRANSITIONS).expect("small") + 25;
    let events: Vec<NewEvent> = (0..n)
        .map(|i| {
            change(
                T0 + i * 60,
                pb::Section::Derp,
                "fra-1",
                pb::Severity::Warning,
            )
        })
        .collect();
    store.append_events(events).await.expect("events");
    let started = std::time::Instant::now();
    let h = store
        .history(HistoryFilter::default())
        .await
        .expect("read")
        .expect("logs");
    println!(
        "read {} of {n} transitions in {:?}",
        h.transitions.len(),
        started.elapsed()
    );
    assert_eq!(h.transitions.len(), MAX_TRANSITIONS);
    assert_eq!(secs(h.transitions[0].time.as_ref()), T0 + 25 * 60);
    assert_eq!(
        secs(h.transitions[MAX_TRANSITIONS - 1].time.as_ref()),
        T0 + (n - 1) * 60
    );
}
