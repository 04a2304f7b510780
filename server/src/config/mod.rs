//! The server's one typed configuration: flags, `VANTAGE_*` environment variables and a TOML
//! file, in that order of precedence, over named defaults. The embedded default needs none.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_HISTORY: usize = 10_000;
pub const DEFAULT_DATABASE_THRESHOLD: Duration = Duration::from_millis(15);
pub const DEFAULT_FORCE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_EVENT_RETENTION: usize = 100_000;
pub const DEFAULT_OBSERVATION_RETENTION: usize = 100_000;
pub const DEFAULT_DERP_NODE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PROVISIONER_STALE_AFTER: Duration = Duration::from_secs(90);
/// The name of the server's own vantage (replicas sharing a database name theirs
/// `server-<something>` with `--server-vantage-name`).
pub const SERVER_VANTAGE: &str = "server";

/// Whether `name` is a server's own vantage (`server` or `server-…`).
pub fn is_server_vantage(name: &str) -> bool {
    name == SERVER_VANTAGE
        || name
            .strip_prefix(SERVER_VANTAGE)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// A configuration error: names the field, the value and what was expected. Exit status 64.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Command-line flags (each with its `VANTAGE_*` variable).
#[derive(Debug, Default, Parser)]
#[command(
    name = "vantaged",
    version,
    about = "vantage server: deployment health from many vantage points"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "VANTAGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (gRPC and HTTP on one port); port 0 picks one.
    #[arg(long, env = "VANTAGE_LISTEN")]
    pub listen: Option<String>,
    /// The deployment's access URL (default: the listen URL).
    #[arg(long, env = "VANTAGE_ACCESS_URL")]
    pub access_url: Option<String>,
    /// PostgreSQL connection string (default: in-memory store).
    #[arg(long, env = "VANTAGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Database section threshold (median ping, integer milliseconds compared).
    #[arg(long, env = "VANTAGE_DATABASE_THRESHOLD", value_parser = parse_duration)]
    pub database_threshold: Option<Duration>,
    /// Allow listening on a non-loopback address without tokens.
    #[arg(long, env = "VANTAGE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Interval between two runs of each check.
    #[arg(long, env = "VANTAGE_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// A vantage that has not reported for this long is stale (default 3 × interval).
    #[arg(long, env = "VANTAGE_STALE_AFTER", value_parser = parse_duration)]
    pub stale_after: Option<Duration>,
    /// A stale vantage is forgotten after this long.
    #[arg(long, env = "VANTAGE_FORGET_AFTER", value_parser = parse_duration)]
    pub forget_after: Option<Duration>,
    /// How many fresh vantages must agree on a severity for it to count.
    #[arg(long, env = "VANTAGE_QUORUM")]
    pub quorum: Option<usize>,
    /// Consecutive evaluations at a higher severity before an alert is raised.
    #[arg(long, env = "VANTAGE_RAISE_AFTER")]
    pub raise_after: Option<u32>,
    /// Consecutive evaluations at a lower severity before an alert clears.
    #[arg(long, env = "VANTAGE_CLEAR_AFTER")]
    pub clear_after: Option<u32>,
    /// Events kept for `Watch` resume.
    #[arg(long, env = "VANTAGE_HISTORY")]
    pub history: Option<usize>,
    /// How long `?force=true` / `GetReport{force}` waits for every vantage.
    #[arg(long, env = "VANTAGE_FORCE_TIMEOUT", value_parser = parse_duration)]
    pub force_timeout: Option<Duration>,
    /// DERP map in Tailscale's JSON format: a file path or an http(s) URL.
    #[arg(long, env = "VANTAGE_DERP_MAP")]
    pub derp_map: Option<String>,
    /// Do not serve the embedded DERP relay (region 999) at /derp.
    #[arg(long, env = "VANTAGE_NO_EMBEDDED_RELAY")]
    pub no_embedded_relay: bool,
    /// Answer STUN binding requests on this UDP address (e.g. 127.0.0.1:3478).
    #[arg(long, env = "VANTAGE_STUN_LISTEN")]
    pub stun_listen: Option<String>,
    /// Extra STUN server `host:port` (repeatable): each becomes a STUN-only region.
    #[arg(
        long = "stun-server",
        env = "VANTAGE_STUN_SERVERS",
        value_delimiter = ','
    )]
    pub stun_servers: Vec<String>,
    /// Deadline of each DERP node check.
    #[arg(long, env = "VANTAGE_DERP_NODE_TIMEOUT", value_parser = parse_duration)]
    pub derp_node_timeout: Option<Duration>,
    /// Assign every DERP region to every probe (default: the probes of its RegionCode).
    #[arg(long, env = "VANTAGE_DERP_ALL_VANTAGES")]
    pub derp_all_vantages: bool,
    /// The server's own vantage does not check DERP regions.
    #[arg(long, env = "VANTAGE_NO_SERVER_DERP")]
    pub no_server_derp: bool,
    /// Assign every workspace proxy to every probe (default: the probes of its region).
    #[arg(long, env = "VANTAGE_PROXIES_ALL_VANTAGES")]
    pub proxies_all_vantages: bool,
    /// The deployment requires provisioner daemons: none active is EPD01 (error).
    #[arg(long, env = "VANTAGE_PROVISIONER_DAEMONS_REQUIRED")]
    pub provisioner_daemons_required: bool,
    /// A provisioner daemon without a heartbeat for this long is stale.
    #[arg(long, env = "VANTAGE_PROVISIONER_STALE_AFTER", value_parser = parse_duration)]
    pub provisioner_stale_after: Option<Duration>,
    /// Events the database keeps for `Watch` resume.
    #[arg(long, env = "VANTAGE_EVENT_RETENTION")]
    pub event_retention: Option<usize>,
    /// Rows of the observation log the database keeps.
    #[arg(long, env = "VANTAGE_OBSERVATION_RETENTION")]
    pub observation_retention: Option<usize>,
    /// The name of this server's own vantage: `server`, or `server-<name>` to tell replicas apart.
    #[arg(long, env = "VANTAGE_SERVER_VANTAGE_NAME")]
    pub server_vantage_name: Option<String>,
    /// Do not run the server's own vantage (access URL and websocket from the server).
    #[arg(long, env = "VANTAGE_NO_SERVER_VANTAGE")]
    pub no_server_vantage: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (expected e.g. 500ms, 30s, 5m, 24h)"))
}

/// The TOML file: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    access_url: Option<String>,
    database_url: Option<String>,
    database_threshold: Option<String>,
    insecure_no_auth: Option<bool>,
    interval: Option<String>,
    stale_after: Option<String>,
    forget_after: Option<String>,
    quorum: Option<usize>,
    raise_after: Option<u32>,
    clear_after: Option<u32>,
    history: Option<usize>,
    server_vantage: Option<bool>,
    force_timeout: Option<String>,
    server_vantage_name: Option<String>,
    event_retention: Option<usize>,
    observation_retention: Option<usize>,
    derp_map: Option<String>,
    embedded_relay: Option<bool>,
    stun_listen: Option<String>,
    stun_servers: Option<Vec<String>>,
    derp_node_timeout: Option<String>,
    derp_all_vantages: Option<bool>,
    server_checks_derp: Option<bool>,
    proxies_all_vantages: Option<bool>,
    provisioner_daemons: Option<ProvisionerFile>,
    workspace_proxies: Option<Vec<ProxyFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionerFile {
    required: Option<bool>,
    stale_after: Option<String>,
}

/// A workspace proxy declared in the configuration file (`[[workspace_proxies]]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub icon_url: String,
    #[serde(default)]
    pub derp_enabled: bool,
    #[serde(default)]
    pub derp_only: bool,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    /// `None`: the listen URL, known once bound.
    pub access_url: Option<url::Url>,
    pub database_url: Option<String>,
    pub database_threshold: Duration,
    pub insecure_no_auth: bool,
    pub interval: Duration,
    pub stale_after: Duration,
    pub forget_after: Duration,
    pub quorum: usize,
    pub raise_after: u32,
    pub clear_after: u32,
    pub history: usize,
    pub server_vantage: bool,
    pub force_timeout: Duration,
    pub server_vantage_name: String,
    pub event_retention: usize,
    pub observation_retention: usize,
    pub derp_map: Option<String>,
    pub embedded_relay: bool,
    pub stun_listen: Option<SocketAddr>,
    pub stun_servers: Vec<String>,
    pub derp_node_timeout: Duration,
    pub derp_all_vantages: bool,
    pub server_checks_derp: bool,
    pub proxies_all_vantages: bool,
    pub provisioner_daemons_required: bool,
    pub provisioner_stale_after: Duration,
    pub workspace_proxies: Vec<ProxyFile>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_owned(),
            access_url: None,
            database_url: None,
            database_threshold: DEFAULT_DATABASE_THRESHOLD,
            insecure_no_auth: false,
            interval: DEFAULT_INTERVAL,
            stale_after: DEFAULT_INTERVAL * 3,
            forget_after: DEFAULT_FORGET_AFTER,
            quorum: 1,
            raise_after: 1,
            clear_after: 1,
            history: DEFAULT_HISTORY,
            server_vantage: true,
            force_timeout: DEFAULT_FORCE_TIMEOUT,
            server_vantage_name: SERVER_VANTAGE.to_owned(),
            event_retention: DEFAULT_EVENT_RETENTION,
            observation_retention: DEFAULT_OBSERVATION_RETENTION,
            derp_map: None,
            embedded_relay: true,
            stun_listen: None,
            stun_servers: Vec::new(),
            derp_node_timeout: DEFAULT_DERP_NODE_TIMEOUT,
            derp_all_vantages: false,
            server_checks_derp: true,
            proxies_all_vantages: false,
            provisioner_daemons_required: false,
            provisioner_stale_after: DEFAULT_PROVISIONER_STALE_AFTER,
            workspace_proxies: Vec::new(),
        }
    }
}

fn file_duration(field: &str, v: Option<String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| parse_duration(&s).map_err(|e| ConfigError::new(field, e)))
        .transpose()
}

impl Config {
    /// Resolve flags over the file over the defaults, and validate.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let interval = flags
            .interval
            .or(file_duration("interval", file.interval)?)
            .unwrap_or(d.interval);
        let access_url = flags.access_url.or(file.access_url);
        let config = Config {
            listen: flags.listen.or(file.listen).unwrap_or(d.listen),
            access_url: access_url.map(|s| parse_access_url(&s)).transpose()?,
            database_url: flags.database_url.or(file.database_url),
            database_threshold: flags
                .database_threshold
                .or(file_duration(
                    "database_threshold",
                    file.database_threshold,
                )?)
                .unwrap_or(d.database_threshold),
            insecure_no_auth: flags.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            interval,
            stale_after: flags
                .stale_after
                .or(file_duration("stale_after", file.stale_after)?)
                .unwrap_or(interval * 3),
            forget_after: flags
                .forget_after
                .or(file_duration("forget_after", file.forget_after)?)
                .unwrap_or(d.forget_after),
            quorum: flags.quorum.or(file.quorum).unwrap_or(d.quorum),
            raise_after: flags
                .raise_after
                .or(file.raise_after)
                .unwrap_or(d.raise_after),
            clear_after: flags
                .clear_after
                .or(file.clear_after)
                .unwrap_or(d.clear_after),
            history: flags.history.or(file.history).unwrap_or(d.history),
            server_vantage: !flags.no_server_vantage && file.server_vantage.unwrap_or(true),
            force_timeout: flags
                .force_timeout
                .or(file_duration("force_timeout", file.force_timeout)?)
                .unwrap_or(d.force_timeout),
            server_vantage_name: flags
                .server_vantage_name
                .or(file.server_vantage_name)
                .unwrap_or(d.server_vantage_name),
            event_retention: flags
                .event_retention
                .or(file.event_retention)
                .unwrap_or(d.event_retention),
            observation_retention: flags
                .observation_retention
                .or(file.observation_retention)
                .unwrap_or(d.observation_retention),
            derp_map: flags.derp_map.or(file.derp_map),
            embedded_relay: !flags.no_embedded_relay && file.embedded_relay.unwrap_or(true),
            stun_listen: flags
                .stun_listen
                .or(file.stun_listen)
                .map(|s| {
                    s.parse().map_err(|_| {
                        ConfigError::new(
                            "stun_listen",
                            format!(
                                "{s:?} is not an address (expected ip:port, e.g. 127.0.0.1:3478)"
                            ),
                        )
                    })
                })
                .transpose()?,
            stun_servers: if flags.stun_servers.is_empty() {
                file.stun_servers.unwrap_or_default()
            } else {
                flags.stun_servers
            },
            derp_node_timeout: flags
                .derp_node_timeout
                .or(file_duration("derp_node_timeout", file.derp_node_timeout)?)
                .unwrap_or(d.derp_node_timeout),
            derp_all_vantages: flags.derp_all_vantages || file.derp_all_vantages.unwrap_or(false),
            server_checks_derp: !flags.no_server_derp && file.server_checks_derp.unwrap_or(true),
            proxies_all_vantages: flags.proxies_all_vantages
                || file.proxies_all_vantages.unwrap_or(false),
            provisioner_daemons_required: flags.provisioner_daemons_required
                || file
                    .provisioner_daemons
                    .as_ref()
                    .and_then(|p| p.required)
                    .unwrap_or(false),
            provisioner_stale_after: flags
                .provisioner_stale_after
                .or(file_duration(
                    "provisioner_daemons.stale_after",
                    file.provisioner_daemons.and_then(|p| p.stale_after),
                )?)
                .unwrap_or(d.provisioner_stale_after),
            workspace_proxies: file.workspace_proxies.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "interval",
                format!("{:?} is too short (expected at least 10ms)", self.interval),
            ));
        }
        if self.stale_after <= self.interval {
            return Err(ConfigError::new(
                "stale_after",
                format!(
                    "{:?} must be longer than the interval {:?}",
                    self.stale_after, self.interval
                ),
            ));
        }
        for (field, v) in [
            ("quorum", self.quorum as u64),
            ("raise_after", u64::from(self.raise_after)),
            ("clear_after", u64::from(self.clear_after)),
            ("history", self.history as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    field,
                    "0 is not allowed (expected at least 1)",
                ));
            }
        }
        if !is_server_vantage(&self.server_vantage_name) {
            return Err(ConfigError::new(
                "server_vantage_name",
                format!(
                    "{:?} must be \"server\" or start with \"server-\"",
                    self.server_vantage_name
                ),
            ));
        }
        if self.derp_node_timeout.is_zero() || self.derp_node_timeout > Duration::from_secs(30) {
            return Err(ConfigError::new(
                "derp_node_timeout",
                format!(
                    "{:?} is out of range (expected more than 0 and at most the run's 30s)",
                    self.derp_node_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Parse the listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::new(
                "listen",
                format!(
                    "{:?} is not an address (expected ip:port, e.g. 127.0.0.1:7080)",
                    self.listen
                ),
            )
        })
    }
}

fn parse_access_url(s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| {
        ConfigError::new(
            "access_url",
            format!("{s:?} is not a URL: {e} (expected e.g. https://coder.example.com)"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            "access_url",
            format!("{s:?}: scheme must be http or https"),
        ));
    }
    Ok(u)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("reading {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::new("config", format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::load(Flags::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.stale_after, DEFAULT_INTERVAL * 3);
        assert!(c.database_url.is_none() && c.server_vantage);
    }

    #[test]
    fn flags_override_file_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "interval = \"10s\"\nquorum = 2\n").unwrap();
        let c = Config::load(Flags {
            config: Some(path.clone()),
            quorum: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.interval, c.stale_after, c.quorum),
            (Duration::from_secs(10), Duration::from_secs(30), 3)
        );

        std::fs::write(&path, "interval = \"soon\"\n").unwrap();
        let e = Config::load(Flags {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "interval");
        assert!(e.message.contains("\"soon\""), "{e}");

        std::fs::write(&path, "colour = 1\n").unwrap();
        let e = Config::load(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");

        let e = Config::load(Flags {
            access_url: Some("ftp://x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "access_url");
        let e = Config::load(Flags {
            quorum: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "quorum");
    }
}
