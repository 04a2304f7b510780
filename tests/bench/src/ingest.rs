//! Figure 1, ingestion: N simulated probes attach over real gRPC and stream access-URL
//! observations (64 per message, per-instance sequence numbers) as fast as cumulative acks
//! allow (at most `window` unacked per probe). The same load runs against the bare acking
//! baseline (`bench_ack_server`) and against a real `vantaged` (in-memory store); the figure
//! is acknowledged observations per second and their ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;
use vantage_proto::pb;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_testkit::ReadyChild;

use crate::wire::{self, BATCH, BatchEncoder};
use crate::{channels_tls, cpu_seconds, start_vantaged};

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub probes: Vec<usize>,
    pub warmup: Duration,
    pub measure: Duration,
    /// Most unacknowledged observations per probe.
    pub window: u64,
    /// Attach streams sharing one HTTP/2 connection.
    pub streams_per_channel: usize,
    pub ack_server: PathBuf,
    /// Serve `vantaged` and the baseline over TLS (the same certificate and configuration).
    pub tls: bool,
}

/// One load run against one server.
#[derive(Debug, Clone, Default)]
pub struct LoadFigures {
    pub acked: u64,
    pub obs_per_sec: f64,
    /// CPU seconds the server process used during the measured interval.
    pub server_cpu: f64,
    pub elapsed: f64,
}

#[derive(Debug, Clone, Default)]
pub struct IngestRow {
    pub probes: usize,
    pub baseline: LoadFigures,
    pub vantaged: LoadFigures,
    /// ListVantages after the run: sum of `applied`, and of `gaps` + `duplicates`.
    pub applied: u64,
    pub anomalies: u64,
}

/// vantaged may not be faster than its baseline by more than this: the baseline is meant to be
/// a ceiling (same transport, socket options, allocator, codec limits, ack policy), so a faster
/// vantaged means the baseline is handicapped, not that vantaged is good.
pub const BASELINE_TOLERANCE: f64 = 1.05;

impl IngestRow {
    pub fn ratio(&self) -> f64 {
        self.vantaged.obs_per_sec / self.baseline.obs_per_sec.max(f64::EPSILON)
    }

    /// The ratio, or `None` when vantaged beat its baseline by more than the tolerance.
    pub fn honest_ratio(&self) -> Option<f64> {
        let r = self.ratio();
        (r <= BASELINE_TOLERANCE).then_some(r)
    }

    /// The ratio as shown: a number, or "baseline defect".
    pub fn shown_ratio(&self) -> String {
        self.honest_ratio()
            .map_or_else(|| "baseline defect".to_owned(), |r| format!("{r:.3}"))
    }
}

async fn pump(
    mut att: wire::Attached,
    window: u64,
    counter: Arc<AtomicU64>,
    mut go: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let url = att.access_url()?;
    let mut enc = BatchEncoder::new(&wire::access_url_observation(&url, 200));
    let _ = go.wait_for(|g| *g).await;
    let mut next: u64 = 1;
    let mut acked: u64 = att.welcome.applied_seq;
    loop {
        let in_flight = next - 1 - acked;
        tokio::select! {
            biased;
            m = att.down.message() => match m.context("attach stream")? {
                Some(pb::ServerMessage { msg: Some(Down::Ack(a)) }) => {
                    if a.seq > acked {
                        counter.fetch_add(a.seq - acked, Ordering::Relaxed);
                        acked = a.seq;
                    }
                }
                Some(_) => {}
                None => bail!("the server closed the stream"),
            },
            permit = att.up.reserve(), if in_flight + BATCH as u64 <= window => {
                let permit = permit.context("upstream closed")?;
                permit.send(enc.batch(next, BATCH));
                next += BATCH as u64;
            }
        }
    }
}

/// Attach `n` probes to `url` and measure acknowledged observations per second.
pub async fn load(
    url: &str,
    server_pid: u32,
    n: usize,
    cfg: &IngestConfig,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<LoadFigures> {
    let chans = channels_tls(url, n.div_ceil(cfg.streams_per_channel.max(1)), ca).await?;
    let attached: Vec<anyhow::Result<wire::Attached>> = futures::stream::iter((0..n).map(|i| {
        let ch = chans[i % chans.len()].clone();
        async move { wire::attach(ch, &format!("bench-{i}"), 16).await }
    }))
    .buffer_unordered(64)
    .collect()
    .await;
    let counter = Arc::new(AtomicU64::new(0));
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for a in attached {
        tasks.spawn(pump(a?, cfg.window, counter.clone(), go_rx.clone()));
    }
    go_tx.send_replace(true);
    tokio::time::sleep(cfg.warmup).await;
    let (c0, t0, cpu0) = (
        counter.load(Ordering::Relaxed),
        Instant::now(),
        cpu_seconds(server_pid)?,
    );
    tokio::time::sleep(cfg.measure).await;
    let (c1, t1, cpu1) = (
        counter.load(Ordering::Relaxed),
        Instant::now(),
        cpu_seconds(server_pid)?,
    );
    // A pump that ended early is an error of the run, not a slow probe.
    if let Some(r) = tasks.try_join_next() {
        r.context("pump task")?
            .context("a simulated probe failed")?;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let elapsed = (t1 - t0).as_secs_f64();
    Ok(LoadFigures {
        acked: c1 - c0,
        obs_per_sec: (c1 - c0) as f64 / elapsed,
        server_cpu: cpu1 - cpu0,
        elapsed,
    })
}

/// Sum of `applied` and of `gaps + duplicates` over every vantage.
pub async fn vantage_totals(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<(u64, u64)> {
    let channel = channels_tls(url, 1, ca).await?.remove(0);
    let mut client = pb::health_service_client::HealthServiceClient::new(channel);
    let list = client
        .list_vantages(pb::ListVantagesRequest {})
        .await?
        .into_inner();
    Ok(list.vantages.iter().fold((0, 0), |(a, g), v| {
        (a + v.applied, g + v.gaps + v.duplicates)
    }))
}

/// Run the baseline and `vantaged` for every N; fresh server processes for each run.
pub async fn run(cfg: &IngestConfig) -> anyhow::Result<Vec<IngestRow>> {
    let dir = tempfile::tempdir()?;
    let [ca, cert, key] = crate::test_pki(dir.path())?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls_args: Vec<&str> = if cfg.tls {
        vec!["--tls-cert", &cert, "--tls-key", &key]
    } else {
        Vec::new()
    };
    let ca = cfg.tls.then_some(ca.as_path());
    let mut rows = Vec::new();
    for &n in &cfg.probes {
        let mut row = IngestRow {
            probes: n,
            ..Default::default()
        };
        let mut cmd = Command::new(&cfg.ack_server);
        cmd.args(&tls_args).stderr(std::process::Stdio::inherit());
        let baseline = ReadyChild::spawn(cmd, "bench_ack_server").await?;
        row.baseline = load(&baseline.url, baseline.pid()?, n, cfg, ca)
            .await
            .context("baseline")?;
        baseline.stop().await;

        let server = start_vantaged(&tls_args).await?;
        row.vantaged = load(&server.url, server.pid()?, n, cfg, ca)
            .await
            .context("vantaged")?;
        (row.applied, row.anomalies) = vantage_totals(&server.url, ca).await?;
        server.stop().await;
        rows.push(row);
    }
    Ok(rows)
}

/// The figures as a Markdown table.
pub fn render(rows: &[IngestRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.probes.to_string(),
                format!("{:.0}", r.baseline.obs_per_sec),
                format!("{:.0}", r.vantaged.obs_per_sec),
                r.shown_ratio(),
                format!(
                    "{:.2}",
                    r.baseline.server_cpu / r.baseline.acked.max(1) as f64 * 1e6
                ),
                format!(
                    "{:.2}",
                    r.vantaged.server_cpu / r.vantaged.acked.max(1) as f64 * 1e6
                ),
                r.anomalies.to_string(),
            ]
        })
        .collect();
    crate::table(
        &[
            "N probes",
            "baseline obs/s",
            "vantaged obs/s",
            "ratio",
            "baseline server CPU-s per 1M obs",
            "vantaged CPU-s per 1M obs",
            "gaps+dups",
        ],
        &body,
    )
}
