//! Coder's DERP health section (`docs/coder-health.md#derp`, `docs/derp-stun.md#coder-derphealth`): the JSON
//! report types in Coder's shape, the per-node check (two fresh DERP clients exchange a packet,
//! plus a STUN probe, concurrently, under one deadline), and the node → region → section rules
//! as pure functions.
//!
//! The report types and the rules live here; the live checks (node, region, map) live in the
//! `check` submodule and are re-exported here.
//!
//! A failed check is data (a report with a severity and messages), never an `Err`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::map::{Node, Region};

mod check;

pub use check::{NodeCheckOptions, NodeOutcome, check_map, check_node, check_region};

/// Severities and messages are vantage's own (one definition, in `vantage-proto`).
pub use vantage_proto::Severity;
pub use vantage_proto::report::Message;

/// Node fell back to WebSocket.
pub const CODE_DERP_NODE_USES_WEBSOCKET: &str = "EDERP01";
/// One node of a multi-node region is unhealthy.
pub const CODE_DERP_ONE_NODE_UNHEALTHY: &str = "EDERP02";
/// The map has no DERP-capable node.
pub const CODE_DERP_NO_NODES: &str = "EDERP03";
/// No STUN server answered.
pub const CODE_STUN_NO_NODES: &str = "ESTUN01";
/// STUN servers saw different addresses (hard NAT).
pub const CODE_STUN_MAPPING_VARIES: &str = "ESTUN02";

/// EDERP01 text.
pub const MSG_DERP_NODE_USES_WEBSOCKET: &str = "Node uses WebSockets because the \"Upgrade: DERP\" header may be blocked on the load balancer.";
/// EDERP02 text.
pub const MSG_DERP_ONE_NODE_UNHEALTHY: &str =
    "Region is operational, but performance might be degraded as one node is unhealthy.";
/// EDERP03 text.
pub const MSG_DERP_NO_NODES: &str =
    "No DERP servers are available: the DERP map has no node that can relay traffic.";
/// ESTUN01 text.
pub const MSG_STUN_NO_NODES: &str = "No STUN servers are available.";
/// ESTUN02 text.
pub const MSG_STUN_MAPPING_VARIES: &str =
    "STUN returned different addresses; you may be behind a hard NAT.";
/// Region error when a node report is missing.
pub const MSG_MISSING_NODE_REPORT: &str = "Missing node health report, probably a developer error.";

/// `node_info`: the token bucket from ServerInfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Advisory rate, bytes/s.
    #[serde(rename = "TokenBucketBytesPerSecond", default)]
    pub token_bucket_bytes_per_second: i64,
    /// Advisory burst, bytes.
    #[serde(rename = "TokenBucketBytesBurst", default)]
    pub token_bucket_bytes_burst: i64,
}

/// `stun`: the node's STUN result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StunReport {
    /// STUN was attempted (`STUNPort` ≠ −1).
    #[serde(rename = "Enabled", default)]
    pub enabled: bool,
    /// The probe succeeded.
    #[serde(rename = "CanSTUN", default)]
    pub can_stun: bool,
    /// Why it failed (null when it did not).
    #[serde(rename = "Error", default)]
    pub error: Option<String>,
}

/// One node's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerpNodeReport {
    /// Deprecated summary.
    pub healthy: bool,
    /// Verdict.
    pub severity: Severity,
    /// Coded warnings.
    #[serde(default)]
    pub warnings: Vec<Message>,
    /// Error text, omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node as in the map.
    pub node: Node,
    /// ServerInfo token bucket.
    pub node_info: NodeInfo,
    /// A packet went sender → relay → receiver.
    pub can_exchange_messages: bool,
    /// Go duration string of the relay time, `""` if none.
    pub round_trip_ping: String,
    /// Whole milliseconds of the same.
    pub round_trip_ping_ms: i64,
    /// A client fell back to WebSocket.
    pub uses_websocket: bool,
    /// Log lines per client (0 receiver, 1 sender).
    #[serde(default)]
    pub client_logs: Vec<Vec<String>>,
    /// Errors per client.
    #[serde(default)]
    pub client_errs: Vec<Vec<String>>,
    /// STUN result.
    pub stun: StunReport,
}

/// Where one node's STUN server saw this vantage (`ip:port`): for ESTUN02 and `netcheck_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunMapping {
    /// The node's region.
    pub region_id: i64,
    /// The node's name.
    pub node: String,
    /// The mapped address.
    pub address: SocketAddr,
}

/// One region's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpRegionReport {
    /// Deprecated summary.
    pub healthy: bool,
    /// Verdict.
    pub severity: Severity,
    /// Node warnings plus EDERP02.
    #[serde(default)]
    pub warnings: Vec<Message>,
    /// Error text, omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The region as in the map.
    pub region: Region,
    /// Node reports sorted by node name.
    #[serde(default)]
    pub node_reports: Vec<DerpNodeReport>,
}

/// The DERP section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpHealthReport {
    /// All regions healthy (and some DERP node exists).
    pub healthy: bool,
    /// Verdict.
    pub severity: Severity,
    /// Region warnings, then ESTUN02, ESTUN01, EDERP03.
    #[serde(default)]
    pub warnings: Vec<Message>,
    /// Dismissed by the operator (presentational).
    #[serde(default)]
    pub dismissed: bool,
    /// Error text, omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Region reports by region ID (string keys in JSON).
    #[serde(default)]
    pub regions: BTreeMap<i64, DerpRegionReport>,
    /// A netcheck report, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netcheck: Option<serde_json::Value>,
    /// Netcheck error, when one was made and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netcheck_err: Option<String>,
    /// Netcheck log lines.
    #[serde(default)]
    pub netcheck_logs: Vec<String>,
}

/// Go's `time.Duration.String()`, shared with the rest of vantage (one implementation).
pub use vantage_proto::report::go_duration as go_duration_string;

/// Applies Coder's node verdict: error when the exchange failed (non-STUN-only node) or STUN
/// failed; then EDERP01 sets warning when the node fell back to WebSocket — overriding an
/// error only when the node still relayed (a deliberate difference from Coder: a node that
/// could relay neither way is an error).
pub fn node_verdict(report: &mut DerpNodeReport) {
    report.healthy = true;
    report.severity = Severity::Ok;
    if (!report.can_exchange_messages && !report.node.stun_only) || report.stun.error.is_some() {
        report.healthy = false;
        report.severity = Severity::Error;
    }
    if report.uses_websocket {
        if !report
            .warnings
            .iter()
            .any(|w| w.code == CODE_DERP_NODE_USES_WEBSOCKET)
        {
            report.warnings.push(Message::new(
                CODE_DERP_NODE_USES_WEBSOCKET,
                MSG_DERP_NODE_USES_WEBSOCKET,
            ));
        }
        // Coder lets EDERP01 turn any node error into a warning. vantage keeps the error when
        // the node could not relay at all (the fallback failed too): a node behind a proxy that
        // refuses every upgrade is broken, not degraded (issue: "the node is an error").
        let relay_failed = !report.can_exchange_messages && !report.node.stun_only;
        if !relay_failed {
            report.severity = Severity::Warning;
        }
    }
}

/// Coder's region rules over the node reports (sorted here by node name).
pub fn region_report(region: &Region, mut node_reports: Vec<DerpNodeReport>) -> DerpRegionReport {
    node_reports.sort_by(|a, b| a.node.name.cmp(&b.node.name));
    let mut r = DerpRegionReport {
        healthy: true,
        severity: Severity::Ok,
        warnings: node_reports
            .iter()
            .flat_map(|n| n.warnings.clone())
            .collect(),
        error: None,
        region: region.clone(),
        node_reports,
    };
    if r.node_reports.len() != region.nodes.len() {
        r.healthy = false;
        r.severity = Severity::Error;
        r.error = Some(MSG_MISSING_NODE_REPORT.into());
        return r;
    }
    let unhealthy = r
        .node_reports
        .iter()
        .filter(|n| n.severity != Severity::Ok)
        .count();
    let worst = r
        .node_reports
        .iter()
        .map(|n| n.severity)
        .max()
        .unwrap_or_default();
    match r.node_reports.len() {
        0 => {}
        1 => {
            r.healthy = worst != Severity::Error;
            r.severity = worst;
        }
        _ if unhealthy == 1 => {
            r.severity = Severity::Warning;
            r.warnings.push(Message::new(
                CODE_DERP_ONE_NODE_UNHEALTHY,
                MSG_DERP_ONE_NODE_UNHEALTHY,
            ));
        }
        _ if unhealthy > 1 => {
            r.healthy = false;
            r.severity = worst;
        }
        _ => {}
    }
    r
}

/// Coder's section rules: concatenated region warnings; ESTUN02 (warning text only, severity
/// unchanged) when the STUN-mapped IPs differ; ESTUN01 (warning) when STUN was enabled somewhere
/// and nowhere worked; EDERP03 (error) when no region has a DERP-capable node; severity raised
/// to the worst region. `netcheck_logs` gets one line per node with STUN enabled
/// ([`stun_log_lines`]).
pub fn section_report(
    regions: BTreeMap<i64, DerpRegionReport>,
    mapped: &[StunMapping],
) -> DerpHealthReport {
    let mut r = DerpHealthReport {
        healthy: regions.values().all(|reg| reg.healthy),
        severity: Severity::Ok,
        warnings: regions
            .values()
            .flat_map(|reg| reg.warnings.clone())
            .collect(),
        netcheck_logs: stun_log_lines(&regions, mapped),
        ..DerpHealthReport::default()
    };
    let ips: BTreeSet<IpAddr> = mapped.iter().map(|m| m.address.ip()).collect();
    if ips.len() > 1 {
        r.warnings.push(Message::new(
            CODE_STUN_MAPPING_VARIES,
            MSG_STUN_MAPPING_VARIES,
        ));
    }
    let nodes = || regions.values().flat_map(|reg| reg.node_reports.iter());
    let stun_total = nodes().filter(|n| n.stun.enabled).count();
    let stun_ok = nodes().filter(|n| n.stun.can_stun).count();
    if stun_total > 0 && stun_ok == 0 {
        r.severity = Severity::Warning;
        r.warnings
            .push(Message::new(CODE_STUN_NO_NODES, MSG_STUN_NO_NODES));
    }
    let has_derp = regions
        .values()
        .any(|reg| reg.region.nodes.iter().any(|n| !n.stun_only));
    if !has_derp {
        let m = Message::new(CODE_DERP_NO_NODES, MSG_DERP_NO_NODES);
        r.healthy = false;
        r.severity = Severity::Error;
        r.error = Some(m.to_string());
        r.warnings.push(m);
    }
    if let Some(worst) = regions.values().map(|reg| reg.severity).max() {
        r.severity = r.severity.max(worst);
    }
    r.regions = regions;
    r
}

/// What this vantage's STUN checks saw, for `netcheck_logs` (vantage runs no separate netcheck;
/// its STUN checks stand in for it): per node with STUN enabled, in region and node order,
/// `netcheck: STUN <node> (region <id>) mapped this vantage to <ip:port>`, or `… failed: <why>`.
pub fn stun_log_lines(
    regions: &BTreeMap<i64, DerpRegionReport>,
    mapped: &[StunMapping],
) -> Vec<String> {
    let mut lines = Vec::new();
    for (id, region) in regions {
        for n in region.node_reports.iter().filter(|n| n.stun.enabled) {
            let name = &n.node.name;
            let at = format!("netcheck: STUN {name} (region {id})");
            let seen = mapped
                .iter()
                .find(|m| m.region_id == *id && m.node == *name);
            lines.push(match (seen, &n.stun.error) {
                (Some(m), _) => format!("{at} mapped this vantage to {}", m.address),
                (None, Some(e)) => format!("{at} failed: {e}"),
                (None, None) => format!("{at} failed: no mapped address"),
            });
        }
    }
    lines
}

#[cfg(test)]
mod tests;
