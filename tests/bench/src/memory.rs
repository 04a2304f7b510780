//! Figure 3, memory: `VmRSS` of `vantaged` with no probe, with P idle attached probes (hello,
//! welcome, then silence), and with W `Watch` subscribers added on top (reading, idle). Each
//! probe and each watcher is its own HTTP/2 connection by default, as in a real fleet;
//! `streams_per_channel` > 1 multiplexes them to separate per-stream from per-connection cost.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::task::JoinSet;
use vantage_proto::pb;

use crate::{channels, proc_status_kib, start_vantaged, wire};

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub probes: usize,
    pub watchers: usize,
    pub streams_per_channel: usize,
    /// Wait before each reading (the server settles its allocations).
    pub settle: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryRow {
    pub streams_per_channel: usize,
    pub probes: usize,
    pub watchers: usize,
    pub rss_empty_kib: u64,
    pub rss_probes_kib: u64,
    pub rss_watchers_kib: u64,
    /// Encoded size of the report each new watcher gets as its snapshot (with the probes).
    pub snapshot_bytes: usize,
    /// Of which the report's `json` field (the same report again, as Coder's JSON).
    pub snapshot_json_bytes: usize,
}

impl MemoryRow {
    pub fn per_probe_kib(&self) -> f64 {
        (self.rss_probes_kib as f64 - self.rss_empty_kib as f64) / self.probes.max(1) as f64
    }
    pub fn per_watcher_kib(&self) -> f64 {
        (self.rss_watchers_kib as f64 - self.rss_probes_kib as f64) / self.watchers.max(1) as f64
    }
}

pub async fn run(cfg: &MemoryConfig) -> anyhow::Result<MemoryRow> {
    let server = start_vantaged(&[]).await?;
    let pid = server.pid()?;
    let per = cfg.streams_per_channel.max(1);
    let mut row = MemoryRow {
        streams_per_channel: per,
        probes: cfg.probes,
        watchers: cfg.watchers,
        ..Default::default()
    };
    tokio::time::sleep(cfg.settle).await;
    row.rss_empty_kib = proc_status_kib(pid, "VmRSS")?;

    let chans = channels(&server.url, cfg.probes.div_ceil(per)).await?;
    let probes: Vec<anyhow::Result<wire::Attached>> =
        futures::stream::iter((0..cfg.probes).map(|i| {
            let ch = chans[i % chans.len().max(1)].clone();
            async move { wire::attach(ch, &format!("idle-{i}"), 4).await }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    let probes = probes
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("attaching idle probes")?;
    tokio::time::sleep(cfg.settle).await;
    row.rss_probes_kib = proc_status_kib(pid, "VmRSS")?;
    let report = pb::health_service_client::HealthServiceClient::connect(server.url.clone())
        .await?
        .get_report(pb::GetReportRequest { force: false })
        .await?
        .into_inner();
    row.snapshot_bytes = prost::Message::encoded_len(&report);
    row.snapshot_json_bytes = report.json.len();

    let wchans = channels(&server.url, cfg.watchers.div_ceil(per)).await?;
    let mut readers = JoinSet::new();
    for i in 0..cfg.watchers {
        let mut client =
            pb::health_service_client::HealthServiceClient::new(wchans[i % wchans.len()].clone());
        let mut stream = client
            .watch(pb::WatchRequest::default())
            .await
            .context("watch")?
            .into_inner();
        stream.message().await?.context("no snapshot")?;
        readers.spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    }
    tokio::time::sleep(cfg.settle).await;
    row.rss_watchers_kib = proc_status_kib(pid, "VmRSS")?;
    readers.abort_all();
    drop(probes);
    server.stop().await;
    Ok(row)
}

pub fn render(rows: &[MemoryRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.streams_per_channel == 1 {
                    "one connection each".to_owned()
                } else {
                    format!("{} streams per connection", r.streams_per_channel)
                },
                r.rss_empty_kib.to_string(),
                format!("{} ({} probes)", r.rss_probes_kib, r.probes),
                format!("{} (+{} watchers)", r.rss_watchers_kib, r.watchers),
                format!("{:.1}", r.per_probe_kib()),
                format!("{:.1}", r.per_watcher_kib()),
                format!(
                    "{:.1} ({:.1} of it `json`)",
                    r.snapshot_bytes as f64 / 1024.0,
                    r.snapshot_json_bytes as f64 / 1024.0
                ),
            ]
        })
        .collect();
    crate::table(
        &[
            "clients",
            "RSS empty KiB",
            "RSS with probes KiB",
            "RSS with watchers KiB",
            "KiB per idle probe",
            "KiB per watcher",
            "snapshot KiB",
        ],
        &body,
    )
}
