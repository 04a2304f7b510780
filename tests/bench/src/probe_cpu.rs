//! Figure 4, probe efficiency: CPU seconds per 10 000 HTTP checks of a local `/healthz`.
//!
//! * `vantage-probe` checks: a worker process (`bench_probe_cpu --worker`) builds the check
//!   context exactly as `vantage-probe` does (system roots, `CheckContext::new`, a multi-thread
//!   runtime) and runs the access-URL check (`vantage_probe::checks::run`) with 8 concurrent
//!   requesters; it reports its own process CPU over the measured checks.
//! * `blackbox_exporter`: the Debian package's binary, module `http_2xx`, driven with 8
//!   concurrent `/probe` requests (as Prometheus would scrape it); its process CPU is read
//!   from `/proc`.
//! * End to end (`vantage-probe` binary): the real probe attached to a real `vantaged` whose
//!   access URL is the target, at the shortest interval (10 ms); its whole process CPU over the
//!   HTTP checks the target counted: the access-URL checks and the websocket checks its
//!   assignment also carries (an HTTP/1.1 upgrade against the same target, answered 404).
//! * `blackbox_exporter` at that pace (with blackbox_exporter and an end-to-end run): one
//!   `/probe` at a time, as many a second as the probe's end-to-end run made checks, for as
//!   long. The verdict stays against the concurrent row; this one shows what the same pace
//!   costs the reference prober.
//!
//! The target is an axum server in the benchmark process (not measured).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;
use tokio::task::JoinSet;

use crate::{cpu_seconds, sibling_bin, start_vantaged};

#[derive(Debug, Clone)]
pub struct ProbeCpuConfig {
    pub checks: u64,
    pub concurrency: usize,
    /// `bench_probe_cpu` (for its `--worker` mode).
    pub worker: PathBuf,
    /// Skip blackbox_exporter (when it is not installed).
    pub blackbox: bool,
    /// How long the end-to-end run of the real binary lasts (zero: skip it).
    pub end_to_end: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct CpuRow {
    pub what: String,
    pub checks: u64,
    pub cpu: f64,
    pub wall: f64,
}

impl CpuRow {
    pub fn per_10k(&self) -> f64 {
        self.cpu / self.checks.max(1) as f64 * 10_000.0
    }
}

/// The local HTTP target: `/healthz` answers "OK"; every request is counted.
pub struct Target {
    pub base: String,
    pub healthz_hits: Arc<AtomicU64>,
    pub other_hits: Arc<AtomicU64>,
}

pub async fn target() -> anyhow::Result<Target> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    let healthz_hits = Arc::new(AtomicU64::new(0));
    let other_hits = Arc::new(AtomicU64::new(0));
    let (h, o) = (healthz_hits.clone(), other_hits.clone());
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::Relaxed);
                async { "OK" }
            }),
        )
        .fallback(move || {
            o.fetch_add(1, Ordering::Relaxed);
            async { (http::StatusCode::NOT_FOUND, "not found") }
        });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Target {
        base,
        healthz_hits,
        other_hits,
    })
}

/// The `--worker` mode: run `checks` access-URL checks of `url` (after a warm-up), 8 at a time,
/// and print `cpu=<s> wall=<s> ok=<n>` for the measured part.
pub fn worker_main(url: &str, checks: u64, concurrency: usize) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Runtime::new().context("runtime")?;
    runtime.block_on(async move {
        let tls = vantage_probe::tls::client_config(&[]).context("TLS configuration")?;
        let ctx = vantage_probe::checks::CheckContext::new(tls).context("HTTP client")?;
        let check = vantage_proto::pb::Check {
            id: "access_url".into(),
            section: vantage_proto::pb::Section::AccessUrl as i32,
            interval: None,
            timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            target: Some(vantage_proto::pb::check::Target::AccessUrl(
                vantage_proto::pb::AccessUrlTarget {
                    url: url.to_owned(),
                },
            )),
        };
        let run = |n: u64| {
            let ctx = ctx.clone();
            let check = check.clone();
            async move {
                let mut tasks = JoinSet::new();
                let per = n.div_ceil(concurrency as u64);
                for t in 0..concurrency as u64 {
                    let (ctx, check) = (ctx.clone(), check.clone());
                    let count = per.min(n.saturating_sub(t * per));
                    tasks.spawn(async move {
                        let mut ok = 0u64;
                        for _ in 0..count {
                            for o in vantage_probe::checks::run(&ctx, &check).await {
                                if let Some(vantage_proto::pb::observation::Result::AccessUrl(r)) =
                                    o.result
                                    && r.status_code == 200
                                {
                                    ok += 1;
                                }
                            }
                        }
                        ok
                    });
                }
                let mut ok = 0;
                while let Some(r) = tasks.join_next().await {
                    ok += r.unwrap_or(0);
                }
                ok
            }
        };
        run((checks / 10).clamp(1, 500)).await;
        let pid = std::process::id();
        let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
        let ok = run(checks).await;
        let (cpu1, wall) = (cpu_seconds(pid)?, t0.elapsed().as_secs_f64());
        Ok(format!("cpu={} wall={wall} ok={ok}", cpu1 - cpu0))
    })
}

fn field(line: &str, key: &str) -> anyhow::Result<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no {key}= in {line:?}"))
}

async fn vantage_library(cfg: &ProbeCpuConfig, t: &Target) -> anyhow::Result<CpuRow> {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(&cfg.worker)
            .args(["--worker", "--url", &t.base])
            .args(["--checks", &cfg.checks.to_string()])
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the probe worker did not finish within 300s")??;
    if !out.status.success() {
        bail!("the probe worker failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("the worker printed nothing")?;
    let ok = field(line, "ok")? as u64;
    if ok != cfg.checks {
        bail!("the worker's checks: {ok} of {} succeeded", cfg.checks);
    }
    Ok(CpuRow {
        what: format!(
            "vantage-probe access-URL check (`vantage_probe::checks::run`, own process, {} concurrent)",
            cfg.concurrency
        ),
        checks: ok,
        cpu: field(line, "cpu")?,
        wall: field(line, "wall")?,
    })
}

/// The TCP port a process listens on, from its socket inodes and `/proc/net/tcp`.
fn listening_port(pid: u32) -> anyhow::Result<Option<u16>> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        let s = link.to_string_lossy();
        if let Some(i) = s.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            inodes.push(i.to_owned());
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address, st (0A = LISTEN), inode.
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = f[1].rsplit(':').next().unwrap_or("");
            return Ok(u16::from_str_radix(port, 16).ok());
        }
    }
    Ok(None)
}

/// The Debian package that ships the reference prober.
const BLACKBOX_PACKAGE: &str = "prometheus-blackbox-exporter";

/// Install blackbox_exporter from Debian's packages if it is missing (as root, with apt-get),
/// stopping the service the package starts; otherwise say exactly what to run.
async fn ensure_blackbox() -> anyhow::Result<()> {
    let present = |p: &str| std::path::Path::new(p).exists();
    if present("/usr/bin/prometheus-blackbox-exporter") {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .await
        .map(|o| o.stdout == b"0\n");
    if !root.unwrap_or(false) || !present("/usr/bin/apt-get") {
        bail!(
            "{BLACKBOX_PACKAGE} is not installed: run `apt-get install {BLACKBOX_PACKAGE}` as root (or pass --no-blackbox)"
        );
    }
    eprintln!("installing {BLACKBOX_PACKAGE} (the reference prober) from Debian's packages");
    for args in [
        vec!["update", "-qq"],
        vec![
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            BLACKBOX_PACKAGE,
        ],
    ] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .await
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    // The package starts its own service; this benchmark runs its own instance.
    let _ = Command::new("service")
        .args([BLACKBOX_PACKAGE, "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    Ok(())
}

/// A running blackbox_exporter (module `http_2xx`) and the `/probe` URL that checks the target.
struct Blackbox {
    child: tokio::process::Child,
    pid: u32,
    probe_url: String,
    _dir: tempfile::TempDir,
}

async fn start_blackbox(t: &Target) -> anyhow::Result<Blackbox> {
    ensure_blackbox().await?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("blackbox.yml");
    std::fs::write(
        &conf,
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n    http:\n      preferred_ip_protocol: ip4\n",
    )?;
    let child = Command::new("prometheus-blackbox-exporter")
        .arg(format!("--config.file={}", conf.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context(
            "starting prometheus-blackbox-exporter (apt-get install prometheus-blackbox-exporter)",
        )?;
    let pid = child.id().context("blackbox_exporter exited")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(p) = listening_port(pid)? {
            break p;
        }
        if Instant::now() > deadline {
            bail!("blackbox_exporter did not listen within 20s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Blackbox {
        child,
        pid,
        probe_url: format!(
            "http://127.0.0.1:{port}/probe?module=http_2xx&target={}healthz",
            t.base
        ),
        _dir: dir,
    })
}

/// One `/probe` of blackbox_exporter: whether it succeeded.
async fn probe_once(client: &reqwest::Client, url: &str) -> anyhow::Result<bool> {
    let body = client.get(url).send().await?.text().await?;
    Ok(body.contains("probe_success 1"))
}

async fn blackbox(cfg: &ProbeCpuConfig, t: &Target) -> anyhow::Result<CpuRow> {
    let mut bb = start_blackbox(t).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let run = |n: u64| {
        let (client, url) = (client.clone(), bb.probe_url.clone());
        async move {
            let mut tasks = JoinSet::new();
            let per = n.div_ceil(cfg.concurrency as u64);
            for i in 0..cfg.concurrency as u64 {
                let (client, url) = (client.clone(), url.clone());
                let count = per.min(n.saturating_sub(i * per));
                tasks.spawn(async move {
                    let mut ok = 0u64;
                    for _ in 0..count {
                        ok += u64::from(probe_once(&client, &url).await?);
                    }
                    anyhow::Ok(ok)
                });
            }
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                ok += r??;
            }
            anyhow::Ok(ok)
        }
    };
    run((cfg.checks / 10).clamp(1, 500)).await?;
    let (cpu0, t0) = (cpu_seconds(bb.pid)?, Instant::now());
    let ok = run(cfg.checks).await?;
    let (cpu1, wall) = (cpu_seconds(bb.pid)?, t0.elapsed().as_secs_f64());
    let _ = bb.child.kill().await;
    if ok != cfg.checks {
        bail!("blackbox_exporter: {ok} of {} probes succeeded", cfg.checks);
    }
    Ok(CpuRow {
        what: format!(
            "blackbox_exporter 0.23 `http_2xx` via `/probe` ({} concurrent)",
            cfg.concurrency
        ),
        checks: ok,
        cpu: cpu1 - cpu0,
        wall,
    })
}

/// blackbox_exporter at the end-to-end probe's pace: one `/probe` at a time, `per_second` a
/// second, for `how_long` (after a short warm-up), as a scraper at that rate would drive it.
async fn blackbox_paced(t: &Target, per_second: f64, how_long: Duration) -> anyhow::Result<CpuRow> {
    let mut bb = start_blackbox(t).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let period = Duration::from_secs_f64(1.0 / per_second.max(1.0));
    let paced = |until: Instant| {
        let (client, url) = (client.clone(), bb.probe_url.clone());
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut sent, mut ok) = (0u64, 0u64);
            while Instant::now() < until {
                tick.tick().await;
                sent += 1;
                ok += u64::from(probe_once(&client, &url).await?);
            }
            anyhow::Ok((sent, ok))
        }
    };
    paced(Instant::now() + Duration::from_millis(300)).await?;
    let (cpu0, t0) = (cpu_seconds(bb.pid)?, Instant::now());
    let (sent, ok) = paced(t0 + how_long).await?;
    let (cpu1, wall) = (cpu_seconds(bb.pid)?, t0.elapsed().as_secs_f64());
    let _ = bb.child.kill().await;
    if ok != sent {
        bail!("blackbox_exporter: {ok} of {sent} paced probes succeeded");
    }
    Ok(CpuRow {
        what: format!(
            "blackbox_exporter 0.23 `http_2xx` via `/probe`, one at a time, {per_second:.0}/s (the end-to-end probe's pace)"
        ),
        checks: ok,
        cpu: cpu1 - cpu0,
        wall,
    })
}

async fn end_to_end(cfg: &ProbeCpuConfig, t: &Target) -> anyhow::Result<CpuRow> {
    let server = start_vantaged(&[
        "--access-url",
        &t.base,
        "--interval",
        "10ms",
        "--stale-after",
        "1h",
    ])
    .await?;
    let mut probe = Command::new(sibling_bin("vantage-probe")?);
    probe
        .args(["--server", &server.url, "--name", "cpu-probe"])
        .env("VANTAGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = probe.spawn().context("starting vantage-probe")?;
    let pid = child.id().context("vantage-probe exited")?;
    // Warm up: attached and checking.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.healthz_hits.load(Ordering::Relaxed) < 20 {
        if Instant::now() > deadline {
            bail!("vantage-probe made no access-URL checks within 30s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (h0, o0, cpu0, t0) = (
        t.healthz_hits.load(Ordering::Relaxed),
        t.other_hits.load(Ordering::Relaxed),
        cpu_seconds(pid)?,
        Instant::now(),
    );
    tokio::time::sleep(cfg.end_to_end).await;
    let (h1, o1, cpu1, wall) = (
        t.healthz_hits.load(Ordering::Relaxed),
        t.other_hits.load(Ordering::Relaxed),
        cpu_seconds(pid)?,
        t0.elapsed().as_secs_f64(),
    );
    let _ = child.kill().await;
    server.stop().await;
    Ok(CpuRow {
        what: format!(
            "vantage-probe binary end to end, interval 10 ms: {} access-URL + {} websocket checks (both HTTP)",
            h1 - h0,
            o1 - o0
        ),
        // Both are HTTP checks (the websocket one is an HTTP/1.1 upgrade request).
        checks: (h1 - h0) + (o1 - o0),
        cpu: cpu1 - cpu0,
        wall,
    })
}

pub async fn run(cfg: &ProbeCpuConfig) -> anyhow::Result<Vec<CpuRow>> {
    let t = target().await?;
    let mut rows = vec![vantage_library(cfg, &t).await?];
    if cfg.blackbox {
        rows.push(blackbox(cfg, &t).await?);
    }
    if !cfg.end_to_end.is_zero() {
        let whole = end_to_end(cfg, &t).await?;
        let pace = whole.checks as f64 / whole.wall.max(f64::EPSILON);
        rows.push(whole);
        if cfg.blackbox {
            rows.push(blackbox_paced(&t, pace, cfg.end_to_end).await?);
        }
    }
    Ok(rows)
}

pub fn render(rows: &[CpuRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.what.clone(),
                r.checks.to_string(),
                format!("{:.2}", r.cpu),
                format!("{:.1}", r.checks as f64 / r.wall.max(f64::EPSILON)),
                format!("{:.2}", r.per_10k()),
            ]
        })
        .collect();
    crate::table(
        &[
            "checker",
            "checks",
            "CPU-s",
            "checks/s",
            "CPU-s per 10 000 checks",
        ],
        &body,
    )
}
