//! Runs an assignment's checks continuously: one task per check, started in rounds by one
//! clock per distinct interval (jittered, so a fleet does not fire in lock-step), each run
//! bounded by the check's timeout; run-now requests run every check at once
//! and report completion after their observations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
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
        // One clock per distinct interval: the checks that share an interval start together,
        // so the probe wakes once per round rather than once per check, and their
        // observations go to the server in one message.
        let mut clocks: BTreeMap<Duration, watch::Sender<u64>> = BTreeMap::new();
        for check in checks.iter().cloned() {
            let interval = interval_of(&check);
            let rounds = clocks
                .entry(interval)
                .or_insert_with(|| {
                    let (tx, _) = watch::channel(0);
                    tasks.spawn(clock(interval, tx.clone()));
                    tx
                })
                .subscribe();
            tasks.spawn(run_each_round(ctx.clone(), check, rounds, out.clone()));
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

fn interval_of(check: &pb::Check) -> Duration {
    convert::from_duration(check.interval.as_ref())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL)
}

/// The rounds of one interval: the first soon (within a tenth of the interval, at most 1 s),
/// then one every jittered interval, until no check listens.
async fn clock(interval: Duration, rounds: watch::Sender<u64>) {
    let spread = (interval / 10).min(Duration::from_secs(1));
    let first = spread.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    tokio::time::sleep(first).await;
    let mut round = 0u64;
    loop {
        round += 1;
        if rounds.send(round).is_err() {
            return;
        }
        tokio::time::sleep(jittered(interval)).await;
    }
}

/// Run `check` once per round; a round that starts while the check still runs is skipped.
async fn run_each_round(
    ctx: CheckContext,
    check: pb::Check,
    mut rounds: watch::Receiver<u64>,
    out: mpsc::Sender<Output>,
) {
    let check = checks::Prepared::new(check);
    while rounds.changed().await.is_ok() {
        for obs in check.run(&ctx).await {
            if out.send(Output::Observation(Box::new(obs))).await.is_err() {
                return;
            }
        }
        // Rounds that passed during the run are not made up.
        rounds.borrow_and_update();
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

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_starts_soon_then_ticks_every_jittered_interval() {
        let (tx, mut rounds) = watch::channel(0);
        tokio::spawn(clock(Duration::from_secs(10), tx));
        let start = Instant::now();
        rounds.changed().await.expect("a first round");
        assert!(start.elapsed() <= Duration::from_secs(1), "within a tenth");
        let mut last = Instant::now();
        for n in 2..=30 {
            rounds.changed().await.expect("a round");
            assert_eq!(*rounds.borrow_and_update(), n);
            let gap = last.elapsed();
            assert!(
                (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&gap),
                "round {n} came {gap:?} after the one before"
            );
            last = Instant::now();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_that_passes_during_a_run_is_not_made_up() {
        let (tx, mut rounds) = watch::channel(0);
        tokio::spawn(clock(Duration::from_secs(10), tx));
        rounds.changed().await.expect("a first round");
        // A run that takes 25 s (two rounds pass meanwhile).
        tokio::time::sleep(Duration::from_secs(25)).await;
        rounds.borrow_and_update();
        // Rounds 2 and 3 passed during the run; round 4 comes 27..33 s after round 1.
        let waited = Instant::now();
        rounds.changed().await.expect("the next round");
        assert!(
            waited.elapsed() >= Duration::from_secs(1),
            "the next run waits for the next round, not a missed one: {:?}",
            waited.elapsed()
        );
        assert_eq!(*rounds.borrow_and_update(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_stops_when_no_check_listens() {
        let (tx, rounds) = watch::channel(0);
        let clock = tokio::spawn(clock(Duration::from_secs(1), tx));
        drop(rounds);
        tokio::time::timeout(Duration::from_secs(5), clock)
            .await
            .expect("the clock ends")
            .expect("no panic");
    }
}
