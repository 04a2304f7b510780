//! Unit tests of the alert model: the four alerts' labels, annotations and links.

use super::*;
use chrono::DateTime;
use vantage_proto::report::{Given, VantageInfo, WorkspaceProxy};

const BASE: &str = "https://vantage.example:8443";

fn ctx() -> Context {
    Context {
        base: BASE.to_owned(),
        deployment: "prod".to_owned(),
    }
}

/// An empty, healthy report of revision 1 (the other modules' tests build on it too).
pub(crate) fn report() -> HealthReport {
    HealthReport {
        time: DateTime::default(),
        healthy: true,
        severity: Severity::Ok,
        derp: Default::default(),
        access_url: Default::default(),
        websocket: Default::default(),
        database: Default::default(),
        workspace_proxy: Default::default(),
        provisioner_daemons: Default::default(),
        coder_version: String::new(),
        vantages: Default::default(),
        revision: 1,
        coder: None,
    }
}

/// Region 2 (`fra`) with one node `2a` that could not connect (no code), at error.
fn failing_region() -> DerpRegionReport {
    let region = serde_json::json!({
        "healthy": false, "severity": "error", "warnings": [],
        "region": {"RegionID": 2, "RegionCode": "fra", "Nodes": [{"Name": "2a"}]},
        "node_reports": [{"node": {"Name": "2a"}, "error": "dial tcp: connection refused"}]
    });
    serde_json::from_value(region).expect("a region report")
}

fn find<'a>(alerts: &'a [Alert], name: &str) -> &'a Alert {
    alerts
        .iter()
        .find(|a| a.labels["alertname"] == name)
        .unwrap_or_else(|| panic!("{name} in {alerts:#?}"))
}

fn labels(a: &Alert) -> Vec<(&str, &str)> {
    a.labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn a_section_alert_names_the_section_its_codes_and_links_the_first_code() {
    let mut r = report();
    r.access_url.report.base.severity = Severity::Warning;
    r.access_url.report.base.warnings = vec![
        Message::new("EACS04", "/healthz returned 502"),
        Message::new("EVNT03", "only iad-1 sees EACS03"),
        Message::new("EACS04", "again"),
    ];
    let alerts = desired(&r, &[], &ctx());
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = find(&alerts, "VantageSectionUnhealthy");
    assert_eq!(
        labels(a),
        [
            ("alertname", "VantageSectionUnhealthy"),
            ("codes", "EACS04,EVNT03"),
            ("deployment", "prod"),
            ("section", "AccessURL"),
            ("severity", "warning"),
        ]
    );
    assert_eq!(a.annotations["summary"], "Access URL is at warning");
    assert_eq!(
        a.annotations["description"],
        "EACS04: /healthz returned 502\nEVNT03: only iad-1 sees EACS03\nEACS04: again"
    );
    assert_eq!(
        a.annotations["runbook_url"],
        format!("{BASE}/health/codes#eacs04")
    );
    assert_eq!(a.generator_url, format!("{BASE}/health#access_url"));
}

#[test]
fn hysteresis_holds_a_section_back_and_a_dismissal_silences_it() {
    let mut r = report();
    r.websocket.report.base.severity = Severity::Error;
    r.websocket.report.base.error = Some("EWS01: websocket dial: refused".to_owned());
    let held = [(Section::Websocket, Severity::Ok)];
    assert!(desired(&r, &held, &ctx()).is_empty(), "held back at ok");
    let a = desired(&r, &[], &ctx());
    assert_eq!(a[0].labels["codes"], "EWS01");
    assert_eq!(a[0].labels["severity"], "error");
    r.websocket.report.base.dismissed = true;
    assert!(desired(&r, &[], &ctx()).is_empty(), "dismissed");
}

#[test]
fn a_stale_vantage_alert_names_it_and_links_evnt01() {
    let mut r = report();
    r.vantages.items = vec![VantageInfo {
        name: "fra-1".to_owned(),
        region: "fra".to_owned(),
        state: VantageState::Stale,
        ..Default::default()
    }];
    r.vantages.warnings = vec![Message::new("EVNT01", "vantage fra-1 is stale")];
    let alerts = desired(&r, &[], &ctx());
    let a = find(&alerts, "VantageVantageStale");
    assert_eq!(
        labels(a),
        [
            ("alertname", "VantageVantageStale"),
            ("deployment", "prod"),
            ("region", "fra"),
            ("severity", "warning"),
            ("vantage", "fra-1"),
        ]
    );
    assert_eq!(a.annotations["summary"], "Vantage fra-1 is stale");
    assert_eq!(
        a.annotations["description"],
        "EVNT01: vantage fra-1 is stale"
    );
    assert_eq!(
        a.annotations["runbook_url"],
        format!("{BASE}/health/codes#evnt01")
    );
    assert_eq!(a.generator_url, format!("{BASE}/health#vantages"));
}

#[test]
fn a_derp_region_alert_names_the_region_its_vantages_and_always_has_a_runbook() {
    let mut r = report();
    r.derp.report.base.severity = Severity::Error;
    r.derp
        .report
        .regions
        .insert("2".to_owned(), failing_region());
    let mut seen = vantage_proto::report::DerpReport::default();
    seen.regions.insert("2".to_owned(), failing_region());
    r.derp.vantage_reports.insert("fra-1".to_owned(), seen);
    r.derp
        .vantage_reports
        .insert("iad-1".to_owned(), Default::default());
    let alerts = desired(&r, &[], &ctx());
    let a = find(&alerts, "VantageDerpRegionUnhealthy");
    assert_eq!(
        labels(a),
        [
            ("alertname", "VantageDerpRegionUnhealthy"),
            ("deployment", "prod"),
            ("region_code", "fra"),
            ("region_id", "2"),
            ("severity", "error"),
        ]
    );
    assert_eq!(a.annotations["vantages"], "fra-1");
    assert_eq!(
        a.annotations["summary"],
        "DERP region 2 (fra) is at error, seen by fra-1"
    );
    assert_eq!(
        a.annotations["description"],
        "EDERP04: node 2a: dial tcp: connection refused"
    );
    assert_eq!(
        a.annotations["runbook_url"],
        format!("{BASE}/health/codes#ederp04")
    );
    assert_eq!(a.generator_url, format!("{BASE}/health#derp"));
    // The section's alert carries the region's code and its messages.
    let s = find(&alerts, "VantageSectionUnhealthy");
    assert_eq!(s.labels["section"], "DERP");
    assert_eq!(s.labels["codes"], "EDERP04");
    assert_eq!(
        s.annotations["description"],
        "EDERP04: region 2 (fra): node 2a: dial tcp: connection refused"
    );
    // Under a dismissed DERP neither fires.
    r.derp.report.base.dismissed = true;
    assert!(desired(&r, &[], &ctx()).is_empty());
}

#[test]
fn a_region_with_a_coded_warning_links_that_code() {
    let mut r = report();
    let mut region = failing_region();
    region.severity = Severity::Warning;
    region.warnings = vec![Message::new("EDERP02", "one node down")];
    region.node_reports = Given::Value(vec![]);
    r.derp.report.regions.insert("2".to_owned(), region);
    let alerts = desired(&r, &[], &ctx());
    let a = find(&alerts, "VantageDerpRegionUnhealthy");
    assert_eq!(a.labels["severity"], "warning");
    assert_eq!(
        a.annotations["runbook_url"],
        format!("{BASE}/health/codes#ederp02")
    );
}

#[test]
fn a_proxy_alert_names_the_proxy_and_links_ewp04() {
    let mut r = report();
    let mut down = WorkspaceProxy {
        name: "Europe".to_owned(),
        healthy: false,
        ..Default::default()
    };
    down.status.status = "unreachable".to_owned();
    let mut warns = WorkspaceProxy {
        name: "sydney".to_owned(),
        healthy: true,
        ..Default::default()
    };
    warns.status.status = "ok".to_owned();
    warns.status.report.warnings = vec!["clock skew".to_owned()];
    r.workspace_proxy.report.workspace_proxies.regions = vec![down, warns];
    // The section's error names a proxy whose name starts with E: not a code.
    r.workspace_proxy.report.base.severity = Severity::Warning;
    r.workspace_proxy.report.base.error = Some("Europe: unreachable".to_owned());
    let alerts = desired(&r, &[], &ctx());
    let proxies: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.labels["alertname"] == "VantageWorkspaceProxyUnhealthy")
        .collect();
    assert_eq!(proxies.len(), 2, "{alerts:#?}");
    assert_eq!(
        labels(proxies[0]),
        [
            ("alertname", "VantageWorkspaceProxyUnhealthy"),
            ("deployment", "prod"),
            ("proxy", "Europe"),
            ("severity", "error"),
        ]
    );
    assert_eq!(
        proxies[0].annotations["summary"],
        "Workspace proxy Europe is at error"
    );
    assert_eq!(
        proxies[0].annotations["description"],
        "EWP04: Europe: status unreachable"
    );
    assert_eq!(proxies[1].labels["severity"], "warning");
    assert_eq!(
        proxies[1].annotations["description"],
        "EWP04: sydney: clock skew"
    );
    for p in &proxies {
        assert_eq!(
            p.annotations["runbook_url"],
            format!("{BASE}/health/codes#ewp04")
        );
        assert_eq!(p.generator_url, format!("{BASE}/health#workspace_proxy"));
    }
    let s = find(&alerts, "VantageSectionUnhealthy");
    assert_eq!(s.labels["codes"], "EWP04", "{s:#?}");
}

#[test]
fn every_runbook_anchor_is_an_id_on_the_codes_page() {
    let page = crate::api::http::page::codes_page();
    for code in [
        codes::EDERP04,
        codes::EWP04,
        codes::EVNT01,
        codes::EACS04,
        "",
    ] {
        let url = runbook_url(BASE, code);
        let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
        assert!(
            page.contains(&format!("id=\"{anchor}\"")),
            "#{anchor} on the codes page"
        );
    }
}
