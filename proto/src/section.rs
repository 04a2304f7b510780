//! Severities and sections: their names in the settings API, the JSON report, gRPC and the
//! `grpc.health.v1` service names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// `ok` < `warning` < `error`, as Coder ranks them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Ok,
    Warning,
    Error,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Ok, Severity::Warning, Severity::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// The exit status of `vantage report` and `vantage-probe --once`: 0, 1, 2.
    pub fn exit_code(self) -> i32 {
        match self {
            Severity::Ok => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ok" => Ok(Severity::Ok),
            "warning" | "warn" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            other => Err(format!(
                "invalid severity {other:?}: expected one of ok, warning, error"
            )),
        }
    }
}

impl From<Severity> for pb::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Ok => pb::Severity::Ok,
            Severity::Warning => pb::Severity::Warning,
            Severity::Error => pb::Severity::Error,
        }
    }
}

impl Severity {
    /// From the wire: `None` for `SEVERITY_UNSPECIFIED` or an unknown number.
    pub fn from_pb(value: i32) -> Option<Severity> {
        match pb::Severity::try_from(value).ok()? {
            pb::Severity::Unspecified => None,
            pb::Severity::Ok => Some(Severity::Ok),
            pb::Severity::Warning => Some(Severity::Warning),
            pb::Severity::Error => Some(Severity::Error),
        }
    }
}

/// The six sections of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    AccessUrl,
    Database,
    Derp,
    Websocket,
    WorkspaceProxy,
    ProvisionerDaemons,
}

/// A section name that is none of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown healthcheck section: {0:?} (expected one of AccessURL, Database, DERP, Websocket, WorkspaceProxy, ProvisionerDaemons)"
)]
pub struct UnknownSection(pub String);

impl Section {
    /// In the order of the report's JSON keys as Coder's page lists them.
    pub const ALL: [Section; 6] = [
        Section::AccessUrl,
        Section::Database,
        Section::Derp,
        Section::ProvisionerDaemons,
        Section::Websocket,
        Section::WorkspaceProxy,
    ];

    /// The settings-API name (`dismissed_healthchecks`), e.g. `AccessURL`.
    pub fn settings_name(self) -> &'static str {
        match self {
            Section::AccessUrl => "AccessURL",
            Section::Database => "Database",
            Section::Derp => "DERP",
            Section::Websocket => "Websocket",
            Section::WorkspaceProxy => "WorkspaceProxy",
            Section::ProvisionerDaemons => "ProvisionerDaemons",
        }
    }

    /// The key in the report JSON, e.g. `access_url`.
    pub fn json_key(self) -> &'static str {
        match self {
            Section::AccessUrl => "access_url",
            Section::Database => "database",
            Section::Derp => "derp",
            Section::Websocket => "websocket",
            Section::WorkspaceProxy => "workspace_proxy",
            Section::ProvisionerDaemons => "provisioner_daemons",
        }
    }

    /// A human title, e.g. `Access URL`.
    pub fn title(self) -> &'static str {
        match self {
            Section::AccessUrl => "Access URL",
            Section::Database => "Database",
            Section::Derp => "DERP",
            Section::Websocket => "Websocket",
            Section::WorkspaceProxy => "Workspace Proxy",
            Section::ProvisionerDaemons => "Provisioner Daemons",
        }
    }

    /// The `grpc.health.v1` service name, e.g. `vantage.v1.AccessURL`.
    pub fn health_service_name(self) -> String {
        format!("vantage.v1.{}", self.settings_name())
    }

    /// Whether a section at `severity` makes the report's `healthy` false (`docs/coder-health.md#report-level-healthy-and-severity`:
    /// AccessURL fails at warning, every other section only at error).
    pub fn is_failing(self, severity: Severity) -> bool {
        match self {
            Section::AccessUrl => severity > Severity::Ok,
            _ => severity > Severity::Warning,
        }
    }

    pub fn from_pb(value: i32) -> Option<Section> {
        Some(match pb::Section::try_from(value).ok()? {
            pb::Section::Unspecified => return None,
            pb::Section::AccessUrl => Section::AccessUrl,
            pb::Section::Database => Section::Database,
            pb::Section::Derp => Section::Derp,
            pb::Section::Websocket => Section::Websocket,
            pb::Section::WorkspaceProxy => Section::WorkspaceProxy,
            pb::Section::ProvisionerDaemons => Section::ProvisionerDaemons,
        })
    }
}

impl From<Section> for pb::Section {
    fn from(s: Section) -> Self {
        match s {
            Section::AccessUrl => pb::Section::AccessUrl,
            Section::Database => pb::Section::Database,
            Section::Derp => pb::Section::Derp,
            Section::Websocket => pb::Section::Websocket,
            Section::WorkspaceProxy => pb::Section::WorkspaceProxy,
            Section::ProvisionerDaemons => pb::Section::ProvisionerDaemons,
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.settings_name())
    }
}

impl FromStr for Section {
    type Err = UnknownSection;

    /// Settings names are matched exactly (as Coder validates them); JSON keys and
    /// case-insensitive settings names are accepted too, for people typing them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Section::ALL
            .into_iter()
            .find(|sec| sec.settings_name() == s)
            .or_else(|| {
                Section::ALL
                    .into_iter()
                    .find(|sec| sec.settings_name().eq_ignore_ascii_case(s) || sec.json_key() == s)
            })
            .ok_or_else(|| UnknownSection(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_names_round_trip() {
        for s in Section::ALL {
            assert_eq!(s.settings_name().parse::<Section>(), Ok(s));
            assert_eq!(s.json_key().parse::<Section>(), Ok(s));
            assert_eq!(Section::from_pb(pb::Section::from(s) as i32), Some(s));
        }
        assert_eq!("derp".parse::<Section>(), Ok(Section::Derp));
        let err = "Pubsub".parse::<Section>().unwrap_err();
        assert!(err.to_string().contains("\"Pubsub\""), "{err}");
    }

    #[test]
    fn failing_rules_follow_coder() {
        assert!(Section::AccessUrl.is_failing(Severity::Warning));
        assert!(!Section::AccessUrl.is_failing(Severity::Ok));
        for s in [Section::Derp, Section::Websocket, Section::Database] {
            assert!(!s.is_failing(Severity::Warning));
            assert!(s.is_failing(Severity::Error));
        }
    }

    #[test]
    fn severity_orders_and_parses() {
        assert!(Severity::Ok < Severity::Warning && Severity::Warning < Severity::Error);
        assert_eq!("WARNING".parse::<Severity>(), Ok(Severity::Warning));
        assert!("fatal".parse::<Severity>().is_err());
        assert_eq!(Severity::from_pb(0), None);
        assert_eq!(Severity::from_pb(3), Some(Severity::Error));
    }
}
