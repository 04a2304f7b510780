//! The commands the aggregator takes, grouped by who sends them: probe sessions (and the
//! server's own vantage), the report surfaces' reads, operators' and server components'
//! changes, and what the store tells of other replicas.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use vantage_probe::rules::SectionReport;
use vantage_probe::rules::workspace_proxy::ProxyInput;
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, pb};

use super::events::Subscription;
use super::report::TargetFigure;
use crate::store::{StoredEvent, StoredObservation, VantageRecord};

/// What a session's queue carries: a message to the probe, or the status its stream ends
/// with. Boxed: a queue allocates its slots 32 at a time, and every attached probe has one (32
/// messages inline are 2.8 KiB, 32 boxes 0.25 KiB).
pub type Outgoing = Box<Result<pb::ServerMessage, Status>>;

/// A message to the server side of one session (a probe's stream, or the own vantage).
pub type SessionTx = mpsc::Sender<Outgoing>;

/// What an attach is told.
#[derive(Debug)]
pub struct Attached {
    pub session_id: u64,
    pub applied_seq: u64,
}

/// The outcome of a settings update.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsUpdate {
    pub changed: bool,
    pub dismissed: Vec<Section>,
}

/// A command to the aggregator, by its kind of sender.
pub enum Command {
    Probe(ProbeCommand),
    Query(Query),
    Admin(AdminCommand),
    Cluster(ClusterCommand),
}

/// From a probe's session, or from the server's own vantage.
pub enum ProbeCommand {
    Attach {
        hello: pb::Hello,
        session: SessionTx,
        /// The session's peer address, named in a refusal of another session.
        peer: String,
        reply: oneshot::Sender<Result<Attached, super::guard::Refusal>>,
    },
    Detach {
        name: String,
        session_id: u64,
    },
    /// Observations, prepared by [`super::Aggregator::ingest`]: `batch`, then the batches
    /// that arrived right behind it (`then`, usually none). Each is applied as if it came
    /// alone — its own recompute and events, so no transition is lost between them — and
    /// the session is acknowledged once, after the last: one command and one ack instead of
    /// one per message.
    Ingest {
        name: String,
        session_id: u64,
        batch: super::Batch,
        then: Vec<super::Batch>,
    },
    Heartbeat {
        name: String,
        session_id: u64,
        replay_dropped: u64,
    },
    /// The address its session comes from, as this server's listener saw it.
    Source {
        name: String,
        address: String,
    },
    /// The checks its assignment holds (what its observations may be about).
    Assigned {
        name: String,
        check_ids: Vec<AssignedCheck>,
    },
    RunComplete {
        name: String,
        request_id: u64,
    },
}

/// Reads by the report surfaces; they change nothing.
pub enum Query {
    Report {
        reply: oneshot::Sender<(Arc<HealthReport>, Arc<pb::Report>)>,
    },
    Subscribe {
        since: u64,
        epoch: String,
        reply: oneshot::Sender<Subscription>,
    },
    Settings {
        reply: oneshot::Sender<SettingsUpdate>,
    },
    /// With `internal`, instance ids are kept (the cluster publishes them); readers get them
    /// blank.
    Vantages {
        internal: bool,
        reply: oneshot::Sender<Vec<pb::Vantage>>,
    },
    /// Each section's aggregate severity after hysteresis (what `Watch` alerts on).
    Held {
        reply: oneshot::Sender<Vec<(Section, vantage_proto::Severity)>>,
    },
    /// Section transitions and check outcomes kept in memory.
    History {
        filter: super::history::HistoryFilter,
        reply: oneshot::Sender<pb::History>,
    },
    /// The latest check of every target of every fresh vantage, for `/metrics`.
    Targets {
        reply: oneshot::Sender<Vec<TargetFigure>>,
    },
}

/// Changes by an operator (settings, forget, force) or by a server-side component.
pub enum AdminCommand {
    Force {
        reply: oneshot::Sender<super::ForceStarted>,
    },
    /// Stop waiting, in the forced run in flight, for the vantages not heard from since they
    /// were asked (they did not even acknowledge the RunNow); replies with their names.
    ForceUnheard { reply: oneshot::Sender<Vec<String>> },
    /// Dismiss exactly these sections (already persisted); those listed in `until` only
    /// until then (a maintenance window: it ends by this aggregator's clock).
    Dismiss {
        dismissed: Vec<Section>,
        until: Vec<(Section, chrono::DateTime<chrono::Utc>)>,
        reply: oneshot::Sender<SettingsUpdate>,
    },
    /// Forget a vantage; a live (fresh or connected) one only with `force`, which also
    /// closes its stream.
    Forget {
        name: String,
        force: bool,
        reply: oneshot::Sender<super::ForgetOutcome>,
    },
    /// Replace what a server-computed section shows (provisioner daemons).
    ServerSection { report: SectionReport },
    /// The registry's workspace proxies changed.
    Proxies { proxies: Vec<ProxyInput> },
    /// The effective DERP map changed (the configured map was read again, an attached Coder's
    /// map): its regions, (id, name) each, and whether any region has a DERP node.
    DerpRegions {
        regions: Vec<(i64, String)>,
        has_nodes: bool,
        /// Why the configured map could not be read last time (EDERP05), if it could not.
        map_warning: Option<String>,
    },
    /// A vantage whose sections were computed elsewhere (Coder's own report, as `coderd`).
    ExternalVantage {
        name: String,
        version: String,
        sections: Vec<SectionReport>,
    },
    /// What the Coder importer found (the report's `coder` block).
    Coder {
        report: vantage_proto::report::CoderReport,
    },
}

/// What the store tells: other replicas' work, and this replica's from before a restart.
pub enum ClusterCommand {
    /// Observations another replica stored (or this one, echoed back): applied once by
    /// per-instance sequence number.
    Remote {
        observations: Vec<StoredObservation>,
    },
    /// At start: the latest observation of each vantage and target, as stored before.
    Restore {
        observations: Vec<StoredObservation>,
    },
    /// Vantages as the store knows them (attached elsewhere, or before a restart). `initial`:
    /// at start, before following the log, so their stored sequences are where this replica
    /// resumes; later, sequences advance only by applying the log (a record ahead of the log
    /// must not turn the rows still to come into duplicates).
    RemoteVantages {
        vantages: Vec<VantageRecord>,
        initial: bool,
    },
    /// The database stopped (or resumed) answering.
    DatabaseState { ok: bool },
    /// Events stored by any replica, in revision order: the watchers' feed in a cluster.
    StoredEvents { events: Vec<StoredEvent> },
}

macro_rules! into_command {
    ($($kind:ident => $variant:ident),*) => {$(
        impl From<$kind> for Command {
            fn from(c: $kind) -> Command {
                Command::$variant(c)
            }
        }
    )*};
}
into_command!(ProbeCommand => Probe, Query => Query, AdminCommand => Admin, ClusterCommand => Cluster);

/// A check of a vantage's assignment: its section and the targets its observations may name
/// (the URL, the proxy's name, `database`, or the nodes of the DERP region, as the probe names
/// them); an observation of another target is not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedCheck {
    pub id: String,
    pub section: Section,
    pub targets: std::collections::BTreeSet<String>,
}
