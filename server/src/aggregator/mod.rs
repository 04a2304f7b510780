//! The aggregator: the one task that owns health state. Probe sessions, the server's own
//! vantage, HTTP and gRPC handlers send it [`Command`]s over a bounded channel; it applies
//! observations (exactly once, by per-instance sequence number), keeps each vantage's section
//! reports, aggregates them, detects staleness, records events in a bounded history and fans
//! them out on a bounded broadcast channel that never waits for a subscriber.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use vantage_probe::rules;
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, pb};

mod alert;
mod batch;
mod command;
mod durable;
mod events;
mod guard;
mod history;
mod probes;
mod replication;
mod report;
mod report_pb;
mod state;
mod vantage;

pub use batch::Batch;
pub use command::{
    AdminCommand, AssignedCheck, Attached, ClusterCommand, Command, Outgoing, ProbeCommand, Query,
    SessionTx, SettingsUpdate,
};
pub use durable::DurableParts;
pub use events::{EventGroup, PROVISIONAL_EPOCH_PREFIX, SharedEvent, Subscription, is_provisional};
pub use guard::{
    GuardStats, MAX_BODY, MAX_ELAPSED, MAX_FUTURE_SKEW, MAX_OBSERVATION, Refusal, SEQ_WINDOW,
};
pub use history::{HistoryFilter, MAX_SAMPLES, MAX_SERIES, MAX_TRANSITIONS, check_sample};
pub use report::TargetFigure;
use state::State;

/// Capacity of the command channel (backpressure on ingest).
pub const COMMAND_CAPACITY: usize = 4096;
/// Most observations kept for a vantage this replica only hears of through the store.
const MAX_REMOTE_OBSERVATIONS: usize = 1024;
/// Most targets one check may report (the nodes of a DERP region).
pub const MAX_TARGETS_PER_CHECK: usize = 256;
/// Most vantages kept by default (`max_vantages`).
pub const DEFAULT_MAX_VANTAGES: usize = 10_000;
/// A vantage that ran a forced run this recently is not asked again (force is coalesced).
pub const FORCE_COALESCE: Duration = Duration::from_secs(5);

/// A forced run as started: the names still running, and those not waited for because they
/// did not answer the previous forced run (they are asked again all the same).
#[derive(Debug, Clone)]
pub struct ForceStarted {
    pub pending: watch::Receiver<BTreeSet<String>>,
    pub silent: Vec<String>,
}

/// What a forget did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetOutcome {
    Forgotten,
    NotFound,
    /// Refused: the vantage is connected or fresh (forget it with `force`).
    Live {
        connected: bool,
    },
}

/// Why an attach did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Capacity of the event broadcast, in groups (the events of one applied command, or of one
/// batch of a command carrying several); a subscriber further behind is told to resync.
pub const EVENT_CAPACITY: usize = 4096;

/// What the aggregator needs to know.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub quorum: usize,
    pub stale_after: Duration,
    pub forget_after: Duration,
    pub raise_after: u32,
    pub clear_after: u32,
    pub history: usize,
    pub version: String,
    /// Sections that must be covered by some fresh vantage (EVNT02 otherwise).
    pub expected: Vec<Section>,
    /// The effective DERP map's regions (id, name): each must be covered (EVNT02 otherwise).
    pub derp_regions: Vec<(i64, String)>,
    /// Whether the effective DERP map has a DERP-capable node (EDERP03 otherwise).
    pub derp_has_nodes: bool,
    /// Run the aggregator on a thread of its own (production: no watcher or probe stream can
    /// starve ingestion); tests keep it on their runtime (and its paused clock).
    pub dedicated_thread: bool,
    /// The revision epoch: shared by the replicas of one database; `None`: a random one (an
    /// in-memory server's revisions mean nothing after it restarts).
    pub epoch: Option<String>,
    /// Most vantages kept; a hello of a new name beyond it is refused.
    pub max_vantages: usize,
    /// A session silent this long (its heartbeat interval and a margin) no longer holds its
    /// name against a new session.
    pub holder_silence: Duration,
    /// A force joins the run in flight only while it is younger than this (the force
    /// timeout); after that the run's silent vantages are no longer waited for.
    pub force_join: Duration,
    /// The largest report (Coder's JSON) served; beyond it the per-vantage section reports
    /// are left out (EVNT05). [`MAX_REPORT_BYTES`] but in tests.
    pub max_report_bytes: usize,
}

#[cfg(test)]
impl AggregatorConfig {
    /// One vantage is a quorum, alerts raise and clear on one evaluation, and the aggregator
    /// runs on the test's runtime (and its paused clock).
    pub(crate) fn for_tests() -> AggregatorConfig {
        AggregatorConfig {
            quorum: 1,
            stale_after: Duration::from_secs(90),
            forget_after: Duration::from_secs(3600),
            raise_after: 1,
            clear_after: 1,
            history: 100,
            version: "v0.1.0".into(),
            expected: vec![],
            derp_regions: vec![],
            derp_has_nodes: true,
            epoch: None,
            dedicated_thread: false,
            max_vantages: 100,
            holder_silence: Duration::from_secs(7),
            force_join: Duration::from_secs(30),
            max_report_bytes: MAX_REPORT_BYTES,
        }
    }
}

/// The bound on a report's compact JSON (the gRPC form's `json`): 64 MiB. The CLI decodes up to
/// 256 MiB, room for the gRPC form, which carries that JSON and the typed sections.
pub const MAX_REPORT_BYTES: usize = 64 << 20;

/// Figures the aggregator keeps about itself, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Events this replica could not queue for storage (the queue was full).
    pub events_dropped: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub events: u64,
    pub revision: u64,
    /// Batches refused because the write queue was full (not applied, not acknowledged).
    pub backpressure: u64,
    /// Refusals and rejections by reason.
    pub guard: GuardStats,
}

/// A cheap, clonable handle to the aggregator task.
#[derive(Clone)]
pub struct Aggregator {
    tx: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
    /// Read-only here: the aggregator writes it.
    db_ok: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The aggregator has stopped (the server is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the aggregator has stopped")]
pub struct Stopped;

/// The aggregator could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting the aggregator: {0}")]
pub struct SpawnError(#[from] std::io::Error);

impl Aggregator {
    /// Start the aggregator task; it runs until every handle is dropped.
    pub fn spawn(
        config: AggregatorConfig,
        dismissed: Vec<Section>,
    ) -> Result<Aggregator, SpawnError> {
        Self::spawn_with(config, dismissed, None)
    }

    /// Like [`Aggregator::spawn`]; with a write-behind queue, applied observations are also
    /// stored, and a probe is acknowledged only once they are (or once the bounded queue had
    /// to drop them, which is counted).
    pub fn spawn_with(
        config: AggregatorConfig,
        dismissed: Vec<Section>,
        durable: Option<DurableParts>,
    ) -> Result<Aggregator, SpawnError> {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let durable = durable.map(|parts| durable::Durable::start(parts, tx.downgrade()));
        let db_ok = durable.as_ref().map(|d| d.db_ok.clone());
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (stats_tx, stats) = watch::channel(Stats::default());
        let state = State {
            durable,
            rules: rules::RulesContext::default(),
            epoch: config
                .epoch
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            degraded: None,
            db_revision: 0,
            unconfirmed: VecDeque::new(),
            history: VecDeque::with_capacity(config.history.min(4096)),
            timeline: history::History::default(),
            config,
            vantages: BTreeMap::new(),
            aggregates: HashMap::new(),
            server_sections: HashMap::new(),
            derp_map_warning: None,
            coder: None,
            revision: 0,
            changed_at: Utc::now(),
            events,
            held: None,
            dismissed,
            dismiss_until: Vec::new(),
            cached: None,
            next_session: 1,
            next_request: 1,
            force: None,
            stats: Stats::default(),
            stats_tx,
            refusal_log: guard::LogLimit::default(),
        };
        if state.config.dedicated_thread {
            // A single-threaded runtime of its own, with timers and no I/O driver: the
            // aggregator does no I/O, and without one a wake-up is a futex, not an eventfd
            // write and an epoll_wait.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            std::thread::Builder::new()
                .name("vantage-aggregator".into())
                .spawn(move || rt.block_on(state.run(rx)))?;
        } else {
            tokio::spawn(state.run(rx));
        }
        Ok(Aggregator { tx, stats, db_ok })
    }

    /// Send a command, waiting for room (bounded backpressure).
    pub async fn send(&self, cmd: impl Into<Command>) -> Result<(), Stopped> {
        self.tx.send(cmd.into()).await.map_err(|_| Stopped)
    }

    /// A probe's observations prepared for [`ProbeCommand::Ingest`] ([`Batch::from_probe`]),
    /// on the caller's thread (which decoded them), not on the aggregator's.
    pub fn batch(&self, observations: Vec<pb::Observation>) -> Batch {
        // A durable store writes every observation, so every one stays whole.
        let keep_all = self.db_ok.is_some();
        Batch::from_probe(observations, keep_all, Utc::now().timestamp())
    }

    /// Send a probe's observations, prepared here (see [`Aggregator::batch`]).
    pub async fn ingest(
        &self,
        name: String,
        session_id: u64,
        observations: Vec<pb::Observation>,
    ) -> Result<(), Stopped> {
        let batch = self.batch(observations);
        self.send(ProbeCommand::Ingest {
            name,
            session_id,
            batch,
            then: Vec::new(),
        })
        .await
    }

    async fn ask<T, C: Into<Command>>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> C,
    ) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn attach(
        &self,
        hello: pb::Hello,
        session: SessionTx,
    ) -> Result<Attached, AttachError> {
        self.attach_from(hello, session, String::new()).await
    }

    /// Attach a session from `peer` (named when another session for its name is refused).
    pub async fn attach_from(
        &self,
        hello: pb::Hello,
        session: SessionTx,
        peer: String,
    ) -> Result<Attached, AttachError> {
        Ok(self
            .ask(|reply| ProbeCommand::Attach {
                hello,
                session,
                peer,
                reply,
            })
            .await??)
    }

    pub async fn report(&self) -> Result<(Arc<HealthReport>, Arc<pb::Report>), Stopped> {
        self.ask(|reply| Query::Report { reply }).await
    }

    /// Subscribe to events after `since` of `epoch` (empty: the current epoch).
    pub async fn subscribe(&self, since: u64, epoch: &str) -> Result<Subscription, Stopped> {
        let epoch = epoch.to_owned();
        self.ask(|reply| Query::Subscribe {
            since,
            epoch,
            reply,
        })
        .await
    }

    /// The current settings, or with `update`, dismiss exactly those sections.
    pub async fn settings(&self, update: Option<Vec<Section>>) -> Result<SettingsUpdate, Stopped> {
        match update {
            Some(dismissed) => self.dismiss(dismissed, Vec::new()).await,
            None => self.ask(|reply| Query::Settings { reply }).await,
        }
    }

    /// Dismiss exactly `dismissed`; those in `until` end then (one already past is not
    /// dismissed at all).
    pub async fn dismiss(
        &self,
        dismissed: Vec<Section>,
        until: Vec<(Section, chrono::DateTime<Utc>)>,
    ) -> Result<SettingsUpdate, Stopped> {
        self.ask(|reply| AdminCommand::Dismiss {
            dismissed,
            until,
            reply,
        })
        .await
    }

    /// Each section's aggregate severity after hysteresis (`--raise-after`/`--clear-after`).
    pub async fn held_severities(
        &self,
    ) -> Result<Vec<(Section, vantage_proto::Severity)>, Stopped> {
        self.ask(|reply| Query::Held { reply }).await
    }

    pub async fn targets(&self) -> Result<Vec<TargetFigure>, Stopped> {
        self.ask(|reply| Query::Targets { reply }).await
    }

    /// Section transitions and check outcomes kept in memory, as `filter` selects.
    pub async fn history(&self, filter: HistoryFilter) -> Result<pb::History, Stopped> {
        self.ask(|reply| Query::History { filter, reply }).await
    }

    /// The vantages as readers see them (instance ids blank).
    pub async fn vantages(&self) -> Result<Vec<pb::Vantage>, Stopped> {
        self.ask(|reply| Query::Vantages {
            internal: false,
            reply,
        })
        .await
    }

    /// The vantages with their instance ids (what the cluster publishes).
    pub async fn vantages_internal(&self) -> Result<Vec<pb::Vantage>, Stopped> {
        self.ask(|reply| Query::Vantages {
            internal: true,
            reply,
        })
        .await
    }

    /// Forget a stale, disconnected vantage; with `force` a live one too (closing its stream).
    pub async fn forget(&self, name: String, force: bool) -> Result<ForgetOutcome, Stopped> {
        self.ask(|reply| AdminCommand::Forget { name, force, reply })
            .await
    }

    /// Ask every connected vantage to run now (coalesced per vantage); the receiver holds
    /// the names still running.
    pub async fn force(&self) -> Result<ForceStarted, Stopped> {
        self.ask(|reply| AdminCommand::Force { reply }).await
    }

    /// Stop waiting for the vantages of the forced run in flight that were not heard from
    /// since they were asked; their names.
    pub async fn force_unheard(&self) -> Result<Vec<String>, Stopped> {
        self.ask(|reply| AdminCommand::ForceUnheard { reply }).await
    }

    /// Whether the database answers, as the aggregator last heard (`true` without one).
    pub fn database_ok(&self) -> bool {
        self.db_ok
            .as_ref()
            .is_none_or(|ok| ok.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }
}

use vantage_proto::pb::server_message::Msg as Down;

/// A cumulative acknowledgement.
fn ack(seq: u64) -> Outgoing {
    Box::new(Ok(pb::ServerMessage {
        msg: Some(Down::Ack(pb::Ack { seq })),
    }))
}

/// Queue the acknowledgement of `seq` on a session; `true` when its queue was full, so the
/// ack is to be tried again (a closed session needs none).
fn try_ack(tx: &SessionTx, seq: u64) -> bool {
    matches!(
        tx.try_send(ack(seq)),
        Err(tokio::sync::mpsc::error::TrySendError::Full(_))
    )
}
