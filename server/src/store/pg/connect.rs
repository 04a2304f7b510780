//! Connecting: the URL, the pool, and errors that never carry the URL.

use super::*;

/// Why a database step failed; never holds the URL.
pub(super) struct Failure(pub(super) String);

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
pub(super) fn pg_text(e: &tokio_postgres::Error) -> String {
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
pub(super) fn pg_config(
    url: &str,
    options: &PgOptions,
) -> Result<tokio_postgres::Config, StoreError> {
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
pub(super) fn target(config: &tokio_postgres::Config) -> String {
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

pub(super) fn pool(
    config: tokio_postgres::Config,
    options: &PgOptions,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        // A pooled connection is checked with a round trip before it is handed out again
        // (bounded by the recycle timeout): one stuck on a frozen peer is replaced, not reused.
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
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

pub(super) fn to_i64(what: &str, v: u64) -> Result<i64, Failure> {
    i64::try_from(v).map_err(|_| Failure(format!("{what} {v} is too large to store")))
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

pub(super) fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.min(MAX_PAGE)).unwrap_or(i64::MAX)
}

pub(super) fn sections_from(names: Vec<String>) -> Vec<Section> {
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

pub(super) fn section_names(sections: &[Section]) -> Vec<String> {
    sections
        .iter()
        .map(|s| s.settings_name().to_owned())
        .collect()
}

pub(super) fn decode_observation(
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
