//! Benchmarks of issue 6, as library functions so the smoke test (`tests/bench_smoke.rs`) can
//! run each with tiny parameters and the `bench_*` binaries can run them at full size:
//! [`ingest`] (observations/s against a bare tonic baseline), [`fanout`] (Watch latency),
//! [`memory`] (RSS per probe and per watcher), [`probe_cpu`] (CPU per access-URL check against
//! blackbox_exporter) and [`cycle`] (one probe cycle of 100 DERP nodes and 100 access URLs).
//!
//! Every server under test is a real child process (`vantaged`, the baseline
//! `bench_ack_server`, nginx, blackbox_exporter) started on 127.0.0.1 port 0 where it can
//! print its address; CPU and memory are read from `/proc/<pid>`.

pub mod ack_server;
pub mod cycle;
pub mod fanout;
pub mod ingest;
pub mod memory;
pub mod probe_cpu;
pub mod wire;

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context as _;
use tokio::process::Command;
use tonic::transport::{Channel, Endpoint};
use vantage_testkit::ReadyChild;

/// A binary of this workspace beside the running executable: `target/<profile>/<name>`, whether
/// the caller is a binary there or a test in `target/<profile>/deps/`.
pub fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    vantage_testkit::cargo_bin(name).map_err(|e| {
        anyhow::anyhow!(
            "{e}: run `cargo build --release -p vantage-bench -p vantaged -p vantage-probe --bins` first"
        )
    })
}

/// Start the real `vantaged` on 127.0.0.1:0, with its own checks quiet (interval 1h, no own
/// vantage, no embedded relay), plus `extra` flags.
pub async fn start_vantaged(extra: &[&str]) -> anyhow::Result<ReadyChild> {
    let mut cmd = Command::new(sibling_bin("vantaged")?);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--server-vantage",
        "false",
        "--embedded-relay",
        "false",
    ]);
    if !extra.contains(&"--interval") {
        cmd.args(["--interval", "1h"]);
    }
    cmd.args(extra)
        .env("VANTAGE_LOG", "warn")
        .stderr(Stdio::inherit());
    Ok(ReadyChild::spawn(cmd, "vantaged").await?)
}

/// `n` gRPC channels to `url`, each a separate HTTP/2 connection.
pub async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    if url.starts_with("https://") {
        anyhow::bail!("{url}: use channels_tls for an https:// server");
    }
    channels_tls(url, n, None).await
}

/// Like [`channels`]; an `https://` URL is TLS (ALPN h2) verified against `ca`.
pub async fn channels_tls(
    url: &str,
    n: usize,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Channel>> {
    if url.starts_with("https://") {
        let files = vantage_proto::transport::TlsFiles {
            ca_file: ca.map(ToOwned::to_owned),
            ..Default::default()
        };
        let target = vantage_proto::transport::Target::new(url, &files)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let ch = target
                .connect(vantage_proto::transport::KeepAlive::Off)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            out.push(ch);
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// A CA and a certificate for `localhost` and 127.0.0.1 it signed, as PEM files in `dir`:
/// (`ca.pem`, `server.pem`, `server.key`).
pub fn test_pki(dir: &std::path::Path) -> anyhow::Result<[PathBuf; 3]> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let paths = [
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ];
    std::fs::write(&paths[0], ca.pem())?;
    std::fs::write(&paths[1], cert.pem())?;
    std::fs::write(&paths[2], key.serialize_pem())?;
    Ok(paths)
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU seconds a process (all its threads) has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields after it are space-separated.
    let after = text.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `after` starts at field 3.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (no libc call: unsafe is forbidden).
fn clock_ticks() -> f64 {
    100.0
}

/// The `p`-th percentile (0..=100) of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A Markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// Parse `--key value` style arguments into (key, value) pairs; flags without value get "".
pub fn args() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = std::env::args().skip(1).peekable();
    while let Some(a) = it.next() {
        if let Some(k) = a.strip_prefix("--") {
            let v = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().unwrap_or_default(),
                _ => String::new(),
            };
            out.push((k.to_owned(), v));
        } else {
            out.push((a, String::new()));
        }
    }
    out
}

/// The value of `--key` parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[(String, String)], key: &str, default: T) -> T {
    args.iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list `--key 1,100,1000`, or `default`.
pub fn arg_list(args: &[(String, String)], key: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}
