//! The report in the JSON shape of Coder's `GET /api/v2/debug/health`: every key and type Coder
//! has, plus vantage's additive fields (`vantages`, `revision`, and `vantage_reports` inside each
//! section). A script written for Coder's endpoint reads this unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Section, Severity};

mod derp;
pub use derp::{DerpNode, DerpNodeReport, DerpRegion, DerpRegionReport, Given};

/// `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub code: String,
    pub message: String,
}

impl Message {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Message {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Message {
    /// Coder's string form, `"<CODE>: <text>"` (just the text when there is no code).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// The fields every section has (Coder's `BaseReport`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Base {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub severity: Severity,
    #[serde(default)]
    pub warnings: Vec<Message>,
    #[serde(default)]
    pub dismissed: bool,
}

impl Base {
    /// Raise the severity (it never falls).
    pub fn raise(&mut self, to: Severity) {
        self.severity = self.severity.max(to);
    }

    /// Record an error `message` at error severity.
    pub fn fail(&mut self, message: &Message) {
        self.error = Some(message.to_string());
        self.raise(Severity::Error);
    }
}

/// Access to the common fields of a section, for code that treats sections alike.
pub trait SectionBody: Clone + Default + Serialize {
    fn base(&self) -> &Base;
    fn base_mut(&mut self) -> &mut Base;
    /// Set the deprecated `healthy` flag from the base, where the section has one.
    fn set_healthy(&mut self, healthy: bool);
}

macro_rules! section_body {
    ($t:ty, healthy) => {
        impl SectionBody for $t {
            fn base(&self) -> &Base {
                &self.base
            }
            fn base_mut(&mut self) -> &mut Base {
                &mut self.base
            }
            fn set_healthy(&mut self, healthy: bool) {
                self.healthy = healthy;
            }
        }
    };
    ($t:ty) => {
        impl SectionBody for $t {
            fn base(&self) -> &Base {
                &self.base
            }
            fn base_mut(&mut self) -> &mut Base {
                &mut self.base
            }
            fn set_healthy(&mut self, _healthy: bool) {}
        }
    };
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessUrlReport {
    pub healthy: bool,
    #[serde(flatten)]
    pub base: Base,
    pub access_url: String,
    pub reachable: bool,
    pub status_code: i64,
    pub healthz_response: String,
}
section_body!(AccessUrlReport, healthy);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReport {
    pub healthy: bool,
    #[serde(flatten)]
    pub base: Base,
    pub reachable: bool,
    /// A Go duration string, e.g. `"1.234567ms"`.
    pub latency: String,
    pub latency_ms: i64,
    pub threshold_ms: i64,
}
section_body!(DatabaseReport, healthy);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebsocketReport {
    pub healthy: bool,
    #[serde(flatten)]
    pub base: Base,
    pub body: String,
    pub code: i64,
    /// What was not checked, and why: an attached Coder's echo without an Owner's token
    /// (vantage's addition to Coder's shape; absent when the echo ran).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_checked: String,
}
section_body!(WebsocketReport, healthy);

/// The DERP section: region reports by region ID (a decimal string, as in JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpReport {
    pub healthy: bool,
    #[serde(flatten)]
    pub base: Base,
    pub regions: BTreeMap<String, DerpRegionReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netcheck: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netcheck_err: Option<String>,
    pub netcheck_logs: Option<Vec<String>>,
}
section_body!(DerpReport, healthy);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceProxyReport {
    pub healthy: bool,
    #[serde(flatten)]
    pub base: Base,
    pub workspace_proxies: WorkspaceProxies,
}
section_body!(WorkspaceProxyReport, healthy);

/// `{"regions": [...]}`: always a list, never `null` (`docs/behaviour.md#difference-3`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceProxies {
    pub regions: Vec<WorkspaceProxy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceProxy {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub icon_url: String,
    pub healthy: bool,
    pub path_app_url: String,
    pub wildcard_hostname: String,
    pub derp_enabled: bool,
    pub derp_only: bool,
    pub status: WorkspaceProxyStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceProxyStatus {
    /// `ok`, `unreachable`, `unhealthy`, `unregistered` or `unknown`.
    pub status: String,
    pub report: ProxyHealthReport,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyHealthReport {
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProvisionerDaemonsReport {
    #[serde(flatten)]
    pub base: Base,
    pub items: Vec<ProvisionerDaemonItem>,
}
section_body!(ProvisionerDaemonsReport);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionerDaemonItem {
    pub provisioner_daemon: ReportedDaemon,
    pub warnings: Vec<Message>,
}

/// A provisioner daemon: the one domain type of the registry (heartbeats), the Coder import
/// and the ProvisionerDaemons rules; its serde form is the fields Coder's report gives a
/// daemon. Converted to protobuf and SQL at those edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionerDaemon {
    pub id: String,
    pub organization_id: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    /// `None`: never connected.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub provisioners: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// A daemon as Coder's report lists it: the daemon, then what only Coder knows of it (its
/// key's name, its status and jobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedDaemon {
    #[serde(flatten)]
    pub daemon: ProvisionerDaemon,
    pub key_name: Option<String>,
    pub status: Option<String>,
    pub current_job: Option<serde_json::Value>,
    pub previous_job: Option<serde_json::Value>,
}

/// A section as served: the aggregated body, plus (additive) each fresh vantage's own report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregated<T> {
    #[serde(flatten)]
    pub report: T,
    #[serde(default = "BTreeMap::new")]
    pub vantage_reports: BTreeMap<String, T>,
}

/// One vantage as the report lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VantageInfo {
    pub name: String,
    pub region: String,
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The address the vantage's session comes from, as the server saw it (`ip:port`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub connected: bool,
    pub state: VantageState,
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<DateTime<Utc>>,
}

/// Whether a vantage's results count: `fresh` while it reports, `stale` after it fell silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VantageState {
    #[default]
    Fresh,
    Stale,
}

impl VantageState {
    pub fn as_str(self) -> &'static str {
        match self {
            VantageState::Fresh => "fresh",
            VantageState::Stale => "stale",
        }
    }
}

impl PartialEq<&str> for VantageState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What happened to a vantage, as a `Watch` event's `VantageChange.change` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VantageChange {
    Attached,
    Detached,
    Fresh,
    Stale,
    Forgotten,
    /// Not a vantage's change: the marker that opens a provisional epoch while the database is
    /// away (its vantage name is empty).
    DatabaseUnreachable,
}

impl VantageChange {
    pub const ALL: [VantageChange; 6] = [
        VantageChange::Attached,
        VantageChange::Detached,
        VantageChange::Fresh,
        VantageChange::Stale,
        VantageChange::Forgotten,
        VantageChange::DatabaseUnreachable,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            VantageChange::Attached => "attached",
            VantageChange::Detached => "detached",
            VantageChange::Fresh => "fresh",
            VantageChange::Stale => "stale",
            VantageChange::Forgotten => "forgotten",
            VantageChange::DatabaseUnreachable => "database-unreachable",
        }
    }

    /// From the wire name; `None` for a name this version does not know.
    pub fn parse(name: &str) -> Option<VantageChange> {
        VantageChange::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The change an event carries: its `kind`, or (an event from an older server) its name.
    pub fn of(event: &crate::pb::VantageChange) -> Option<VantageChange> {
        use crate::pb::VantageChangeKind as K;
        match K::try_from(event.kind).unwrap_or(K::Unspecified) {
            K::Unspecified => VantageChange::parse(&event.change),
            K::Attached => Some(VantageChange::Attached),
            K::Detached => Some(VantageChange::Detached),
            K::Fresh => Some(VantageChange::Fresh),
            K::Stale => Some(VantageChange::Stale),
            K::Forgotten => Some(VantageChange::Forgotten),
            K::DatabaseUnreachable => Some(VantageChange::DatabaseUnreachable),
        }
    }
}

impl From<VantageChange> for crate::pb::VantageChangeKind {
    fn from(c: VantageChange) -> Self {
        use crate::pb::VantageChangeKind as K;
        match c {
            VantageChange::Attached => K::Attached,
            VantageChange::Detached => K::Detached,
            VantageChange::Fresh => K::Fresh,
            VantageChange::Stale => K::Stale,
            VantageChange::Forgotten => K::Forgotten,
            VantageChange::DatabaseUnreachable => K::DatabaseUnreachable,
        }
    }
}

/// The `vantages` block: counts toward the report's severity like a section (EVNT01).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VantagesReport {
    pub severity: Severity,
    pub warnings: Vec<Message>,
    pub items: Vec<VantageInfo>,
}

/// The whole report (`HealthcheckReport`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub time: DateTime<Utc>,
    pub healthy: bool,
    pub severity: Severity,
    pub derp: Aggregated<DerpReport>,
    pub access_url: Aggregated<AccessUrlReport>,
    pub websocket: Aggregated<WebsocketReport>,
    pub database: Aggregated<DatabaseReport>,
    pub workspace_proxy: Aggregated<WorkspaceProxyReport>,
    pub provisioner_daemons: Aggregated<ProvisionerDaemonsReport>,
    pub coder_version: String,
    /// Additive: the vantages and their freshness.
    pub vantages: VantagesReport,
    /// Additive: the aggregator revision this report reflects.
    pub revision: u64,
    /// Additive: the Coder deployment vantaged is attached to (`--coder-url`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coder: Option<CoderReport>,
}

/// The `coder` block: what the import from the attached Coder deployment found. Counts toward
/// the report's severity like a section (ECDR01…ECDR05).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoderReport {
    pub url: String,
    /// The deployment's version (build info); empty before the first import.
    pub version: String,
    /// When the inventory shown was last imported in full; `None` before the first import.
    pub imported_at: Option<DateTime<Utc>>,
    /// When the importer last asked Coder.
    pub attempted_at: Option<DateTime<Utc>>,
    pub severity: Severity,
    pub warnings: Vec<Message>,
    /// Parts this deployment or token does not offer, each with the reason.
    pub unavailable: Vec<Unavailable>,
    /// The workspace proxies with Coder's status (the probes' is added by the server).
    pub proxies: Vec<CoderProxy>,
    /// The coderd replicas (enterprise, where the token may read them).
    pub replicas: Vec<CoderReplica>,
}

/// A part of the import that is not available, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// e.g. `workspace_proxies`, `replicas`.
    pub part: String,
    pub endpoint: String,
    pub reason: String,
}

/// One workspace proxy: Coder's view beside the probes'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoderProxy {
    pub name: String,
    /// The probe region that checks it.
    pub region: String,
    /// Coder's `status.status` (`ok`, `unreachable`, `unhealthy`, `unregistered`, `unknown`);
    /// empty when only `/api/v2/regions` could be read.
    pub coder_status: String,
    pub coder_errors: Vec<String>,
    pub coder_warnings: Vec<String>,
    pub coder_checked_at: Option<DateTime<Utc>>,
    /// What the probes of its region saw (the aggregated proxy's status); empty when no probe
    /// checked it yet.
    pub probe_status: String,
}

/// One coderd replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoderReplica {
    pub id: String,
    pub hostname: String,
    pub region_id: i64,
    pub relay_address: String,
    pub error: String,
    pub database_latency: i64,
}

impl HealthReport {
    /// Leave out every section's per-vantage reports (the aggregates stay): the report cut to
    /// its bound.
    pub fn drop_vantage_reports(&mut self) {
        self.derp.vantage_reports.clear();
        self.access_url.vantage_reports.clear();
        self.websocket.vantage_reports.clear();
        self.database.vantage_reports.clear();
        self.workspace_proxy.vantage_reports.clear();
        self.provisioner_daemons.vantage_reports.clear();
    }

    /// The common fields of one section.
    pub fn base(&self, section: Section) -> &Base {
        match section {
            Section::AccessUrl => &self.access_url.report.base,
            Section::Database => &self.database.report.base,
            Section::Derp => &self.derp.report.base,
            Section::Websocket => &self.websocket.report.base,
            Section::WorkspaceProxy => &self.workspace_proxy.report.base,
            Section::ProvisionerDaemons => &self.provisioner_daemons.report.base,
        }
    }

    pub fn base_mut(&mut self, section: Section) -> &mut Base {
        match section {
            Section::AccessUrl => &mut self.access_url.report.base,
            Section::Database => &mut self.database.report.base,
            Section::Derp => &mut self.derp.report.base,
            Section::Websocket => &mut self.websocket.report.base,
            Section::WorkspaceProxy => &mut self.workspace_proxy.report.base,
            Section::ProvisionerDaemons => &mut self.provisioner_daemons.report.base,
        }
    }

    /// The per-vantage bases of one section, by vantage name.
    pub fn vantage_bases(&self, section: Section) -> Vec<(&str, &Base)> {
        fn collect<T: SectionBody>(a: &Aggregated<T>) -> Vec<(&str, &Base)> {
            a.vantage_reports
                .iter()
                .map(|(k, v)| (k.as_str(), v.base()))
                .collect()
        }
        match section {
            Section::AccessUrl => collect(&self.access_url),
            Section::Database => collect(&self.database),
            Section::Derp => collect(&self.derp),
            Section::Websocket => collect(&self.websocket),
            Section::WorkspaceProxy => collect(&self.workspace_proxy),
            Section::ProvisionerDaemons => collect(&self.provisioner_daemons),
        }
    }

    /// Set `dismissed` on every section named in `dismissed` (all six, ProvisionerDaemons
    /// included: `docs/behaviour.md#difference-2`). Presentational only: severities are untouched.
    pub fn apply_dismissed(&mut self, dismissed: &[Section]) {
        for s in Section::ALL {
            self.base_mut(s).dismissed = dismissed.contains(&s);
        }
    }

    /// Coder's `?format=text` rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "time: {}", self.time.to_rfc3339());
        let _ = writeln!(out, "healthy: {}", self.healthy);
        let _ = writeln!(out, "derp: {}", self.derp.report.healthy);
        let _ = writeln!(out, "access_url: {}", self.access_url.report.healthy);
        let _ = writeln!(out, "websocket: {}", self.websocket.report.healthy);
        let _ = writeln!(out, "database: {}", self.database.report.healthy);
        out
    }
}

/// Coder's encoding of API bodies: tab-indented JSON with `<`, `>` and `&` escaped as Go's
/// encoder escapes them, and a final newline.
pub fn coder_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    if value.serialize(&mut ser).is_err() {
        return b"{}\n".to_vec();
    }
    out.push(b'\n');
    // These bytes only occur inside strings, so replacing them keeps the document valid.
    let mut escaped = Vec::with_capacity(out.len() + 64);
    for b in out {
        match b {
            b'<' => escaped.extend_from_slice(b"\\u003c"),
            b'>' => escaped.extend_from_slice(b"\\u003e"),
            b'&' => escaped.extend_from_slice(b"\\u0026"),
            _ => escaped.push(b),
        }
    }
    escaped
}

/// Go's `time.Duration.String()`, which Coder's JSON uses for `latency` and `round_trip_ping`:
/// `0s`, `1.5µs`, `1.234567ms`, `2s`, `1m30s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    // Go durations are int64 nanoseconds: longer ones saturate.
    let nanos = d.as_nanos().min(i64::MAX as u128);
    if nanos == 0 {
        return "0s".to_owned();
    }
    fn frac(value: u128, unit: u128) -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.ilog10() as usize;
        let s = format!("{rest:0digits$}");
        format!("{whole}.{}", s.trim_end_matches('0'))
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 1_000_000));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let mins = (total_secs % 3600) / 60;
    let secs_ns = (total_secs % 60) * 1_000_000_000 + sub;
    let secs = format!("{}s", frac(secs_ns, 1_000_000_000));
    if hours > 0 {
        format!("{hours}h{mins}m{secs}")
    } else if mins > 0 {
        format!("{mins}m{secs}")
    } else {
        secs
    }
}

#[cfg(test)]
mod tests;
