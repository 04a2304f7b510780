//! Figure 4 of BENCHMARKS.md: CPU seconds per 10 000 access-URL checks, `vantage-probe` beside
//! `blackbox_exporter`, against one local HTTP target.
//!
//! `target/release/bench_probe_cpu [--checks 10000] [--concurrency 8] [--e2e-seconds 10]`
//! (`--worker --url U --checks N --concurrency C` is the measured probe process.)
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::time::Duration;

use vantage_bench::{self as bench, probe_cpu};

fn main() -> anyhow::Result<()> {
    let a = bench::args();
    let checks = bench::arg(&a, "checks", 10_000u64);
    let concurrency = bench::arg(&a, "concurrency", 8usize).max(1);
    if a.iter().any(|(k, _)| k == "worker") {
        let url: String = bench::arg(&a, "url", String::new());
        println!("{}", probe_cpu::worker_main(&url, checks, concurrency)?);
        return Ok(());
    }
    let cfg = probe_cpu::ProbeCpuConfig {
        checks,
        concurrency,
        worker: std::env::current_exe()?,
        blackbox: !a.iter().any(|(k, _)| k == "no-blackbox"),
        end_to_end: Duration::from_secs_f64(bench::arg(&a, "e2e-seconds", 10.0)),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let rows = runtime.block_on(probe_cpu::run(&cfg))?;
    println!("{}", probe_cpu::render(&rows));
    if let ([probe, bb, rest @ ..], true) = (rows.as_slice(), cfg.blackbox) {
        let bb = bb.per_10k().max(f64::EPSILON);
        println!(
            "check code alone: {:.3} x blackbox_exporter's CPU per check",
            probe.per_10k() / bb
        );
        // The target is the whole probe process, end to end: what an operator pays.
        match rest {
            [whole, paced @ ..] => {
                let ratio = whole.per_10k() / bb;
                if let Some(paced) = paced.first() {
                    println!(
                        "whole probe process vs blackbox_exporter at the same pace: {:.3} x (information; the verdict is against the concurrent row)",
                        whole.per_10k() / paced.per_10k().max(f64::EPSILON)
                    );
                }
                println!(
                    "target <= 0.25 x blackbox_exporter's CPU per check, whole probe process end to end: {ratio:.3} {}",
                    if ratio <= 0.25 { "PASS" } else { "MISS" }
                );
            }
            [] => println!("no verdict: the end-to-end run was skipped (--e2e-seconds 0)"),
        }
    }
    Ok(())
}
