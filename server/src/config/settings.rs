//! [`Settings`]: every setting, declared once. A field `foo_bar` is the flag `--foo-bar`, the
//! variable `VANTAGE_FOO_BAR` and the TOML key `foo_bar`; `None` is "not given here". The flags
//! and the file each produce a `Settings`; [`Settings::or`] layers them and
//! [`Config`](super::Config) fills what is still `None` with the named defaults.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Deserializer};

/// Every setting: the flags (with their `VANTAGE_*` variables) and the TOML keys, in snake_case.
///
/// Booleans take an optional value: `--embedded-relay false`, and a bare `--insecure-no-auth`
/// is `true`. Durations are humantime strings (`500ms`, `30s`, `5m`, `24h`) everywhere.
#[derive(Debug, Default, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on (gRPC and HTTP on one port); port 0 picks one.
    #[arg(long, env = "VANTAGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The deployment's access URL (default: the listen URL).
    #[arg(long, env = "VANTAGE_ACCESS_URL", value_name = "URL")]
    pub access_url: Option<String>,
    /// PostgreSQL connection string (default: in-memory store).
    #[arg(
        long,
        env = "VANTAGE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Database section threshold (median ping, integer milliseconds compared).
    #[arg(long, env = "VANTAGE_DATABASE_THRESHOLD", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub database_threshold: Option<Duration>,
    /// Allow listening on a non-loopback address without tokens.
    #[arg(long, env = "VANTAGE_INSECURE_NO_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
    /// TLS certificate chain (PEM) served on the listener; reloaded when it changes or on SIGHUP.
    #[arg(long, env = "VANTAGE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "VANTAGE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by these CAs (PEM) at the handshake: mutual TLS.
    #[arg(long, env = "VANTAGE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Tokens with roles (TOML `[[tokens]]`); reloaded when it changes or on SIGHUP.
    #[arg(long, env = "VANTAGE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Interval between two runs of each check.
    #[arg(long, env = "VANTAGE_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    /// A vantage that has not reported for this long is stale (default 3 × interval).
    #[arg(long, env = "VANTAGE_STALE_AFTER", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub stale_after: Option<Duration>,
    /// A stale vantage is forgotten after this long.
    #[arg(long, env = "VANTAGE_FORGET_AFTER", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub forget_after: Option<Duration>,
    /// How many fresh vantages must agree on a severity for it to count.
    #[arg(long, env = "VANTAGE_QUORUM", value_name = "N")]
    pub quorum: Option<usize>,
    /// Consecutive evaluations at a higher severity before an alert is raised.
    #[arg(long, env = "VANTAGE_RAISE_AFTER", value_name = "N")]
    pub raise_after: Option<u32>,
    /// Consecutive evaluations at a lower severity before an alert clears.
    #[arg(long, env = "VANTAGE_CLEAR_AFTER", value_name = "N")]
    pub clear_after: Option<u32>,
    /// Events kept for `Watch` resume.
    #[arg(long, env = "VANTAGE_HISTORY", value_name = "N")]
    pub history: Option<usize>,
    /// With a database: most observations waiting to be written; beyond it probes are not
    /// acknowledged (backpressure) until the store catches up.
    #[arg(long, env = "VANTAGE_WRITE_QUEUE", value_name = "N")]
    pub write_queue: Option<usize>,
    /// How long `?force=true` / `GetReport{force}` waits for every vantage.
    #[arg(long, env = "VANTAGE_FORCE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub force_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT: how long vantaged keeps serving after it turned NOT_SERVING and
    /// `/readyz` 503, while load balancers notice.
    #[arg(long, env = "VANTAGE_DRAIN", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub drain: Option<Duration>,
    /// On SIGTERM/SIGINT: the longest shutdown takes, drain included (at least `drain`);
    /// streams still open then are cut.
    #[arg(long, env = "VANTAGE_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    /// A plaintext listener serving only `grpc.health.v1`, `/healthz` and `/readyz` (for
    /// Kubernetes probes, which speak neither TLS nor tokens), e.g. 0.0.0.0:7081.
    #[arg(long, env = "VANTAGE_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<String>,
    /// DERP map in Tailscale's JSON format: a file path or an http(s) URL, read again every
    /// --derp-map-refresh.
    #[arg(long, env = "VANTAGE_DERP_MAP", value_name = "FILE|URL")]
    pub derp_map: Option<String>,
    /// How often the DERP map is read again (jittered ±10 %); a failed read keeps the last map
    /// (EDERP05).
    #[arg(long, env = "VANTAGE_DERP_MAP_REFRESH", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub derp_map_refresh: Option<Duration>,
    /// Serve the embedded DERP relay (region 999) at /derp.
    #[arg(long, env = "VANTAGE_EMBEDDED_RELAY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub embedded_relay: Option<bool>,
    /// Answer STUN binding requests on this UDP address (e.g. 127.0.0.1:3478).
    #[arg(long, env = "VANTAGE_STUN_LISTEN", value_name = "ADDR")]
    pub stun_listen: Option<String>,
    /// Extra STUN server `host:port` (repeatable, or comma-separated): each becomes a STUN-only
    /// region.
    #[arg(
        long,
        alias = "stun-server",
        env = "VANTAGE_STUN_SERVERS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub stun_servers: Option<Vec<String>>,
    /// Deadline of each DERP node check.
    #[arg(long, env = "VANTAGE_DERP_NODE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub derp_node_timeout: Option<Duration>,
    /// Assign every DERP region to every probe (default: the probes of its RegionCode).
    #[arg(long, env = "VANTAGE_DERP_ALL_VANTAGES", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub derp_all_vantages: Option<bool>,
    /// The server's own vantage checks the DERP regions too.
    #[arg(long, env = "VANTAGE_SERVER_CHECKS_DERP", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub server_checks_derp: Option<bool>,
    /// Assign every workspace proxy to every probe (default: the probes of its region).
    #[arg(long, env = "VANTAGE_PROXIES_ALL_VANTAGES", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxies_all_vantages: Option<bool>,
    /// The deployment requires provisioner daemons: none active is EPD01 (error).
    #[arg(long, env = "VANTAGE_PROVISIONER_DAEMONS_REQUIRED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub provisioner_daemons_required: Option<bool>,
    /// A provisioner daemon without a heartbeat for this long is stale.
    #[arg(long, env = "VANTAGE_PROVISIONER_STALE_AFTER", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub provisioner_stale_after: Option<Duration>,
    /// Events the database keeps for `Watch` resume.
    #[arg(long, env = "VANTAGE_EVENT_RETENTION", value_name = "N")]
    pub event_retention: Option<usize>,
    /// Rows of the observation log the database keeps.
    #[arg(long, env = "VANTAGE_OBSERVATION_RETENTION", value_name = "N")]
    pub observation_retention: Option<usize>,
    /// The name of this server's own vantage: `server`, or `server-<name>` to tell replicas apart.
    #[arg(long, env = "VANTAGE_SERVER_VANTAGE_NAME", value_name = "NAME")]
    pub server_vantage_name: Option<String>,
    /// Run the server's own vantage (access URL and websocket from the server).
    #[arg(long, env = "VANTAGE_SERVER_VANTAGE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub server_vantage: Option<bool>,
    /// Most vantages kept; a probe with a new name beyond it is refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "VANTAGE_MAX_VANTAGES", value_name = "N")]
    pub max_vantages: Option<usize>,
    /// Link-local or metadata networks (CIDR, repeatable or comma-separated) that workspace
    /// proxy URLs may point at all the same.
    #[arg(
        long,
        env = "VANTAGE_ALLOWED_PROXY_NETWORKS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allowed_proxy_networks: Option<Vec<String>>,
    /// The database the Database section pings (e.g. Coder's PostgreSQL; a `SELECT 1`), apart
    /// from vantage's own store (default: the store of `--database-url`).
    #[arg(
        long,
        env = "VANTAGE_CHECK_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub check_database_url: Option<String>,
    /// The region ID of the embedded relay (default 999). When attached to Coder, whose own
    /// embedded region is 999 too, the relay is checked only when given a free ID here.
    #[arg(long, env = "VANTAGE_EMBEDDED_RELAY_REGION", value_name = "N")]
    pub embedded_relay_region: Option<i64>,
    /// Attach to this Coder deployment: import and follow its version, workspace proxies,
    /// provisioner daemons and replicas (TOML: `[coder] url`).
    #[arg(long, env = "VANTAGE_CODER_URL", value_name = "URL")]
    pub coder_url: Option<String>,
    /// The Coder session token the importer sends (as `Coder-Session-Token`, to the Coder URL
    /// only; TOML: `[coder] token` or `token_file`).
    #[arg(long, env = "VANTAGE_CODER_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub coder_token: Option<Secret>,
    /// How often the Coder inventory is imported again (jittered; TOML: `[coder] refresh`).
    #[arg(long, env = "VANTAGE_CODER_REFRESH", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub coder_refresh: Option<Duration>,
    /// Alertmanager to push alerts to (repeatable, or comma-separated, for a cluster).
    #[arg(
        long,
        env = "VANTAGE_ALERTMANAGER_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub alertmanager_url: Option<Vec<String>>,
    /// PEM file of the CA that signs the Alertmanagers' certificates (default: the system's).
    #[arg(long, env = "VANTAGE_ALERTMANAGER_CA_FILE", value_name = "FILE")]
    pub alertmanager_ca_file: Option<String>,
    /// User name of HTTP basic authentication to the Alertmanagers.
    #[arg(long, env = "VANTAGE_ALERTMANAGER_USERNAME", value_name = "NAME")]
    pub alertmanager_username: Option<String>,
    /// Password of HTTP basic authentication to the Alertmanagers.
    #[arg(
        long,
        env = "VANTAGE_ALERTMANAGER_PASSWORD",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub alertmanager_password: Option<String>,
    /// Bearer token sent to the Alertmanagers (instead of basic authentication).
    #[arg(
        long,
        env = "VANTAGE_ALERTMANAGER_BEARER_TOKEN",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub alertmanager_bearer_token: Option<String>,
    /// How often every active alert is re-sent to the Alertmanagers.
    #[arg(long, env = "VANTAGE_ALERT_RESEND", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub alert_resend: Option<Duration>,
    /// The `deployment` label of every alert (default: the access URL's host:port).
    #[arg(long, env = "VANTAGE_DEPLOYMENT_NAME", value_name = "NAME")]
    pub deployment_name: Option<String>,
}

/// A credential: compared and cloned like a string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// Layers `$upper` over `$lower`, field by field; the destructuring is exhaustive, so a new
/// field that is not listed does not compile.
macro_rules! layer {
    ($upper:expr, $lower:expr; $($field:ident),* $(,)?) => {{
        let Settings { $($field),* } = $upper;
        let lower = $lower;
        Settings { $($field: $field.or(lower.$field)),* }
    }};
}

impl Settings {
    /// `self`'s values, and `lower`'s where `self` has none.
    pub fn or(self, lower: Settings) -> Settings {
        layer!(self, lower;
            listen, access_url, database_url, database_threshold, insecure_no_auth, tls_cert,
            tls_key, tls_client_ca, token_file, interval, stale_after, forget_after, quorum,
            raise_after, clear_after, history, write_queue, force_timeout, drain, shutdown_grace,
            health_listen,
            derp_map, derp_map_refresh, embedded_relay, stun_listen, stun_servers, derp_node_timeout,
            derp_all_vantages, server_checks_derp, proxies_all_vantages,
            provisioner_daemons_required, provisioner_stale_after, event_retention,
            observation_retention, server_vantage_name, server_vantage, max_vantages,
            allowed_proxy_networks, coder_url, coder_token, coder_refresh, embedded_relay_region,
            check_database_url,
            alertmanager_url, alertmanager_ca_file, alertmanager_username,
            alertmanager_password, alertmanager_bearer_token, alert_resend, deployment_name,
        )
    }

    /// The TOML keys: the flags' long names in snake_case, in `--help` order.
    pub fn keys() -> Vec<String> {
        Settings::augment_args(clap::Command::new("settings"))
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|long| long.replace('-', "_"))
            .collect()
    }
}

/// The flag of a TOML key (`foo_bar` is `--foo-bar`).
pub(crate) fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The environment variable of a TOML key (`foo_bar` is `VANTAGE_FOO_BAR`).
pub(crate) fn env_of(key: &str) -> String {
    format!("VANTAGE_{}", key.to_uppercase())
}

/// The flags' duration parser (humantime).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (expected e.g. 500ms, 30s, 5m, 24h)"))
}

/// The file's duration: the same humantime string as the flag.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}
