//! Figure 3 of BENCHMARKS.md: RSS of `vantaged` with 0 and P idle probes, then W watchers.
//!
//! `target/release/bench_memory [--probes 1000] [--watchers 1000] [--streams-per-channel 1,50]`
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::time::Duration;

use vantage_bench::{self as bench, memory};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = bench::args();
    let mut rows = Vec::new();
    for per in bench::arg_list(&a, "streams-per-channel", &[1, 50]) {
        let cfg = memory::MemoryConfig {
            probes: bench::arg(&a, "probes", 1000),
            watchers: bench::arg(&a, "watchers", 1000),
            streams_per_channel: per,
            settle: Duration::from_secs_f64(bench::arg(&a, "settle", 2.0)),
        };
        rows.push(memory::run(&cfg).await?);
    }
    println!("{}", memory::render(&rows));
    for r in &rows {
        println!(
            "target with {} streams per connection: <= 32 KiB per idle probe: {:.1} {}; <= 16 KiB per watcher: {:.1} {}",
            r.streams_per_channel,
            r.per_probe_kib(),
            if r.per_probe_kib() <= 32.0 {
                "PASS"
            } else {
                "MISS"
            },
            r.per_watcher_kib(),
            if r.per_watcher_kib() <= 16.0 {
                "PASS"
            } else {
                "MISS"
            },
        );
    }
    Ok(())
}
