//! The checks a vantage runs. Each takes a target and returns a result value: a failed check is
//! data (a result carrying a code), never an `Err`.

pub mod access_url;
pub mod database;
pub mod proxy;
pub mod websocket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use vantage_proto::convert;
use vantage_proto::pb;
use vantage_proto::pb::check::Target;
use vantage_proto::pb::observation::Result as ObsResult;

/// The largest access-URL body kept (SPEC §1, difference 4).
pub const MAX_BODY: usize = 64 * 1024;

/// What every check needs: the TLS configuration and an HTTP client built from it.
#[derive(Clone)]
pub struct CheckContext {
    pub tls: Arc<rustls::ClientConfig>,
    pub http: reqwest::Client,
    /// The database the Database check pings; only the server's own vantage has one.
    pub database: Option<Arc<dyn database::Pinger>>,
}

impl CheckContext {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            // A health check measures the direct path and a fresh connection every time:
            // no environment proxies, no pooled connection hiding a broken handshake.
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent(concat!("vantage-probe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(CheckContext {
            tls,
            http,
            database: None,
        })
    }
}

/// Run one assigned check to completion (bounded by its timeout) and describe it as an
/// observation without a sequence number (the session numbers it).
pub async fn run(ctx: &CheckContext, check: &pb::Check) -> pb::Observation {
    let started = Instant::now();
    let observed_at = Utc::now();
    let timeout = convert::from_duration(check.timeout.as_ref());
    let (target, result) = match &check.target {
        Some(Target::AccessUrl(t)) => (
            t.url.clone(),
            ObsResult::AccessUrl(
                access_url::check(&ctx.http, &t.url, timeout.unwrap_or(access_url::TIMEOUT)).await,
            ),
        ),
        Some(Target::Websocket(t)) => (
            t.url.clone(),
            ObsResult::Websocket(
                websocket::check(&ctx.tls, &t.url, timeout.unwrap_or(websocket::TIMEOUT)).await,
            ),
        ),
        Some(Target::Database(t)) => (
            "database".to_owned(),
            ObsResult::Database(
                database::check(
                    ctx.database.as_deref(),
                    convert::from_duration(t.threshold.as_ref())
                        .unwrap_or(database::DEFAULT_THRESHOLD),
                    timeout.unwrap_or(database::TIMEOUT),
                )
                .await,
            ),
        ),
        Some(other) => (
            check.id.clone(),
            ObsResult::UnknownError(format!(
                "this probe does not implement the {} check",
                target_kind(other)
            )),
        ),
        None => (
            check.id.clone(),
            ObsResult::UnknownError("assignment carried a check without a target".into()),
        ),
    };
    observation(check, target, observed_at, started.elapsed(), result)
}

/// Build an observation for `check` (seq 0: the session assigns it).
pub fn observation(
    check: &pb::Check,
    target: String,
    observed_at: chrono::DateTime<Utc>,
    elapsed: Duration,
    result: ObsResult,
) -> pb::Observation {
    pb::Observation {
        seq: 0,
        check_id: check.id.clone(),
        section: check.section,
        target,
        observed_at: Some(convert::timestamp(observed_at)),
        elapsed: Some(convert::duration(elapsed)),
        result: Some(result),
    }
}

fn target_kind(t: &Target) -> &'static str {
    match t {
        Target::AccessUrl(_) => "access URL",
        Target::Websocket(_) => "websocket",
        Target::DerpRegion(_) => "DERP",
        Target::WorkspaceProxy(_) => "workspace proxy",
        Target::Database(_) => "database",
    }
}
