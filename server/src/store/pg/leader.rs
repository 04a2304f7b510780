//! The clock lease: of the replicas on one database, the one holding a session-level advisory
//! lock ([`CLOCK_LOCK`]) on a dedicated connection keeps the cluster's clock. It stores the
//! events that time alone causes (a vantage going stale, being forgotten), so each is stored
//! exactly once, whether or not the replica the vantage was attached to still lives. When the
//! holder dies its connection closes, PostgreSQL releases the lock, and another replica takes
//! it within about [`POLL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use vantage_proto::backoff::Backoff;

/// Advisory lock key of the clock lease.
pub const CLOCK_LOCK: i64 = 0x7661_6e74_6167_6504;
/// How often the lease is tried for, or (when held) its connection checked.
const POLL: Duration = Duration::from_secs(1);

/// Keep trying for the lease until `stop`; `leader` says whether this replica holds it.
pub(super) fn spawn(
    config: tokio_postgres::Config,
    timeout: Duration,
    leader: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let ended = tokio::select! {
                () = stop.cancelled() => return,
                e = hold(&config, timeout, &leader, &mut backoff) => e,
            };
            leader.store(false, Ordering::Release);
            tracing::debug!(error = %ended, "clock lease: connection lost");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    });
}

/// One connection's life: try for the lock every [`POLL`], and once held check the connection
/// every [`POLL`]. Returns why the connection ended.
async fn hold(
    config: &tokio_postgres::Config,
    timeout: Duration,
    leader: &AtomicBool,
    backoff: &mut Backoff,
) -> String {
    let (client, connection) = match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return format!("connecting: {}", super::pg_text(&e)),
        Err(_) => return "connecting: timed out".to_owned(),
    };
    let driver = tokio::spawn(connection);
    backoff.reset();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tick.tick().await;
        let held = leader.load(Ordering::Acquire);
        let query = if held {
            client.query_one("SELECT true", &[])
        } else {
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&CLOCK_LOCK])
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(row)) => {
                let now: bool = row.get(0);
                if now && !held {
                    tracing::info!("clock lease taken: this replica keeps the cluster's clock");
                }
                leader.store(now, Ordering::Release);
            }
            Ok(Err(e)) => break super::pg_text(&e),
            Err(_) => break "timed out".to_owned(),
        }
    };
    driver.abort();
    ended
}
