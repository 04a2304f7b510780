//! The shapes of Coder's API responses the importer reads (the keys as Coder sends them;
//! unknown keys are ignored, missing optional ones default), and what they become here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use vantage_probe::rules::provisioners;
use vantage_proto::report::CoderReplica;

/// `GET /api/v2/buildinfo`.
#[derive(Debug, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    #[serde(default)]
    pub dashboard_url: String,
}

/// `GET /api/v2/workspaceagents/connection`: the DERP map as agents get it.
#[derive(Debug, Deserialize)]
pub struct Connection {
    pub derp_map: serde_json::Value,
    #[serde(default)]
    pub derp_force_websockets: bool,
}

/// `GET /api/v2/workspaceproxies`: current servers wrap the list, older ones send it bare.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ProxyList {
    Wrapped { regions: Vec<Proxy> },
    Bare(Vec<Proxy>),
}

impl ProxyList {
    pub fn into_vec(self) -> Vec<Proxy> {
        match self {
            ProxyList::Wrapped { regions } | ProxyList::Bare(regions) => regions,
        }
    }
}

/// A workspace proxy (or, from `/api/v2/regions`, a region: the same keys without status).
#[derive(Debug, Deserialize)]
pub struct Proxy {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub icon_url: String,
    #[serde(default)]
    pub path_app_url: String,
    #[serde(default)]
    pub derp_enabled: bool,
    #[serde(default)]
    pub derp_only: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub status: Option<ProxyStatus>,
}

/// The name Coder gives its primary region, which is not a proxy.
pub const PRIMARY: &str = "primary";

#[derive(Debug, Deserialize)]
pub struct ProxyStatus {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub report: ProxyReport,
    #[serde(default)]
    pub checked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProxyReport {
    #[serde(default)]
    pub errors: Option<Vec<String>>,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// `GET /api/v2/regions`.
#[derive(Debug, Deserialize)]
pub struct Regions {
    pub regions: Vec<Proxy>,
}

/// One of `GET /api/v2/organizations`.
#[derive(Debug, Deserialize)]
pub struct Organization {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// One of `GET /api/v2/organizations/{id}/provisionerdaemons`.
#[derive(Debug, Deserialize)]
pub struct ProvisionerDaemon {
    pub id: String,
    #[serde(default)]
    pub organization_id: String,
    #[serde(default)]
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_seen_at: Option<DateTime<Utc>>,
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub provisioners: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

impl ProvisionerDaemon {
    /// The daemon, Coder's absent lists made empty.
    pub fn into_daemon(self) -> provisioners::ProvisionerDaemon {
        provisioners::ProvisionerDaemon {
            id: self.id,
            organization_id: self.organization_id,
            key_id: self.key_id,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            name: self.name,
            version: self.version,
            api_version: self.api_version,
            provisioners: self.provisioners.unwrap_or_default(),
            tags: self.tags.unwrap_or_default(),
        }
    }
}

/// One of `GET /api/v2/replicas`.
#[derive(Debug, Deserialize)]
pub struct Replica {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub region_id: i64,
    #[serde(default)]
    pub relay_address: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub database_latency: i64,
}

impl From<Replica> for CoderReplica {
    fn from(r: Replica) -> CoderReplica {
        CoderReplica {
            id: r.id,
            hostname: r.hostname,
            region_id: r.region_id,
            relay_address: r.relay_address,
            error: r.error,
            database_latency: r.database_latency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_proxy_list_forms_parse() {
        let wrapped: ProxyList = serde_json::from_str(
            r#"{"regions":[{"name":"primary"},{"name":"syd","status":{"status":"ok","report":{"errors":[],"warnings":[]},"checked_at":"2026-01-01T00:00:00Z"}}]}"#,
        )
        .unwrap();
        let bare: ProxyList = serde_json::from_str(r#"[{"name":"syd","deleted":true}]"#).unwrap();
        let w = wrapped.into_vec();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].status.as_ref().unwrap().status, "ok");
        let b = bare.into_vec();
        assert!(b[0].deleted && b[0].status.is_none());
    }
}
