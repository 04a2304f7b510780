//! Coder's DERP health section (`docs/coder-health.md#derp`, `docs/derp-stun.md#coder-derphealth`): the JSON
//! report types in Coder's shape, the per-node check (two fresh DERP clients exchange a packet,
//! plus a STUN probe, concurrently, under one deadline), and the node → region → section rules
//! as pure functions.
//!
//! A failed check is data (a report with a severity and messages), never an `Err`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{Client, ClientLog, ClientOptions, ReceivedFrame, WEBSOCKET_FALLBACK_LOG};
use crate::map::{DEFAULT_STUN_PORT, DerpMap, Node, Region};
use crate::stun;

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
/// to the worst region.
pub fn section_report(
    regions: BTreeMap<i64, DerpRegionReport>,
    mapped_addresses: &[SocketAddr],
) -> DerpHealthReport {
    let mut r = DerpHealthReport {
        healthy: regions.values().all(|reg| reg.healthy),
        severity: Severity::Ok,
        warnings: regions
            .values()
            .flat_map(|reg| reg.warnings.clone())
            .collect(),
        ..DerpHealthReport::default()
    };
    let ips: BTreeSet<IpAddr> = mapped_addresses.iter().map(|a| a.ip()).collect();
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

/// Settings of the per-node check.
#[derive(Debug, Clone)]
pub struct NodeCheckOptions {
    /// Deadline for the whole node (exchange and STUN), default 10 s.
    pub deadline: Duration,
    /// Connect attempts per client, default 5.
    pub connect_attempts: u32,
    /// Period of the sender's packets, default 1 s.
    pub send_interval: Duration,
    /// Template for both clients (extra CAs, timeouts); the key, log and TLS node settings
    /// are set per client.
    pub client: ClientOptions,
}

impl Default for NodeCheckOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            connect_attempts: 5,
            send_interval: Duration::from_secs(1),
            client: ClientOptions::default(),
        }
    }
}

/// Result of [`check_node`]: the report (verdict applied) and the STUN-mapped address.
#[derive(Debug, Clone)]
pub struct NodeOutcome {
    /// The node report.
    pub report: DerpNodeReport,
    /// Our address as the node's STUN server saw it (for ESTUN02).
    pub stun_mapped: Option<SocketAddr>,
    /// How long the node check took.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Exchange {
    logs: Vec<ClientLog>,
    errs: Vec<Vec<String>>,
    can_exchange: bool,
    rtt: Option<Duration>,
    node_info: NodeInfo,
    last_error: Option<String>,
}

/// Checks one node as Coder does: unless STUN-only, a receiver and then a sender client
/// connect (≤ `connect_attempts` each), the sender sends a 1-byte counter every
/// `send_interval` until the receiver gets one, and the relay time is measured from the most
/// recent send; concurrently, unless `STUNPort` is −1, a STUN probe. Both end by the deadline.
pub async fn check_node(_region: &Region, node: &Node, opts: &NodeCheckOptions) -> NodeOutcome {
    let started = Instant::now();
    let deadline = started + opts.deadline;
    let mut ex = Exchange::default();
    let exchange = async {
        if node.stun_only {
            return;
        }
        let url = match node.derp_url() {
            Ok(u) => u,
            Err(e) => {
                ex.last_error = Some(format!("derp url: {e}"));
                return;
            }
        };
        if tokio::time::timeout_at(deadline, run_exchange(&url, node, opts, &mut ex))
            .await
            .is_err()
            && ex.last_error.is_none()
        {
            ex.last_error = Some(format!(
                "no packet was relayed from the sender to the receiver within {}",
                go_duration_string(opts.deadline)
            ));
        }
    };
    let ((), (stun_report, stun_mapped)) = tokio::join!(exchange, stun_check(node, deadline));

    let uses_websocket = ex.logs.iter().any(|l| l.contains(WEBSOCKET_FALLBACK_LOG));
    let mut report = DerpNodeReport {
        node: node.clone(),
        node_info: ex.node_info,
        can_exchange_messages: ex.can_exchange,
        uses_websocket,
        client_logs: ex.logs.iter().map(ClientLog::lines).collect(),
        client_errs: ex.errs,
        stun: stun_report,
        ..DerpNodeReport::default()
    };
    if let Some(rtt) = ex.rtt {
        report.round_trip_ping = go_duration_string(rtt);
        report.round_trip_ping_ms = i64::try_from(rtt.as_millis()).unwrap_or(i64::MAX);
    }
    if !report.can_exchange_messages && !node.stun_only {
        report.error = ex.last_error;
    }
    node_verdict(&mut report);
    NodeOutcome {
        report,
        stun_mapped,
        elapsed: started.elapsed(),
    }
}

async fn connect_client(
    url: &url::Url,
    node: &Node,
    opts: &NodeCheckOptions,
    ex: &mut Exchange,
) -> Option<Client> {
    let slot = ex.logs.len();
    let log = ClientLog::new();
    ex.logs.push(log.clone());
    ex.errs.push(Vec::new());
    let mut copts = opts.client.clone().with_node(node);
    copts.private_key = None;
    copts.is_prober = true;
    copts.log = log;
    let attempts = opts.connect_attempts.max(1);
    let mut last = String::new();
    for _ in 0..attempts {
        match Client::connect(url, &copts).await {
            Ok(c) => return Some(c),
            Err(e) => {
                last = e.to_string();
                ex.errs[slot].push(format!("connect to derp: {e}"));
                ex.last_error = Some(format!("connect to derp: {e}"));
                // Sticky, like Coder's client: after a refused upgrade use WebSocket.
                if copts.log.contains(WEBSOCKET_FALLBACK_LOG) {
                    copts.force_websocket = true;
                }
            }
        }
    }
    let msg = format!("couldn't connect after {attempts} tries, last error: {last}");
    ex.errs[slot].push(msg.clone());
    ex.last_error = Some(msg);
    None
}

async fn run_exchange(url: &url::Url, node: &Node, opts: &NodeCheckOptions, ex: &mut Exchange) {
    let Some(receiver) = connect_client(url, node, opts, ex).await else {
        return;
    };
    let info = receiver.server_info();
    ex.node_info = NodeInfo {
        token_bucket_bytes_per_second: info.token_bucket_bytes_per_second,
        token_bucket_bytes_burst: info.token_bucket_bytes_burst,
    };
    let Some(sender) = connect_client(url, node, opts, ex).await else {
        return;
    };
    let (to, from) = (receiver.public_key(), sender.public_key());
    let mut ticker = tokio::time::interval(opts.send_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter: u8 = 0;
    let mut last_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                last_sent = Some(Instant::now());
                if let Err(e) = sender.send(to, &[counter]).await {
                    ex.errs[1].push(format!("send derp message: {e}"));
                    ex.last_error = Some(format!("send derp message: {e}"));
                }
                counter = counter.wrapping_add(1);
            }
            r = receiver.recv() => match r {
                Ok(ReceivedFrame::RecvPacket { src, .. }) if src == from => {
                    ex.rtt = Some(last_sent.map(|t| t.elapsed()).unwrap_or_default());
                    ex.can_exchange = true;
                    return;
                }
                Ok(ReceivedFrame::RecvPacket { src, .. }) => {
                    ex.errs[0].push(format!("received pkt from unknown peer: {}", src.short()));
                }
                Ok(ReceivedFrame::ServerInfo(info)) => {
                    ex.node_info = NodeInfo {
                        token_bucket_bytes_per_second: info.token_bucket_bytes_per_second,
                        token_bucket_bytes_burst: info.token_bucket_bytes_burst,
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    ex.errs[0].push(format!("recv derp message: {e}"));
                    ex.last_error = Some(format!("recv derp message: {e}"));
                    return;
                }
            }
        }
    }
}

async fn stun_check(node: &Node, deadline: Instant) -> (StunReport, Option<SocketAddr>) {
    if node.stun_port == -1 {
        return (StunReport::default(), None);
    }
    let mut report = StunReport {
        enabled: true,
        ..StunReport::default()
    };
    let addr = match tokio::time::timeout_at(deadline, stun_addr(node)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            report.error = Some(format!("get stun addr: {e}"));
            return (report, None);
        }
        Err(_) => {
            report.error = Some("get stun addr: lookup timed out".into());
            return (report, None);
        }
    };
    let budget = deadline.saturating_duration_since(Instant::now());
    match stun::probe(addr, budget).await {
        Ok(out) => {
            report.can_stun = true;
            (report, Some(out.mapped))
        }
        Err(e) => {
            report.error = Some(format!("probe stun: {e}"));
            (report, None)
        }
    }
}

/// The STUN target: `STUNTestIP`, else the first DNS answer for `HostName`, else `IPv4`, else
/// `IPv6`; port `STUNPort` (0 ⇒ 3478).
async fn stun_addr(node: &Node) -> Result<SocketAddr, String> {
    let port = match node.stun_port {
        0 => DEFAULT_STUN_PORT,
        p => u16::try_from(p).map_err(|_| format!("port {p} out of range"))?,
    };
    if !node.stun_test_ip.is_empty() {
        let ip: IpAddr = node
            .stun_test_ip
            .parse()
            .map_err(|_| format!("invalid STUNTestIP {:?}", node.stun_test_ip))?;
        return Ok(SocketAddr::new(ip, port));
    }
    if !node.host_name.is_empty() {
        let mut addrs = tokio::net::lookup_host((node.host_name.as_str(), port))
            .await
            .map_err(|e| format!("lookup {}: {e}", node.host_name))?;
        return addrs
            .next()
            .ok_or_else(|| format!("lookup {}: no addresses", node.host_name));
    }
    if !node.ipv4.is_empty() {
        return match node.ipv4.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => Ok(SocketAddr::new(ip, port)),
            _ => Err(format!("invalid IPv4 {:?}", node.ipv4)),
        };
    }
    if !node.ipv6.is_empty() {
        return match node.ipv6.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => Ok(SocketAddr::new(ip, port)),
            _ => Err(format!("invalid IPv6 {:?}", node.ipv6)),
        };
    }
    Err("no stun ips provided".into())
}

/// Checks every node of a region concurrently and applies the region rules. A node check
/// that panics becomes an error report for that node. Also returns the STUN-mapped addresses.
pub async fn check_region(
    region: &Region,
    opts: &NodeCheckOptions,
) -> (DerpRegionReport, Vec<SocketAddr>) {
    let tasks: Vec<_> = region
        .nodes
        .iter()
        .map(|node| {
            let (region, node, opts) = (region.clone(), node.clone(), opts.clone());
            tokio::spawn(async move { check_node(&region, &node, &opts).await })
        })
        .collect();
    let mut reports = Vec::with_capacity(tasks.len());
    let mut mapped = Vec::new();
    for (task, node) in tasks.into_iter().zip(&region.nodes) {
        match task.await {
            Ok(out) => {
                mapped.extend(out.stun_mapped);
                reports.push(out.report);
            }
            Err(e) => reports.push(DerpNodeReport {
                healthy: false,
                severity: Severity::Error,
                error: Some(format!("node check failed: {e}")),
                node: node.clone(),
                ..DerpNodeReport::default()
            }),
        }
    }
    (region_report(region, reports), mapped)
}

/// Runs the whole DERP section over a map: every region (and node) concurrently, then the
/// section rules.
pub async fn check_map(map: &DerpMap, opts: &NodeCheckOptions) -> DerpHealthReport {
    let results =
        futures::future::join_all(map.regions.values().map(|r| check_region(r, opts))).await;
    let mut regions = BTreeMap::new();
    let mut mapped = Vec::new();
    for (report, m) in results {
        mapped.extend(m);
        regions.insert(report.region.region_id, report);
    }
    section_report(regions, &mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, stun_only: bool) -> Node {
        Node {
            name: name.into(),
            region_id: 1,
            host_name: "h".into(),
            stun_only,
            ..Node::default()
        }
    }

    fn node_report(name: &str, severity: Severity) -> DerpNodeReport {
        DerpNodeReport {
            healthy: severity != Severity::Error,
            severity,
            node: node(name, false),
            ..DerpNodeReport::default()
        }
    }

    fn region(nodes: &[&str]) -> Region {
        Region {
            region_id: 1,
            region_code: "r".into(),
            region_name: "R".into(),
            nodes: nodes.iter().map(|n| node(n, false)).collect(),
            ..Region::default()
        }
    }

    #[test]
    fn node_verdict_table() {
        struct Case {
            name: &'static str,
            can_exchange: bool,
            stun_only: bool,
            stun_error: bool,
            websocket: bool,
            healthy: bool,
            severity: Severity,
            ederp01: bool,
        }
        let cases = [
            Case {
                name: "all good",
                can_exchange: true,
                stun_only: false,
                stun_error: false,
                websocket: false,
                healthy: true,
                severity: Severity::Ok,
                ederp01: false,
            },
            Case {
                name: "no exchange",
                can_exchange: false,
                stun_only: false,
                stun_error: false,
                websocket: false,
                healthy: false,
                severity: Severity::Error,
                ederp01: false,
            },
            Case {
                name: "stun-only, no exchange",
                can_exchange: false,
                stun_only: true,
                stun_error: false,
                websocket: false,
                healthy: true,
                severity: Severity::Ok,
                ederp01: false,
            },
            Case {
                name: "stun error",
                can_exchange: true,
                stun_only: false,
                stun_error: true,
                websocket: false,
                healthy: false,
                severity: Severity::Error,
                ederp01: false,
            },
            Case {
                name: "stun-only stun error",
                can_exchange: false,
                stun_only: true,
                stun_error: true,
                websocket: false,
                healthy: false,
                severity: Severity::Error,
                ederp01: false,
            },
            Case {
                name: "websocket",
                can_exchange: true,
                stun_only: false,
                stun_error: false,
                websocket: true,
                healthy: true,
                severity: Severity::Warning,
                ederp01: true,
            },
            Case {
                name: "websocket that could not relay either stays an error",
                can_exchange: false,
                stun_only: false,
                stun_error: false,
                websocket: true,
                healthy: false,
                severity: Severity::Error,
                ederp01: true,
            },
            Case {
                name: "websocket overrides a STUN error (Coder's rule) when the relay works",
                can_exchange: true,
                stun_only: false,
                stun_error: true,
                websocket: true,
                healthy: false,
                severity: Severity::Warning,
                ederp01: true,
            },
        ];
        for c in cases {
            let mut r = DerpNodeReport {
                node: node("n", c.stun_only),
                can_exchange_messages: c.can_exchange,
                uses_websocket: c.websocket,
                stun: StunReport {
                    enabled: true,
                    can_stun: !c.stun_error,
                    error: c.stun_error.then(|| "probe stun: x".into()),
                },
                ..DerpNodeReport::default()
            };
            node_verdict(&mut r);
            assert_eq!(r.healthy, c.healthy, "{}", c.name);
            assert_eq!(r.severity, c.severity, "{}", c.name);
            assert_eq!(
                r.warnings.iter().any(|w| w.code == "EDERP01"),
                c.ederp01,
                "{}",
                c.name
            );
            node_verdict(&mut r);
            assert!(r.warnings.len() <= 1, "{}: idempotent", c.name);
        }
    }

    #[test]
    fn region_rules_table() {
        use Severity::*;
        struct Case {
            name: &'static str,
            nodes: &'static [&'static str],
            reports: Vec<DerpNodeReport>,
            healthy: bool,
            severity: Severity,
            ederp02: bool,
            error: bool,
        }
        let cases = [
            Case {
                name: "zero nodes",
                nodes: &[],
                reports: vec![],
                healthy: true,
                severity: Ok,
                ederp02: false,
                error: false,
            },
            Case {
                name: "one ok",
                nodes: &["a"],
                reports: vec![node_report("a", Ok)],
                healthy: true,
                severity: Ok,
                ederp02: false,
                error: false,
            },
            Case {
                name: "one warning",
                nodes: &["a"],
                reports: vec![node_report("a", Warning)],
                healthy: true,
                severity: Warning,
                ederp02: false,
                error: false,
            },
            Case {
                name: "one error",
                nodes: &["a"],
                reports: vec![node_report("a", Error)],
                healthy: false,
                severity: Error,
                ederp02: false,
                error: false,
            },
            Case {
                name: "two ok",
                nodes: &["a", "b"],
                reports: vec![node_report("a", Ok), node_report("b", Ok)],
                healthy: true,
                severity: Ok,
                ederp02: false,
                error: false,
            },
            Case {
                name: "two, one error",
                nodes: &["a", "b"],
                reports: vec![node_report("a", Ok), node_report("b", Error)],
                healthy: true,
                severity: Warning,
                ederp02: true,
                error: false,
            },
            Case {
                name: "two, one warning",
                nodes: &["a", "b"],
                reports: vec![node_report("a", Warning), node_report("b", Ok)],
                healthy: true,
                severity: Warning,
                ederp02: true,
                error: false,
            },
            Case {
                name: "three, two bad",
                nodes: &["a", "b", "c"],
                reports: vec![
                    node_report("a", Warning),
                    node_report("b", Error),
                    node_report("c", Ok),
                ],
                healthy: false,
                severity: Error,
                ederp02: false,
                error: false,
            },
            Case {
                name: "two warnings",
                nodes: &["a", "b"],
                reports: vec![node_report("a", Warning), node_report("b", Warning)],
                healthy: false,
                severity: Warning,
                ederp02: false,
                error: false,
            },
            Case {
                name: "missing report",
                nodes: &["a", "b"],
                reports: vec![node_report("a", Ok)],
                healthy: false,
                severity: Error,
                ederp02: false,
                error: true,
            },
        ];
        for c in cases {
            let r = region_report(&region(c.nodes), c.reports);
            assert_eq!(r.healthy, c.healthy, "{}", c.name);
            assert_eq!(r.severity, c.severity, "{}", c.name);
            assert_eq!(
                r.warnings.iter().any(|w| w.code == "EDERP02"),
                c.ederp02,
                "{}",
                c.name
            );
            assert_eq!(
                r.error.as_deref() == Some(MSG_MISSING_NODE_REPORT),
                c.error,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn region_sorts_nodes_and_collects_warnings() {
        let mut b = node_report("b", Severity::Warning);
        b.warnings
            .push(Message::new("EDERP01", MSG_DERP_NODE_USES_WEBSOCKET));
        let r = region_report(
            &region(&["b", "a"]),
            vec![b, node_report("a", Severity::Ok)],
        );
        let names: Vec<_> = r
            .node_reports
            .iter()
            .map(|n| n.node.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let codes: Vec<_> = r.warnings.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(codes, ["EDERP01", "EDERP02"]);
    }

    fn region_with(id: i64, reports: Vec<DerpNodeReport>, stun_only: bool) -> DerpRegionReport {
        let mut reg = Region {
            region_id: id,
            ..Region::default()
        };
        reg.nodes = reports
            .iter()
            .map(|r| Node {
                stun_only,
                ..r.node.clone()
            })
            .collect();
        let reports = reports
            .into_iter()
            .map(|mut r| {
                r.node.stun_only = stun_only;
                r
            })
            .collect();
        region_report(&reg, reports)
    }

    fn stun(enabled: bool, ok: bool) -> StunReport {
        StunReport {
            enabled,
            can_stun: ok,
            error: (enabled && !ok).then(|| "probe stun: timeout".into()),
        }
    }

    #[test]
    fn section_rules_table() {
        use Severity::*;
        let derp_ok = || {
            let mut n = node_report("1a", Ok);
            n.can_exchange_messages = true;
            n
        };
        let with_stun = |mut n: DerpNodeReport, s: StunReport| {
            n.stun = s;
            n
        };
        let a: SocketAddr = "198.51.100.1:1000".parse().expect("addr");
        let b: SocketAddr = "198.51.100.1:2000".parse().expect("addr");
        let c: SocketAddr = "203.0.113.9:1000".parse().expect("addr");
        struct Case {
            name: &'static str,
            regions: Vec<DerpRegionReport>,
            mapped: Vec<SocketAddr>,
            healthy: bool,
            severity: Severity,
            codes: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "healthy",
                regions: vec![region_with(1, vec![derp_ok()], false)],
                mapped: vec![],
                healthy: true,
                severity: Ok,
                codes: &[],
            },
            Case {
                name: "no regions",
                regions: vec![],
                mapped: vec![],
                healthy: false,
                severity: Error,
                codes: &["EDERP03"],
            },
            Case {
                name: "stun-only map",
                regions: vec![region_with(
                    2,
                    vec![with_stun(node_report("2s", Ok), stun(true, true))],
                    true,
                )],
                mapped: vec![a],
                healthy: false,
                severity: Error,
                codes: &["EDERP03"],
            },
            Case {
                name: "stun enabled, none works",
                regions: vec![region_with(
                    1,
                    vec![with_stun(derp_ok(), stun(true, false))],
                    false,
                )],
                mapped: vec![],
                healthy: true,
                severity: Warning,
                codes: &["ESTUN01"],
            },
            Case {
                name: "one of two stun works",
                regions: vec![
                    region_with(1, vec![with_stun(derp_ok(), stun(true, false))], false),
                    region_with(
                        2,
                        vec![with_stun(node_report("2s", Ok), stun(true, true))],
                        true,
                    ),
                ],
                mapped: vec![a],
                healthy: true,
                severity: Ok,
                codes: &[],
            },
            Case {
                name: "stun disabled everywhere",
                regions: vec![region_with(
                    1,
                    vec![with_stun(derp_ok(), stun(false, false))],
                    false,
                )],
                mapped: vec![],
                healthy: true,
                severity: Ok,
                codes: &[],
            },
            Case {
                name: "same ip, other port",
                regions: vec![region_with(1, vec![derp_ok()], false)],
                mapped: vec![a, b],
                healthy: true,
                severity: Ok,
                codes: &[],
            },
            Case {
                name: "mapping varies",
                regions: vec![region_with(1, vec![derp_ok()], false)],
                mapped: vec![a, c],
                healthy: true,
                severity: Ok,
                codes: &["ESTUN02"],
            },
            Case {
                name: "region error raises",
                regions: vec![region_with(1, vec![node_report("1a", Error)], false)],
                mapped: vec![],
                healthy: false,
                severity: Error,
                codes: &[],
            },
            Case {
                name: "region warning raises",
                regions: vec![region_with(
                    1,
                    vec![derp_ok(), node_report("1b", Error)],
                    false,
                )],
                mapped: vec![],
                healthy: true,
                severity: Warning,
                codes: &["EDERP02"],
            },
        ];
        for c in cases {
            let regions = c
                .regions
                .into_iter()
                .map(|r| (r.region.region_id, r))
                .collect();
            let r = section_report(regions, &c.mapped);
            assert_eq!(r.healthy, c.healthy, "{}", c.name);
            assert_eq!(r.severity, c.severity, "{}", c.name);
            let codes: Vec<_> = r.warnings.iter().map(|w| w.code.as_str()).collect();
            assert_eq!(codes, c.codes, "{}", c.name);
        }
    }

    #[test]
    fn json_shape_matches_coder() {
        let mut n = node_report("999b", Severity::Ok);
        n.node.stun_port = -1;
        n.can_exchange_messages = true;
        n.round_trip_ping = "1.5ms".into();
        n.round_trip_ping_ms = 1;
        n.client_logs = vec![vec![], vec![]];
        n.client_errs = vec![vec![], vec![]];
        let v = serde_json::to_value(&n).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "healthy": true, "severity": "ok", "warnings": [],
                "node": {"Name": "999b", "RegionID": 1, "HostName": "h", "STUNPort": -1},
                "node_info": {"TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0},
                "can_exchange_messages": true, "round_trip_ping": "1.5ms", "round_trip_ping_ms": 1,
                "uses_websocket": false, "client_logs": [[], []], "client_errs": [[], []],
                "stun": {"Enabled": false, "CanSTUN": false, "Error": null}
            })
        );
        let mut reg = region(&["999b"]);
        reg.region_id = 999;
        let section = section_report(
            [(999, region_report(&reg, vec![n]))].into_iter().collect(),
            &[],
        );
        let v = serde_json::to_value(&section).expect("json");
        assert!(v["regions"]["999"]["node_reports"].is_array());
        assert!(v.get("error").is_none());
        assert!(v.get("netcheck").is_none());
        assert_eq!(v["netcheck_logs"], serde_json::json!([]));
        assert_eq!(v["dismissed"], false);
        let back: DerpHealthReport = serde_json::from_value(v).expect("parse back");
        assert_eq!(back, section);
        assert!(Severity::Ok < Severity::Warning && Severity::Warning < Severity::Error);
    }
}
