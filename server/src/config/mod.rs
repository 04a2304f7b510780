//! The server's one typed configuration: flags, `VANTAGE_*` environment variables and a TOML
//! file, in that order of precedence, over named defaults. The embedded default needs none.
//!
//! Each setting is declared once, in [`Settings`]: the flag `--foo-bar`, the variable
//! `VANTAGE_FOO_BAR` and the TOML key `foo_bar` are the same setting. `flags.rs` adds `--config`
//! and the deprecated flags, `file.rs` reads the TOML file (with `[[workspace_proxies]]` and the
//! deprecated keys), and [`Config::load`] layers them and validates.

mod alerting;
mod file;
mod flags;
mod sections;
mod settings;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use alerting::{AlertAuth, AlertingConfig, DEFAULT_ALERT_RESEND, Secret};

pub use file::{CoderFile, ProxyFile};
pub use flags::{DeprecatedFlags, Flags};
pub use sections::{MAX_SECTION_TIMEOUT, SectionTiming, Sections};
pub use settings::Settings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// `stale_after` defaults to this many intervals.
pub const DEFAULT_STALE_AFTER_INTERVALS: u32 = 3;
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_QUORUM: usize = 1;
pub const DEFAULT_RAISE_AFTER: u32 = 1;
pub const DEFAULT_CLEAR_AFTER: u32 = 1;
pub const DEFAULT_HISTORY: usize = 10_000;
/// Default capacity of the write queue, in observations.
pub const DEFAULT_WRITE_QUEUE: usize = crate::store::WRITE_BEHIND_CAPACITY;
pub const DEFAULT_DATABASE_THRESHOLD: Duration = Duration::from_millis(15);
pub const DEFAULT_INSECURE_NO_AUTH: bool = false;
pub const DEFAULT_FORCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown keeps serving after turning NOT_SERVING (load balancers notice).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// The longest shutdown takes, drain included.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_EVENT_RETENTION: usize = 100_000;
pub const DEFAULT_OBSERVATION_RETENTION: usize = 100_000;
pub const DEFAULT_SERVER_VANTAGE: bool = true;
pub const DEFAULT_EMBEDDED_RELAY: bool = true;
pub const DEFAULT_DERP_NODE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DERP_ALL_VANTAGES: bool = false;
pub const DEFAULT_SERVER_CHECKS_DERP: bool = true;
pub const DEFAULT_PROXIES_ALL_VANTAGES: bool = false;
pub const DEFAULT_PROVISIONER_DAEMONS_REQUIRED: bool = false;
pub const DEFAULT_PROVISIONER_STALE_AFTER: Duration = Duration::from_secs(90);
pub const DEFAULT_CODER_REFRESH: Duration = Duration::from_secs(30);
pub const DEFAULT_DERP_MAP_REFRESH: Duration = Duration::from_secs(15);
/// The name of the server's own vantage (replicas sharing a database name theirs
/// `server-<something>` with `--server-vantage-name`); the default `server_vantage_name`.
pub const SERVER_VANTAGE: &str = "server";

/// Whether `name` is a server's own vantage (`server` or `server-…`).
pub fn is_server_vantage(name: &str) -> bool {
    name == SERVER_VANTAGE
        || name
            .strip_prefix(SERVER_VANTAGE)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// One `allowed_proxy_networks` entry: a CIDR such as `169.254.10.0/24` or `fe80::/64`.
fn parse_network(v: &str) -> Result<ipnet::IpNet, ConfigError> {
    v.trim().parse().map_err(|e| {
        ConfigError::new(
            "allowed_proxy_networks",
            format!("{v:?} is not a network: {e} (expected a CIDR such as 169.254.10.0/24)"),
        )
    })
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

/// An old name that is still accepted. [`Config::load`] collects them; `main` logs each (a
/// warning naming both names) once logging is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    pub old: String,
    pub new: String,
}

impl fmt::Display for Deprecation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is deprecated: use {}", self.old, self.new)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: String,
    /// `None`: the listen URL, known once bound.
    pub access_url: Option<url::Url>,
    pub database_url: Option<String>,
    pub database_threshold: Duration,
    pub insecure_no_auth: bool,
    /// TLS on the listener: the certificate chain and key (PEM), and the CAs of client
    /// certificates (mutual TLS).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Tokens with roles; without it only loopback listeners are allowed.
    pub token_file: Option<std::path::PathBuf>,
    pub interval: Duration,
    pub stale_after: Duration,
    pub forget_after: Duration,
    pub quorum: usize,
    pub raise_after: u32,
    pub clear_after: u32,
    pub history: usize,
    pub write_queue: usize,
    pub server_vantage: bool,
    pub force_timeout: Duration,
    /// Shutdown: serve this long NOT_SERVING, then end the streams; all within the grace.
    pub drain: Duration,
    pub shutdown_grace: Duration,
    /// The plaintext listener of `grpc.health.v1`, `/healthz` and `/readyz` only.
    pub health_listen: Option<SocketAddr>,
    pub server_vantage_name: String,
    pub event_retention: usize,
    pub observation_retention: usize,
    pub derp_map: Option<String>,
    /// How often `derp_map` is read again.
    pub derp_map_refresh: Duration,
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
    pub max_vantages: usize,
    pub allowed_proxy_networks: Vec<ipnet::IpNet>,
    /// The Coder deployment to attach to (`--coder-url`), its token and refresh.
    pub coder_url: Option<url::Url>,
    pub coder_token: Option<Secret>,
    pub coder_refresh: Duration,
    /// The database the Database section pings, when not the store's.
    pub check_database_url: Option<String>,
    /// The embedded relay's region ID, when given (`--embedded-relay-region`).
    pub embedded_relay_region: Option<i64>,
    /// The rest of `[coder]`: proxy regions and the WebSocket token.
    pub coder: CoderFile,
    /// `[sections.<section>]`: per-section intervals and timeouts.
    pub sections: Sections,
    /// Where alerts are pushed (`config/alerting.rs`).
    pub alerting: AlertingConfig,
    /// The deprecated names the configuration used, for `main` to log.
    pub deprecations: Vec<Deprecation>,
    /// Where it came from, to read it again on SIGHUP ([`Config::reread`]).
    pub source: ConfigSource,
}

/// Where a configuration came from: the file (`--config`) and the layer of flags and
/// variables over it, which a reload keeps.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<std::path::PathBuf>,
    flags: Settings,
}

/// Where a configuration came from is not part of its value: two configurations are equal
/// when their settings are, however they were given.
impl PartialEq for ConfigSource {
    fn eq(&self, _: &ConfigSource) -> bool {
        true
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_owned(),
            access_url: None,
            database_url: None,
            database_threshold: DEFAULT_DATABASE_THRESHOLD,
            insecure_no_auth: DEFAULT_INSECURE_NO_AUTH,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            token_file: None,
            interval: DEFAULT_INTERVAL,
            stale_after: DEFAULT_INTERVAL * DEFAULT_STALE_AFTER_INTERVALS,
            forget_after: DEFAULT_FORGET_AFTER,
            quorum: DEFAULT_QUORUM,
            raise_after: DEFAULT_RAISE_AFTER,
            clear_after: DEFAULT_CLEAR_AFTER,
            history: DEFAULT_HISTORY,
            write_queue: DEFAULT_WRITE_QUEUE,
            server_vantage: DEFAULT_SERVER_VANTAGE,
            force_timeout: DEFAULT_FORCE_TIMEOUT,
            drain: DEFAULT_DRAIN,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            health_listen: None,
            server_vantage_name: SERVER_VANTAGE.to_owned(),
            event_retention: DEFAULT_EVENT_RETENTION,
            observation_retention: DEFAULT_OBSERVATION_RETENTION,
            derp_map: None,
            derp_map_refresh: DEFAULT_DERP_MAP_REFRESH,
            embedded_relay: DEFAULT_EMBEDDED_RELAY,
            stun_listen: None,
            stun_servers: Vec::new(),
            derp_node_timeout: DEFAULT_DERP_NODE_TIMEOUT,
            derp_all_vantages: DEFAULT_DERP_ALL_VANTAGES,
            server_checks_derp: DEFAULT_SERVER_CHECKS_DERP,
            proxies_all_vantages: DEFAULT_PROXIES_ALL_VANTAGES,
            provisioner_daemons_required: DEFAULT_PROVISIONER_DAEMONS_REQUIRED,
            provisioner_stale_after: DEFAULT_PROVISIONER_STALE_AFTER,
            workspace_proxies: Vec::new(),
            max_vantages: crate::aggregator::DEFAULT_MAX_VANTAGES,
            allowed_proxy_networks: Vec::new(),
            coder_url: None,
            coder_token: None,
            coder_refresh: DEFAULT_CODER_REFRESH,
            embedded_relay_region: None,
            check_database_url: None,
            coder: CoderFile::default(),
            sections: Sections::default(),
            alerting: AlertingConfig::default(),
            deprecations: Vec::new(),
            source: ConfigSource::default(),
        }
    }
}

impl Config {
    /// Resolve flags over the file over the defaults, and validate.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let mut deprecations = Vec::new();
        let file = flags.config.clone();
        let flags = flags.into_settings(&mut deprecations)?;
        Config::from_source(ConfigSource { file, flags }, deprecations)
    }

    /// The configuration file read again, under the same flags and variables (SIGHUP).
    pub fn reread(&self) -> Result<Config, ConfigError> {
        Config::from_source(self.source.clone(), Vec::new())
    }

    fn from_source(
        source: ConfigSource,
        mut deprecations: Vec<Deprecation>,
    ) -> Result<Config, ConfigError> {
        let file = match &source.file {
            Some(path) => file::read_file(path, &mut deprecations)?,
            None => file::FileConfig::default(),
        };
        let file::FileConfig {
            settings,
            workspace_proxies,
            coder,
            sections,
        } = file;
        let settings = source.flags.clone().or(settings);
        let mut config =
            Config::from_parts(settings, workspace_proxies, coder, sections, deprecations)?;
        config.source = source;
        Ok(config)
    }

    /// The configuration a file with `text` gives with no flags: what `vantaged --config FILE`
    /// loads (and how the fuzzer and its corpus drive the file parser).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut deprecations = Vec::new();
        let file = file::parse(text, std::path::Path::new("<text>"), &mut deprecations)?;
        Config::from_parts(
            file.settings,
            file.workspace_proxies,
            file.coder,
            file.sections,
            deprecations,
        )
    }

    fn from_parts(
        settings: Settings,
        workspace_proxies: Vec<ProxyFile>,
        coder: CoderFile,
        sections: Sections,
        deprecations: Vec<Deprecation>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::resolve(settings, workspace_proxies, deprecations)?;
        config.coder = coder;
        config.sections = sections;
        config.validate()?;
        Ok(config)
    }

    /// The layered settings over the defaults.
    fn resolve(
        s: Settings,
        workspace_proxies: Vec<ProxyFile>,
        deprecations: Vec<Deprecation>,
    ) -> Result<Config, ConfigError> {
        let interval = s.interval.unwrap_or(DEFAULT_INTERVAL);
        let alerting = alerting::resolve(&s)?;
        Ok(Config {
            listen: s.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            access_url: s.access_url.as_deref().map(parse_access_url).transpose()?,
            database_url: s.database_url,
            database_threshold: s.database_threshold.unwrap_or(DEFAULT_DATABASE_THRESHOLD),
            insecure_no_auth: s.insecure_no_auth.unwrap_or(DEFAULT_INSECURE_NO_AUTH),
            tls_cert: s.tls_cert,
            tls_key: s.tls_key,
            tls_client_ca: s.tls_client_ca,
            token_file: s.token_file,
            interval,
            stale_after: s
                .stale_after
                .unwrap_or(interval * DEFAULT_STALE_AFTER_INTERVALS),
            forget_after: s.forget_after.unwrap_or(DEFAULT_FORGET_AFTER),
            quorum: s.quorum.unwrap_or(DEFAULT_QUORUM),
            raise_after: s.raise_after.unwrap_or(DEFAULT_RAISE_AFTER),
            clear_after: s.clear_after.unwrap_or(DEFAULT_CLEAR_AFTER),
            history: s.history.unwrap_or(DEFAULT_HISTORY),
            write_queue: s.write_queue.unwrap_or(DEFAULT_WRITE_QUEUE),
            server_vantage: s.server_vantage.unwrap_or(DEFAULT_SERVER_VANTAGE),
            force_timeout: s.force_timeout.unwrap_or(DEFAULT_FORCE_TIMEOUT),
            drain: s.drain.unwrap_or(DEFAULT_DRAIN),
            shutdown_grace: s.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            health_listen: s
                .health_listen
                .as_deref()
                .map(|a| parse_address("health_listen", a, "0.0.0.0:7081"))
                .transpose()?,
            server_vantage_name: s
                .server_vantage_name
                .unwrap_or_else(|| SERVER_VANTAGE.to_owned()),
            event_retention: s.event_retention.unwrap_or(DEFAULT_EVENT_RETENTION),
            observation_retention: s
                .observation_retention
                .unwrap_or(DEFAULT_OBSERVATION_RETENTION),
            derp_map: s.derp_map,
            derp_map_refresh: s.derp_map_refresh.unwrap_or(DEFAULT_DERP_MAP_REFRESH),
            embedded_relay: s.embedded_relay.unwrap_or(DEFAULT_EMBEDDED_RELAY),
            stun_listen: s
                .stun_listen
                .as_deref()
                .map(|a| parse_address("stun_listen", a, "127.0.0.1:3478"))
                .transpose()?,
            stun_servers: s.stun_servers.unwrap_or_default(),
            derp_node_timeout: s.derp_node_timeout.unwrap_or(DEFAULT_DERP_NODE_TIMEOUT),
            derp_all_vantages: s.derp_all_vantages.unwrap_or(DEFAULT_DERP_ALL_VANTAGES),
            server_checks_derp: s.server_checks_derp.unwrap_or(DEFAULT_SERVER_CHECKS_DERP),
            proxies_all_vantages: s
                .proxies_all_vantages
                .unwrap_or(DEFAULT_PROXIES_ALL_VANTAGES),
            provisioner_daemons_required: s
                .provisioner_daemons_required
                .unwrap_or(DEFAULT_PROVISIONER_DAEMONS_REQUIRED),
            provisioner_stale_after: s
                .provisioner_stale_after
                .unwrap_or(DEFAULT_PROVISIONER_STALE_AFTER),
            workspace_proxies,
            max_vantages: s
                .max_vantages
                .unwrap_or(crate::aggregator::DEFAULT_MAX_VANTAGES),
            allowed_proxy_networks: s
                .allowed_proxy_networks
                .unwrap_or_default()
                .iter()
                .map(|n| parse_network(n))
                .collect::<Result<_, _>>()?,
            coder_url: s
                .coder_url
                .as_deref()
                .map(|u| parse_url("coder_url", u))
                .transpose()?,
            coder_token: s.coder_token,
            coder_refresh: s.coder_refresh.unwrap_or(DEFAULT_CODER_REFRESH),
            embedded_relay_region: s.embedded_relay_region,
            check_database_url: s.check_database_url,
            coder: CoderFile::default(),
            sections: Sections::default(),
            alerting,
            deprecations,
            source: ConfigSource::default(),
        })
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
            ("write_queue", self.write_queue as u64),
            ("max_vantages", self.max_vantages as u64),
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
        if let Some(id) = self.embedded_relay_region.filter(|id| *id <= 0) {
            return Err(ConfigError::new(
                "embedded_relay_region",
                format!("{id} is not a region ID (expected a positive integer, e.g. 900)"),
            ));
        }
        if self.coder_refresh < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "coder_refresh",
                format!(
                    "{:?} is too short (expected at least 100ms)",
                    self.coder_refresh
                ),
            ));
        }
        if self.derp_map_refresh < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "derp_map_refresh",
                format!(
                    "{:?} is too short (expected at least 100ms)",
                    self.derp_map_refresh
                ),
            ));
        }
        if self.shutdown_grace < self.drain {
            return Err(ConfigError::new(
                "shutdown_grace",
                format!(
                    "{:?} is shorter than drain {:?} (expected shutdown_grace at least drain: the drain is part of the grace)",
                    self.shutdown_grace, self.drain
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
        let derp = self.sections.get(vantage_proto::Section::Derp);
        if let Some(t) = derp.timeout.filter(|t| *t < self.derp_node_timeout) {
            return Err(ConfigError::new(
                "sections.derp.timeout",
                format!(
                    "{t:?} is shorter than derp_node_timeout {:?} (expected at least the node timeout: a region's run includes its nodes')",
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
    parse_url("access_url", s)
}

fn parse_url(field: &str, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| {
        ConfigError::new(
            field,
            format!("{s:?} is not a URL: {e} (expected e.g. https://coder.example.com)"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            field,
            format!("{s:?}: scheme must be http or https"),
        ));
    }
    Ok(u)
}

fn parse_address(field: &str, s: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{s:?} is not an address (expected ip:port, e.g. {example})"),
        )
    })
}
