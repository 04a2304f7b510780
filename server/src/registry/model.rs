//! The entries the registry keeps (daemons, proxies), validated from what announces them.

use tonic::Status;
pub use vantage_probe::rules::provisioners::ProvisionerDaemon;
pub use vantage_probe::rules::workspace_proxy::{ProxySource, WorkspaceProxy};
use vantage_proto::pb;

use super::*;

/// Most daemons, and most proxies, the registry holds (each).
pub const MAX_ENTRIES: usize = 10_000;
/// Most tags a daemon may carry.
pub const MAX_TAGS: usize = 64;
/// Most provisioner types a daemon may list.
pub const MAX_PROVISIONERS: usize = 32;
/// A daemon unseen for this long is forgotten when room is needed (Coder purges after 7 days).
pub const DAEMON_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The organization of a daemon that names none.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

pub(super) const MAX_NAME: usize = 64;
pub(super) const MAX_TEXT: usize = 256;
pub(super) const MAX_URL: usize = 2048;
pub(super) const MAX_TAG_KEY: usize = 128;

/// Why a registry call failed. Turned into a `tonic::Status` in one place (`From`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input; names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Full(String),
    #[error("no workspace proxy named {0:?}")]
    NotFound(String),
    #[error(
        "workspace proxy {0:?} comes from the server configuration: remove it there, not over the API"
    )]
    Configured(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            RegistryError::Full(_) => Status::resource_exhausted(e.to_string()),
            RegistryError::NotFound(_) => Status::not_found(e.to_string()),
            RegistryError::Configured(_) => Status::failed_precondition(e.to_string()),
            RegistryError::Store(err) => {
                tracing::warn!(error = %err, "registry store failed");
                Status::unavailable("the registry could not be saved; retry later")
            }
        }
    }
}

/// A validated heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub provisioners: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub organization_id: String,
}

impl TryFrom<pb::ProvisionerHeartbeatRequest> for Heartbeat {
    type Error = RegistryError;

    fn try_from(r: pb::ProvisionerHeartbeatRequest) -> Result<Self, Self::Error> {
        check_name("name", &r.name)?;
        check_text("version", &r.version, MAX_TEXT)?;
        check_text("api_version", &r.api_version, MAX_TEXT)?;
        if r.provisioners.len() > MAX_PROVISIONERS {
            return Err(invalid(
                "provisioners",
                format!(
                    "at most {MAX_PROVISIONERS} entries (got {})",
                    r.provisioners.len()
                ),
            ));
        }
        for (i, p) in r.provisioners.iter().enumerate() {
            check_name(&format!("provisioners[{i}]"), p)?;
        }
        if r.tags.len() > MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("at most {MAX_TAGS} entries (got {})", r.tags.len()),
            ));
        }
        let tags: BTreeMap<String, String> = r.tags.into_iter().collect();
        for (k, v) in &tags {
            if k.is_empty() {
                return Err(invalid("tags", "a tag key is empty"));
            }
            check_text("tags", k, MAX_TAG_KEY)?;
            check_text(&format!("tags[{}]", shown(k)), v, MAX_TEXT)?;
        }
        let organization_id = match r.organization_id.as_deref() {
            None | Some("") => NIL_UUID.to_owned(),
            Some(id) => uuid::Uuid::parse_str(id)
                .map_err(|_| invalid("organization_id", format!("{} is not a UUID", shown(id))))?
                .hyphenated()
                .to_string(),
        };
        Ok(Heartbeat {
            name: r.name,
            version: r.version,
            api_version: r.api_version,
            provisioners: r.provisioners,
            tags,
            organization_id,
        })
    }
}

/// What may be given of a workspace proxy, from the configuration (`[[workspace_proxies]]`,
/// read by serde), a registration or a Coder import: the input the registry validates
/// ([`ProxySpec::validate`]) before it makes a [`WorkspaceProxy`] of it (id, timestamps,
/// source).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    /// Empty: not started yet (`unregistered`).
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
    /// Reported by a registering proxy; never read from the configuration.
    #[serde(skip)]
    pub version: String,
}

impl ProxySpec {
    /// Check every field; errors name the field, prefixed by `at` (e.g. `workspace_proxies[2].`).
    pub fn validate(&self, at: &str) -> Result<(), RegistryError> {
        check_name(&format!("{at}name"), &self.name)?;
        check_text(&format!("{at}display_name"), &self.display_name, MAX_TEXT)?;
        check_proxy_url(&format!("{at}url"), &self.url)?;
        if !self.region.is_empty() {
            check_name(&format!("{at}region"), &self.region)?;
        }
        check_text(&format!("{at}icon_url"), &self.icon_url, MAX_URL)?;
        check_text(&format!("{at}version"), &self.version, MAX_TEXT)?;
        Ok(())
    }
}

impl TryFrom<pb::RegisterWorkspaceProxyRequest> for ProxySpec {
    type Error = RegistryError;

    fn try_from(r: pb::RegisterWorkspaceProxyRequest) -> Result<Self, Self::Error> {
        let spec = ProxySpec {
            name: r.name,
            display_name: r.display_name,
            url: r.url,
            region: r.region,
            icon_url: r.icon_url,
            derp_enabled: r.derp_enabled,
            derp_only: r.derp_only,
            version: r.version,
        };
        spec.validate("")?;
        Ok(spec)
    }
}

/// At most 64 characters of `s`, quoted, for error messages (input is never echoed in full).
pub(super) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// 1–64 characters of `[A-Za-z0-9._-]`.
pub(super) fn check_name(field: &str, v: &str) -> Result<(), RegistryError> {
    let ok = !v.is_empty()
        && v.len() <= MAX_NAME
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "must be 1-{MAX_NAME} characters of A-Z, a-z, 0-9, '.', '_' or '-' (got {})",
                shown(v)
            ),
        ))
    }
}

/// At most `max` bytes, no control characters.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), RegistryError> {
    if v.len() > max {
        return Err(invalid(
            field,
            format!("at most {max} bytes (got {})", v.len()),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Empty, or an absolute http(s) URL with a host and no query or fragment.
fn check_proxy_url(field: &str, v: &str) -> Result<(), RegistryError> {
    if v.is_empty() {
        return Ok(());
    }
    check_text(field, v, MAX_URL)?;
    let u = url::Url::parse(v)
        .map_err(|e| invalid(field, format!("{} is not a valid URL: {e}", shown(v))))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid(
            field,
            format!(
                "must be an http:// or https:// URL (got scheme {:?})",
                u.scheme()
            ),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "must name a host"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid(field, "must not have a query or fragment"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid(
            field,
            "must not carry user information (user:password@); probes would send it to the proxy",
        ));
    }
    Ok(())
}

/// Host names of cloud metadata services, refused like their addresses.
const METADATA_HOSTS: [&str; 3] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
];

/// Addresses probes must not be sent to unless an operator allows them: link-local
/// (169.254.0.0/16, fe80::/10, where cloud metadata services answer) and the metadata
/// addresses outside those ranges (AWS's fd00:ec2::254, Alibaba's 100.100.100.200).
fn forbidden_ip(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = |a: Ipv4Addr| a.is_link_local() || a == Ipv4Addr::new(100, 100, 100, 200);
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => {
            a.to_ipv4_mapped().is_some_and(v4)
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// A proxy URL's host is not a link-local or metadata address (or metadata host name),
/// unless its address is in one of `allowed` (`allowed_proxy_networks`).
pub fn check_proxy_network(
    field: &str,
    v: &str,
    allowed: &[ipnet::IpNet],
) -> Result<(), RegistryError> {
    let Ok(u) = url::Url::parse(v) else {
        return Ok(());
    };
    let refused = match u.host() {
        Some(url::Host::Ipv4(a)) => {
            let ip = std::net::IpAddr::V4(a);
            forbidden_ip(ip) && !allowed.iter().any(|n| n.contains(&ip))
        }
        Some(url::Host::Ipv6(a)) => {
            let ip = std::net::IpAddr::V6(a);
            forbidden_ip(ip) && !allowed.iter().any(|n| n.contains(&ip))
        }
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            METADATA_HOSTS.contains(&d.as_str())
        }
        None => false,
    };
    if refused {
        return Err(invalid(
            field,
            format!(
                "{} points at a link-local or cloud metadata address (169.254.0.0/16, fe80::/10, metadata services); list its network in allowed_proxy_networks to allow it",
                shown(v)
            ),
        ));
    }
    Ok(())
}
