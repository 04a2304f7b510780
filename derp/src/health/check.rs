//! The live DERP checks (`docs/coder-health.md#derp`): per node, two fresh DERP clients
//! exchange a packet while a STUN probe runs, concurrently, under one deadline; then every node
//! of a region and every region of a map, concurrently, with the rules of the parent module
//! applied to the results.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    DerpHealthReport, DerpNodeReport, DerpRegionReport, NodeInfo, Severity, StunMapping,
    StunReport, go_duration_string, node_verdict, region_report, section_report,
};
use crate::client::{Client, ClientLog, ClientOptions, ReceivedFrame, WEBSOCKET_FALLBACK_LOG};
use crate::map::{DEFAULT_STUN_PORT, DerpMap, Node, Region};
use crate::stun;

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
) -> (DerpRegionReport, Vec<StunMapping>) {
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
                mapped.extend(out.stun_mapped.map(|address| StunMapping {
                    region_id: region.region_id,
                    node: node.name.clone(),
                    address,
                }));
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
