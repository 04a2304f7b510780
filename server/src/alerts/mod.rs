//! The alert sender: pushes what the report calls for to Alertmanager the way Prometheus does.
//! It only reads snapshots (the aggregator's cached report, every evaluation period), so it
//! never slows ingestion; a change (an alert that starts or resolves) is sent at once, and
//! every alert of the last 15 minutes is re-sent every `--alert-resend`. Replicas compute the
//! same label sets, so Alertmanager deduplicates what several of them send.
//!
//! `model` turns the report into alerts, `tracker` keeps their episodes and times, `send`
//! delivers them (bounded queue, retries, counters).

pub mod model;
pub mod send;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::aggregator::Aggregator;
use crate::config::AlertingConfig;

pub use model::{Alert, Context};
pub use send::{Counters, SetupError, Target};
pub use tracker::{Postable, Tracker};

/// The longest time between two looks at the report.
pub const MAX_EVALUATION: Duration = Duration::from_secs(5);
/// How long one look at the report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running sender's figures, for `/metrics`.
#[derive(Clone, Default)]
pub struct AlertStats {
    pub targets: Arc<Vec<(String, Arc<Counters>)>>,
    pub firing: Arc<std::sync::atomic::AtomicU64>,
}

/// Start the sender when an Alertmanager is configured (`None` otherwise).
pub fn start(
    config: &AlertingConfig,
    ctx: Context,
    agg: Aggregator,
    cancel: &CancellationToken,
) -> Result<Option<AlertStats>, SetupError> {
    if config.alertmanager_urls.is_empty() {
        return Ok(None);
    }
    let client = send::client(config)?;
    let targets = send::start(config, &client, cancel);
    let stats = AlertStats {
        targets: Arc::new(
            targets
                .iter()
                .map(|t| (t.url.clone(), t.counters.clone()))
                .collect(),
        ),
        firing: Arc::default(),
    };
    tokio::spawn(run(Loop {
        agg,
        ctx,
        targets,
        resend: config.resend,
        firing: stats.firing.clone(),
        cancel: cancel.clone(),
    }));
    Ok(Some(stats))
}

struct Loop {
    agg: Aggregator,
    ctx: Context,
    targets: Vec<Target>,
    resend: Duration,
    firing: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
}

/// Look at the report every evaluation period; send on a change and every `resend`.
async fn run(l: Loop) {
    let mut tick = tokio::time::interval(l.resend.min(MAX_EVALUATION));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = Tracker::default();
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = l.cancel.cancelled() => return,
        }
        let report = match tokio::time::timeout(REPORT_TIMEOUT, l.agg.report()).await {
            Ok(Ok((report, _))) => report,
            Ok(Err(_)) => return,
            Err(_) => continue,
        };
        let held = match tokio::time::timeout(REPORT_TIMEOUT, l.agg.held_severities()).await {
            Ok(Ok(held)) => held,
            Ok(Err(_)) => return,
            Err(_) => continue,
        };
        let now = Utc::now();
        let changed = tracker.update(model::desired(&report, &held, &l.ctx), now);
        l.firing.store(
            tracker.firing() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let due = last_sent.is_none_or(|t| t.elapsed() >= l.resend);
        if !(changed || due) {
            continue;
        }
        let batch = Arc::new(tracker.postable(now, l.resend));
        last_sent = Some(tokio::time::Instant::now());
        if batch.is_empty() {
            continue;
        }
        for t in &l.targets {
            t.offer(batch.clone());
        }
    }
}
