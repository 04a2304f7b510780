//! The commands the aggregator takes, grouped by who sends them: probe sessions (and the
//! server's own vantage), the report surfaces' reads, operators' and server components'
//! changes, and what the store tells of other replicas.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use vantage_probe::rules::SectionReport;
use vantage_probe::rules::workspace_proxy::ProxyInput;
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, pb};

use super::events::Subscription;
use super::report::TargetFigure;
use crate::store::{StoredEvent, StoredObservation, VantageRecord};

/// A message to the server side of one session (a probe's stream, or the own vantage).
pub type SessionTx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

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
    /// The checks its assignment holds (what its observations may be about).
    Assigned {
        name: String,
        check_ids: Vec<(String, Section)>,
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
    Vantages {
        reply: oneshot::Sender<Vec<pb::Vantage>>,
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
        reply: oneshot::Sender<watch::Receiver<BTreeSet<String>>>,
    },
    /// Dismiss exactly these sections (already persisted).
    Dismiss {
        dismissed: Vec<Section>,
        reply: oneshot::Sender<SettingsUpdate>,
    },
    Forget {
        name: String,
        reply: oneshot::Sender<bool>,
    },
    /// Replace what a server-computed section shows (provisioner daemons).
    ServerSection { report: SectionReport },
    /// The registry's workspace proxies changed.
    Proxies { proxies: Vec<ProxyInput> },
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
