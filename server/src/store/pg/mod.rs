//! The PostgreSQL store: [`PgStore`] implements [`Store`] and
//! [`RegistryStore`](crate::registry::RegistryStore) over a `deadpool-postgres` pool, shared
//! by every replica of the server.
//!
//! - **Schema**: versioned SQL files (`server/migrations/NNNN_name.sql`, embedded in the
//!   binary) applied by [`PgStore::connect`] in one transaction under
//!   `pg_advisory_xact_lock(`[`MIGRATION_LOCK`]`)`, recorded in `vantage_schema_migrations`;
//!   replicas starting together are safe and a re-run changes nothing.
//! - **Order**: appends to the observation log and the event history take a transaction-level
//!   advisory lock before drawing ids, so ids become visible in increasing order and a reader
//!   paging with "after id" never skips a row committed late.
//! - **Notifications**: appends and settings changes `NOTIFY` ([`crate::store::CHANNEL_OBSERVATIONS`],
//!   …) in their transaction; a dedicated connection `LISTEN`s and forwards them as
//!   [`Notice`]s, reconnecting with backoff (`listen` module).
//! - **Bounds**: every call is bounded by [`PgOptions::query_timeout`] (client side, and
//!   `statement_timeout` server side); errors say what was being done and never carry the
//!   connection URL (so no password).
//!
//! [`PgPinger`] is the Database check's pinger: a pooled connection and `SELECT 1`.

mod connect;
mod history;
mod leader;
mod listen;
mod migrate;
mod observations;
mod pinger;
mod registry;

use connect::*;
use migrate::migrate;
pub use migrate::{MIGRATIONS, Migration};
pub use pinger::PgPinger;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::future::BoxFuture;
use prost::Message as _;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_util::sync::{CancellationToken, DropGuard};
use vantage_probe::checks::database::{PingError, Pinger};
use vantage_proto::{Section, pb};

use crate::store::{
    AUDIT_PAGE, AuditEntry, CHANNEL_EVENTS, CHANNEL_OBSERVATIONS, CHANNEL_SETTINGS, DismissalNote,
    MAX_PAGE, NOTICE_CAPACITY, NewEvent, NewObservation, Notice, Store, StoreError, StoredEvent,
    StoredObservation, VantageRecord, applied_by_batch,
};

/// Default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default bound on every store call (and the server-side `statement_timeout`).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on opening one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Advisory lock key held while migrating ("vantage" + 1).
pub const MIGRATION_LOCK: i64 = 0x7661_6e74_6167_6501;
/// Advisory lock key serialising observation-log appends.
const OBSERVATION_LOCK: i64 = 0x7661_6e74_6167_6502;
/// Advisory lock key serialising event appends.
const EVENT_LOCK: i64 = 0x7661_6e74_6167_6503;

/// How to use the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most pooled connections (at least 1).
    pub pool_size: usize,
    /// Bound on every store call, and the server-side `statement_timeout`.
    pub query_timeout: Duration,
    /// Bound on opening one connection.
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: DEFAULT_POOL_SIZE,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

struct Inner {
    pool: Pool,
    query_timeout: Duration,
    target: String,
    notices: broadcast::Sender<Notice>,
    /// Whether this replica holds the clock lease (`leader` module).
    clock_leader: Arc<std::sync::atomic::AtomicBool>,
    _listener: DropGuard,
}

/// The PostgreSQL store. Cheap to clone; the notification listener stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to `url` (the `database_url` setting), apply pending migrations and start
    /// listening for other replicas' notifications. Errors name `database_url`.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let config = pg_config(url, &options)?;
        let target = target(&config);
        let pool = pool(config.clone(), &options)?;
        let connect_error = |e: Failure| StoreError::Unavailable {
            target: target.clone(),
            reason: e.0,
        };
        let migrate = async {
            let mut client = pool.get().await?;
            migrate(&mut client).await
        };
        match tokio::time::timeout(options.connect_timeout + options.query_timeout, migrate).await {
            Ok(r) => r.map_err(connect_error)?,
            Err(_) => {
                return Err(connect_error(Failure(
                    "timed out connecting and applying migrations".into(),
                )));
            }
        }

        let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
        let stop = CancellationToken::new();
        let ready = listen::spawn(
            config.clone(),
            options.connect_timeout,
            options.query_timeout,
            notices.clone(),
            stop.clone(),
        );
        let clock_leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
        leader::spawn(
            config.clone(),
            options.query_timeout.max(options.connect_timeout),
            clock_leader.clone(),
            stop.clone(),
        );
        let guard = stop.drop_guard();
        match tokio::time::timeout(options.connect_timeout + options.query_timeout, ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(reason))) => return Err(StoreError::Listen { target, reason }),
            Ok(Err(_)) | Err(_) => return Err(StoreError::ListenTimeout { target }),
        }
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                query_timeout: options.query_timeout,
                target,
                notices,
                clock_leader,
                _listener: guard,
            }),
        })
    }

    /// A pinger over this store's pool.
    pub fn pinger(&self) -> PgPinger {
        PgPinger {
            pool: self.inner.pool.clone(),
            timeout: self.inner.query_timeout,
        }
    }

    /// The applied schema versions, in order.
    pub async fn schema_versions(&self) -> Result<Vec<i32>, StoreError> {
        self.run("reading the schema version", |c| async move {
            let rows = c
                .query(
                    "SELECT version FROM vantage_schema_migrations ORDER BY version",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// Identifies the database cluster-wide (PostgreSQL's system identifier and the database
    /// name): the epoch of the revisions every replica on it shares.
    pub async fn cluster_id(&self) -> Result<String, StoreError> {
        self.run("reading the cluster id", |c| async move {
            let row = c
                .query_one(
                    "SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()",
                    &[],
                )
                .await?;
            Ok(row.get::<_, String>(0))
        })
        .await
    }

    /// Run `f` with a pooled connection, bounded by the query timeout; errors say `what`.
    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let work = async {
            let client = self.inner.pool.get().await?;
            f(client).await
        };
        match tokio::time::timeout(self.inner.query_timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Database { what, reason: e.0 }),
            Err(_) => {
                // The connection that timed out went back to the pool when its future was
                // dropped; it (and any idle one stuck on the same stalled peer) is discarded so
                // the next call starts afresh instead of waiting on it again.
                self.inner.pool.retain(|_, _| false);
                Err(StoreError::Timeout {
                    what,
                    after: self.inner.query_timeout,
                })
            }
        }
    }
}

impl Store for PgStore {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>> {
        Box::pin(self.run("loading settings", |c| async move {
            let row = c
                .query_opt("SELECT dismissed FROM vantage_settings WHERE id", &[])
                .await?;
            Ok(row.map(|r| sections_from(r.get(0))).unwrap_or_default())
        }))
    }

    fn load_dismissal_notes(&self) -> BoxFuture<'_, Result<Vec<DismissalNote>, StoreError>> {
        Box::pin(self.run("loading settings", |c| async move {
            let row = c
                .query_opt("SELECT notes FROM vantage_settings WHERE id", &[])
                .await?;
            Ok(row
                .and_then(|r| serde_json::from_value(r.get(0)).ok())
                .unwrap_or_default())
        }))
    }

    fn save_dismissal_notes(
        &self,
        dismissed: Vec<Section>,
        notes: Vec<DismissalNote>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("saving settings", move |mut c| async move {
            let names = section_names(&dismissed);
            let notes = serde_json::to_value(&notes).unwrap_or_default();
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO vantage_settings (id, dismissed, notes, updated_at) VALUES (true, $1, $2, now())
                 ON CONFLICT (id) DO UPDATE SET dismissed = EXCLUDED.dismissed, notes = EXCLUDED.notes,
                 updated_at = now()",
                &[&names, &notes],
            )
            .await?;
            tx.execute(
                "INSERT INTO vantage_settings_audit (actor, dismissed, notes) VALUES ($1, $2, $3)",
                &[&actor, &names, &notes],
            )
            .await?;
            tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL_SETTINGS])
                .await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    fn audit_log(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(self.run("reading the audit log", |c| async move {
            let limit = i64::try_from(AUDIT_PAGE).unwrap_or(i64::MAX);
            let rows = c
                .query(
                    "SELECT at, actor, dismissed, notes FROM (
                         SELECT id, at, actor, dismissed, notes FROM vantage_settings_audit
                         ORDER BY id DESC LIMIT $1
                     ) a ORDER BY id",
                    &[&limit],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| AuditEntry {
                    at: r.get(0),
                    actor: r.get(1),
                    dismissed: sections_from(r.get(2)),
                    notes: serde_json::from_value(r.get(3)).unwrap_or_default(),
                })
                .collect())
        }))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("pinging the database", |c| async move {
            c.simple_query("SELECT 1").await?;
            Ok(())
        }))
    }

    fn upsert_vantages(
        &self,
        mut vantages: Vec<VantageRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("saving vantages", move |mut c| async move {
            // One lock order for every writer of vantage rows: by name.
            vantages.sort_by(|a, b| a.name.cmp(&b.name));
            let tx = c.transaction().await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO vantage_vantages AS v
                         (name, region, version, labels, instance_id, last_seen_at, applied_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (name) DO UPDATE SET
                         region = EXCLUDED.region,
                         version = EXCLUDED.version,
                         labels = EXCLUDED.labels,
                         instance_id = EXCLUDED.instance_id,
                         last_seen_at = GREATEST(v.last_seen_at, EXCLUDED.last_seen_at),
                         applied_seq = CASE WHEN v.instance_id = EXCLUDED.instance_id
                             THEN GREATEST(v.applied_seq, EXCLUDED.applied_seq)
                             ELSE EXCLUDED.applied_seq END",
                )
                .await?;
            for v in &vantages {
                let labels = serde_json::to_value(&v.labels)
                    .map_err(|e| Failure(format!("encoding labels: {e}")))?;
                let seq = to_i64("applied_seq", v.applied_seq)?;
                tx.execute(
                    &stmt,
                    &[
                        &v.name,
                        &v.region,
                        &v.version,
                        &labels,
                        &v.instance_id,
                        &v.last_seen_at,
                        &seq,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    fn load_vantages(&self) -> BoxFuture<'_, Result<Vec<VantageRecord>, StoreError>> {
        Box::pin(self.run("loading vantages", |c| async move {
            let rows = c
                .query(
                    "SELECT name, region, version, labels, instance_id, last_seen_at, applied_seq
                     FROM vantage_vantages ORDER BY name",
                    &[],
                )
                .await?;
            rows.into_iter()
                .map(|r| {
                    let labels: serde_json::Value = r.get(3);
                    Ok(VantageRecord {
                        name: r.get(0),
                        region: r.get(1),
                        version: r.get(2),
                        labels: serde_json::from_value(labels)
                            .map_err(|e| Failure(format!("decoding labels: {e}")))?,
                        instance_id: r.get(4),
                        last_seen_at: r.get(5),
                        applied_seq: to_u64(r.get(6)),
                    })
                })
                .collect()
        }))
    }

    fn forget_vantage(&self, name: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.run("forgetting a vantage", move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(
                "DELETE FROM vantage_latest_observations WHERE vantage = $1",
                &[&name],
            )
            .await?;
            let n = tx
                .execute("DELETE FROM vantage_vantages WHERE name = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(n > 0)
        }))
    }

    fn append_observations(
        &self,
        observations: Vec<NewObservation>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        Box::pin(self.run("storing observations", move |c| {
            observations::append(c, observations)
        }))
    }

    fn observations_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>> {
        Box::pin(self.run("reading observations", move |c| async move {
            let rows = c
                .query(
                    "SELECT id, vantage, instance_id, observation FROM vantage_observation_log
                     WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after_id, &limit_of(limit)],
                )
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|r| decode_observation(r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect())
        }))
    }

    fn latest_observations(&self) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>> {
        Box::pin(self.run("reading the latest observations", |c| async move {
            let rows = c
                .query(
                    "SELECT id, vantage, instance_id, observation FROM vantage_latest_observations
                     ORDER BY id",
                    &[],
                )
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|r| decode_observation(r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect())
        }))
    }

    fn prune_observation_log(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(
            self.run("pruning the observation log", move |c| async move {
                let keep = i64::try_from(keep_last).unwrap_or(i64::MAX);
                Ok(c.execute(
                    "DELETE FROM vantage_observation_log WHERE id <= (
                     SELECT id FROM vantage_observation_log ORDER BY id DESC OFFSET $1 LIMIT 1
                 )",
                    &[&keep],
                )
                .await?)
            }),
        )
    }

    fn append_events(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        Box::pin(self.run("storing events", move |mut c| async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let n = events.len();
            let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.payload).collect();
            let (sections, times) = history::event_columns(&payloads);
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENT_LOCK])
                .await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO vantage_events (payload, section, at)
                     SELECT p, s, a FROM unnest($1::bytea[], $2::int2[], $3::timestamptz[])
                         WITH ORDINALITY AS t(p, s, a, n) ORDER BY n
                     RETURNING revision",
                )
                .await?;
            let mut revisions: Vec<i64> = tx
                .query(&insert, &[&payloads, &sections, &times])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            revisions.sort_unstable();
            if revisions.len() != n {
                return Err(Failure(format!(
                    "the history returned {} revisions for {n} events",
                    revisions.len()
                )));
            }
            let highest = revisions.last().copied().unwrap_or_default().to_string();
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL_EVENTS, &highest])
                .await?;
            tx.commit().await?;
            Ok(revisions.into_iter().map(to_u64).collect())
        }))
    }

    fn events_after(
        &self,
        after_revision: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(self.run("reading events", move |c| async move {
            let after = i64::try_from(after_revision).unwrap_or(i64::MAX);
            let rows = c
                .query(
                    "SELECT revision, payload FROM vantage_events
                     WHERE revision > $1 ORDER BY revision LIMIT $2",
                    &[&after, &limit_of(limit)],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| (to_u64(r.get(0)), r.get(1)))
                .collect())
        }))
    }

    fn oldest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.run("reading the oldest event", |c| async move {
            let row = c
                .query_one("SELECT min(revision) FROM vantage_events", &[])
                .await?;
            Ok(row.get::<_, Option<i64>>(0).map(to_u64))
        }))
    }

    fn latest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.run("reading the latest event", |c| async move {
            let row = c
                .query_one("SELECT max(revision) FROM vantage_events", &[])
                .await?;
            Ok(row.get::<_, Option<i64>>(0).map(to_u64))
        }))
    }

    fn prune_events(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.run("pruning events", move |c| async move {
            let keep = i64::try_from(keep_last).unwrap_or(i64::MAX);
            Ok(c.execute(
                "DELETE FROM vantage_events WHERE revision <= (
                     SELECT revision FROM vantage_events ORDER BY revision DESC OFFSET $1 LIMIT 1
                 )",
                &[&keep],
            )
            .await?)
        }))
    }

    fn history(
        &self,
        filter: crate::aggregator::HistoryFilter,
    ) -> BoxFuture<'_, Result<Option<pb::History>, StoreError>> {
        Box::pin(async move {
            self.run("reading the history", move |c| history::read(c, filter))
                .await
                .map(Some)
        })
    }

    fn listen(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    fn clock_leader(&self) -> bool {
        self.inner
            .clock_leader
            .load(std::sync::atomic::Ordering::Acquire)
    }
}
