//! The ingestion baseline server (see `vantage_bench::ack_server`): binds 127.0.0.1:0,
//! prints its base URL on stdout, acks every observation batch until killed.
#![allow(clippy::print_stdout)] // The readiness line is this binary's output.

use anyhow::Context as _;

// The same allocator as vantaged.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    println!("http://{}", listener.local_addr()?);
    vantage_bench::ack_server::serve(listener)
        .await
        .context("serving")
}
