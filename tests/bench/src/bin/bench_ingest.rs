//! Figure 1 of BENCHMARKS.md: ingestion throughput of `vantaged` against a bare acking tonic
//! server, N = 1, 100, 1000 simulated probes.
//!
//! `target/release/bench_ingest [--probes 1,100,1000] [--seconds 5] [--warmup 1] [--window 4096] [--tls]`
//!
//! `--tls` serves `vantaged` and the baseline over TLS (a test CA made at start; the baseline
//! uses `vantaged`'s accept loop and TLS configuration).
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::time::Duration;

use vantage_bench::{self as bench, ingest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = bench::args();
    let cfg = ingest::IngestConfig {
        probes: bench::arg_list(&a, "probes", &[1, 100, 1000]),
        warmup: Duration::from_secs_f64(bench::arg(&a, "warmup", 1.0)),
        measure: Duration::from_secs_f64(bench::arg(&a, "seconds", 5.0)),
        window: bench::arg(&a, "window", 4096),
        streams_per_channel: bench::arg(&a, "streams-per-channel", 50),
        ack_server: bench::sibling_bin("bench_ack_server")?,
        tls: a.iter().any(|(k, _)| k == "tls"),
    };
    println!(
        "ingest{}: window {} observations, {} per message, {} streams per connection, {:?} measured after {:?}",
        if cfg.tls { " (both over TLS)" } else { "" },
        cfg.window,
        bench::wire::BATCH,
        cfg.streams_per_channel,
        cfg.measure,
        cfg.warmup
    );
    let rows = ingest::run(&cfg).await?;
    println!("{}", ingest::render(&rows));
    for r in &rows {
        match r.honest_ratio() {
            None => println!(
                "N = {}: vantaged at {:.3}x its baseline: baseline defect (the baseline must be a ceiling)",
                r.probes,
                r.ratio()
            ),
            Some(ratio) => {
                let verdict = if ratio >= 0.8 { "PASS" } else { "MISS" };
                println!(
                    "target ratio >= 0.8 at N = {}: {ratio:.3} {verdict}",
                    r.probes
                );
            }
        }
    }
    Ok(())
}
