//! The aggregator: the one task that owns health state. Probe sessions, the server's own
//! vantage, HTTP and gRPC handlers send it [`Command`]s over a bounded channel; it applies
//! observations (exactly once, by per-instance sequence number), keeps each vantage's section
//! reports, aggregates them, detects staleness, records events in a bounded history and fans
//! them out on a bounded broadcast channel that never waits for a subscriber.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;
use vantage_probe::rules::{self, SectionReport};
use vantage_proto::pb;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_proto::report::{Aggregated, HealthReport, Message, VantageInfo, VantagesReport};
use vantage_proto::{Section, Severity, codes, convert};

use crate::aggregate::aggregate;
use report_pb::report_pb;

mod report_pb;
use crate::store::{NewObservation, Receipt, StoredObservation, VantageRecord, WriteBehind};

/// Capacity of the command channel (backpressure on ingest).
pub const COMMAND_CAPACITY: usize = 4096;
/// Acks waiting for storage; beyond this a later cumulative ack covers the skipped ones.
const ACK_QUEUE: usize = 4096;
/// Most observations kept for a vantage this replica only hears of through the store.
const MAX_REMOTE_OBSERVATIONS: usize = 1024;
/// Most targets one check may report (the nodes of a DERP region).
pub const MAX_TARGETS_PER_CHECK: usize = 256;
/// Capacity of the event broadcast; a subscriber further behind is told to resync.
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
}

/// A message to the server side of one session (a probe's stream, or the own vantage).
pub type SessionTx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

/// What an attach is told.
#[derive(Debug)]
pub struct Attached {
    pub session_id: u64,
    pub applied_seq: u64,
}

/// An event as the fan-out carries it: the message, and its protobuf encoding made once for
/// every subscriber (each watch stream copies these bytes instead of encoding again).
#[derive(Debug)]
pub struct SharedEvent {
    pub event: pb::WatchEvent,
    pub encoded: bytes::Bytes,
}

impl SharedEvent {
    pub fn new(event: pb::WatchEvent) -> Arc<SharedEvent> {
        let encoded = bytes::Bytes::from(prost::Message::encode_to_vec(&event));
        Arc::new(SharedEvent { event, encoded })
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = pb::WatchEvent;
    fn deref(&self) -> &pb::WatchEvent {
        &self.event
    }
}

/// A new subscription: the receiver is subscribed before the snapshot or backlog is taken,
/// so nothing falls between them.
pub struct Subscription {
    pub events: broadcast::Receiver<Arc<SharedEvent>>,
    /// Set when the subscriber starts from scratch or its revision is out of the history.
    pub snapshot: Option<(bool, Arc<pb::Report>)>,
    pub backlog: Vec<Arc<SharedEvent>>,
}

/// The outcome of a settings update.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsUpdate {
    pub changed: bool,
    pub dismissed: Vec<Section>,
}

/// Commands to the aggregator.
pub enum Command {
    Attach {
        hello: pb::Hello,
        session: SessionTx,
        reply: oneshot::Sender<Attached>,
    },
    Detach {
        name: String,
        session_id: u64,
    },
    Ingest {
        name: String,
        session_id: u64,
        observations: Vec<pb::Observation>,
    },
    Heartbeat {
        name: String,
        session_id: u64,
        replay_dropped: u64,
    },
    Assigned {
        name: String,
        check_ids: Vec<(String, Section)>,
    },
    RunComplete {
        name: String,
        request_id: u64,
    },
    Force {
        reply: oneshot::Sender<watch::Receiver<BTreeSet<String>>>,
    },
    Report {
        reply: oneshot::Sender<(Arc<HealthReport>, Arc<pb::Report>)>,
    },
    Subscribe {
        since: u64,
        epoch: String,
        reply: oneshot::Sender<Subscription>,
    },
    Settings {
        update: Option<Vec<Section>>,
        reply: oneshot::Sender<SettingsUpdate>,
    },
    Vantages {
        reply: oneshot::Sender<Vec<pb::Vantage>>,
    },
    Forget {
        name: String,
        reply: oneshot::Sender<bool>,
    },
    /// Replace what a server-computed section shows (provisioner daemons).
    ServerSection {
        report: SectionReport,
    },
    /// Observations another replica stored (or this one, echoed back): applied once by
    /// per-instance sequence number.
    Remote {
        observations: Vec<StoredObservation>,
    },
    /// At start: the latest observation of each vantage and target, as stored before.
    Restore {
        observations: Vec<StoredObservation>,
    },
    /// Vantages as the store knows them (attached elsewhere, or before a restart).
    RemoteVantages {
        vantages: Vec<VantageRecord>,
    },
    /// The latest check of every target of every fresh vantage, for `/metrics`.
    Targets {
        reply: oneshot::Sender<Vec<TargetFigure>>,
    },
    /// The database stopped (or resumed) answering.
    DatabaseState {
        ok: bool,
    },
    /// Events stored by any replica, in revision order: the watchers' feed in a cluster.
    StoredEvents {
        events: Vec<crate::store::StoredEvent>,
    },
    /// The registry's workspace proxies changed.
    Proxies {
        proxies: Vec<vantage_probe::rules::workspace_proxy::ProxyInput>,
    },
}

/// The latest check of one target as one vantage saw it.
#[derive(Debug, Clone)]
pub struct TargetFigure {
    pub vantage: String,
    pub section: Section,
    pub target: String,
    /// How long the check took.
    pub seconds: f64,
    /// Whether it succeeded (no failure code; 200; relayed; proxy `ok`).
    pub ok: bool,
}

/// Whether an observation is a success.
fn observation_ok(o: &pb::Observation) -> bool {
    use pb::observation::Result as R;
    match &o.result {
        Some(R::AccessUrl(r)) => r.failure.is_none() && r.status_code == 200,
        Some(R::Websocket(r)) => r.failure.is_none(),
        Some(R::Database(r)) => r.failure.is_none(),
        Some(R::DerpNode(r)) => {
            r.error.is_empty()
                && (r.can_exchange_messages || r.stun_only)
                && r.stun_error.is_empty()
        }
        Some(R::WorkspaceProxy(r)) => r.status == "ok",
        Some(R::UnknownError(_)) | None => false,
    }
}

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
}

/// A cheap, clonable handle to the aggregator task.
#[derive(Clone)]
pub struct Aggregator {
    tx: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
}

/// The aggregator has stopped (the server is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the aggregator has stopped")]
pub struct Stopped;

impl Aggregator {
    /// Start the aggregator task; it runs until every handle is dropped.
    pub fn spawn(config: AggregatorConfig, dismissed: Vec<Section>) -> Aggregator {
        Self::spawn_with(config, dismissed, None)
    }

    /// Like [`Aggregator::spawn`]; with a write-behind queue, applied observations are also
    /// stored, and a probe is acknowledged only once they are (or once the bounded queue had
    /// to drop them, which is counted).
    pub fn spawn_with(
        config: AggregatorConfig,
        dismissed: Vec<Section>,
        durable: Option<DurableParts>,
    ) -> Aggregator {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let durable = durable.map(|(writer, store, db_ok)| {
            let (acks, pending) = mpsc::channel(ACK_QUEUE);
            tokio::spawn(ack_when_stored(pending));
            let (events, drafts) = mpsc::channel(EVENT_QUEUE);
            tokio::spawn(store_events(store, drafts, db_ok.clone()));
            Durable {
                db_ok,
                writer,
                acks,
                events,
            }
        });
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (stats_tx, stats) = watch::channel(Stats::default());
        let state = State {
            durable,
            rules: rules::RulesContext::default(),
            epoch: config
                .epoch
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            local_cause: true,
            degraded: None,
            db_revision: 0,
            history: VecDeque::with_capacity(config.history.min(4096)),
            config,
            vantages: BTreeMap::new(),
            aggregates: HashMap::new(),
            server_sections: HashMap::new(),
            revision: 0,
            changed_at: Utc::now(),
            events,
            dismissed,
            cached: None,
            next_session: 1,
            next_request: 1,
            force: None,
            stats: Stats::default(),
            stats_tx,
        };
        if state.config.dedicated_thread {
            let handle = tokio::runtime::Handle::current();
            let spawned = std::thread::Builder::new()
                .name("vantage-aggregator".into())
                .spawn(move || {
                    // A single-threaded runtime of its own; its timers and I/O are this thread's.
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt.block_on(state.run(rx)),
                        Err(e) => {
                            tracing::error!(error = %e, "aggregator runtime; running on the shared one");
                            handle.spawn(state.run(rx));
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start the aggregator thread");
            }
        } else {
            tokio::spawn(state.run(rx));
        }
        Aggregator { tx, stats }
    }

    /// Send a command, waiting for room (bounded backpressure).
    pub async fn send(&self, cmd: Command) -> Result<(), Stopped> {
        self.tx.send(cmd).await.map_err(|_| Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn attach(&self, hello: pb::Hello, session: SessionTx) -> Result<Attached, Stopped> {
        self.ask(|reply| Command::Attach {
            hello,
            session,
            reply,
        })
        .await
    }

    pub async fn report(&self) -> Result<(Arc<HealthReport>, Arc<pb::Report>), Stopped> {
        self.ask(|reply| Command::Report { reply }).await
    }

    /// Subscribe to events after `since` of `epoch` (empty: the current epoch).
    pub async fn subscribe(&self, since: u64, epoch: &str) -> Result<Subscription, Stopped> {
        let epoch = epoch.to_owned();
        self.ask(|reply| Command::Subscribe {
            since,
            epoch,
            reply,
        })
        .await
    }

    pub async fn settings(&self, update: Option<Vec<Section>>) -> Result<SettingsUpdate, Stopped> {
        self.ask(|reply| Command::Settings { update, reply }).await
    }

    pub async fn targets(&self) -> Result<Vec<TargetFigure>, Stopped> {
        self.ask(|reply| Command::Targets { reply }).await
    }

    pub async fn vantages(&self) -> Result<Vec<pb::Vantage>, Stopped> {
        self.ask(|reply| Command::Vantages { reply }).await
    }

    pub async fn forget(&self, name: String) -> Result<bool, Stopped> {
        self.ask(|reply| Command::Forget { name, reply }).await
    }

    /// Ask every connected vantage to run now; the receiver holds the names still running.
    pub async fn force(&self) -> Result<watch::Receiver<BTreeSet<String>>, Stopped> {
        self.ask(|reply| Command::Force { reply }).await
    }

    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }
}

/// Per-sequence bookkeeping of one probe instance: `applied == last - first + 1` means nothing
/// was lost in between and nothing was applied twice.
#[derive(Debug, Default, Clone)]
struct SeqStats {
    first: u64,
    last: u64,
    applied: u64,
    duplicates: u64,
    gaps: u64,
    replay_dropped: u64,
    resumed_from: u64,
}

/// Hysteresis of one alert stream (a section of one vantage, or an aggregate).
#[derive(Debug, Clone, Copy, Default)]
struct Alert {
    /// `None` until the first evaluation.
    state: Option<Severity>,
    candidate: Severity,
    count: u32,
}

impl Alert {
    /// Feed one evaluation; `Some((from, to))` when the alert changes.
    fn evaluate(
        &mut self,
        raw: Severity,
        raise_after: u32,
        clear_after: u32,
    ) -> Option<(Option<Severity>, Severity)> {
        let Some(current) = self.state else {
            self.state = Some(raw);
            return Some((None, raw));
        };
        if raw == current {
            self.count = 0;
            return None;
        }
        if raw == self.candidate && self.count > 0 {
            self.count += 1;
        } else {
            self.candidate = raw;
            self.count = 1;
        }
        let needed = if raw > current {
            raise_after
        } else {
            clear_after
        };
        if self.count >= needed.max(1) {
            self.state = Some(raw);
            self.count = 0;
            return Some((Some(current), raw));
        }
        None
    }
}

/// The latest observation of each check and target of one vantage. Keyed check → target so
/// that replacing an observation (the ingest path's common case) allocates no key.
#[derive(Default)]
struct Latest {
    by_check: FxHashMap<String, FxHashMap<String, pb::Observation>>,
    len: usize,
}

impl Latest {
    /// Keep `obs` as the latest of its check and target; `false` when that would exceed
    /// `limit` in all or `per_check` targets of its check.
    fn put(&mut self, obs: pb::Observation, limit: usize, per_check: usize) -> bool {
        if let Some(targets) = self.by_check.get_mut(obs.check_id.as_str()) {
            if let Some(slot) = targets.get_mut(obs.target.as_str()) {
                *slot = obs;
                return true;
            }
            if targets.len() >= per_check || self.len >= limit {
                return false;
            }
            targets.insert(obs.target.clone(), obs);
            self.len += 1;
            return true;
        }
        if self.len >= limit {
            return false;
        }
        let mut targets = FxHashMap::default();
        let check = obs.check_id.clone();
        targets.insert(obs.target.clone(), obs);
        self.by_check.insert(check, targets);
        self.len += 1;
        true
    }

    fn values(&self) -> impl Iterator<Item = &pb::Observation> {
        self.by_check.values().flat_map(FxHashMap::values)
    }

    fn retain_checks(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_check.retain(|check, _| keep(check));
        self.len = self.by_check.values().map(FxHashMap::len).sum();
    }
}

struct Vantage {
    name: String,
    region: String,
    version: String,
    labels: BTreeMap<String, String>,
    instance_id: String,
    session: Option<(u64, SessionTx)>,
    last_seen: Instant,
    last_seen_at: Option<DateTime<Utc>>,
    stale_since: Option<DateTime<Utc>>,
    /// Latest observation per assigned check and target.
    observations: Latest,
    assigned: FxHashMap<String, Section>,
    sections: HashMap<Section, SectionReport>,
    alerts: HashMap<Section, Alert>,
    seq: SeqStats,
    /// Its latest session was on this replica.
    home: bool,
}

impl Vantage {
    fn is_fresh(&self) -> bool {
        self.stale_since.is_none()
    }
}

struct ForceRun {
    pending: watch::Sender<BTreeSet<String>>,
}

struct Durable {
    /// Whether the database is answering (kept by the store follower and the event writer):
    /// while it is not, events are delivered from memory under a provisional epoch.
    db_ok: Arc<std::sync::atomic::AtomicBool>,
    writer: WriteBehind,
    acks: mpsc::Sender<(SessionTx, u64, Receipt)>,
    /// Events this replica caused, to store (their revisions come from the database; every
    /// replica's watchers are fed from there, in revision order).
    events: mpsc::Sender<Vec<u8>>,
}

/// What a durable aggregator needs: the observation writer, the store (for events) and the
/// database-health flag.
pub type DurableParts = (
    WriteBehind,
    Arc<dyn crate::store::Store>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// Events waiting to be stored.
const EVENT_QUEUE: usize = 16_384;

/// Store events in batches, retrying while the database is away (bounded by the queue).
async fn store_events(
    store: Arc<dyn crate::store::Store>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    db_ok: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![crate::store::NewEvent { payload: first }];
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(p) => batch.push(crate::store::NewEvent { payload: p }),
                Err(_) => break,
            }
        }
        loop {
            match store.append_events(batch.clone()).await {
                Ok(_) => {
                    backoff = Duration::from_millis(50);
                    break;
                }
                Err(e) => {
                    db_ok.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, events = batch.len(), "storing events; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Acks waiting for their observations to be stored, in order (the writer stores in order).
async fn ack_when_stored(mut pending: mpsc::Receiver<(SessionTx, u64, Receipt)>) {
    while let Some((tx, seq, receipt)) = pending.recv().await {
        // Stored, or dropped from the full queue (counted there): either way the probe may
        // let go; a dropped write is reported, never retried forever.
        let _ = receipt.stored().await;
        let _ = tx.try_send(ack(seq));
    }
}

struct State {
    durable: Option<Durable>,
    /// Whether what is being handled was caused here (a local probe, a local session, this
    /// replica's clock): only such events are stored, so each is stored once.
    local_cause: bool,
    /// While the database is away: the provisional epoch of events delivered from memory.
    degraded: Option<String>,
    /// The last revision received from the database.
    db_revision: u64,
    config: AggregatorConfig,
    rules: rules::RulesContext,
    /// Random per aggregator start: revisions compare only within one epoch.
    epoch: String,
    vantages: BTreeMap<String, Vantage>,
    aggregates: HashMap<Section, (SectionReport, Alert)>,
    server_sections: HashMap<Section, SectionReport>,
    revision: u64,
    changed_at: DateTime<Utc>,
    events: broadcast::Sender<Arc<SharedEvent>>,
    history: VecDeque<Arc<SharedEvent>>,
    dismissed: Vec<Section>,
    cached: Option<(Arc<HealthReport>, Arc<pb::Report>)>,
    next_session: u64,
    next_request: u64,
    force: Option<ForceRun>,
    stats: Stats,
    stats_tx: watch::Sender<Stats>,
}

fn ack(seq: u64) -> Result<pb::ServerMessage, Status> {
    Ok(pb::ServerMessage {
        msg: Some(Down::Ack(pb::Ack { seq })),
    })
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let tick_every =
            (self.config.stale_after / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                _ = tick.tick() => self.check_staleness(),
            }
            self.stats.revision = self.revision;
            self.stats_tx.send_if_modified(|s| {
                let changed = s.revision != self.stats.revision || s.applied != self.stats.applied;
                if changed {
                    *s = self.stats.clone();
                }
                changed
            });
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Attach {
                hello,
                session,
                reply,
            } => {
                let attached = self.attach(hello, session);
                let _ = reply.send(attached);
            }
            Command::Detach { name, session_id } => self.detach(&name, session_id),
            Command::Ingest {
                name,
                session_id,
                observations,
            } => self.ingest(&name, session_id, observations),
            Command::Heartbeat {
                name,
                session_id,
                replay_dropped,
            } => {
                if let Some(v) = self
                    .vantages
                    .get_mut(&name)
                    .filter(|v| v.session.as_ref().is_some_and(|s| s.0 == session_id))
                {
                    v.seq.replay_dropped = replay_dropped;
                    self.seen(&name);
                }
            }
            Command::Assigned { name, check_ids } => {
                if let Some(v) = self.vantages.get_mut(&name) {
                    v.assigned = check_ids.into_iter().collect();
                    let assigned = &v.assigned;
                    v.observations.retain_checks(|id| assigned.contains_key(id));
                    let sections: Vec<Section> = Section::ALL.into_iter().collect();
                    for s in sections {
                        self.recompute(&name, s);
                    }
                    self.bump();
                }
            }
            Command::RunComplete {
                name,
                request_id: _,
            } => self.run_complete(&name),
            Command::Force { reply } => {
                let rx = self.force();
                let _ = reply.send(rx);
            }
            Command::Report { reply } => {
                let report = self.report();
                let _ = reply.send(report);
            }
            Command::Subscribe {
                since,
                epoch,
                reply,
            } => {
                let since = if epoch.is_empty() || epoch == self.current_epoch() {
                    since
                } else {
                    u64::MAX
                };
                let sub = self.subscribe(since);
                let _ = reply.send(sub);
            }
            Command::Settings { update, reply } => {
                let mut changed = false;
                if let Some(mut new) = update {
                    new.sort();
                    new.dedup();
                    if new != self.dismissed {
                        self.dismissed = new;
                        changed = true;
                        self.bump();
                    }
                }
                let _ = reply.send(SettingsUpdate {
                    changed,
                    dismissed: self.dismissed.clone(),
                });
            }
            Command::Vantages { reply } => {
                let list = self.vantages.values().map(|v| self.vantage_pb(v)).collect();
                let _ = reply.send(list);
            }
            Command::Forget { name, reply } => {
                let found = self.vantages.remove(&name).is_some();
                if found {
                    self.vantage_event(&name, "forgotten");
                    self.reaggregate_all();
                }
                let _ = reply.send(found);
            }
            Command::Remote { observations } => {
                self.local_cause = false;
                self.remote(observations);
                self.local_cause = true;
            }
            Command::Restore { observations } => {
                self.local_cause = false;
                self.restore(observations);
                self.local_cause = true;
            }
            Command::RemoteVantages { vantages } => {
                self.local_cause = false;
                self.remote_vantages(vantages);
                self.local_cause = true;
            }
            Command::StoredEvents { events } => self.stored_events(events),
            Command::Targets { reply } => {
                let figures = self
                    .vantages
                    .values()
                    .filter(|v| v.is_fresh())
                    .flat_map(|v| {
                        v.observations.values().filter_map(move |o| {
                            Some(TargetFigure {
                                vantage: v.name.clone(),
                                section: Section::from_pb(o.section)?,
                                target: o.target.clone(),
                                seconds: convert::from_duration(o.elapsed.as_ref())
                                    .map_or(0.0, |d| d.as_secs_f64()),
                                ok: observation_ok(o),
                            })
                        })
                    })
                    .collect();
                let _ = reply.send(figures);
            }
            Command::DatabaseState { ok } => {
                if let Some(d) = &self.durable {
                    d.db_ok.store(ok, std::sync::atomic::Ordering::Relaxed);
                    if !ok && self.degraded.is_none() {
                        tracing::warn!(
                            "the database is unreachable: delivering events from memory"
                        );
                        self.degraded = Some(format!("degraded-{}", uuid::Uuid::new_v4()));
                        // A marker in the new epoch: every watcher resyncs to the current state
                        // (which may already hold changes the database never got).
                        self.local_cause = false;
                        self.vantage_event("", "database-unreachable");
                        self.local_cause = true;
                    }
                }
            }
            Command::Proxies { proxies } => {
                self.rules.proxies = proxies;
                let names: Vec<String> = self.vantages.keys().cloned().collect();
                for name in names {
                    self.recompute(&name, Section::WorkspaceProxy);
                }
                self.reaggregate(Section::WorkspaceProxy);
                self.bump();
            }
            Command::ServerSection { report } => {
                let section = report.section();
                if self.server_sections.get(&section) != Some(&report) {
                    self.server_sections.insert(section, report);
                    self.reaggregate(section);
                    self.bump();
                }
            }
        }
    }

    /// Something changed. In memory every change is a revision; in a cluster revisions come
    /// only from the database's event log (unless it is away and events come from memory).
    fn bump(&mut self) {
        if self.durable.is_none() || self.degraded.is_some() {
            self.revision += 1;
        }
        self.changed_at = Utc::now();
        self.cached = None;
    }

    fn attach(&mut self, hello: pb::Hello, session: SessionTx) -> Attached {
        let session_id = self.next_session;
        self.next_session += 1;
        let name = hello.name.clone();
        let v = self.vantage_entry(&name);
        v.home = true;
        if v.instance_id != hello.instance_id {
            // A new process: its sequence numbers start afresh.
            v.instance_id = hello.instance_id.clone();
            v.seq = SeqStats {
                resumed_from: hello.last_acked_seq,
                ..SeqStats::default()
            };
        } else {
            v.seq.resumed_from = hello.last_acked_seq;
        }
        v.seq.replay_dropped = hello.replay_dropped;
        v.region = hello.region;
        v.version = hello.version;
        v.labels = hello.labels.into_iter().collect();
        if let Some((_, old)) = v.session.replace((session_id, session)) {
            tracing::warn!(vantage = %name, "a new session replaces the previous one");
            let _ = old.try_send(Err(Status::aborted(
                "replaced by a newer session of the same vantage",
            )));
        }
        if v.seq.applied == 0 {
            // Nothing applied from this instance yet: continue after what it says was acked.
            v.seq.last = v.seq.last.max(hello.last_acked_seq);
        }
        let applied_seq = v.seq.last;
        self.vantage_event(&name, "attached");
        self.seen(&name);
        self.bump();
        Attached {
            session_id,
            applied_seq,
        }
    }

    fn detach(&mut self, name: &str, session_id: u64) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        if v.session.as_ref().is_none_or(|s| s.0 != session_id) {
            return;
        }
        v.session = None;
        self.run_complete(name);
        self.vantage_event(name, "detached");
        self.bump();
    }

    /// The vantage was heard from: fresh again if it was stale.
    fn seen(&mut self, name: &str) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        v.last_seen = Instant::now();
        v.last_seen_at = Some(Utc::now());
        if v.stale_since.take().is_some() {
            self.vantage_event(name, "fresh");
            self.reaggregate_all();
        }
    }

    fn ingest(&mut self, name: &str, session_id: u64, observations: Vec<pb::Observation>) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        let Some((sid, tx)) = v.session.as_ref() else {
            return;
        };
        if *sid != session_id {
            return;
        }
        let tx = tx.clone();
        let instance = v.instance_id.clone();
        let to_store = self.durable.is_some().then(|| {
            observations
                .iter()
                .filter(|o| o.seq > v.seq.last)
                .map(|o| NewObservation {
                    vantage: name.to_owned(),
                    instance_id: instance.clone(),
                    observation: o.clone(),
                })
                .collect::<Vec<_>>()
        });
        let acked = self.apply(name, observations, false);
        match (&self.durable, to_store) {
            (Some(d), Some(batch)) if !batch.is_empty() => {
                let receipt = d.writer.submit(batch);
                // If the ack queue is full, a later cumulative ack covers this one.
                let _ = d.acks.try_send((tx, acked, receipt));
            }
            _ => {
                // Cumulative ack; if the session's queue is full a later ack covers this one.
                let _ = tx.try_send(ack(acked));
            }
        }
    }

    /// Apply observations of `name` in sequence order, once each; returns the highest
    /// sequence applied. `remote`: heard through the store, so the check need not be in this
    /// replica's assignment of the vantage.
    fn apply(&mut self, name: &str, observations: Vec<pb::Observation>, remote: bool) -> u64 {
        let Some(v) = self.vantages.get_mut(name) else {
            return 0;
        };
        let mut dirty: u8 = 0;
        for obs in observations {
            if obs.seq <= v.seq.last {
                v.seq.duplicates += 1;
                self.stats.duplicates += 1;
                continue;
            }
            if v.seq.applied > 0 && obs.seq > v.seq.last + 1 {
                v.seq.gaps += obs.seq - v.seq.last - 1;
            }
            if v.seq.first == 0 {
                v.seq.first = obs.seq;
            }
            v.seq.last = obs.seq;
            v.seq.applied += 1;
            self.stats.applied += 1;
            let section = if remote {
                Section::from_pb(obs.section)
            } else {
                v.assigned
                    .get(&obs.check_id)
                    .copied()
                    .filter(|s| Section::from_pb(obs.section) == Some(*s))
            };
            let Some(section) = section else {
                // Not (or no longer) assigned: counted as applied, kept nowhere.
                self.stats.rejected += 1;
                continue;
            };
            let (limit, per_check) = if remote {
                (MAX_REMOTE_OBSERVATIONS, MAX_REMOTE_OBSERVATIONS)
            } else {
                (MAX_REMOTE_OBSERVATIONS, MAX_TARGETS_PER_CHECK)
            };
            if !v.observations.put(obs, limit, per_check) {
                // A check has at most so many targets (DERP nodes of a region).
                self.stats.rejected += 1;
                continue;
            }
            dirty |= 1 << (section as u8);
        }
        let applied = v.seq.last;
        self.seen(name);
        for s in Section::ALL {
            if dirty & (1 << (s as u8)) != 0 {
                self.recompute(name, s);
            }
        }
        self.bump();
        applied
    }

    /// A vantage this replica has not heard of: created without a session.
    fn vantage_entry(&mut self, name: &str) -> &mut Vantage {
        self.vantages
            .entry(name.to_owned())
            .or_insert_with(|| Vantage {
                name: name.to_owned(),
                region: String::new(),
                version: String::new(),
                labels: BTreeMap::new(),
                instance_id: String::new(),
                session: None,
                last_seen: Instant::now(),
                last_seen_at: None,
                stale_since: None,
                observations: Latest::default(),
                assigned: FxHashMap::default(),
                sections: HashMap::new(),
                alerts: HashMap::new(),
                seq: SeqStats::default(),
                home: false,
            })
    }

    fn remote(&mut self, observations: Vec<StoredObservation>) {
        // Group per vantage, keeping the log order.
        let mut by_vantage: Vec<(String, String, Vec<pb::Observation>)> = Vec::new();
        for o in observations {
            match by_vantage.last_mut() {
                Some((v, i, list)) if *v == o.vantage && *i == o.instance_id => {
                    list.push(o.observation)
                }
                _ => by_vantage.push((o.vantage, o.instance_id, vec![o.observation])),
            }
        }
        for (name, instance, list) in by_vantage {
            let v = self.vantage_entry(&name);
            if v.session.is_some() && v.instance_id == instance {
                // Our own probe's observations, echoed back by the log: already applied.
                continue;
            }
            if v.instance_id != instance {
                if v.session.is_some() {
                    // Attached here with another instance: this replica's session is the truth.
                    continue;
                }
                v.instance_id = instance;
                v.seq = SeqStats::default();
                // Its probe now reports through another replica.
                v.home = false;
            }
            self.apply(&name, list, true);
        }
    }

    /// Put back what was stored, whatever its sequence (it was applied before the restart).
    fn restore(&mut self, observations: Vec<StoredObservation>) {
        let mut touched = BTreeSet::new();
        for o in observations {
            let v = self.vantage_entry(&o.vantage);
            if v.instance_id.is_empty() {
                v.instance_id = o.instance_id.clone();
            }
            if v.observations.put(
                o.observation,
                MAX_REMOTE_OBSERVATIONS,
                MAX_REMOTE_OBSERVATIONS,
            ) {
                touched.insert(o.vantage);
            }
        }
        for name in touched {
            for s in Section::ALL {
                self.recompute(&name, s);
            }
        }
        self.reaggregate_all();
        self.bump();
    }

    fn remote_vantages(&mut self, records: Vec<VantageRecord>) {
        let mut changed = false;
        let stale_after = self.config.stale_after;
        for r in records {
            let known = self.vantages.contains_key(&r.name);
            let v = self.vantage_entry(&r.name);
            if v.session.is_some() {
                continue;
            }
            v.region = r.region;
            v.version = r.version;
            v.labels = r.labels;
            if v.instance_id != r.instance_id {
                v.instance_id = r.instance_id;
                v.seq = SeqStats::default();
            }
            if r.applied_seq > v.seq.last {
                v.seq.last = r.applied_seq;
            }
            let newer = r
                .last_seen_at
                .is_some_and(|t| v.last_seen_at.is_none_or(|mine| t > mine));
            if newer {
                v.last_seen_at = r.last_seen_at;
                // Heard of recently elsewhere: as fresh as that.
                let age = r.last_seen_at.map_or(Duration::ZERO, |t| {
                    (Utc::now() - t).to_std().unwrap_or_default()
                });
                v.last_seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                if v.stale_since.is_some() && age < stale_after {
                    v.stale_since = None;
                    changed = true;
                }
            } else if !known {
                // Known only from an old record: it starts out stale until it reports.
                let age = r.last_seen_at.map_or(stale_after * 2, |t| {
                    (Utc::now() - t).to_std().unwrap_or_default()
                });
                v.last_seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            }
            changed |= !known;
        }
        if changed {
            self.reaggregate_all();
            self.bump();
        }
    }

    /// Recompute one vantage's report of `section` from its observations, then the aggregate.
    fn recompute(&mut self, name: &str, section: Section) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        let report = rules::section_report(
            section,
            v.observations
                .values()
                .filter(|o| Section::from_pb(o.section) == Some(section)),
            &self.rules,
        );
        // The common case on the ingest path: the same result again. Nothing to re-aggregate
        // and no alert to advance (unless one is waiting for consecutive evaluations).
        let pending = v.alerts.get(&section).is_some_and(|a| a.count > 0)
            || self.aggregates.get(&section).is_some_and(|a| a.1.count > 0);
        if !pending && report.is_some() && report.as_ref() == v.sections.get(&section) {
            return;
        }
        let (raise, clear) = (self.config.raise_after, self.config.clear_after);
        let change = match &report {
            Some(r) => {
                let sev = r.severity();
                v.alerts
                    .entry(section)
                    .or_default()
                    .evaluate(sev, raise, clear)
                    .map(|c| (c, r.base().clone()))
            }
            None => None,
        };
        match report {
            Some(r) => v.sections.insert(section, r),
            None => v.sections.remove(&section),
        };
        let fresh = v.is_fresh();
        if let Some(((from, to), base)) = change {
            self.section_event(section, name, from, to, &base);
        }
        if fresh {
            self.reaggregate(section);
        }
    }

    fn reaggregate_all(&mut self) {
        for s in Section::ALL {
            self.reaggregate(s);
        }
    }

    /// Recompute the aggregate of `section` over fresh vantages.
    fn reaggregate(&mut self, section: Section) {
        let fresh = || self.vantages.values().filter(|v| v.is_fresh());
        let report = if let Some(r) = self.server_sections.get(&section) {
            r.clone()
        } else if section == Section::Derp {
            let reports: Vec<(&str, &vantage_proto::report::DerpReport)> = fresh()
                .filter_map(|v| match v.sections.get(&section) {
                    Some(SectionReport::Derp(r)) => Some((v.name.as_str(), r)),
                    _ => None,
                })
                .collect();
            SectionReport::Derp(crate::aggregate::aggregate_derp(
                &reports,
                self.config.quorum,
                &self.config.derp_regions,
                self.config.derp_has_nodes,
            ))
        } else if section == Section::WorkspaceProxy {
            let reports: Vec<(&str, &vantage_proto::report::WorkspaceProxyReport)> = fresh()
                .filter_map(|v| match v.sections.get(&section) {
                    Some(SectionReport::WorkspaceProxy(r)) => Some((v.name.as_str(), r)),
                    _ => None,
                })
                .collect();
            SectionReport::WorkspaceProxy(crate::aggregate::aggregate_proxies(
                &reports,
                &self.rules.proxies,
                self.config.quorum,
            ))
        } else {
            let reports: Vec<(&str, &SectionReport)> = self
                .vantages
                .values()
                .filter(|v| v.is_fresh())
                .filter_map(|v| v.sections.get(&section).map(|r| (v.name.as_str(), r)))
                .collect();
            aggregate(
                section,
                &reports,
                self.config.quorum,
                self.config.expected.contains(&section),
            )
        };
        let (raise, clear) = (self.config.raise_after, self.config.clear_after);
        let entry = self
            .aggregates
            .entry(section)
            .or_insert_with(|| (report.clone(), Alert::default()));
        entry.0 = report;
        let sev = entry.0.severity();
        if let Some((from, to)) = entry.1.evaluate(sev, raise, clear) {
            let base = entry.0.base().clone();
            self.section_event(section, "", from, to, &base);
        }
    }

    fn check_staleness(&mut self) {
        let now = Instant::now();
        let mut newly_stale = Vec::new();
        let mut forget = Vec::new();
        for v in self.vantages.values_mut() {
            let silent = now.saturating_duration_since(v.last_seen);
            if v.is_fresh() && silent > self.config.stale_after {
                v.stale_since = Some(Utc::now());
                newly_stale.push(v.name.clone());
            } else if !v.is_fresh() && silent > self.config.forget_after {
                forget.push(v.name.clone());
            }
        }
        // Stored once: by the replica the vantage was attached to.
        self.local_cause = newly_stale
            .iter()
            .any(|n| self.vantages.get(n).is_some_and(|v| v.home));
        for name in &newly_stale {
            tracing::warn!(vantage = %name, "vantage is stale");
            self.local_cause = self.vantages.get(name).is_some_and(|v| v.home);
            self.vantage_event(name, "stale");
        }
        for name in &forget {
            tracing::info!(vantage = %name, "forgetting a long-stale vantage");
            self.vantages.remove(name);
            self.vantage_event(name, "forgotten");
        }
        if !newly_stale.is_empty() || !forget.is_empty() {
            self.local_cause = newly_stale
                .iter()
                .any(|n| self.vantages.get(n).is_some_and(|v| v.home));
            self.reaggregate_all();
            self.bump();
        }
        self.local_cause = true;
    }

    fn force(&mut self) -> watch::Receiver<BTreeSet<String>> {
        if let Some(run) = self
            .force
            .as_ref()
            .filter(|r| !r.pending.borrow().is_empty())
        {
            // Join the run in flight (single flight).
            return run.pending.subscribe();
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let mut pending = BTreeSet::new();
        for v in self.vantages.values() {
            if let Some((_, tx)) = &v.session {
                let msg = pb::ServerMessage {
                    msg: Some(Down::RunNow(pb::RunNow { request_id })),
                };
                if tx.try_send(Ok(msg)).is_ok() {
                    pending.insert(v.name.clone());
                }
            }
        }
        let (tx, rx) = watch::channel(pending);
        self.force = Some(ForceRun { pending: tx });
        rx
    }

    fn run_complete(&mut self, name: &str) {
        if let Some(run) = &self.force {
            run.pending.send_if_modified(|p| p.remove(name));
        }
    }

    fn subscribe(&mut self, since: u64) -> Subscription {
        let events = self.events.subscribe();
        let oldest = self.history.front().map(|e| e.revision);
        // Resume only from a revision this server has passed, whose successors are all still
        // in the history; anything else (a revision from before a restart, or too old) resyncs.
        let reaches_back = since > 0
            && since <= self.revision
            && (since == self.revision || oldest.is_some_and(|o| o <= since + 1));
        if reaches_back {
            let backlog = self
                .history
                .iter()
                .filter(|e| e.revision > since)
                .cloned()
                .collect();
            Subscription {
                events,
                snapshot: None,
                backlog,
            }
        } else {
            let (_, pb_report) = self.report();
            Subscription {
                events,
                snapshot: Some((since > 0, pb_report)),
                backlog: Vec::new(),
            }
        }
    }

    fn push_event(&mut self, event: pb::watch_event::Event) {
        self.cached = None;
        if let Some(d) = &self.durable {
            // In a cluster the database numbers events: store what this replica caused; every
            // replica's watchers get it back from there (`stored_events`).
            if self.local_cause {
                let draft = pb::WatchEvent {
                    revision: 0,
                    epoch: String::new(),
                    time: Some(convert::timestamp(Utc::now())),
                    event: Some(event.clone()),
                };
                if d.events
                    .try_send(prost::Message::encode_to_vec(&draft))
                    .is_err()
                {
                    self.stats.events_dropped += 1;
                }
            }
            if d.db_ok.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            // The database is away: watchers keep getting changes from memory, under a
            // provisional epoch (they resync when the database's feed resumes).
            if self.degraded.is_none() {
                tracing::warn!("the database is unreachable: delivering events from memory");
                self.degraded = Some(format!("degraded-{}", uuid::Uuid::new_v4()));
            }
        }
        self.revision += 1;
        let ev = SharedEvent::new(pb::WatchEvent {
            revision: self.revision,
            epoch: self.current_epoch().to_owned(),
            time: Some(convert::timestamp(Utc::now())),
            event: Some(event),
        });
        if self.history.len() == self.config.history {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        self.stats.events += 1;
        // Never waits: a lagging subscriber finds out on its next receive.
        let _ = self.events.send(ev);
    }

    /// Events from the database, in revision order: into the history and to the watchers.
    fn stored_events(&mut self, events: Vec<crate::store::StoredEvent>) {
        if !events.is_empty() && self.degraded.take().is_some() {
            tracing::info!("the database is back: events come from it again");
            self.revision = self.db_revision;
        }
        for (revision, payload) in events {
            if revision <= self.db_revision {
                continue;
            }
            self.db_revision = revision;
            let Ok(mut ev) = <pb::WatchEvent as prost::Message>::decode(payload.as_slice()) else {
                tracing::warn!(revision, "skipping an undecodable stored event");
                continue;
            };
            ev.revision = revision;
            ev.epoch.clone_from(&self.epoch);
            self.revision = revision;
            let ev = SharedEvent::new(ev);
            if self.history.len() == self.config.history {
                self.history.pop_front();
            }
            self.history.push_back(ev.clone());
            self.stats.events += 1;
            let _ = self.events.send(ev);
        }
        self.cached = None;
    }

    /// The epoch revisions currently belong to.
    fn current_epoch(&self) -> &str {
        self.degraded.as_deref().unwrap_or(&self.epoch)
    }

    fn section_event(
        &mut self,
        section: Section,
        vantage: &str,
        from: Option<Severity>,
        to: Severity,
        base: &vantage_proto::report::Base,
    ) {
        let change = pb::SectionChange {
            section: pb::Section::from(section) as i32,
            vantage: vantage.to_owned(),
            from: from.map_or(pb::Severity::Unspecified, pb::Severity::from) as i32,
            to: pb::Severity::from(to) as i32,
            error: base.error.clone().unwrap_or_default(),
            warnings: base.warnings.iter().map(pb::Message::from).collect(),
        };
        self.push_event(pb::watch_event::Event::SectionChange(change));
    }

    fn vantage_event(&mut self, name: &str, change: &str) {
        self.push_event(pb::watch_event::Event::VantageChange(pb::VantageChange {
            vantage: name.to_owned(),
            change: change.to_owned(),
        }));
    }

    fn vantage_pb(&self, v: &Vantage) -> pb::Vantage {
        pb::Vantage {
            name: v.name.clone(),
            region: v.region.clone(),
            version: v.version.clone(),
            labels: v.labels.clone().into_iter().collect(),
            connected: v.session.is_some(),
            stale: !v.is_fresh(),
            last_seen: v.last_seen_at.map(convert::timestamp),
            stale_since: v.stale_since.map(convert::timestamp),
            instance_id: v.instance_id.clone(),
            first_applied_seq: v.seq.first,
            last_applied_seq: v.seq.last,
            applied: v.seq.applied,
            duplicates: v.seq.duplicates,
            gaps: v.seq.gaps,
            replay_dropped: v.seq.replay_dropped,
            resumed_from_seq: v.seq.resumed_from,
        }
    }

    /// The report, built only when something changed since the last one.
    fn report(&mut self) -> (Arc<HealthReport>, Arc<pb::Report>) {
        if let Some(c) = &self.cached {
            return c.clone();
        }
        for s in Section::ALL {
            if !self.aggregates.contains_key(&s) {
                self.reaggregate(s);
            }
        }
        let report = self.build_report();
        let mut pb_report = report_pb(&report);
        pb_report.epoch = self.current_epoch().to_owned();
        let pair = (Arc::new(report), Arc::new(pb_report));
        self.cached = Some(pair.clone());
        pair
    }

    fn build_report(&self) -> HealthReport {
        let mut vantages = VantagesReport::default();
        for v in self.vantages.values() {
            vantages.items.push(VantageInfo {
                name: v.name.clone(),
                region: v.region.clone(),
                version: v.version.clone(),
                labels: v.labels.clone(),
                connected: v.session.is_some(),
                state: if v.is_fresh() { "fresh" } else { "stale" }.to_owned(),
                last_seen: v.last_seen_at,
                stale_since: v.stale_since,
            });
            if let Some(since) = v.stale_since {
                vantages.warnings.push(Message::new(
                    codes::EVNT01,
                    format!(
                        "vantage {} is stale since {} (last seen {}); its results left the aggregate",
                        v.name,
                        since.to_rfc3339(),
                        v.last_seen_at.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
                    ),
                ));
                vantages.severity = Severity::Warning;
            }
        }
        let fresh: Vec<&Vantage> = self.vantages.values().filter(|v| v.is_fresh()).collect();
        macro_rules! section {
            ($section:expr, $variant:ident) => {{
                let report = match self.aggregates.get(&$section).map(|a| &a.0) {
                    Some(SectionReport::$variant(r)) => r.clone(),
                    _ => Default::default(),
                };
                let vantage_reports = fresh
                    .iter()
                    .filter_map(|v| match v.sections.get(&$section) {
                        Some(SectionReport::$variant(r)) => Some((v.name.clone(), r.clone())),
                        _ => None,
                    })
                    .collect();
                Aggregated {
                    report,
                    vantage_reports,
                }
            }};
        }
        let mut report = HealthReport {
            time: self.changed_at,
            healthy: true,
            severity: Severity::Ok,
            derp: section!(Section::Derp, Derp),
            access_url: section!(Section::AccessUrl, AccessUrl),
            websocket: section!(Section::Websocket, Websocket),
            database: section!(Section::Database, Database),
            workspace_proxy: section!(Section::WorkspaceProxy, WorkspaceProxy),
            provisioner_daemons: section!(Section::ProvisionerDaemons, ProvisionerDaemons),
            coder_version: self.config.version.clone(),
            vantages,
            revision: self.revision,
        };
        report.apply_dismissed(&self.dismissed);
        let mut severity = report.vantages.severity;
        let mut healthy = true;
        for s in Section::ALL {
            let sev = report.base(s).severity;
            severity = severity.max(sev);
            if s.is_failing(sev) {
                healthy = false;
            }
        }
        report.severity = severity;
        report.healthy = healthy;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_raises_and_clears_after_consecutive_evaluations() {
        let mut a = Alert::default();
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), Some((None, Severity::Ok)));
        assert_eq!(a.evaluate(Severity::Error, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Ok, 2, 3),
            None,
            "a blip resets the count"
        );
        assert_eq!(a.evaluate(Severity::Error, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Error, 2, 3),
            Some((Some(Severity::Ok), Severity::Error))
        );
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), None);
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Ok, 2, 3),
            Some((Some(Severity::Error), Severity::Ok))
        );
    }

    #[test]
    fn default_hysteresis_is_immediate() {
        let mut a = Alert::default();
        a.evaluate(Severity::Ok, 1, 1);
        assert_eq!(
            a.evaluate(Severity::Warning, 1, 1),
            Some((Some(Severity::Ok), Severity::Warning))
        );
        assert_eq!(
            a.evaluate(Severity::Ok, 1, 1),
            Some((Some(Severity::Warning), Severity::Ok))
        );
    }
}
