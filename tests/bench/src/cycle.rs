//! Figure 5, check cycle: one probe's assignment of 100 DERP nodes (100 regions of one node,
//! each served by `vantage_derp::relay::router` on its own listener) and 100 access URLs (axum
//! servers on port 0), run as one cycle by `vantage_probe::scheduler::run_all` — what the probe
//! does on a run-now request. The targets live in the benchmark process; the probe side runs
//! in its own process (`bench_cycle --worker`, the check context built as `vantage-probe`
//! builds it) so its peak RSS (`VmHWM`) is the probe's alone. Each check's own time is its
//! observation's `elapsed`; the figure is cycle time / slowest single check.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;
use tokio::process::Command;
use vantage_derp::map::{Node, Region};
use vantage_derp::relay::{self, Relay};
use vantage_proto::pb;

use crate::proc_status_kib;

#[derive(Debug, Clone)]
pub struct CycleConfig {
    pub derp_nodes: usize,
    pub access_urls: usize,
    /// Measured cycles (one warm-up cycle runs before them).
    pub cycles: usize,
    /// `bench_cycle` (for its `--worker` mode).
    pub worker: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct CycleRun {
    pub cycle_ms: f64,
    pub slowest_ms: f64,
    pub slowest_check: String,
    pub observations: u64,
    pub healthy: u64,
}

impl CycleRun {
    pub fn ratio(&self) -> f64 {
        self.cycle_ms / self.slowest_ms.max(f64::EPSILON)
    }
}

#[derive(Debug, Clone, Default)]
pub struct CycleFigures {
    pub derp_nodes: usize,
    pub access_urls: usize,
    pub runs: Vec<CycleRun>,
    pub rss_before_kib: u64,
    pub peak_rss_kib: u64,
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Start the targets; the assignment that checks them.
async fn targets(derp_nodes: usize, access_urls: usize) -> anyhow::Result<pb::Assignment> {
    let relay = Arc::new(Relay::new());
    let mut checks = Vec::new();
    for i in 0..derp_nodes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = relay::router(relay.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let id = i64::try_from(i + 1)?;
        let region = Region {
            region_id: id,
            region_code: format!("r{id}"),
            region_name: format!("Region {id}"),
            nodes: vec![Node {
                name: format!("{id}b"),
                region_id: id,
                host_name: "127.0.0.1".into(),
                derp_port: i64::from(port),
                force_http: true,
                stun_port: -1,
                ..Node::default()
            }],
            ..Region::default()
        };
        checks.push(pb::Check {
            id: format!("derp/{id}"),
            section: pb::Section::Derp as i32,
            interval: Some(duration(Duration::from_secs(30))),
            timeout: Some(duration(Duration::from_secs(30))),
            target: Some(pb::check::Target::DerpRegion(pb::DerpRegionTarget {
                force_websockets: false,
                region_json: serde_json::to_string(&region)?,
                node_timeout: Some(duration(Duration::from_secs(10))),
            })),
        });
    }
    for i in 0..access_urls {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "OK" }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        checks.push(pb::Check {
            id: format!("access_url/{i}"),
            section: pb::Section::AccessUrl as i32,
            interval: Some(duration(Duration::from_secs(30))),
            timeout: Some(duration(Duration::from_secs(5))),
            target: Some(pb::check::Target::AccessUrl(pb::AccessUrlTarget { url })),
        });
    }
    Ok(pb::Assignment {
        generation: 1,
        checks,
        heartbeat_interval: Some(duration(Duration::from_secs(5))),
    })
}

fn healthy(o: &pb::Observation) -> bool {
    match &o.result {
        Some(pb::observation::Result::AccessUrl(r)) => r.status_code == 200,
        Some(pb::observation::Result::DerpNode(r)) => r.can_exchange_messages && r.error.is_empty(),
        _ => false,
    }
}

/// The `--worker` mode: read the assignment, run it `cycles + 1` times (the first is a
/// warm-up), print one `cycle=` line per measured cycle and a final `rss_before=` line.
pub fn worker_main(assignment: &std::path::Path, cycles: usize) -> anyhow::Result<Vec<String>> {
    let runtime = tokio::runtime::Runtime::new().context("runtime")?;
    runtime.block_on(async move {
        let bytes = std::fs::read(assignment).context("reading the assignment")?;
        let a = pb::Assignment::decode(bytes.as_slice()).context("decoding the assignment")?;
        let tls = vantage_probe::tls::client_config(&[]).context("TLS configuration")?;
        let ctx = vantage_probe::checks::CheckContext::new(tls).context("HTTP client")?;
        let pid = std::process::id();
        let rss_before = proc_status_kib(pid, "VmRSS")?;
        let mut lines = Vec::new();
        for c in 0..=cycles {
            let started = Instant::now();
            let obs = vantage_probe::scheduler::run_all(&ctx, &a.checks).await;
            let cycle = started.elapsed();
            let (slowest, which) = obs
                .iter()
                .map(|o| {
                    let e = vantage_proto::convert::from_duration(o.elapsed.as_ref())
                        .unwrap_or_default();
                    (e, o.target.as_str())
                })
                .max_by_key(|(e, _)| *e)
                .unwrap_or_default();
            if c > 0 {
                lines.push(format!(
                    "cycle={} slowest={} observations={} healthy={} slowest_check={}",
                    cycle.as_secs_f64() * 1e3,
                    slowest.as_secs_f64() * 1e3,
                    obs.len(),
                    obs.iter().filter(|o| healthy(o)).count(),
                    which
                ));
            }
        }
        lines.push(format!(
            "rss_before={rss_before} peak_rss={}",
            proc_status_kib(pid, "VmHWM")?
        ));
        Ok(lines)
    })
}

fn field<'a>(line: &'a str, key: &str) -> anyhow::Result<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {line:?}"))
}

pub async fn run(cfg: &CycleConfig) -> anyhow::Result<CycleFigures> {
    let assignment = targets(cfg.derp_nodes, cfg.access_urls).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("assignment.pb");
    std::fs::write(&path, assignment.encode_to_vec())?;
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(&cfg.worker)
            .arg("--worker")
            .arg("--assignment")
            .arg(&path)
            .args(["--cycles", &cfg.cycles.to_string()])
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the cycle worker did not finish within 600s")??;
    if !out.status.success() {
        bail!("the cycle worker failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fig = CycleFigures {
        derp_nodes: cfg.derp_nodes,
        access_urls: cfg.access_urls,
        ..Default::default()
    };
    for line in text.lines() {
        if line.starts_with("cycle=") {
            fig.runs.push(CycleRun {
                cycle_ms: field(line, "cycle")?.parse()?,
                slowest_ms: field(line, "slowest")?.parse()?,
                slowest_check: field(line, "slowest_check")?.to_owned(),
                observations: field(line, "observations")?.parse()?,
                healthy: field(line, "healthy")?.parse()?,
            });
        } else if line.starts_with("rss_before=") {
            fig.rss_before_kib = field(line, "rss_before")?.parse()?;
            fig.peak_rss_kib = field(line, "peak_rss")?.parse()?;
        }
    }
    if fig.runs.len() != cfg.cycles {
        bail!(
            "the worker reported {} cycles of {}",
            fig.runs.len(),
            cfg.cycles
        );
    }
    Ok(fig)
}

pub fn render(f: &CycleFigures) -> String {
    let body: Vec<Vec<String>> = f
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                format!("{:.1}", r.cycle_ms),
                format!("{:.1} (`{}`)", r.slowest_ms, r.slowest_check),
                format!("{:.3}", r.ratio()),
                format!("{} / {}", r.healthy, r.observations),
            ]
        })
        .collect();
    let mut out = crate::table(
        &[
            "cycle",
            "cycle ms",
            "slowest single check ms",
            "ratio",
            "healthy / observations",
        ],
        &body,
    );
    out.push_str(&format!(
        "\nprobe process RSS before the first cycle: {} KiB; peak RSS (VmHWM): {} KiB\n",
        f.rss_before_kib, f.peak_rss_kib
    ));
    out
}
