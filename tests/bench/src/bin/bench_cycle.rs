//! Figure 5 of BENCHMARKS.md: one probe cycle of 100 DERP nodes and 100 access URLs; cycle
//! time against the slowest single check, and the probe's peak RSS.
//!
//! `target/release/bench_cycle [--derp-nodes 100] [--access-urls 100] [--cycles 5]`
//! (`--worker --assignment FILE --cycles N` is the measured probe process.)
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::path::PathBuf;

use vantage_bench::{self as bench, cycle};

fn main() -> anyhow::Result<()> {
    let a = bench::args();
    let cycles = bench::arg(&a, "cycles", 5usize).max(1);
    if a.iter().any(|(k, _)| k == "worker") {
        let path: PathBuf = bench::arg(&a, "assignment", PathBuf::new());
        for line in cycle::worker_main(&path, cycles)? {
            println!("{line}");
        }
        return Ok(());
    }
    let cfg = cycle::CycleConfig {
        derp_nodes: bench::arg(&a, "derp-nodes", 100),
        access_urls: bench::arg(&a, "access-urls", 100),
        cycles,
        worker: std::env::current_exe()?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let fig = runtime.block_on(cycle::run(&cfg))?;
    println!(
        "cycle: {} DERP nodes (one per region, each its own relay listener) + {} access URLs",
        fig.derp_nodes, fig.access_urls
    );
    println!("{}", cycle::render(&fig));
    let worst = fig
        .runs
        .iter()
        .map(cycle::CycleRun::ratio)
        .fold(0.0, f64::max);
    println!(
        "target cycle <= 1.5 x slowest check: worst {worst:.3} {}",
        if worst <= 1.5 { "PASS" } else { "MISS" }
    );
    Ok(())
}
