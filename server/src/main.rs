//! `vantaged`: parse the configuration, install logging, bind, print the base URL, serve.

use std::process::ExitCode;

/// jemalloc: the ingest path allocates on the stream tasks and frees on the aggregator's
/// thread, which glibc's allocator handles poorly; jemalloc also keeps idle connections small
/// (BENCHMARKS.md: ingestion and memory).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use vantage_server::config::{Config, Flags};
use vantage_server::{ServeError, Sockets, serve};

/// Exit status for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

/// `vantaged token new`: make a token.
#[derive(Debug, clap::Parser)]
#[command(name = "vantaged token", about = "Make tokens for --token-file")]
enum TokenCommand {
    /// Print a new secret alone on the first line, then the `[[tokens]]` entry to paste.
    New {
        /// The token's name (shown in logs and refusals).
        #[arg(long)]
        name: String,
        /// reader, probe, provisioner or admin.
        #[arg(long)]
        role: vantage_server::security::Role,
        /// For probe tokens: a glob of the vantage names it may claim (repeatable).
        #[arg(long = "vantage")]
        vantages: Vec<String>,
    },
}

fn token_command(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let cmd = match <TokenCommand as clap::Parser>::try_parse_from(
        std::iter::once("vantaged token".into()).chain(args),
    ) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let TokenCommand::New {
        name,
        role,
        vantages,
    } = cmd;
    match vantage_server::security::tokens::new_token(&name, role, vantages) {
        Ok((secret, entry)) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{secret}");
                print!("{entry}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vantaged token new: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "token") {
        return token_command(args.skip(1));
    }
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
    vantage_probe::logging::init();
    purge_in_the_background();
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
    runtime.block_on(run(config))
}

/// Start one jemalloc background thread (not its default of one per CPU): it hands freed pages
/// back to the system over jemalloc's decay time (10 s by default) even while the process is
/// idle. Without it they go back only as later allocations pass by, so the garbage of a burst
/// (thousands of daemons registering at once, a resync of every watcher) would stay in the RSS
/// of a quiet server.
fn purge_in_the_background() {
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true))
    {
        tracing::warn!(error = %e, "jemalloc's background purge is off: freed memory stays in \
            the RSS until later allocations return it");
    }
}

/// Bind, print the base URL once serving, and serve until a shutdown signal; the exit status.
async fn run(config: Config) -> ExitCode {
    let sockets = match bind(&config).await {
        Ok(sockets) => sockets,
        Err(code) => return code,
    };
    let ready = |url: &str| {
        #[allow(clippy::print_stdout)]
        {
            println!("{url}");
        }
        tracing::info!(url, "serving");
    };
    match serve(
        config,
        sockets,
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
}

/// Bind the TCP listener and, if configured, the health listener and the STUN UDP socket; a
/// failure is printed and becomes the exit status (EX_USAGE).
async fn bind(config: &Config) -> Result<Sockets, ExitCode> {
    let addr = match config.listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vantaged: {e}");
            return Err(ExitCode::from(EX_USAGE));
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vantaged: listen: binding {addr}: {e}");
            return Err(ExitCode::from(EX_USAGE));
        }
    };
    let stun = match config.stun_listen {
        Some(a) => match tokio::net::UdpSocket::bind(a).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("vantaged: stun_listen: binding UDP {a}: {e}");
                return Err(ExitCode::from(EX_USAGE));
            }
        },
        None => None,
    };
    let health = match config.health_listen {
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("vantaged: health_listen: binding {a}: {e}");
                return Err(ExitCode::from(EX_USAGE));
            }
        },
        None => None,
    };
    Ok(Sockets {
        listener,
        health,
        stun,
    })
}
