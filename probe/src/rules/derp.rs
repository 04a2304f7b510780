//! The DERP section of one vantage from its node observations: Coder's node → region →
//! section rules (`vantage_derp::health`), in Coder's JSON shape.

use std::collections::BTreeMap;
use vantage_derp::health::{DerpNodeReport, StunMapping, region_report, section_report};
use vantage_derp::map::Region;
use vantage_proto::pb;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::report::DerpReport;
use vantage_proto::{Section, codes};

use super::{SectionReport, unknown};

/// One vantage's DERP section.
pub fn section(observations: &[&pb::Observation]) -> SectionReport {
    let mut regions: BTreeMap<i64, (Region, Vec<DerpNodeReport>)> = BTreeMap::new();
    let mut mapped: Vec<StunMapping> = Vec::new();
    for o in observations {
        let Some(ObsResult::DerpNode(n)) = &o.result else {
            return unknown(
                Section::Derp,
                &format!("observation {:?} is not a DERP node result", o.target),
            );
        };
        let region: Region = match serde_json::from_str(&n.region_json) {
            Ok(r) => r,
            Err(e) => {
                return unknown(
                    Section::Derp,
                    &format!("DERP region of {:?}: {e}", o.target),
                );
            }
        };
        let node: DerpNodeReport = match serde_json::from_str(&n.report_json) {
            Ok(r) => r,
            Err(e) => {
                return unknown(
                    Section::Derp,
                    &format!("DERP node report of {:?}: {e}", o.target),
                );
            }
        };
        if let Ok(address) = n.stun_mapped_address.parse() {
            mapped.push(StunMapping {
                region_id: n.region_id,
                node: node.node.name.clone(),
                address,
            });
        }
        let entry = regions
            .entry(n.region_id)
            .or_insert_with(|| (region, Vec::new()));
        entry.1.push(node);
    }
    let regions = regions
        .into_iter()
        .map(|(id, (region, nodes))| (id, region_report(&region, nodes)))
        .collect();
    SectionReport::Derp(to_report(&section_report(regions, &mapped)))
}

/// `vantage_derp`'s report as the report model's section (same JSON).
pub fn to_report(h: &vantage_derp::health::DerpHealthReport) -> DerpReport {
    serde_json::to_value(h)
        .and_then(serde_json::from_value)
        .unwrap_or_else(|e| {
            let mut r = DerpReport::default();
            r.base.fail(&vantage_proto::report::Message::new(
                codes::EUNKNOWN,
                format!("DERP report: {e}"),
            ));
            r
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_derp::health::{Severity, node_verdict};
    use vantage_derp::map::Node;
    use vantage_proto::report::coder_json;

    #[test]
    fn the_regions_json_is_what_the_derp_rules_serialize() {
        let node = Node {
            name: "1a".into(),
            region_id: 1,
            host_name: "derp.example".into(),
            ..Node::default()
        };
        let region = Region {
            region_id: 1,
            region_code: "fra".into(),
            region_name: "Frankfurt <1>".into(),
            nodes: vec![node.clone()],
            ..Region::default()
        };
        let mut failed = DerpNodeReport {
            node,
            uses_websocket: true,
            error: Some("dial tcp: refused".into()),
            ..DerpNodeReport::default()
        };
        node_verdict(&mut failed);
        let h = section_report([(1, region_report(&region, vec![failed]))].into(), &[]);
        let report = to_report(&h);
        let r = &report.regions["1"];
        assert_eq!(r.severity, Severity::Error);
        assert_eq!(r.region_name(), "Frankfurt <1>");
        assert_eq!(r.warnings[0].code, "EDERP01");
        let as_json = serde_json::to_value(&h).expect("JSON");
        assert_eq!(coder_json(&report.regions), coder_json(&as_json["regions"]));
    }
}
