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

mod listen;
mod registry;

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
    AUDIT_PAGE, AuditEntry, CHANNEL_EVENTS, CHANNEL_OBSERVATIONS, CHANNEL_SETTINGS, MAX_PAGE,
    NOTICE_CAPACITY, NewEvent, NewObservation, Notice, Store, StoreError, StoredEvent,
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

/// One schema migration, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order. Append; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../../../migrations/0001_initial.sql"),
}];

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

/// Why a database step failed; never holds the URL.
struct Failure(String);

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure(pg_text(&e))
    }
}

impl From<PoolError> for Failure {
    fn from(e: PoolError) -> Self {
        Failure(match e {
            PoolError::Timeout(_) => "timed out taking a pooled connection".to_owned(),
            PoolError::Backend(e) => format!("connecting: {}", pg_text(&e)),
            PoolError::Closed => "the connection pool is closed".to_owned(),
            other => format!("taking a pooled connection: {other}"),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A driver error as text: the server's message for database errors, the driver's otherwise.
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            // The driver's Display leaves the cause out ("error connecting to server").
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// The connection settings from `url`, bounded by `options`. Errors name `database_url` and
/// never echo it.
fn pg_config(url: &str, options: &PgOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Invalid {
        field: "database_url",
        reason: format!(
            "not a valid PostgreSQL URL or connection string ({})",
            pg_text(&e)
        ),
    })?;
    if config.get_hosts().is_empty() {
        return Err(StoreError::Invalid {
            field: "database_url",
            reason: "names no host (expected e.g. postgres://user@host:5432/db)".into(),
        });
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    let ms = options.query_timeout.as_millis().max(1);
    let opts = match config.get_options() {
        Some(o) if o.contains("statement_timeout") => o.to_owned(),
        Some(o) => format!("{o} -c statement_timeout={ms}"),
        None => format!("-c statement_timeout={ms}"),
    };
    config.options(opts);
    if config.get_application_name().is_none() {
        config.application_name("vantaged");
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// `host:port/dbname` of a config, for messages (no user, no password).
fn target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{}/{db}", hosts.join(","))
}

fn pool(config: tokio_postgres::Config, options: &PgOptions) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.query_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.query_timeout))
        .build()
        .map_err(|e| StoreError::Invalid {
            field: "database_url",
            reason: format!("building the connection pool: {e}"),
        })
}

fn to_i64(what: &str, v: u64) -> Result<i64, Failure> {
    i64::try_from(v).map_err(|_| Failure(format!("{what} {v} is too large to store")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.min(MAX_PAGE)).unwrap_or(i64::MAX)
}

fn sections_from(names: Vec<String>) -> Vec<Section> {
    names
        .into_iter()
        .filter_map(|n| match Section::from_str(&n) {
            Ok(s) => Some(s),
            Err(_) => {
                tracing::warn!(section = %n, "ignoring an unknown stored section");
                None
            }
        })
        .collect()
}

fn section_names(sections: &[Section]) -> Vec<String> {
    sections
        .iter()
        .map(|s| s.settings_name().to_owned())
        .collect()
}

fn decode_observation(
    id: i64,
    vantage: String,
    instance_id: String,
    bytes: &[u8],
) -> Option<StoredObservation> {
    match pb::Observation::decode(bytes) {
        Ok(observation) => Some(StoredObservation {
            id,
            vantage,
            instance_id,
            observation,
        }),
        Err(e) => {
            tracing::warn!(id, error = %e, "skipping a stored observation that does not decode");
            None
        }
    }
}

struct Inner {
    pool: Pool,
    query_timeout: Duration,
    target: String,
    notices: broadcast::Sender<Notice>,
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
            config,
            options.connect_timeout,
            options.query_timeout,
            notices.clone(),
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
            Err(_) => Err(StoreError::Timeout {
                what,
                after: self.inner.query_timeout,
            }),
        }
    }
}

/// Apply the migrations not yet applied, in one transaction under [`MIGRATION_LOCK`].
async fn migrate(client: &mut Object) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS vantage_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM vantage_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|e| {
            Failure(format!(
                "applying migration {} ({}): {}",
                m.version,
                m.name,
                pg_text(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO vantage_schema_migrations (version) VALUES ($1)",
            &[&m.version],
        )
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied a schema migration"
        );
    }
    if let Some(newer) = applied
        .iter()
        .filter(|v| !MIGRATIONS.iter().any(|m| m.version == **v))
        .max()
    {
        tracing::warn!(
            version = newer,
            "the database has a newer schema than this server knows; running with it"
        );
    }
    tx.commit().await?;
    Ok(())
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

    fn save_dismissed(
        &self,
        dismissed: Vec<Section>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.run("saving settings", move |mut c| async move {
            let names = section_names(&dismissed);
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO vantage_settings (id, dismissed, updated_at) VALUES (true, $1, now())
                 ON CONFLICT (id) DO UPDATE SET dismissed = EXCLUDED.dismissed, updated_at = now()",
                &[&names],
            )
            .await?;
            tx.execute(
                "INSERT INTO vantage_settings_audit (actor, dismissed) VALUES ($1, $2)",
                &[&actor, &names],
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
                    "SELECT at, actor, dismissed FROM (
                         SELECT id, at, actor, dismissed FROM vantage_settings_audit
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
        Box::pin(self.run("storing observations", move |mut c| async move {
            if observations.is_empty() {
                return Ok(Vec::new());
            }
            let n = observations.len();
            let mut vantages = Vec::with_capacity(n);
            let mut instances = Vec::with_capacity(n);
            let mut checks = Vec::with_capacity(n);
            let mut seqs = Vec::with_capacity(n);
            let mut bodies = Vec::with_capacity(n);
            for o in &observations {
                vantages.push(o.vantage.clone());
                instances.push(o.instance_id.clone());
                checks.push(o.observation.check_id.clone());
                seqs.push(to_i64("seq", o.observation.seq)?);
                bodies.push(o.observation.encode_to_vec());
            }
            let applied = applied_by_batch(&observations);
            let mut a_names = Vec::with_capacity(applied.len());
            let mut a_instances = Vec::with_capacity(applied.len());
            let mut a_seqs = Vec::with_capacity(applied.len());
            for (name, (instance, seq)) in &applied {
                a_names.push((*name).to_owned());
                a_instances.push((*instance).to_owned());
                a_seqs.push(to_i64("seq", *seq)?);
            }

            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OBSERVATION_LOCK])
                .await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO vantage_observation_log
                         (vantage, instance_id, check_id, seq, observation)
                     SELECT v, i, c, s, o
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[])
                         WITH ORDINALITY AS t(v, i, c, s, o, n)
                     ORDER BY n
                     RETURNING id",
                )
                .await?;
            let mut ids: Vec<i64> = tx
                .query(&insert, &[&vantages, &instances, &checks, &seqs, &bodies])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            // Ids are drawn in row order; RETURNING's order is not promised.
            ids.sort_unstable();
            if ids.len() != n {
                return Err(Failure(format!(
                    "the log returned {} ids for {n} observations",
                    ids.len()
                )));
            }

            // The latest per (vantage, check, target): the last of each in this batch.
            let mut latest: BTreeMap<(&str, String), usize> = BTreeMap::new();
            for (i, o) in observations.iter().enumerate() {
                latest.insert((&o.vantage, crate::store::latest_key(&o.observation)), i);
            }
            let mut l_vantages = Vec::with_capacity(latest.len());
            let mut l_checks = Vec::with_capacity(latest.len());
            let mut l_ids = Vec::with_capacity(latest.len());
            let mut l_instances = Vec::with_capacity(latest.len());
            let mut l_bodies = Vec::with_capacity(latest.len());
            for ((v, check), i) in latest {
                l_vantages.push(v.to_owned());
                l_checks.push(check);
                l_ids.push(ids[i]);
                l_instances.push(instances[i].clone());
                l_bodies.push(bodies[i].clone());
            }
            let upsert_applied = tx
                .prepare_cached(
                    "INSERT INTO vantage_vantages AS v (name, instance_id, applied_seq)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
                     ON CONFLICT (name) DO UPDATE SET
                         instance_id = EXCLUDED.instance_id,
                         applied_seq = CASE WHEN v.instance_id = EXCLUDED.instance_id
                             THEN GREATEST(v.applied_seq, EXCLUDED.applied_seq)
                             ELSE EXCLUDED.applied_seq END",
                )
                .await?;
            tx.execute(&upsert_applied, &[&a_names, &a_instances, &a_seqs])
                .await?;
            let upsert_latest = tx
                .prepare_cached(
                    "INSERT INTO vantage_latest_observations AS l
                         (vantage, check_id, id, instance_id, observation)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[])
                     ON CONFLICT (vantage, check_id) DO UPDATE SET
                         id = EXCLUDED.id,
                         instance_id = EXCLUDED.instance_id,
                         observation = EXCLUDED.observation
                     WHERE l.id < EXCLUDED.id",
                )
                .await?;
            tx.execute(
                &upsert_latest,
                &[&l_vantages, &l_checks, &l_ids, &l_instances, &l_bodies],
            )
            .await?;
            let highest = ids.last().copied().unwrap_or_default().to_string();
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL_OBSERVATIONS, &highest],
            )
            .await?;
            tx.commit().await?;
            Ok(ids)
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
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENT_LOCK])
                .await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO vantage_events (payload)
                     SELECT p FROM unnest($1::bytea[]) WITH ORDINALITY AS t(p, n) ORDER BY n
                     RETURNING revision",
                )
                .await?;
            let mut revisions: Vec<i64> = tx
                .query(&insert, &[&payloads])
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

    fn listen(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }
}

/// The Database check's pinger: take a pooled connection and run `SELECT 1`, bounded by the
/// query timeout. Builds its pool lazily, so it works (and fails with EDB01) even when the
/// database is down at start.
#[derive(Clone)]
pub struct PgPinger {
    pool: Pool,
    timeout: Duration,
}

impl PgPinger {
    /// A pinger for `url` (the `database_url` setting); connects on the first ping.
    pub fn new(url: &str, options: &PgOptions) -> Result<PgPinger, StoreError> {
        let config = pg_config(url, options)?;
        Ok(PgPinger {
            pool: pool(config, options)?,
            timeout: options.query_timeout,
        })
    }
}

impl fmt::Debug for PgPinger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPinger").finish_non_exhaustive()
    }
}

impl Pinger for PgPinger {
    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        Box::pin(async move {
            let work = async {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| PingError::Unavailable(Failure::from(e).0))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| PingError::Query(pg_text(&e)))?;
                Ok(())
            };
            match tokio::time::timeout(self.timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(PingError::Timeout(self.timeout)),
            }
        })
    }
}
