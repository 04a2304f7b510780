//! Figure 2 of BENCHMARKS.md: Watch fan-out latency, W = 1, 100, 1000 subscribers plus one that
//! never reads, at a fixed rate of severity changes.
//!
//! `target/release/bench_fanout [--watchers 1,100,1000] [--rate 1000] [--seconds 5]`
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::time::Duration;

use vantage_bench::{self as bench, fanout};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = bench::args();
    let cfg = fanout::FanoutConfig {
        watchers: bench::arg_list(&a, "watchers", &[1, 100, 1000]),
        rate: bench::arg(&a, "rate", 1000.0),
        duration: Duration::from_secs_f64(bench::arg(&a, "seconds", 5.0)),
        streams_per_channel: bench::arg(&a, "streams-per-channel", 50),
    };
    println!(
        "fanout: {} changes/s for {:?}, {} watch streams per connection, plus one watcher that never reads",
        cfg.rate, cfg.duration, cfg.streams_per_channel
    );
    let rows = fanout::run(&cfg).await?;
    println!("{}", fanout::render(&rows, cfg.rate));
    for r in &rows {
        if r.watchers == 1000 {
            let verdict =
                if r.p99_ms <= 20.0 && r.ack_p99_ms <= 20.0 && r.receipts == r.flips * 1000 {
                    "PASS"
                } else {
                    "MISS"
                };
            println!(
                "target p99 <= 20 ms and ack p99 <= 20 ms at W = 1000: {:.2} ms, ack {:.2} ms {verdict}",
                r.p99_ms, r.ack_p99_ms
            );
        }
    }
    Ok(())
}
