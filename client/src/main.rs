//! `vantage`: the command line for people and scripts. `report` exits 0 ok, 1 warning,
//! 2 error; every command exits 3 when the server cannot be reached or verified (connection,
//! TLS verification, missing client certificate), 4 when it refuses the token (missing,
//! unknown or lacking the role) and 64 on a usage error. Errors go to stderr, data to stdout.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vantage_client::{Client, ClientError};
use vantage_proto::pb;
use vantage_proto::transport::TlsFiles;

use cli::{EX_USAGE, admin, fail, netcheck, read, usage};

#[derive(Debug, Parser)]
#[command(
    name = "vantage",
    version,
    about = "vantage: deployment health from many vantage points"
)]
struct Cli {
    /// The server's base URL; repeatable or comma-separated for replicas: they are tried in
    /// this order and the first that answers is used.
    #[arg(
        long,
        global = true,
        env = "VANTAGE_SERVER",
        default_value = "http://127.0.0.1:7080",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "VANTAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra CA certificates (PEM) trusted beside the system roots: for an https:// server
    /// and for the relays' TLS in `netcheck`.
    #[arg(long, global = true, env = "VANTAGE_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS.
    #[arg(
        long,
        global = true,
        env = "VANTAGE_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "VANTAGE_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Allow a plaintext http:// server URL whose host is not loopback.
    #[arg(long, global = true, env = "VANTAGE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the report: a table, or Coder's JSON with --json. Exit 0/1/2 by severity.
    #[command(
        after_help = "Examples:\n  vantage report\n  vantage report --vantages\n  vantage --server https://vantage.example.com:7443 --token \"$READER\" report --json"
    )]
    Report {
        /// Print exactly the JSON of /api/v2/debug/health.
        #[arg(long, env = "VANTAGE_JSON")]
        json: bool,
        /// Make every vantage run now and wait for the fresh report (up to 30 s).
        #[arg(long, env = "VANTAGE_FORCE")]
        force: bool,
        /// Also show each vantage: state, last seen (as an age) and what it sees wrong.
        #[arg(long)]
        vantages: bool,
    },
    /// Print the current state, then one line per change; resumes after a reconnect.
    #[command(
        after_help = "Examples:\n  vantage watch\n  vantage watch --section DERP --min-severity warning --json"
    )]
    Watch {
        /// NDJSON output.
        #[arg(long, env = "VANTAGE_JSON")]
        json: bool,
        /// Only these sections (repeatable): AccessURL, Database, DERP, Websocket, ...
        #[arg(long = "section", env = "VANTAGE_SECTION", value_delimiter = ',')]
        sections: Vec<String>,
        /// Only changes to or from at least this severity.
        #[arg(long, env = "VANTAGE_MIN_SEVERITY")]
        min_severity: Option<String>,
        /// Only these vantages' events (repeatable; "" is the aggregate).
        #[arg(long = "vantage", env = "VANTAGE_VANTAGE", value_delimiter = ',')]
        vantages: Vec<String>,
        /// Resume after this revision.
        #[arg(long, env = "VANTAGE_SINCE", default_value_t = 0)]
        since: u64,
    },
    /// List vantages with region, version, last seen and state; `forget NAME` removes one.
    #[command(
        after_help = "Exit 1 when any vantage is stale.\n\nExamples:\n  vantage vantages\n  vantage vantages forget fra-1"
    )]
    Vantages {
        #[command(subcommand)]
        action: Option<VantagesAction>,
    },
    /// Print section transitions and a summary of each check's recent outcomes.
    #[command(
        after_help = "Examples:\n  vantage history --since 1h\n  vantage history --section DERP --since 2026-12-01T00:00:00Z --json"
    )]
    History {
        /// Only this section: AccessURL, Database, DERP, Websocket, ...
        #[arg(long, env = "VANTAGE_SECTION")]
        section: Option<String>,
        /// Only what happened since: a duration back from now (1h, 30m) or an RFC 3339 time.
        #[arg(long, env = "VANTAGE_HISTORY_SINCE")]
        since: Option<String>,
        /// JSON output.
        #[arg(long, env = "VANTAGE_JSON")]
        json: bool,
    },
    /// Show the dismissed sections, or dismiss / undismiss one.
    #[command(
        after_help = "Examples:\n  vantage settings\n  vantage settings dismiss DERP --for 2h --reason \"relay upgrade\"\n  vantage settings undismiss DERP"
    )]
    Settings {
        #[command(subcommand)]
        action: Option<SettingsAction>,
    },
    /// Announce a provisioner daemon (from a script or a systemd timer).
    #[command(
        after_help = "Example:\n  vantage provisioner heartbeat --name d1 --version v2.26.0 --api-version 1.9 --provisioner terraform"
    )]
    Provisioner {
        #[command(subcommand)]
        action: ProvisionerAction,
    },
    /// Run the DERP and STUN checks from this machine and print the report as JSON.
    #[command(
        after_help = "Examples:\n  vantage netcheck\n  vantage netcheck --derp-map ./derp-map.json --node-timeout 5s"
    )]
    Netcheck {
        /// A DERP map (file or URL) instead of the server's effective map.
        #[arg(long, env = "VANTAGE_DERP_MAP")]
        derp_map: Option<String>,
        /// Per-node deadline.
        #[arg(long, env = "VANTAGE_DERP_NODE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        node_timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProvisionerAction {
    /// Send one heartbeat for a daemon.
    #[command(
        after_help = "Example:\n  vantage provisioner heartbeat --name d1 --version v2.26.0 --api-version 1.9 --tag owner=ops"
    )]
    Heartbeat {
        /// The daemon's name.
        #[arg(long, env = "VANTAGE_PROVISIONER_NAME")]
        name: String,
        /// Its build version, e.g. v2.26.0.
        #[arg(long, env = "VANTAGE_PROVISIONER_VERSION")]
        version: String,
        /// Its provisioner API version, e.g. 1.9.
        #[arg(long, env = "VANTAGE_PROVISIONER_API_VERSION")]
        api_version: String,
        /// Provisioner types (repeatable), e.g. terraform.
        #[arg(
            long = "provisioner",
            env = "VANTAGE_PROVISIONERS",
            value_delimiter = ','
        )]
        provisioners: Vec<String>,
        /// Tags, key=value (repeatable).
        #[arg(long = "tag", env = "VANTAGE_PROVISIONER_TAGS", value_delimiter = ',')]
        tags: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VantagesAction {
    /// Forget a (decommissioned) vantage: only a stale, disconnected one unless `--force`.
    #[command(
        after_help = "Examples:\n  vantage vantages forget fra-1\n  vantage vantages forget fra-1 --force"
    )]
    Forget {
        name: String,
        /// Forget it even while connected or fresh (closes its stream).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SettingsAction {
    /// Dismiss a section: for a while (a maintenance window) with `--for`, and why.
    #[command(
        after_help = "Example:\n  vantage settings dismiss DERP --for 2h --reason \"relay upgrade\""
    )]
    Dismiss {
        section: String,
        /// End the dismissal after this long (e.g. 30m, 2h); default: until undismissed.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Why (kept with the dismissal and in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Undismiss a section (ends its maintenance window too).
    #[command(after_help = "Example:\n  vantage settings undismiss DERP")]
    Undismiss { section: String },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vantage: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let Cli {
        server,
        token,
        ca_file,
        client_cert,
        client_key,
        insecure_plaintext,
        command,
    } = cli;
    let files = TlsFiles {
        ca_file: ca_file.clone(),
        client_cert,
        client_key,
        insecure_plaintext,
    };
    // Every URL and the TLS files are checked before anything touches the network.
    let mut targets = Vec::new();
    for url in &server {
        match vantage_client::target(url, &files) {
            Ok(t) => targets.push(t),
            Err(e) => return fail(&e),
        }
    }
    let Some(first) = targets.first().cloned() else {
        return usage("--server: no server given");
    };
    // `watch`'s flags are checked before touching the network.
    let watch_req = match watch_flags(&command) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let needs_server = !matches!(
        &command,
        Command::Netcheck {
            derp_map: Some(_),
            ..
        }
    );
    let (target, client) = if needs_server {
        let unreachable = |e: &ClientError| {
            if targets.len() > 1 {
                eprintln!("vantage: {e}; trying the next server");
            }
        };
        match vantage_client::connect_first(&targets, token.as_deref(), unreachable).await {
            Ok((t, c)) => (t, Some(c)),
            Err(e) => return fail(&e),
        }
    } else {
        (first, None)
    };
    if let Some((req, json)) = watch_req {
        return read::watch(target, token, req, json).await;
    }
    match command {
        Command::Netcheck {
            derp_map,
            node_timeout,
        } => {
            netcheck::netcheck(
                &target,
                token.as_deref(),
                derp_map.as_deref(),
                ca_file.as_deref(),
                node_timeout,
            )
            .await
        }
        command => match client {
            Some(client) => run_connected(&client, command).await,
            None => ExitCode::FAILURE,
        },
    }
}

/// `watch`'s request and `--json`, checked (`None` for the other commands).
fn watch_flags(command: &Command) -> Result<Option<(pb::WatchRequest, bool)>, ExitCode> {
    let Command::Watch {
        json,
        sections,
        min_severity,
        vantages,
        since,
    } = command
    else {
        return Ok(None);
    };
    let req = read::watch_request(
        *json,
        sections,
        min_severity.as_deref(),
        vantages.clone(),
        *since,
    )?;
    Ok(Some((req, *json)))
}

/// The subcommands that talk to the server through one connected client.
async fn run_connected(client: &Client, command: Command) -> ExitCode {
    match command {
        Command::Report {
            json,
            force,
            vantages,
        } => read::report(client, json, force, vantages).await,
        Command::Vantages { action: None } => read::vantages(client).await,
        Command::Vantages {
            action: Some(VantagesAction::Forget { name, force }),
        } => admin::forget(client, &name, force).await,
        Command::Settings { action } => admin::settings(client, action).await,
        Command::History {
            section,
            since,
            json,
        } => read::history(client, section.as_deref(), since.as_deref(), json).await,
        Command::Provisioner { action } => admin::provisioner(client, action).await,
        Command::Watch { .. } | Command::Netcheck { .. } => ExitCode::SUCCESS,
    }
}
