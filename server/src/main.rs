//! `vantaged`: parse the configuration, install logging, bind, print the base URL, serve.

use std::process::ExitCode;

/// jemalloc: the ingest path allocates on the stream tasks and frees on the aggregator's
/// thread, which glibc's allocator handles poorly; jemalloc also keeps idle connections small
/// (BENCHMARKS.md: ingestion and memory).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use vantage_server::config::{Config, Flags};
use vantage_server::{ServeError, serve};

/// Exit status for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let flags = match Flags::try_parse_args(std::env::args_os()) {
        Ok(f) => f,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vantaged: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VANTAGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    for d in &config.deprecations {
        tracing::warn!(old = %d.old, new = %d.new, "deprecated configuration name");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vantaged: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = match config.listen_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("vantaged: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vantaged: listen: binding {addr}: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        let ready = |url: &str| {
            #[allow(clippy::print_stdout)]
            {
                println!("{url}");
            }
            tracing::info!(url, "serving");
        };
        let stun = match config.stun_listen {
            Some(a) => match tokio::net::UdpSocket::bind(a).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("vantaged: stun_listen: binding UDP {a}: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            },
            None => None,
        };
        match serve(
            config,
            listener,
            stun,
            vantage_probe::signal::shutdown_signal(),
            ready,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(ServeError::Config(e)) => {
                eprintln!("vantaged: {e}");
                ExitCode::from(EX_USAGE)
            }
            Err(e) => {
                eprintln!("vantaged: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
