//! The checks a vantage runs. Each takes a target and returns a result value: a failed check is
//! data (a result carrying a code), never an `Err`.

pub mod access_url;
pub mod database;
pub mod derp;
pub mod http1;
pub mod proxy;
pub mod websocket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use vantage_proto::convert;
use vantage_proto::pb;
use vantage_proto::pb::check::Target;
use vantage_proto::pb::observation::Result as ObsResult;

/// The largest access-URL body kept (`docs/behaviour.md#difference-4`).
pub const MAX_BODY: usize = 64 * 1024;

/// The full error chain, so "connection refused" or "certificate" reaches the operator.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What every check needs: the TLS configuration, and an HTTP client built from it for the
/// workspace proxies' JSON (the Access URL and Websocket checks make their one request
/// themselves, [`http1`]).
#[derive(Clone)]
pub struct CheckContext {
    pub tls: Arc<rustls::ClientConfig>,
    pub http: reqwest::Client,
    /// The database the Database check pings; only the server's own vantage has one.
    pub database: Option<Arc<dyn database::Pinger>>,
    /// Extra CA certificates (PEM) for the DERP clients, beside the system roots.
    pub extra_ca_pem: Option<String>,
}

impl CheckContext {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            // A health check measures the direct path and a fresh connection every time:
            // no environment proxies, no pooled connection hiding a broken handshake.
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent(http1::AGENT)
            .build()?;
        Ok(CheckContext {
            tls,
            http,
            database: None,
            extra_ca_pem: None,
        })
    }
}

/// An assigned check made ready to run again and again: what its runs share (its URLs,
/// parsed) is worked out once, in [`Prepared::new`]. No `Debug`: a check can carry a session
/// token, and a URL a password.
pub struct Prepared {
    check: pb::Check,
    plan: Plan,
}

enum Plan {
    AccessUrl(access_url::Plan),
    Websocket(websocket::Plan),
    /// Nothing to work out ahead.
    AsItComes,
}

impl Prepared {
    pub fn new(check: pb::Check) -> Prepared {
        let plan = match &check.target {
            Some(Target::AccessUrl(t)) => Plan::AccessUrl(access_url::Plan::new(&t.url)),
            Some(Target::Websocket(t)) => Plan::Websocket(websocket::Plan::new(t)),
            _ => Plan::AsItComes,
        };
        Prepared { check, plan }
    }

    pub fn check(&self) -> &pb::Check {
        &self.check
    }

    /// Run the check once to completion (bounded by its timeout) and describe it as
    /// observations without sequence numbers (the session numbers them): one per target (a
    /// DERP region check yields one per node).
    pub async fn run(&self, ctx: &CheckContext) -> Vec<pb::Observation> {
        let check = &self.check;
        let started = Instant::now();
        let observed_at = Utc::now();
        let timeout = convert::from_duration(check.timeout.as_ref());
        let results: Vec<(String, ObsResult)> = match (&self.plan, &check.target) {
            (Plan::AccessUrl(plan), _) => vec![(
                plan.access_url().to_owned(),
                ObsResult::AccessUrl(
                    access_url::run(&ctx.tls, plan, timeout.unwrap_or(access_url::TIMEOUT)).await,
                ),
            )],
            (Plan::Websocket(plan), _) => vec![(
                plan.target().url.clone(),
                ObsResult::Websocket(
                    websocket::run(&ctx.tls, plan, timeout.unwrap_or(websocket::TIMEOUT)).await,
                ),
            )],
            (Plan::AsItComes, Some(Target::Database(t))) => vec![(
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
            )],
            (Plan::AsItComes, Some(Target::WorkspaceProxy(t))) => vec![(
                t.name.clone(),
                ObsResult::WorkspaceProxy(
                    proxy::check(&ctx.http, t, timeout.unwrap_or(proxy::TIMEOUT)).await,
                ),
            )],
            (Plan::AsItComes, Some(Target::DerpRegion(t))) => {
                let budget = timeout.unwrap_or(derp::TIMEOUT);
                match tokio::time::timeout(budget, derp::check(ctx, t)).await {
                    Ok(results) => results,
                    Err(_) => vec![(
                        check.id.clone(),
                        ObsResult::UnknownError(format!(
                            "the DERP region check did not finish within {}",
                            vantage_proto::report::go_duration(budget)
                        )),
                    )],
                }
            }
            // (`new` planned the Access URL and Websocket targets.)
            (Plan::AsItComes, _) => vec![(
                check.id.clone(),
                ObsResult::UnknownError("assignment carried a check without a target".into()),
            )],
        };
        let elapsed = started.elapsed();
        results
            .into_iter()
            .map(|(target, result)| observation(check, target, observed_at, elapsed, result))
            .collect()
    }
}

/// Run one assigned check once ([`Prepared::run`]); a check that runs again and again is
/// prepared once instead.
pub async fn run(ctx: &CheckContext, check: &pb::Check) -> Vec<pb::Observation> {
    Prepared::new(check.clone()).run(ctx).await
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
