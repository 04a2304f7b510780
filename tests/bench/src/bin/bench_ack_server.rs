//! The ingestion baseline server (see `vantage_bench::ack_server`): binds 127.0.0.1:0,
//! prints its base URL on stdout, acks every observation batch until killed.
//!
//! `bench_ack_server [--tls-cert FILE --tls-key FILE]` (TLS: the URL is `https://`).
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
    let a = vantage_bench::args();
    let path = |k: &str| {
        a.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| std::path::PathBuf::from(v))
    };
    let (cert, key) = (path("tls-cert"), path("tls-key"));
    let tls = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key: give both or neither"),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("{scheme}://{}", listener.local_addr()?);
    vantage_bench::ack_server::serve(listener, tls)
        .await
        .context("serving")
}
