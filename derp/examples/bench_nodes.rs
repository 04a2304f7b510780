//! Benchmark: one embedded relay behind 100 listeners, a DERP map of 100 nodes (one per
//! listener), and `check_node` for all of them concurrently as one cycle. Prints the cycle
//! time, the slowest single node and their ratio (target ≤ 1.5×).
//!
//! Run with `cargo run --release -p vantage-derp --example bench_nodes`.
#![allow(clippy::print_stdout)] // The figures are this binary's output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vantage_derp::health::{self, NodeCheckOptions, Severity};
use vantage_derp::map::{Node, Region};
use vantage_derp::relay::{self, Relay};

const NODES: usize = 100;
const CYCLES: usize = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let relay = Arc::new(Relay::new());
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = relay::router(relay.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        nodes.push(Node {
            name: format!("{}b", i + 1),
            region_id: i64::try_from(i + 1)?,
            host_name: "127.0.0.1".into(),
            derp_port: i64::from(port),
            force_http: true,
            stun_port: -1,
            ..Node::default()
        });
    }
    let opts = NodeCheckOptions::default();
    println!("nodes={NODES} cycles={CYCLES} (first cycle is a warm-up)");
    let mut ratios = Vec::new();
    for cycle in 0..=CYCLES {
        let started = Instant::now();
        let tasks: Vec<_> = nodes
            .iter()
            .map(|node| {
                let node = node.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let region = Region {
                        region_id: node.region_id,
                        nodes: vec![node.clone()],
                        ..Region::default()
                    };
                    health::check_node(&region, &node, &opts).await
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        let mut failed = 0;
        for t in tasks {
            let out = t.await?;
            slowest = slowest.max(out.elapsed);
            if out.report.severity != Severity::Ok || !out.report.can_exchange_messages {
                failed += 1;
            }
        }
        let cycle_time = started.elapsed();
        let ratio = cycle_time.as_secs_f64() / slowest.as_secs_f64().max(f64::EPSILON);
        println!(
            "cycle {cycle}: cycle_time={:.2}ms slowest_node={:.2}ms ratio={ratio:.3} failed={failed}",
            cycle_time.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3
        );
        if cycle > 0 {
            ratios.push(ratio);
        }
    }
    let worst = ratios.iter().cloned().fold(0.0, f64::max);
    println!(
        "worst ratio over {CYCLES} cycles: {worst:.3} (target <= 1.5): {}",
        if worst <= 1.5 { "PASS" } else { "FAIL" }
    );
    println!("relay clients still connected: {}", relay.client_count());
    Ok(())
}
