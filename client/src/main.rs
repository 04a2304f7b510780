//! `vantage`: the command line for people and scripts. `report` exits 0 ok, 1 warning,
//! 2 error; every command exits 3 when the server cannot be reached or verified (connection,
//! TLS verification, missing client certificate), 4 when it refuses the token (missing,
//! unknown or lacking the role) and 64 on a usage error. Errors go to stderr, data to stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use vantage_client::{Client, ClientError, WatchItem, table, watch_resuming_to};
use vantage_proto::report::{HealthReport, coder_json};
use vantage_proto::transport::{Target, TlsFiles};
use vantage_proto::{Section, Severity, pb};

const EX_UNREACHABLE: u8 = 3;
const EX_REFUSED: u8 = 4;
const EX_USAGE: u8 = 64;

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
    Report {
        /// Print exactly the JSON of /api/v2/debug/health.
        #[arg(long, env = "VANTAGE_JSON")]
        json: bool,
        /// Make every vantage run now and wait for the fresh report (up to 30 s).
        #[arg(long, env = "VANTAGE_FORCE")]
        force: bool,
    },
    /// Print the current state, then one line per change; resumes after a reconnect.
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
    Vantages {
        #[command(subcommand)]
        action: Option<VantagesAction>,
    },
    /// Print section transitions and a summary of each check's recent outcomes.
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
    Settings {
        #[command(subcommand)]
        action: Option<SettingsAction>,
    },
    /// Announce a provisioner daemon (from a script or a systemd timer).
    Provisioner {
        #[command(subcommand)]
        action: ProvisionerAction,
    },
    /// Run the DERP and STUN checks from this machine and print the report as JSON.
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
enum ProvisionerAction {
    /// Send one heartbeat for a daemon.
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
    Forget {
        name: String,
        /// Forget it even while connected or fresh (closes its stream).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SettingsAction {
    /// Dismiss a section: for a while (a maintenance window) with `--for`, and why.
    Dismiss {
        section: String,
        /// End the dismissal after this long (e.g. 30m, 2h); default: until undismissed.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Why (kept with the dismissal and in the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    Undismiss {
        section: String,
    },
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

#[allow(clippy::print_stdout)]
fn out(s: &str) {
    print!("{s}");
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("vantage: {e}");
    if e.is_unreachable() {
        ExitCode::from(EX_UNREACHABLE)
    } else if e.is_refused() {
        ExitCode::from(EX_REFUSED)
    } else if e.is_usage() {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("vantage: {msg}");
    ExitCode::from(EX_USAGE)
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
        return watch(target, token, req, json).await;
    }
    match command {
        Command::Netcheck {
            derp_map,
            node_timeout,
        } => {
            netcheck(
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
    let req = watch_request(
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
        Command::Report { json, force } => report(client, json, force).await,
        Command::Vantages { action: None } => vantages(client).await,
        Command::Vantages {
            action: Some(VantagesAction::Forget { name, force }),
        } => forget(client, &name, force).await,
        Command::Settings { action } => settings(client, action).await,
        Command::History {
            section,
            since,
            json,
        } => history(client, section.as_deref(), since.as_deref(), json).await,
        Command::Provisioner { action } => provisioner(client, action).await,
        Command::Watch { .. } | Command::Netcheck { .. } => ExitCode::SUCCESS,
    }
}

/// The `watch` request from its flags, or the usage exit code for a bad flag.
fn watch_request(
    json: bool,
    sections: &[String],
    min_severity: Option<&str>,
    vantages: Vec<String>,
    since: u64,
) -> Result<pb::WatchRequest, ExitCode> {
    let mut ids = Vec::new();
    for s in sections {
        match s.parse::<Section>() {
            Ok(sec) => ids.push(pb::Section::from(sec) as i32),
            Err(e) => return Err(usage(&format!("--section: {e}"))),
        }
    }
    let min = match min_severity.map(str::parse::<Severity>).transpose() {
        Ok(m) => m.map_or(0, |m| pb::Severity::from(m) as i32),
        Err(e) => return Err(usage(&format!("--min-severity: {e}"))),
    };
    Ok(pb::WatchRequest {
        sections: ids,
        min_severity: min,
        vantages,
        since_revision: since,
        since_epoch: String::new(),
        // NDJSON snapshots print the report's JSON.
        include_json: json,
        include_vantages: json,
    })
}

/// `vantage watch`: the current state, then one line per change, resuming after a reconnect.
async fn watch(
    target: Target,
    token: Option<String>,
    req: pb::WatchRequest,
    json: bool,
) -> ExitCode {
    let stream = watch_resuming_to(Ok(target), token, req);
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            WatchItem::Event(ev) => {
                if json {
                    out(&format!("{}\n", table::event_json(&ev)));
                } else {
                    out(&format!("{}\n", table::event(&ev)));
                }
            }
            WatchItem::Refused(why) => {
                eprintln!("vantage: the server refused the token: {why}");
                return ExitCode::from(EX_REFUSED);
            }
            WatchItem::Reconnecting {
                error,
                since,
                delay,
            } => {
                eprintln!(
                    "vantage: watch interrupted ({error}); reconnecting in {delay:?}, resuming after revision {since}"
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// `vantage report`: a table, or Coder's JSON; the exit code follows the severity.
async fn report(client: &Client, json: bool, force: bool) -> ExitCode {
    let r = match client.report(force).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        match serde_json::from_str::<HealthReport>(&r.json) {
            Ok(typed) => out(&String::from_utf8_lossy(&coder_json(&typed))),
            Err(e) => {
                eprintln!("vantage: the server sent a report this client cannot read: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        out(&table::report(&r));
    }
    let sev = Severity::from_pb(r.severity).unwrap_or(Severity::Error);
    ExitCode::from(u8::try_from(sev.exit_code()).unwrap_or(2))
}

/// `vantage vantages`: the list of vantages.
async fn vantages(client: &Client) -> ExitCode {
    match client.vantages().await {
        Ok(list) => {
            out(&table::vantages(&list));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `vantage history`: transitions, then one line per check series.
async fn history(
    client: &Client,
    section: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> ExitCode {
    let section = match section.map(str::parse::<Section>).transpose() {
        Ok(s) => s,
        Err(e) => return usage(&format!("--section: {e}")),
    };
    let since = match since
        .map(|s| vantage_client::history::parse_since(s, chrono::Utc::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return usage(&format!("--since: {e}")),
    };
    match client.history(section, since).await {
        Ok(h) if json => {
            out(&format!("{:#}\n", vantage_client::history::json(&h)));
            ExitCode::SUCCESS
        }
        Ok(h) => {
            out(&vantage_client::history::table(&h));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `vantage vantages forget NAME [--force]`.
async fn forget(client: &Client, name: &str, force: bool) -> ExitCode {
    match client.forget(name, force).await {
        Ok(()) => {
            out(&format!("forgot {name}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `vantage settings [dismiss|undismiss SECTION]`: prints the dismissed sections (after the
/// change, if any).
async fn settings(client: &Client, action: Option<SettingsAction>) -> ExitCode {
    let current = match client.settings().await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let updated = match action {
        None => current,
        Some(action) => match update_dismissed(client, current, &action).await {
            Ok(s) => s,
            Err(code) => return code,
        },
    };
    let list = &updated.dismissed_healthchecks;
    let mut text = format!(
        "dismissed: {}\n",
        if list.is_empty() {
            "(none)".to_owned()
        } else {
            list.join(", ")
        }
    );
    for d in &updated.dismissals {
        let until = vantage_proto::convert::from_timestamp(d.until.as_ref()).map_or_else(
            || "until undismissed".to_owned(),
            |t| format!("until {}", t.to_rfc3339()),
        );
        text.push_str(&format!(
            "  {}: {until}, by {}: {}\n",
            d.section, d.actor, d.reason
        ));
    }
    out(&text);
    ExitCode::SUCCESS
}

/// Applies a dismiss / undismiss to the `current` settings on the server (keeping the other
/// sections' notes) and returns the new settings, or the exit code of the failure.
async fn update_dismissed(
    client: &Client,
    current: vantage_proto::pb::Settings,
    action: &SettingsAction,
) -> Result<vantage_proto::pb::Settings, ExitCode> {
    let (section, note) = match action {
        SettingsAction::Dismiss {
            section,
            for_,
            reason,
        } => (section, Some((for_, reason))),
        SettingsAction::Undismiss { section } => (section, None),
    };
    let name = match section.parse::<Section>() {
        Ok(s) => s.settings_name().to_owned(),
        Err(e) => return Err(usage(&e.to_string())),
    };
    let mut list: Vec<String> = current
        .dismissed_healthchecks
        .into_iter()
        .filter(|s| *s != name)
        .collect();
    let mut notes: Vec<_> = current
        .dismissals
        .into_iter()
        .filter(|d| d.section != name)
        .collect();
    if let Some((for_, reason)) = note {
        list.push(name.clone());
        let until = match for_ {
            None => None,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) => chrono::Duration::from_std(d)
                    .ok()
                    .map(|d| vantage_proto::convert::timestamp(chrono::Utc::now() + d)),
                Err(e) => {
                    return Err(usage(&format!(
                        "--for {text:?}: {e} (expected a duration, e.g. 30m or 2h)"
                    )));
                }
            },
        };
        if until.is_some() || reason.is_some() {
            notes.push(vantage_proto::pb::Dismissal {
                section: name,
                until,
                reason: reason.clone().unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    match client.update_settings_with(list, notes).await {
        Ok(s) => Ok(s),
        Err(e) => Err(fail(&e)),
    }
}

/// `vantage provisioner heartbeat`: announces a provisioner daemon.
async fn provisioner(client: &Client, action: ProvisionerAction) -> ExitCode {
    let ProvisionerAction::Heartbeat {
        name,
        version,
        api_version,
        provisioners,
        tags,
    } = action;
    let mut map = std::collections::HashMap::new();
    for t in tags {
        match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                map.insert(k.to_owned(), v.to_owned());
            }
            _ => return usage(&format!("--tag: invalid tag {t:?}: expected key=value")),
        }
    }
    let req = pb::ProvisionerHeartbeatRequest {
        name,
        version,
        api_version,
        provisioners,
        tags: map,
        organization_id: None,
    };
    match client.provisioner_heartbeat(req).await {
        Ok(r) => {
            let d = r.daemon.unwrap_or_default();
            out(&format!("heartbeat recorded for {} ({})\n", d.name, d.id));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `vantage netcheck`: the DERP section computed on this machine, like `coder netcheck`.
async fn netcheck(
    target: &Target,
    token: Option<&str>,
    derp_map: Option<&str>,
    ca_file: Option<&std::path::Path>,
    node_timeout: std::time::Duration,
) -> ExitCode {
    use vantage_derp::health::{NodeCheckOptions, check_map};
    let text = match derp_map {
        Some(src) if src.starts_with("http://") || src.starts_with("https://") => {
            fetch(src, None, None).await
        }
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--derp-map: reading {path}: {e}"))
        }
        None => {
            let url = format!(
                "{}/api/v2/debug/derp-map",
                target.url().trim_end_matches('/')
            );
            fetch(&url, Some(target), token).await
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vantage: {e}");
            return ExitCode::from(EX_UNREACHABLE);
        }
    };
    let map = match vantage_derp::DerpMap::parse(&text) {
        Ok(m) => m,
        Err(e) => return usage(&format!("--derp-map: {e}")),
    };
    let mut opts = NodeCheckOptions {
        deadline: node_timeout,
        ..NodeCheckOptions::default()
    };
    if let Some(p) = ca_file {
        match std::fs::read_to_string(p) {
            Ok(pem) => opts.client.extra_ca_pem = Some(pem),
            Err(e) => return usage(&format!("--ca-file: reading {}: {e}", p.display())),
        }
    }
    eprintln!("Gathering a network report. This may take a few seconds...");
    let report = check_map(&map, &opts).await;
    let json = serde_json::json!({ "derp": report });
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    ));
    let sev = match report.severity {
        vantage_derp::health::Severity::Ok => 0,
        vantage_derp::health::Severity::Warning => 1,
        vantage_derp::health::Severity::Error => 2,
    };
    ExitCode::from(sev)
}

/// GET `url`; from our server (`target`) with its TLS configuration and the token.
async fn fetch(url: &str, target: Option<&Target>, token: Option<&str>) -> Result<String, String> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(tls) = target.and_then(Target::tls) {
        let mut config = (**tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        builder = builder.use_preconfigured_tls(config);
    }
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("fetching {url}: HTTP {}", resp.status()));
    }
    resp.text().await.map_err(|e| format!("reading {url}: {e}"))
}
