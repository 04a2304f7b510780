//! One DERP region's report in the DERP section (Coder's `DERPRegionReport`): the fields the
//! aggregation, the alerts and the metrics read are typed; everything else a source gives
//! (node reports, the region's other DERP map keys, keys a newer Coder adds) is kept as given,
//! so a region from Coder's own report is shown unchanged.
//!
//! The JSON of a region lists its keys in sorted order at every level (the order the report
//! has always had for regions): [`DerpRegionReport`] serializes through a JSON value.

use serde::de::Deserializer;
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Message;
use crate::Severity;

/// A field as its source gave it: absent, `null` (Go's nil pointer), or a value. Serialized
/// the same way (an absent field needs `skip_serializing_if = "Given::is_absent"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Given<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Given<T> {
    /// The value, if there is one.
    pub fn get(&self) -> Option<&T> {
        match self {
            Given::Value(v) => Some(v),
            Given::Absent | Given::Null => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Given::Absent)
    }
}

impl<T: Serialize> Serialize for Given<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Given::Value(v) => v.serialize(s),
            Given::Absent | Given::Null => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    /// Called only for a present key (`#[serde(default)]` makes a missing one absent).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Given::Null, Given::Value))
    }
}

/// One region's report. A region whose source left out `severity` counts as an error, one
/// that left out `healthy` as healthy (what the aggregation has always assumed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DerpRegionReport {
    /// Deprecated summary.
    #[serde(default = "healthy_when_unsaid")]
    pub healthy: bool,
    #[serde(default = "error_when_unsaid", deserialize_with = "severity_or_error")]
    pub severity: Severity,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub warnings: Vec<Message>,
    /// Absent from vantage's own reports when there is none; `null` from Coder's.
    #[serde(default)]
    pub error: Given<String>,
    /// The region as in the DERP map.
    #[serde(default)]
    pub region: Given<DerpRegion>,
    #[serde(default)]
    pub node_reports: Given<Vec<DerpNodeReport>>,
    /// The region report's other keys, as given.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn healthy_when_unsaid() -> bool {
    true
}

fn error_when_unsaid() -> Severity {
    Severity::Error
}

/// A severity this version does not know (or `null`) counts as an error, as an absent one
/// does: one odd region must not cost the whole section.
fn severity_or_error<'de, D: Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    Ok(Option::<Value>::deserialize(d)?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or(Severity::Error))
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    Ok(Option::<Vec<Message>>::deserialize(d)?.unwrap_or_default())
}

impl Default for DerpRegionReport {
    fn default() -> Self {
        DerpRegionReport {
            healthy: true,
            severity: Severity::Ok,
            warnings: Vec::new(),
            error: Given::Absent,
            region: Given::Absent,
            node_reports: Given::Absent,
            rest: Map::new(),
        }
    }
}

/// The serialized form, field by field (sorted by the JSON value it goes through).
#[derive(Serialize)]
struct Fields<'a> {
    healthy: bool,
    severity: Severity,
    warnings: &'a [Message],
    #[serde(skip_serializing_if = "Given::is_absent")]
    error: &'a Given<String>,
    #[serde(skip_serializing_if = "Given::is_absent")]
    region: &'a Given<DerpRegion>,
    #[serde(skip_serializing_if = "Given::is_absent")]
    node_reports: &'a Given<Vec<DerpNodeReport>>,
    #[serde(flatten)]
    rest: &'a Map<String, Value>,
}

impl Serialize for DerpRegionReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields = Fields {
            healthy: self.healthy,
            severity: self.severity,
            warnings: &self.warnings,
            error: &self.error,
            region: &self.region,
            node_reports: &self.node_reports,
            rest: &self.rest,
        };
        serde_json::to_value(fields)
            .map_err(S::Error::custom)?
            .serialize(s)
    }
}

impl DerpRegionReport {
    /// The region's name (`RegionName`), empty when the report has no region.
    pub fn region_name(&self) -> &str {
        self.region.get().map_or("", |r| r.region_name.as_str())
    }

    /// The error text, if the report has one.
    pub fn error_text(&self) -> Option<&str> {
        self.error.get().map(String::as_str)
    }

    /// Show the report at `level` without its own findings (healthy, no error, no warnings).
    pub fn clear_findings(&mut self, level: Severity) {
        self.severity = level;
        self.healthy = true;
        self.error = Given::Absent;
        self.warnings.clear();
    }

    /// The node reports (none when the report has none).
    pub fn nodes(&self) -> &[DerpNodeReport] {
        self.node_reports.get().map_or(&[], Vec::as_slice)
    }
}

/// One node's report (Coder's `DERPNodeReport`): its node and error typed, the rest (the
/// exchange, STUN, logs) as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpNodeReport {
    /// Absent from vantage's own reports when there is none; `null` from Coder's.
    #[serde(default, skip_serializing_if = "Given::is_absent")]
    pub error: Given<String>,
    /// The node as in the DERP map.
    #[serde(default, skip_serializing_if = "Given::is_absent")]
    pub node: Given<DerpNode>,
    /// The node report's other keys, as given.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A region as the DERP map gives it (Tailscale's `DERPRegion`, PascalCase keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpRegion {
    #[serde(rename = "RegionID", default)]
    pub region_id: i64,
    #[serde(rename = "RegionCode", default)]
    pub region_code: String,
    #[serde(rename = "RegionName", default)]
    pub region_name: String,
    #[serde(rename = "Nodes", default, skip_serializing_if = "Given::is_absent")]
    pub nodes: Given<Vec<DerpNode>>,
    /// The region's other keys, as given.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl DerpRegion {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&DerpNode> {
        self.nodes.get()?.iter().find(|n| n.name == name)
    }
}

/// A node as the DERP map gives it (Tailscale's `DERPNode`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DerpNode {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "HostName", default)]
    pub host_name: String,
    /// The node's other keys, as given.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[cfg(test)]
mod tests;
