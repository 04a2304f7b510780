//! From the report's JSON model to its gRPC message.

use vantage_proto::pb;
use vantage_proto::report::{Base, HealthReport, VantageState};
use vantage_proto::{Section, convert};

fn messages(base: &Base) -> Vec<pb::Message> {
    base.warnings.iter().map(pb::Message::from).collect()
}

/// The gRPC form of a report; `json` carries the whole Coder-compatible document.
pub fn report_pb(r: &HealthReport) -> pb::Report {
    let sections = Section::ALL
        .into_iter()
        .map(|s| {
            let base = r.base(s);
            pb::SectionReport {
                section: pb::Section::from(s) as i32,
                severity: pb::Severity::from(base.severity) as i32,
                error: base.error.clone().unwrap_or_default(),
                warnings: messages(base),
                dismissed: base.dismissed,
                vantage_reports: r
                    .vantage_bases(s)
                    .into_iter()
                    .map(|(name, b)| pb::VantageSectionReport {
                        vantage: name.to_owned(),
                        severity: pb::Severity::from(b.severity) as i32,
                        error: b.error.clone().unwrap_or_default(),
                        warnings: messages(b),
                        observed_at: None,
                    })
                    .collect(),
            }
        })
        .collect();
    let vantages = r
        .vantages
        .items
        .iter()
        .map(|v| pb::Vantage {
            name: v.name.clone(),
            region: v.region.clone(),
            version: v.version.clone(),
            labels: v.labels.clone().into_iter().collect(),
            connected: v.connected,
            stale: v.state == VantageState::Stale,
            last_seen: v.last_seen.map(convert::timestamp),
            stale_since: v.stale_since.map(convert::timestamp),
            ..Default::default()
        })
        .collect();
    pb::Report {
        revision: r.revision,
        time: Some(convert::timestamp(r.time)),
        healthy: r.healthy,
        severity: pb::Severity::from(r.severity) as i32,
        sections,
        vantages,
        vantages_severity: pb::Severity::from(r.vantages.severity) as i32,
        vantages_warnings: r.vantages.warnings.iter().map(pb::Message::from).collect(),
        json: serde_json::to_string(r).unwrap_or_default(),
        epoch: String::new(),
    }
}
