//! `vantage-probe`: runs the checks the server assigns, continuously, and streams the
//! observations back over one bidirectional gRPC stream.

/// jemalloc: a check allocates and frees a connection's buffers every run; jemalloc's
/// thread cache does that for less CPU than the system allocator (BENCHMARKS.md: probe
/// efficiency).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use vantage_probe::checks::CheckContext;
use vantage_probe::session::{self, SessionConfig};

/// Exit status for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;
/// `--once`: the server could not be reached or verified.
const EX_UNREACHABLE: u8 = 3;
/// `--once`: the server refused the token or the name.
const EX_REFUSED: u8 = 4;

#[derive(Debug, Parser)]
#[command(name = "vantage-probe", version, about = "vantage probe worker")]
struct Args {
    /// The server's base URL; repeatable or comma-separated for replicas: the probe attaches
    /// to the first that answers, in this order, stays with it, and moves on to the next one
    /// (round-robin) when the connection fails.
    #[arg(
        long,
        env = "VANTAGE_SERVER",
        default_value = "http://127.0.0.1:7080",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// This vantage's name (unique in the fleet).
    #[arg(long, env = "VANTAGE_NAME")]
    name: String,
    /// The region this vantage runs in (DERP regions and proxies of this region are assigned to it).
    #[arg(long, env = "VANTAGE_REGION", default_value = "")]
    region: String,
    /// Labels, `key=value`, repeatable.
    #[arg(long = "label", env = "VANTAGE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Bearer token presented to the server.
    #[arg(long, env = "VANTAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra CA certificates (PEM) trusted beside the system roots, by the checks and for
    /// an https:// server.
    #[arg(long, env = "VANTAGE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS.
    #[arg(long, env = "VANTAGE_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, env = "VANTAGE_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Allow a plaintext http:// server URL whose host is not loopback.
    #[arg(long, env = "VANTAGE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Capacity of the replay buffer of unacknowledged observations.
    #[arg(long, env = "VANTAGE_BUFFER", default_value_t = session::DEFAULT_BUFFER)]
    buffer: usize,
    /// Run the assignment once, print this vantage's report as JSON, exit 0/1/2 by severity.
    #[arg(long, env = "VANTAGE_ONCE")]
    once: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid label {s:?}: expected key=value")),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    vantage_probe::logging::init();
    // One thread: a probe's work is I/O-bound, and a single-threaded runtime has no
    // cross-thread hand-off per observation (BENCHMARKS.md, probe efficiency).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vantage-probe: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vantage-probe: {e:#}");
            let refused = e
                .chain()
                .filter_map(|c| c.downcast_ref::<tonic::Status>())
                .any(session::is_refusal);
            ExitCode::from(if refused { EX_REFUSED } else { EX_UNREACHABLE })
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.name.trim().is_empty() {
        eprintln!("vantage-probe: --name: must not be empty");
        return Ok(ExitCode::from(EX_USAGE));
    }
    let files = vantage_proto::transport::TlsFiles {
        ca_file: args.ca_file.clone(),
        client_cert: args.client_cert.clone(),
        client_key: args.client_key.clone(),
        insecure_plaintext: args.insecure_plaintext,
    };
    // Every URL and the TLS files are checked once before anything else.
    for server in &args.server {
        if let Err(e) = vantage_proto::transport::Target::new(server, &files) {
            eprintln!("vantage-probe: {e}");
            return Ok(ExitCode::from(EX_USAGE));
        }
    }
    let extra = match &args.ca_file {
        Some(p) => match vantage_probe::tls::load_pem_certs(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vantage-probe: --ca-file: {e}");
                return Ok(ExitCode::from(EX_USAGE));
            }
        },
        None => Vec::new(),
    };
    let tls = vantage_probe::tls::client_config(&extra).context("TLS configuration")?;
    let mut ctx = CheckContext::new(tls).context("HTTP client")?;
    if let Some(p) = &args.ca_file {
        // The DERP clients build their own TLS configuration from the same PEM.
        ctx.extra_ca_pem = Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--ca-file: reading {}", p.display()))?,
        );
    }
    let cfg = SessionConfig {
        servers: args.server,
        name: args.name,
        region: args.region,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        token: args.token,
        buffer: args.buffer,
        tls: files,
    };
    if args.once {
        let assignment = vantage_probe::once::fetch_assignment(&cfg).await?;
        let view = vantage_probe::once::run(&ctx, &cfg, &assignment).await;
        let json = serde_json::to_string_pretty(&view).context("encoding the report")?;
        #[allow(clippy::print_stdout)]
        {
            println!("{json}");
        }
        return Ok(ExitCode::from(
            u8::try_from(view.severity.exit_code()).unwrap_or(2),
        ));
    }
    tracing::info!(servers = ?cfg.servers, name = %cfg.name, region = %cfg.region, "starting");
    session::run(cfg, ctx, vantage_probe::signal::shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
