//! Runs an assignment's checks continuously: one task per check, each on its own jittered
//! interval, each run bounded by the check's timeout; run-now requests run every check at once
//! and report completion after their observations.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use vantage_proto::convert;
use vantage_proto::pb;

use crate::checks::{self, CheckContext};

/// The default interval between two runs of a check.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What the scheduler produces, in order.
#[derive(Debug, Clone)]
pub enum Output {
    Observation(Box<pb::Observation>),
    /// Every check of run-now request `id` has produced its observation (sent before this).
    RunComplete(u64),
}

/// Runs one assignment; dropping it stops every check.
pub struct Scheduler {
    generation: u64,
    checks: Arc<Vec<pb::Check>>,
    ctx: CheckContext,
    out: mpsc::Sender<Output>,
    tasks: JoinSet<()>,
}

/// `interval` ± 10 %, so a fleet does not fire in lock-step.
fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_secs_f64() * 0.1;
    let offset = rand::thread_rng().gen_range(-spread..=spread);
    Duration::from_secs_f64((interval.as_secs_f64() + offset).max(0.001))
}

impl Scheduler {
    pub fn start(
        ctx: CheckContext,
        assignment: &pb::Assignment,
        out: mpsc::Sender<Output>,
    ) -> Self {
        let checks = Arc::new(assignment.checks.clone());
        let mut tasks = JoinSet::new();
        for check in checks.iter().cloned() {
            let ctx = ctx.clone();
            let out = out.clone();
            tasks.spawn(async move {
                let interval = convert::from_duration(check.interval.as_ref())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_INTERVAL);
                // The first run comes soon (within a tenth of the interval, at most 1 s), then
                // every interval.
                let spread = (interval / 10).min(Duration::from_secs(1));
                let first = spread.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
                tokio::time::sleep(first).await;
                loop {
                    for obs in checks::run(&ctx, &check).await {
                        if out.send(Output::Observation(Box::new(obs))).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(jittered(interval)).await;
                }
            });
        }
        Scheduler {
            generation: assignment.generation,
            checks,
            ctx,
            out,
            tasks,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Run every check now, concurrently; then report `RunComplete(request_id)`.
    pub fn run_now(&mut self, request_id: u64) {
        let checks = self.checks.clone();
        let ctx = self.ctx.clone();
        let out = self.out.clone();
        self.tasks.spawn(async move {
            for obs in run_all(&ctx, &checks).await {
                if out.send(Output::Observation(Box::new(obs))).await.is_err() {
                    return;
                }
            }
            let _ = out.send(Output::RunComplete(request_id)).await;
        });
    }
}

/// Run `checks` once, concurrently, and return their observations in check order.
pub async fn run_all(ctx: &CheckContext, checks: &[pb::Check]) -> Vec<pb::Observation> {
    futures::future::join_all(checks.iter().map(|c| checks::run(ctx, c)))
        .await
        .into_iter()
        .flatten()
        .collect()
}
