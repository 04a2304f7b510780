//! Smoke versions of the BENCHMARKS.md benchmarks: tiny sizes, no timing assertions; each must
//! produce its figures without errors so the benchmarks cannot rot. Needs the workspace's
//! binaries built beside the tests (`cargo test --workspace`, or `cargo build -p vantaged -p
//! vantage-probe` first).

use std::path::PathBuf;
use std::time::Duration;

use vantage_bench::{cycle, fanout, ingest, memory, probe_cpu};

fn exe(path: &str) -> PathBuf {
    PathBuf::from(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_produces_figures() {
    let cfg = ingest::IngestConfig {
        probes: vec![2],
        warmup: Duration::from_millis(200),
        measure: Duration::from_millis(500),
        window: 256,
        streams_per_channel: 50,
        ack_server: exe(env!("CARGO_BIN_EXE_bench_ack_server")),
        tls: false,
    };
    let rows = ingest::run(&cfg).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert!(r.baseline.acked > 0, "{r:?}");
    assert!(r.vantaged.acked > 0, "{r:?}");
    assert!(r.applied >= r.vantaged.acked, "{r:?}");
    assert_eq!(r.anomalies, 0, "{r:?}");
    assert!(ingest::render(&rows).contains("| 2 |"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_over_tls_produces_figures() {
    let cfg = ingest::IngestConfig {
        probes: vec![2],
        warmup: Duration::from_millis(200),
        measure: Duration::from_millis(500),
        window: 256,
        streams_per_channel: 50,
        ack_server: exe(env!("CARGO_BIN_EXE_bench_ack_server")),
        tls: true,
    };
    let rows = ingest::run(&cfg).await.unwrap();
    let r = &rows[0];
    assert!(r.vantaged.acked > 0, "{r:?}");
    assert!(r.applied >= r.vantaged.acked, "{r:?}");
    assert_eq!(r.anomalies, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_produces_figures() {
    let cfg = fanout::FanoutConfig {
        watchers: vec![2],
        rate: 100.0,
        duration: Duration::from_millis(200),
        streams_per_channel: 50,
    };
    let rows = fanout::run(&cfg).await.unwrap();
    let r = &rows[0];
    assert_eq!(r.flips, 20, "{r:?}");
    assert_eq!(r.receipts, 2 * r.flips, "{r:?}");
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.applied, r.flips + 1, "{r:?}");
    assert!(r.p99_ms.is_finite(), "{r:?}");
    assert!(!fanout::render(&rows, cfg.rate).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_produces_figures() {
    let cfg = memory::MemoryConfig {
        probes: 2,
        watchers: 2,
        streams_per_channel: 1,
        settle: Duration::from_millis(100),
    };
    let r = memory::run(&cfg).await.unwrap();
    assert!(
        r.rss_empty_kib > 0 && r.rss_probes_kib > 0 && r.rss_watchers_kib > 0,
        "{r:?}"
    );
    assert!(!memory::render(&[r]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_cpu_produces_figures() {
    let blackbox = std::process::Command::new("prometheus-blackbox-exporter")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let cfg = probe_cpu::ProbeCpuConfig {
        checks: 20,
        concurrency: 2,
        worker: exe(env!("CARGO_BIN_EXE_bench_probe_cpu")),
        blackbox,
        end_to_end: Duration::from_millis(300),
    };
    let rows = probe_cpu::run(&cfg).await.unwrap();
    // The library, blackbox_exporter (concurrent), end to end, blackbox_exporter at its pace.
    assert_eq!(rows.len(), if blackbox { 4 } else { 2 }, "{rows:?}");
    assert_eq!(rows[0].checks, 20, "{rows:?}");
    let whole = if blackbox {
        assert_eq!(rows[1].checks, 20, "{rows:?}");
        assert!(rows[3].checks > 0, "{rows:?}");
        &rows[2]
    } else {
        &rows[1]
    };
    assert!(whole.checks > 0, "{rows:?}");
    assert!(!probe_cpu::render(&rows).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_produces_figures() {
    let cfg = cycle::CycleConfig {
        derp_nodes: 2,
        access_urls: 2,
        cycles: 1,
        worker: exe(env!("CARGO_BIN_EXE_bench_cycle")),
    };
    let f = cycle::run(&cfg).await.unwrap();
    assert_eq!(f.runs.len(), 1);
    assert_eq!(f.runs[0].observations, 4, "{f:?}");
    assert_eq!(f.runs[0].healthy, 4, "{f:?}");
    assert!(f.peak_rss_kib > 0, "{f:?}");
    assert!(!cycle::render(&f).is_empty());
}
