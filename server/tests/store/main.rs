//! The store's tests, in one binary: one behaviour suite run against both [`MemoryStore`] and
//! [`PgStore`] (a fresh database per test), then what only PostgreSQL does — migrations,
//! LISTEN/NOTIFY, the Database check through [`PgPinger`], the write-behind queue while the
//! database is cut off, and the registry store.
//!
//! PostgreSQL must be reachable (`VANTAGE_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the tests fail otherwise, unless
//! `VANTAGE_SKIP_PG_TESTS=1` says to skip them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use vantage_probe::checks::database::{self, DEFAULT_THRESHOLD, PingError, Pinger, TIMEOUT};
use vantage_probe::rules;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::{Section, Severity, codes, pb};
use vantage_server::registry::{ProvisionerDaemon, ProxySource, RegistryStore, WorkspaceProxy};
use vantage_server::store::pg::{MIGRATIONS, PgOptions, PgPinger, PgStore};
use vantage_server::store::{
    MemoryStore, NewEvent, NewObservation, NotStored, Notice, Store, VantageRecord, WriteBehind,
    WriteBehindOptions,
};

use vantage_testkit::{CutProxy, TestDb, closed_tcp_port, eventually, test_db};

mod history;

const WAIT: Duration = Duration::from_secs(10);

fn now() -> DateTime<Utc> {
    // PostgreSQL keeps microseconds.
    Utc::now().trunc_subsecs(6)
}

fn obs(vantage: &str, instance: &str, seq: u64, check: &str) -> NewObservation {
    NewObservation {
        vantage: vantage.into(),
        instance_id: instance.into(),
        observation: pb::Observation {
            seq,
            check_id: check.into(),
            section: pb::Section::Database.into(),
            target: format!("db/{check}"),
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::try_from(seq).expect("small"),
                nanos: 0,
            }),
            elapsed: None,
            result: Some(ObsResult::Database(pb::DatabaseResult {
                reachable: true,
                pings: vec![prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000,
                }],
                threshold: None,
                failure: None,
            })),
        },
    }
}

async fn pg_store(db: &TestDb) -> Arc<dyn Store> {
    Arc::new(
        PgStore::connect(&db.url(), PgOptions::default())
            .await
            .expect("connect"),
    )
}

/// Run a behaviour against both stores: `<name>::memory` and `<name>::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::behaviour::$name(Arc::new(MemoryStore::default())).await;
            }

            #[tokio::test]
            async fn postgres() {
                let db = vantage_testkit::test_db!();
                super::behaviour::$name(pg_store(&db).await).await;
            }
        }
    };
}

both!(settings);
both!(dismissal_notes);
both!(vantages);
both!(observations);
both!(events);
both!(durability_and_ping);

mod behaviour {
    use super::*;

    pub async fn settings(store: Arc<dyn Store>) {
        assert!(store.load_dismissed().await.expect("load").is_empty());
        assert!(store.audit_log().await.expect("audit").is_empty());
        store
            .save_dismissed(vec![Section::Derp], "alice".into())
            .await
            .expect("save");
        store
            .save_dismissed(vec![Section::Derp, Section::Database], "bob".into())
            .await
            .expect("save");
        assert_eq!(
            store.load_dismissed().await.expect("load"),
            vec![Section::Derp, Section::Database]
        );
        let log = store.audit_log().await.expect("audit");
        let got: Vec<(&str, &[Section])> = log
            .iter()
            .map(|e| (e.actor.as_str(), e.dismissed.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("alice", &[Section::Derp][..]),
                ("bob", &[Section::Derp, Section::Database][..]),
            ]
        );
        assert!(log[0].at <= log[1].at);
        store
            .save_dismissed(vec![], "carol".into())
            .await
            .expect("save");
        assert!(store.load_dismissed().await.expect("load").is_empty());
        assert_eq!(store.audit_log().await.expect("audit").len(), 3);
    }

    pub async fn dismissal_notes(store: Arc<dyn Store>) {
        use vantage_server::store::DismissalNote;
        assert!(store.load_dismissal_notes().await.expect("load").is_empty());
        let until = now() + chrono::Duration::hours(2);
        let note = DismissalNote {
            section: Section::Derp,
            until: Some(until),
            reason: "relay upgrade".into(),
            actor: "alice".into(),
            at: now(),
        };
        store
            .save_dismissal_notes(
                vec![Section::Derp, Section::Database],
                vec![note.clone()],
                "alice".into(),
            )
            .await
            .expect("save");
        assert_eq!(
            store.load_dismissed().await.expect("load"),
            vec![Section::Derp, Section::Database]
        );
        let got = store.load_dismissal_notes().await.expect("load");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].section, Section::Derp);
        assert_eq!(got[0].reason, "relay upgrade");
        assert_eq!(got[0].actor, "alice");
        let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
        assert_eq!(got[0].until.map(ms), Some(ms(until)));
        let (dismissed, ends) = vantage_server::store::load_settings(&*store)
            .await
            .expect("load");
        assert_eq!(dismissed, vec![Section::Derp, Section::Database]);
        assert_eq!(
            ends.iter().map(|(s, t)| (*s, ms(*t))).collect::<Vec<_>>(),
            vec![(Section::Derp, ms(until))]
        );
        // Audited with the notes; a plain dismissal clears them.
        let log = store.audit_log().await.expect("audit");
        assert_eq!(log.last().expect("entry").notes[0].reason, "relay upgrade");
        store
            .save_dismissed(vec![Section::Derp], "bob".into())
            .await
            .expect("save");
        assert!(store.load_dismissal_notes().await.expect("load").is_empty());
        assert!(
            store
                .audit_log()
                .await
                .expect("audit")
                .last()
                .expect("entry")
                .notes
                .is_empty()
        );
    }

    pub async fn vantages(store: Arc<dyn Store>) {
        let t0 = now();
        let a = VantageRecord {
            name: "eu-1".into(),
            region: "eu".into(),
            version: "v1.0.0".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            instance_id: "i1".into(),
            last_seen_at: Some(t0),
            applied_seq: 5,
        };
        let b = VantageRecord {
            name: "us-1".into(),
            region: "us".into(),
            instance_id: "j1".into(),
            ..Default::default()
        };
        store
            .upsert_vantages(vec![b.clone(), a.clone()])
            .await
            .expect("upsert");
        assert_eq!(
            store.load_vantages().await.expect("load"),
            vec![a.clone(), b.clone()],
            "by name"
        );

        // Same instance: applied_seq keeps the maximum, last_seen_at only moves forward.
        let stale = VantageRecord {
            applied_seq: 3,
            last_seen_at: Some(t0 - TimeDelta::seconds(10)),
            version: "v1.1.0".into(),
            ..a.clone()
        };
        store.upsert_vantages(vec![stale]).await.expect("upsert");
        let got = &store.load_vantages().await.expect("load")[0];
        assert_eq!(got.applied_seq, 5);
        assert_eq!(got.last_seen_at, Some(t0));
        assert_eq!(got.version, "v1.1.0");

        // A new instance starts over.
        let restarted = VantageRecord {
            instance_id: "i2".into(),
            applied_seq: 1,
            last_seen_at: Some(t0 + TimeDelta::seconds(1)),
            ..a.clone()
        };
        store
            .upsert_vantages(vec![restarted.clone()])
            .await
            .expect("upsert");
        assert_eq!(store.load_vantages().await.expect("load")[0], restarted);

        assert!(store.forget_vantage("eu-1".into()).await.expect("forget"));
        assert!(!store.forget_vantage("eu-1".into()).await.expect("forget"));
        assert_eq!(store.load_vantages().await.expect("load"), vec![b]);
    }

    pub async fn observations(store: Arc<dyn Store>) {
        assert!(
            store
                .observations_after(0, 10)
                .await
                .expect("after")
                .is_empty()
        );
        let first = vec![
            obs("v", "i", 1, "c1"),
            obs("v", "i", 2, "c2"),
            obs("v", "i", 3, "c1"),
        ];
        let ids = store
            .append_observations(first.clone())
            .await
            .expect("append");
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

        let all = store.observations_after(0, 100).await.expect("after");
        assert_eq!(all.iter().map(|o| o.id).collect::<Vec<_>>(), ids);
        for (stored, sent) in all.iter().zip(&first) {
            assert_eq!(stored.vantage, sent.vantage);
            assert_eq!(stored.instance_id, sent.instance_id);
            assert_eq!(stored.observation, sent.observation, "round trip");
        }
        let rest = store.observations_after(ids[0], 100).await.expect("after");
        assert_eq!(rest.iter().map(|o| o.id).collect::<Vec<_>>(), ids[1..]);
        assert_eq!(
            store.observations_after(0, 1).await.expect("after").len(),
            1
        );

        // The latest per (vantage, check), in id order.
        let latest = store.latest_observations().await.expect("latest");
        let got: Vec<(i64, &str, u64)> = latest
            .iter()
            .map(|o| (o.id, o.observation.check_id.as_str(), o.observation.seq))
            .collect();
        assert_eq!(got, vec![(ids[1], "c2", 2), (ids[2], "c1", 3)]);

        // The vantage's applied_seq follows, even for a vantage never upserted.
        let v = store.load_vantages().await.expect("load");
        assert_eq!((v[0].name.as_str(), v[0].applied_seq), ("v", 3));
        assert_eq!(v[0].instance_id, "i");

        // A second batch: later ids, another vantage, applied_seq never goes back.
        let more = store
            .append_observations(vec![
                obs("w", "k", 7, "c1"),
                obs("v", "i", 2, "c2"),
                obs("w", "k", 8, "c1"),
            ])
            .await
            .expect("append");
        assert!(more[0] > ids[2] && more.windows(2).all(|w| w[0] < w[1]));
        let v = store.load_vantages().await.expect("load");
        let seqs: Vec<(&str, u64)> = v.iter().map(|r| (r.name.as_str(), r.applied_seq)).collect();
        assert_eq!(seqs, vec![("v", 3), ("w", 8)]);
        let latest = store.latest_observations().await.expect("latest");
        assert_eq!(
            latest.iter().map(|o| o.id).collect::<Vec<_>>(),
            vec![ids[2], more[1], more[2]]
        );
        assert!(
            store
                .append_observations(vec![])
                .await
                .expect("empty")
                .is_empty(),
            "an empty batch is fine"
        );

        // Retention keeps the newest entries; the latest table is untouched.
        assert_eq!(store.prune_observation_log(2).await.expect("prune"), 4);
        assert_eq!(store.prune_observation_log(2).await.expect("prune"), 0);
        let kept = store.observations_after(0, 100).await.expect("after");
        assert_eq!(kept.iter().map(|o| o.id).collect::<Vec<_>>(), more[1..]);
        assert_eq!(store.latest_observations().await.expect("latest").len(), 3);

        // Forgetting a vantage forgets its latest observations.
        assert!(store.forget_vantage("w".into()).await.expect("forget"));
        let latest = store.latest_observations().await.expect("latest");
        assert!(latest.iter().all(|o| o.vantage == "v"), "{latest:?}");
        assert_eq!(latest.len(), 2);
    }

    pub async fn events(store: Arc<dyn Store>) {
        assert_eq!(store.oldest_event_revision().await.expect("oldest"), None);
        assert_eq!(store.latest_event_revision().await.expect("latest"), None);
        let payload = |i: u8| NewEvent {
            payload: vec![i; usize::from(i)],
        };
        let first = store
            .append_events((1..=3).map(payload).collect())
            .await
            .expect("append");
        let second = store
            .append_events((4..=5).map(payload).collect())
            .await
            .expect("append");
        let revs: Vec<u64> = first.iter().chain(&second).copied().collect();
        assert_eq!(revs.len(), 5);
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        assert!(revs[0] >= 1);

        let all = store.events_after(0, 100).await.expect("after");
        assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), revs);
        assert_eq!(all[3].1, vec![4; 4]);
        let tail = store.events_after(revs[1], 2).await.expect("after");
        assert_eq!(tail.iter().map(|e| e.0).collect::<Vec<_>>(), revs[2..4]);
        assert_eq!(
            store.oldest_event_revision().await.expect("oldest"),
            Some(revs[0])
        );
        assert_eq!(
            store.latest_event_revision().await.expect("latest"),
            Some(revs[4])
        );

        assert_eq!(store.prune_events(2).await.expect("prune"), 3);
        assert_eq!(
            store.oldest_event_revision().await.expect("oldest"),
            Some(revs[3])
        );
        assert_eq!(store.events_after(0, 100).await.expect("after").len(), 2);
        // Revisions keep growing after a prune.
        let next = store.append_events(vec![payload(9)]).await.expect("append");
        assert!(next[0] > revs[4]);
        assert!(store.append_events(vec![]).await.expect("empty").is_empty());
    }

    pub async fn durability_and_ping(store: Arc<dyn Store>) {
        store.ping().await.expect("ping");
        let durable = store.is_durable();
        // The memory store never hears of anything; nothing to assert for PostgreSQL here.
        let mut rx = store.listen();
        if !durable {
            assert!(matches!(
                rx.try_recv(),
                Err(broadcast::error::TryRecvError::Empty)
            ));
        }
    }
}

#[tokio::test]
async fn memory_is_not_durable_and_postgres_is() {
    assert!(!MemoryStore::default().is_durable());
    let db = test_db!();
    assert!(pg_store(&db).await.is_durable());
}

#[tokio::test]
async fn migrations_apply_from_empty_and_rerun_idempotently() {
    let db = test_db!();
    let want: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let first = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("connect");
    assert_eq!(first.schema_versions().await.expect("versions"), want);
    first
        .save_dismissed(vec![Section::Derp], "alice".into())
        .await
        .expect("save");

    let again = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("reconnect");
    assert_eq!(again.schema_versions().await.expect("versions"), want);
    assert_eq!(
        again.load_dismissed().await.expect("load"),
        vec![Section::Derp],
        "a re-run keeps the data"
    );
    let c = db.client().await;
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        vec![
            "vantage_events",
            "vantage_latest_observations",
            "vantage_observation_log",
            "vantage_provisioner_daemons",
            "vantage_schema_migrations",
            "vantage_settings",
            "vantage_settings_audit",
            "vantage_vantages",
            "vantage_workspace_proxies",
        ]
    );
}

#[tokio::test]
async fn two_replicas_starting_at_once_both_migrate_safely() {
    let db = test_db!();
    let url = db.url();
    let (a, b) = tokio::join!(
        PgStore::connect(&url, PgOptions::default()),
        PgStore::connect(&url, PgOptions::default())
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(
        a.schema_versions().await.expect("versions"),
        b.schema_versions().await.expect("versions")
    );
    assert_eq!(
        a.schema_versions().await.expect("versions").len(),
        MIGRATIONS.len()
    );
}

#[tokio::test]
async fn connect_errors_name_the_field_and_hide_the_password() {
    let err = PgStore::connect("this is not :: a url", PgOptions::default())
        .await
        .expect_err("garbage");
    assert!(
        err.to_string().contains(
            "database_url: not a valid PostgreSQL URL or connection string (invalid connection string: "
        ),
        "{err}"
    );
    let err = PgStore::connect(
        "postgres://u:s3cret@127.0.0.1:notaport/x",
        PgOptions::default(),
    )
    .await
    .expect_err("bad port");
    assert!(err.to_string().contains("database_url: "), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let closed = closed_tcp_port();
    let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{closed}/x");
    let err = PgStore::connect(&url, PgOptions::default())
        .await
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(
        text.contains("database_url: cannot use postgres at 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("refused"), "says why: {text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// Wait for a notice matching `want`, skipping others.
async fn expect_notice(
    rx: &mut broadcast::Receiver<Notice>,
    what: &str,
    want: impl Fn(Notice) -> bool,
) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Ok(n)) if want(n) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test]
async fn another_replica_hears_of_observations_events_and_settings() {
    let db = test_db!();
    let writer = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("writer");
    let reader = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("reader");
    let mut rx = reader.listen();

    let ids = writer
        .append_observations(vec![obs("v", "i", 1, "c"), obs("v", "i", 2, "c")])
        .await
        .expect("append");
    let last = ids[1];
    expect_notice(&mut rx, "Observations(last id)", |n| {
        n == Notice::Observations(last)
    })
    .await;
    assert_eq!(
        reader.observations_after(0, 10).await.expect("after").len(),
        2,
        "what the notice announced is readable"
    );

    writer
        .save_dismissed(vec![Section::Websocket], "admin".into())
        .await
        .expect("save");
    expect_notice(&mut rx, "Settings", |n| n == Notice::Settings).await;
    assert_eq!(
        reader.load_dismissed().await.expect("load"),
        vec![Section::Websocket]
    );

    let revs = writer
        .append_events(vec![NewEvent { payload: vec![1] }])
        .await
        .expect("events");
    let rev = revs[0];
    expect_notice(&mut rx, "Events(rev)", |n| n == Notice::Events(rev)).await;
}

#[tokio::test]
async fn the_listener_reconnects_and_says_so() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let writer = pg_store(&db).await;
    let reader = PgStore::connect(&db.url_via(proxy.port()), PgOptions::default())
        .await
        .expect("reader via proxy");
    let mut rx = reader.listen();

    proxy.cut();
    expect_notice(&mut rx, "Reconnected", |n| n == Notice::Reconnected).await;
    let ids = writer
        .append_observations(vec![obs("v", "i", 1, "c")])
        .await
        .expect("append");
    let id = ids[0];
    expect_notice(&mut rx, "Observations after reconnecting", |n| {
        n == Notice::Observations(id)
    })
    .await;
}

/// A pinger that runs `before` ahead of its `n`-th ping (1-based).
struct Interrupting<'a> {
    inner: PgPinger,
    calls: AtomicUsize,
    at: usize,
    before: Box<dyn Fn() + Send + Sync + 'a>,
}

impl Pinger for Interrupting<'_> {
    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            (self.before)();
        }
        self.inner.ping()
    }
}

#[tokio::test]
async fn database_check_is_ok_against_the_real_server() {
    let db = test_db!();
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("connect");
    let pinger = store.pinger();
    // Warm the pool so the series measures round trips, as the server's steady state does.
    pinger.ping().await.expect("warm-up ping");
    let r = database::check(Some(&pinger), DEFAULT_THRESHOLD, TIMEOUT).await;
    assert_eq!(r.failure, None);
    assert!(r.reachable);
    assert_eq!(r.pings.len(), database::PINGS);
    let report = rules::database(&r);
    assert_eq!(report.base.severity, Severity::Ok, "{report:?}");
    assert_eq!(report.threshold_ms, 15);

    // A zero threshold falls back to 15 ms.
    let r = database::check(Some(&pinger), Duration::ZERO, TIMEOUT).await;
    assert_eq!(rules::database(&r).threshold_ms, 15);
}

#[tokio::test]
async fn database_check_fails_with_edb01_on_a_closed_port() {
    let db = test_db!();
    let closed = closed_tcp_port();
    let pinger = PgPinger::new(&db.url_via(closed), &PgOptions::default()).expect("pinger");
    let r = database::check(Some(&pinger), DEFAULT_THRESHOLD, TIMEOUT).await;
    let f = r.failure.clone().expect("a failure");
    assert_eq!(f.code, codes::EDB01);
    assert!(
        f.message
            .starts_with("ping database: connecting: error connecting to server: "),
        "{}",
        f.message
    );
    assert!(f.message.contains("refused"), "says why: {}", f.message);
    assert!(r.pings.is_empty() && !r.reachable);
    assert_eq!(rules::database(&r).base.severity, Severity::Error);
}

#[tokio::test]
async fn database_check_fails_with_edb01_when_the_connection_is_cut_mid_run() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let inner = PgPinger::new(&db.url_via(proxy.port()), &PgOptions::default()).expect("pinger");
    let pinger = Interrupting {
        inner,
        calls: AtomicUsize::new(0),
        at: 3,
        before: Box::new(|| {
            proxy.refuse(true);
            proxy.cut();
        }),
    };
    let r = database::check(Some(&pinger), DEFAULT_THRESHOLD, TIMEOUT).await;
    let f = r.failure.clone().expect("a failure");
    assert_eq!(f.code, codes::EDB01, "{}", f.message);
    assert_eq!(r.pings.len(), 2, "the first failure stops the series");
    let report = rules::database(&r);
    assert_eq!(report.base.severity, Severity::Error);
    assert!(!report.healthy && !report.reachable);
}

#[tokio::test]
async fn database_check_warns_edb02_when_pings_are_slow() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::from_millis(20)).await;
    let pinger = PgPinger::new(&db.url_via(proxy.port()), &PgOptions::default()).expect("pinger");
    let r = database::check(Some(&pinger), Duration::from_millis(15), TIMEOUT).await;
    assert_eq!(r.failure, None);
    let report = rules::database(&r);
    assert_eq!(report.base.severity, Severity::Warning, "{report:?}");
    assert_eq!(report.base.warnings[0].code, codes::EDB02);
    assert!(report.latency_ms >= 40, "{}", report.latency_ms);
    assert!(report.healthy && report.reachable);
}

fn quick() -> PgOptions {
    PgOptions {
        query_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..PgOptions::default()
    }
}

fn quick_retries(capacity: usize) -> WriteBehindOptions {
    WriteBehindOptions {
        capacity,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..WriteBehindOptions::default()
    }
}

#[tokio::test]
async fn write_behind_queues_while_the_database_is_cut_and_loses_nothing() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(&db.url_via(proxy.port()), quick())
            .await
            .expect("connect"),
    );
    let wb = WriteBehind::spawn(store.clone(), quick_retries(1000));
    let early = wb.submit(vec![obs("v", "i", 1, "c")]);
    let first_id = early.stored().await.expect("stored while up")[0];

    proxy.refuse(true);
    proxy.cut();
    let mut receipts = Vec::new();
    for seq in 2..=11 {
        receipts.push(wb.submit(vec![obs("v", "i", seq, "c")]));
        assert_eq!(wb.queued(), seq - 1, "the queue grows");
    }
    eventually(WAIT, "writes failed and are retried", || async {
        (wb.failed_writes() >= 2).then_some(())
    })
    .await;
    assert_eq!(wb.queued(), 10, "nothing was stored or dropped while cut");

    proxy.refuse(false);
    let mut ids = vec![first_id];
    for r in receipts {
        ids.extend(r.stored().await.expect("stored once the database is back"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(wb.dropped(), 0);
    eventually(WAIT, "the queue is empty", || async {
        (wb.queued() == 0).then_some(())
    })
    .await;
    assert_eq!(*wb.stored().borrow(), ids[10]);

    let stored = store.observations_after(0, 100).await.expect("after");
    let seqs: Vec<u64> = stored.iter().map(|o| o.observation.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert_eq!(stored.iter().map(|o| o.id).collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn write_behind_overflow_drops_the_oldest_and_counts_them() {
    let db = test_db!();
    let proxy = CutProxy::start(db.server_addr(), Duration::ZERO).await;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(&db.url_via(proxy.port()), quick())
            .await
            .expect("connect"),
    );
    proxy.refuse(true);
    proxy.cut();
    let wb = WriteBehind::spawn(store.clone(), quick_retries(2));
    let receipts: Vec<_> = (1..=5)
        .map(|seq| wb.submit(vec![obs("v", "i", seq, "c")]))
        .collect();
    eventually(WAIT, "three were dropped", || async {
        (wb.dropped() == 3).then_some(())
    })
    .await;
    eventually(WAIT, "a write failed since", || async {
        (wb.failed_writes() >= 1).then_some(())
    })
    .await;
    assert_eq!(wb.queued(), 2);
    // Too big for the queue at all: dropped and counted at once.
    let huge = wb.submit((6..=8).map(|seq| obs("v", "i", seq, "c")).collect());
    assert_eq!(huge.stored().await, Err(NotStored));
    assert_eq!(wb.dropped(), 6);

    proxy.refuse(false);
    let mut outcomes = Vec::new();
    for r in receipts {
        outcomes.push(r.stored().await.is_ok());
    }
    assert_eq!(outcomes, vec![false, false, false, true, true]);
    let seqs: Vec<u64> = store
        .observations_after(0, 100)
        .await
        .expect("after")
        .iter()
        .map(|o| o.observation.seq)
        .collect();
    assert_eq!(seqs, vec![4, 5], "the newest survive");
}

#[tokio::test]
async fn registry_store_keeps_the_newer_entry() {
    let db = test_db!();
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .expect("connect");
    let t = now();
    let daemon = ProvisionerDaemon {
        id: "d-id".into(),
        organization_id: "00000000-0000-0000-0000-000000000000".into(),
        key_id: "00000000-0000-0000-0000-000000000000".into(),
        name: "d1".into(),
        version: "v2.26.0".into(),
        api_version: "1.9".into(),
        provisioners: vec!["terraform".into()],
        tags: BTreeMap::from([("scope".into(), "organization".into())]),
        created_at: t - TimeDelta::hours(1),
        last_seen_at: Some(t),
    };
    store.save_daemon(daemon.clone()).await.expect("save");
    store
        .save_daemon(ProvisionerDaemon {
            version: "v0.1.0".into(),
            last_seen_at: Some(t - TimeDelta::seconds(5)),
            ..daemon.clone()
        })
        .await
        .expect("older save");
    let proxy = WorkspaceProxy {
        id: "p-id".into(),
        name: "eu-1".into(),
        display_name: "Europe".into(),
        icon_url: "/emojis/1f1ea-1f1fa.png".into(),
        url: "https://eu-1.example.com".into(),
        region: "eu".into(),
        derp_enabled: true,
        derp_only: false,
        version: "v2.26.0".into(),
        created_at: t - TimeDelta::hours(2),
        updated_at: t,
        source: ProxySource::Registered,
    };
    store.save_proxy(proxy.clone()).await.expect("save");
    store
        .save_proxy(WorkspaceProxy {
            url: "https://old.example.com".into(),
            updated_at: t - TimeDelta::seconds(1),
            ..proxy.clone()
        })
        .await
        .expect("older save");
    let newer = WorkspaceProxy {
        source: ProxySource::Config,
        updated_at: t + TimeDelta::seconds(1),
        ..proxy.clone()
    };
    store.save_proxy(newer.clone()).await.expect("newer save");

    let snap = store.load_registry().await.expect("load");
    assert_eq!(snap.daemons, vec![daemon]);
    assert_eq!(snap.proxies, vec![newer.clone()]);
    // A proxy imported from Coder keeps its source across a reload.
    let imported = WorkspaceProxy {
        source: ProxySource::Coder,
        updated_at: t + TimeDelta::seconds(2),
        ..newer
    };
    store
        .save_proxy(imported.clone())
        .await
        .expect("coder save");
    let snap = store.load_registry().await.expect("load");
    assert_eq!(snap.proxies, vec![imported]);

    store
        .delete_daemons(vec!["d1".into(), "nope".into()])
        .await
        .expect("delete");
    store.delete_proxy("eu-1".into()).await.expect("delete");
    let snap = store.load_registry().await.expect("load");
    assert!(snap.daemons.is_empty() && snap.proxies.is_empty());
}
