use super::*;
use crate::report::coder_json;

/// A region as Coder's own report gives it: `null` errors, keys vantage does not know.
const CODER_REGION: &str = r#"{
    "healthy": false, "severity": "error", "warnings": [{"code": "EDERP01", "message": "ws"}],
    "error": null,
    "region": {"EmbeddedRelay": false, "RegionID": 1, "RegionCode": "nyc", "RegionName": "New York",
        "Latitude": 40.7, "NoMeasureNoHome": true,
        "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": "derp1a.example", "IPv4": "10.0.0.1", "NewKey": [1]}]},
    "node_reports": [{"healthy": false, "severity": "error", "warnings": null, "error": null,
        "node": {"Name": "1a", "RegionID": 1, "HostName": "derp1a.example"},
        "node_info": {"TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0},
        "can_exchange_messages": false, "round_trip_ping": "", "round_trip_ping_ms": 0,
        "uses_websocket": true, "client_logs": null, "client_errs": [["refused"]],
        "stun": {"Enabled": false, "CanSTUN": false, "Error": null}},
        {"error": "dial tcp: refused", "node": {"Name": "1b", "HostName": "derp1b.example"}}],
    "future_key": {"b": 1, "a": null}
}"#;

/// A region as vantage's own DERP rules give it: no `error` key when there is none.
const VANTAGE_REGION: &str = r#"{
    "healthy": true, "severity": "ok", "warnings": [],
    "region": {"EmbeddedRelay": true, "RegionID": 999, "RegionCode": "vantage", "RegionName": "Embedded Relay",
        "Nodes": [{"Name": "999b", "RegionID": 999, "HostName": "127.0.0.1", "STUNPort": -1}]},
    "node_reports": [{"healthy": true, "severity": "ok", "warnings": [],
        "node": {"Name": "999b", "RegionID": 999, "HostName": "127.0.0.1", "STUNPort": -1},
        "node_info": {"TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0},
        "can_exchange_messages": true, "round_trip_ping": "1.5ms", "round_trip_ping_ms": 1,
        "uses_websocket": false, "client_logs": [[], []], "client_errs": [[], []],
        "stun": {"Enabled": false, "CanSTUN": false, "Error": null}}]
}"#;

fn both(json: &str) -> (Value, DerpRegionReport) {
    let value: Value = serde_json::from_str(json).expect("JSON");
    let typed: DerpRegionReport = serde_json::from_str(json).expect("a region report");
    (value, typed)
}

#[test]
fn a_region_serializes_byte_for_byte_as_its_json_did() {
    for json in [CODER_REGION, VANTAGE_REGION] {
        let (value, typed) = both(json);
        assert_eq!(
            String::from_utf8(coder_json(&typed)),
            String::from_utf8(coder_json(&value))
        );
        assert_eq!(serde_json::to_value(&typed).expect("JSON"), value);
        let back: DerpRegionReport =
            serde_json::from_value(value).expect("the region report reads back");
        assert_eq!(back, typed);
    }
}

#[test]
fn the_typed_fields_read_coders_and_vantages_regions() {
    let (_, coder) = both(CODER_REGION);
    assert!(!coder.healthy);
    assert_eq!(coder.severity, Severity::Error);
    assert_eq!(coder.warnings, vec![Message::new("EDERP01", "ws")]);
    assert_eq!(coder.error, Given::Null);
    assert_eq!(coder.error_text(), None);
    assert_eq!(coder.region_name(), "New York");
    let region = coder.region.get().expect("a region");
    assert_eq!((region.region_id, region.region_code.as_str()), (1, "nyc"));
    assert_eq!(
        region.node("1a").map(|n| n.host_name.as_str()),
        Some("derp1a.example")
    );
    let errors: Vec<_> = coder
        .nodes()
        .iter()
        .filter_map(|n| Some((n.node.get()?.name.as_str(), n.error.get()?.as_str())))
        .collect();
    assert_eq!(errors, vec![("1b", "dial tcp: refused")]);

    let (_, own) = both(VANTAGE_REGION);
    assert_eq!(own.error, Given::Absent);
    assert_eq!(own.region_name(), "Embedded Relay");
    assert_eq!(own.nodes().len(), 1);
}

#[test]
fn cleared_findings_leave_no_error_key() {
    let (mut value, mut typed) = both(CODER_REGION);
    typed.clear_findings(Severity::Warning);
    let o = value.as_object_mut().expect("an object");
    o.insert("severity".into(), serde_json::json!("warning"));
    o.insert("healthy".into(), serde_json::json!(true));
    o.remove("error");
    o.insert("warnings".into(), serde_json::json!([]));
    assert_eq!(coder_json(&typed), coder_json(&value));
}

#[test]
fn a_region_without_severity_or_healthy_counts_as_a_healthy_error() {
    let typed: DerpRegionReport = serde_json::from_str("{}").expect("a region report");
    assert_eq!(typed.severity, Severity::Error);
    assert!(typed.healthy);
    assert!(typed.region.is_absent() && typed.node_reports.is_absent());
    assert_eq!(typed.region_name(), "");
    let nulls: DerpRegionReport =
        serde_json::from_str(r#"{"warnings": null, "region": null, "node_reports": null}"#)
            .expect("a region report");
    assert!(nulls.warnings.is_empty());
    assert_eq!(nulls.region, Given::Null);
    assert_eq!(
        serde_json::to_value(&nulls).expect("JSON"),
        serde_json::json!({"healthy": true, "severity": "error", "warnings": [], "region": null, "node_reports": null})
    );
}

#[test]
fn a_severity_this_version_does_not_know_counts_as_an_error() {
    for json in [
        r#"{"severity": "catastrophic"}"#,
        r#"{"severity": null}"#,
        r#"{"severity": 3}"#,
    ] {
        let typed: DerpRegionReport = serde_json::from_str(json).expect("a region report");
        assert_eq!(typed.severity, Severity::Error, "{json}");
    }
    let known: DerpRegionReport =
        serde_json::from_str(r#"{"severity": "warning"}"#).expect("a region report");
    assert_eq!(known.severity, Severity::Warning);
}
