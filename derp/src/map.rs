//! Tailscale's DERP map JSON (`tailcfg.DERPMap`, `docs/derp-stun.md#derp-map-json`) with validation,
//! the DERP URL of a node (`docs/coder-health.md#derp`), and the regions vantage adds itself: the
//! embedded relay and single-node STUN-only regions for extra STUN servers.
//!
//! Keys are Tailscale's PascalCase (a few lower-camel spellings are accepted as aliases);
//! unknown keys are ignored so Tailscale, Headscale and Coder maps load unchanged.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Largest region ID Tailscale accepts (2^53 − 1, exact in JSON numbers).
pub const MAX_REGION_ID: i64 = (1 << 53) - 1;
/// Default STUN port (used when `STUNPort` is 0).
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// A DERP map: regions by ID.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DerpMap {
    /// Regions keyed by region ID (JSON keys are decimal strings).
    #[serde(rename = "Regions", alias = "regions", default)]
    pub regions: BTreeMap<i64, Region>,
    /// Home-selection parameters, kept as given.
    #[serde(
        rename = "HomeParams",
        alias = "homeParams",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub home_params: Option<serde_json::Value>,
    /// Whether clients should drop Tailscale's default regions.
    #[serde(
        rename = "omitDefaultRegions",
        alias = "OmitDefaultRegions",
        default,
        skip_serializing_if = "is_false"
    )]
    pub omit_default_regions: bool,
}

/// One DERP region.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Region {
    /// True for a relay built into the server (Coder fork; always emitted).
    #[serde(rename = "EmbeddedRelay", alias = "embeddedRelay", default)]
    pub embedded_relay: bool,
    /// Region ID (> 0).
    #[serde(rename = "RegionID", alias = "regionID", alias = "regionId", default)]
    pub region_id: i64,
    /// Short code, e.g. `nyc`.
    #[serde(rename = "RegionCode", alias = "regionCode", default)]
    pub region_code: String,
    /// Long name.
    #[serde(rename = "RegionName", alias = "regionName", default)]
    pub region_name: String,
    /// Deprecated: avoid this region.
    #[serde(
        rename = "Avoid",
        alias = "avoid",
        default,
        skip_serializing_if = "is_false"
    )]
    pub avoid: bool,
    /// Nodes in priority order.
    #[serde(
        rename = "Nodes",
        alias = "nodes",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub nodes: Vec<Node>,
}

/// One DERP (or STUN-only) server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Node {
    /// Globally unique node name, e.g. `1b`, `999b`.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Owning region.
    #[serde(rename = "RegionID", alias = "regionID", alias = "regionId", default)]
    pub region_id: i64,
    /// DNS name (also the TLS name unless `CertName`).
    #[serde(rename = "HostName", alias = "hostName", alias = "hostname", default)]
    pub host_name: String,
    /// Expected certificate name, or `sha256-raw:<hex>` pin.
    #[serde(
        rename = "CertName",
        alias = "certName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cert_name: String,
    /// Fixed IPv4 address (a non-IPv4 value such as `none` disables IPv4).
    #[serde(
        rename = "IPv4",
        alias = "ipv4",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4: String,
    /// Fixed IPv6 address (a non-IPv6 value disables IPv6).
    #[serde(
        rename = "IPv6",
        alias = "ipv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6: String,
    /// STUN port: 0 ⇒ 3478, −1 ⇒ STUN disabled.
    #[serde(
        rename = "STUNPort",
        alias = "stunPort",
        alias = "stunport",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub stun_port: i64,
    /// STUN only, no DERP.
    #[serde(
        rename = "STUNOnly",
        alias = "stunOnly",
        alias = "stunonly",
        default,
        skip_serializing_if = "is_false"
    )]
    pub stun_only: bool,
    /// DERP port: 0 ⇒ the scheme default.
    #[serde(
        rename = "DERPPort",
        alias = "derpPort",
        alias = "derpport",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub derp_port: i64,
    /// Skip TLS verification.
    #[serde(
        rename = "InsecureForTests",
        alias = "insecureForTests",
        default,
        skip_serializing_if = "is_false"
    )]
    pub insecure_for_tests: bool,
    /// Use `http://` instead of TLS (Coder fork).
    #[serde(
        rename = "ForceHTTP",
        alias = "forceHTTP",
        alias = "forceHttp",
        default,
        skip_serializing_if = "is_false"
    )]
    pub force_http: bool,
    /// STUN target IP override.
    #[serde(
        rename = "STUNTestIP",
        alias = "stunTestIP",
        alias = "stunTestIp",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stun_test_ip: String,
    /// Reachable on port 80.
    #[serde(
        rename = "CanPort80",
        alias = "canPort80",
        default,
        skip_serializing_if = "is_false"
    )]
    pub can_port80: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Node>, D::Error> {
    Ok(Option::<Vec<Node>>::deserialize(d)?.unwrap_or_default())
}

/// Why a DERP map (or a node of it) is unusable. The text names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Not valid JSON for a DERP map.
    #[error("invalid DERP map JSON: {0}")]
    Json(String),
    /// A field with a bad value: `path: problem`.
    #[error("{path}: {problem}")]
    Invalid {
        /// Where, e.g. `Regions["1"].Nodes[0].HostName`.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(path: impl Into<String>, problem: impl Into<String>) -> MapError {
    MapError::Invalid {
        path: path.into(),
        problem: problem.into(),
    }
}

impl DerpMap {
    /// Parses and validates a DERP map. Nodes with `RegionID` 0 inherit their region's ID.
    pub fn parse(json: &str) -> Result<DerpMap, MapError> {
        let mut map: DerpMap =
            serde_json::from_str(json).map_err(|e| MapError::Json(e.to_string()))?;
        for region in map.regions.values_mut() {
            for node in &mut region.nodes {
                if node.region_id == 0 {
                    node.region_id = region.region_id;
                }
            }
        }
        map.validate()?;
        Ok(map)
    }

    /// Checks the invariants `parse` enforces; names the first problem found.
    pub fn validate(&self) -> Result<(), MapError> {
        let mut names: HashMap<&str, String> = HashMap::new();
        for (key, region) in &self.regions {
            let rpath = format!("Regions[\"{key}\"]");
            if *key <= 0 || *key > MAX_REGION_ID {
                return Err(invalid(
                    rpath,
                    format!("region ID {key} out of range 1..={MAX_REGION_ID}"),
                ));
            }
            if region.region_id != *key {
                return Err(invalid(
                    format!("{rpath}.RegionID"),
                    format!("{} does not match its key {key}", region.region_id),
                ));
            }
            for (i, node) in region.nodes.iter().enumerate() {
                let npath = format!("{rpath}.Nodes[{i}]");
                node.validate(&npath, region.region_id)?;
                if let Some(other) = names.insert(&node.name, npath.clone()) {
                    return Err(invalid(
                        format!("{npath}.Name"),
                        format!("duplicate node name {:?} (also at {other})", node.name),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether any node can relay DERP traffic (is not STUN-only).
    pub fn has_derp_nodes(&self) -> bool {
        self.regions
            .values()
            .any(|r| r.nodes.iter().any(|n| !n.stun_only))
    }

    /// Serialises the map in Tailscale's JSON shape.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Node {
    fn validate(&self, npath: &str, region_id: i64) -> Result<(), MapError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{npath}.Name"), "empty"));
        }
        if self.region_id != region_id {
            return Err(invalid(
                format!("{npath}.RegionID"),
                format!(
                    "{} does not match the region's RegionID {region_id}",
                    self.region_id
                ),
            ));
        }
        if self.host_name.is_empty() && self.ipv4.is_empty() && self.ipv6.is_empty() {
            return Err(invalid(format!("{npath}.HostName"), "empty"));
        }
        if !(-1..=65535).contains(&self.stun_port) {
            return Err(invalid(
                format!("{npath}.STUNPort"),
                format!("{} out of range -1..=65535", self.stun_port),
            ));
        }
        if !(0..=65535).contains(&self.derp_port) {
            return Err(invalid(
                format!("{npath}.DERPPort"),
                format!("{} out of range 0..=65535", self.derp_port),
            ));
        }
        if !self.stun_test_ip.is_empty() && self.stun_test_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("{npath}.STUNTestIP"),
                format!("{:?} is not an IP address", self.stun_test_ip),
            ));
        }
        Ok(())
    }

    /// The node's DERP URL as Coder's health check builds it: `https` unless `ForceHTTP`, host
    /// `HostName` or else `IPv4`, `:DERPPort` only when non-zero and not the scheme default,
    /// path `/derp`.
    pub fn derp_url(&self) -> Result<url::Url, MapError> {
        let scheme = if self.force_http { "http" } else { "https" };
        let host = if self.host_name.is_empty() {
            &self.ipv4
        } else {
            &self.host_name
        };
        if host.is_empty() {
            return Err(invalid(
                "HostName",
                format!("node {:?} has no HostName or IPv4", self.name),
            ));
        }
        let host = match host.parse::<Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.clone(),
        };
        let default_port = if self.force_http { 80 } else { 443 };
        let port = if self.derp_port != 0 && self.derp_port != default_port {
            format!(":{}", self.derp_port)
        } else {
            String::new()
        };
        let text = format!("{scheme}://{host}{port}/derp");
        url::Url::parse(&text)
            .map_err(|e| invalid("HostName", format!("bad DERP URL {text:?}: {e}")))
    }

    /// The effective STUN port, or `None` when STUN is disabled (`STUNPort` −1) or out of range.
    pub fn effective_stun_port(&self) -> Option<u16> {
        match self.stun_port {
            0 => Some(DEFAULT_STUN_PORT),
            p => u16::try_from(p).ok(),
        }
    }
}

/// The embedded relay region as coderd builds it: one DERP node `<id>b` at the access URL's
/// host and port, STUN disabled (`STUNPort` −1), `ForceHTTP` for an `http` access URL.
pub fn embedded_region(
    access_url: &url::Url,
    region_id: i64,
    name: &str,
) -> Result<Region, MapError> {
    let host = match access_url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(invalid("access_url", format!("{access_url} has no host"))),
    };
    let force_http = match access_url.scheme() {
        "http" => true,
        "https" => false,
        other => {
            return Err(invalid(
                "access_url",
                format!("scheme {other:?} is not http or https"),
            ));
        }
    };
    let port = access_url
        .port_or_known_default()
        .unwrap_or(if force_http { 80 } else { 443 });
    Ok(Region {
        embedded_relay: true,
        region_id,
        region_code: "vantage".into(),
        region_name: name.into(),
        avoid: false,
        nodes: vec![Node {
            name: format!("{region_id}b"),
            region_id,
            host_name: host,
            stun_port: -1,
            derp_port: i64::from(port),
            force_http,
            ..Node::default()
        }],
    })
}

/// A single-node STUN-only region for an extra STUN server `host:port` (or `[v6]:port`, or a
/// bare host meaning port 3478): code `vantage_stun_<id>`, node `<id>stun0`.
pub fn stun_only_region(region_id: i64, addr: &str) -> Result<Region, MapError> {
    let bad = |why: &str| invalid("stun_addresses", format!("{addr:?}: {why}"));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None if tail.is_empty() => DEFAULT_STUN_PORT,
            None => return Err(bad("junk after ']'")),
        };
        (h.to_string(), port)
    } else if addr.parse::<Ipv6Addr>().is_ok() {
        (addr.to_string(), DEFAULT_STUN_PORT)
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| bad("bad port"))?,
            ),
            None => (addr.to_string(), DEFAULT_STUN_PORT),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let mut node = Node {
        name: format!("{region_id}stun0"),
        region_id,
        host_name: host.clone(),
        stun_only: true,
        stun_port: i64::from(port),
        ..Node::default()
    };
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        node.ipv4 = v4.to_string();
    } else if let Ok(v6) = host.parse::<Ipv6Addr>() {
        node.ipv6 = v6.to_string();
    }
    Ok(Region {
        embedded_relay: false,
        region_id,
        region_code: format!("vantage_stun_{region_id}"),
        region_name: format!("Vantage STUN {region_id}"),
        avoid: false,
        nodes: vec![node],
    })
}

#[cfg(test)]
mod tests;
