//! The Alertmanager settings, resolved and validated: where alerts go, how the sender proves
//! who it is, how often it re-sends and what it calls the deployment.

use std::time::Duration;

use super::ConfigError;
use super::settings::Settings;

/// Default of `--alert-resend` (Prometheus' `--rules.alert.resend-delay`).
pub const DEFAULT_ALERT_RESEND: Duration = Duration::from_secs(60);
/// The shortest `--alert-resend` accepted.
pub const MIN_ALERT_RESEND: Duration = Duration::from_millis(100);

pub use super::settings::Secret;

/// How the sender authenticates to the Alertmanagers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AlertAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    Bearer(Secret),
}

/// Where and how alerts are pushed; no URL: no sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertingConfig {
    pub alertmanager_urls: Vec<url::Url>,
    /// Read when the sender starts (a missing file is a startup error then).
    pub ca_file: Option<String>,
    pub auth: AlertAuth,
    pub resend: Duration,
    /// `None`: the access URL's host:port.
    pub deployment_name: Option<String>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            alertmanager_urls: Vec::new(),
            ca_file: None,
            auth: AlertAuth::None,
            resend: DEFAULT_ALERT_RESEND,
            deployment_name: None,
        }
    }
}

/// The alerting part of the layered settings.
pub(super) fn resolve(s: &Settings) -> Result<AlertingConfig, ConfigError> {
    let mut urls = Vec::new();
    for raw in s.alertmanager_url.iter().flatten() {
        urls.push(parse_url(raw)?);
    }
    let auth = match (
        &s.alertmanager_username,
        &s.alertmanager_password,
        &s.alertmanager_bearer_token,
    ) {
        (None, None, None) => AlertAuth::None,
        (Some(u), Some(p), None) => AlertAuth::Basic {
            username: u.clone(),
            password: Secret::new(p.clone()),
        },
        (None, None, Some(t)) => AlertAuth::Bearer(Secret::new(t.clone())),
        (Some(u), None, None) => AlertAuth::Basic {
            username: u.clone(),
            password: Secret::new(String::new()),
        },
        (None, Some(_), None) => {
            return Err(ConfigError::new(
                "alertmanager_username",
                "missing (expected a user name with alertmanager_password)",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "alertmanager_bearer_token",
                "given with basic authentication (expected one of the two)",
            ));
        }
    };
    let resend = s.alert_resend.unwrap_or(DEFAULT_ALERT_RESEND);
    if resend < MIN_ALERT_RESEND {
        return Err(ConfigError::new(
            "alert_resend",
            format!("{resend:?} is too short (expected at least {MIN_ALERT_RESEND:?})"),
        ));
    }
    if s.deployment_name.as_deref() == Some("") {
        return Err(ConfigError::new(
            "deployment_name",
            "\"\" is empty (expected a name, e.g. coder.example.com)",
        ));
    }
    Ok(AlertingConfig {
        alertmanager_urls: urls,
        ca_file: s.alertmanager_ca_file.clone(),
        auth,
        resend,
        deployment_name: s.deployment_name.clone(),
    })
}

fn parse_url(raw: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(raw).map_err(|e| {
        ConfigError::new(
            "alertmanager_url",
            format!("{raw:?} is not a URL: {e} (expected e.g. http://127.0.0.1:9093)"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            "alertmanager_url",
            format!("{raw:?}: scheme must be http or https"),
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(ConfigError::new(
            "alertmanager_url",
            "credentials in the URL are not accepted (expected alertmanager_username and alertmanager_password)",
        ));
    }
    Ok(u)
}
