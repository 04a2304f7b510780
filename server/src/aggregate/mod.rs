//! The pure rule that aggregates one section across fresh vantages (`docs/behaviour.md#aggregated-severity`): the worst
//! severity that at least `quorum` vantages agree on; failures seen by fewer become an EVNT03
//! warning naming them; a section nobody fresh covers says EVNT02. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use vantage_probe::rules::SectionReport;
use vantage_proto::report::{DerpRegionReport, DerpReport, Message, SectionBody};
use vantage_proto::{Section, Severity, codes};

/// Aggregate `reports` (fresh vantages' reports of `section`, sorted by vantage name).
/// `expected`: the section should be covered, so no report at all is EVNT02.
pub fn aggregate(
    section: Section,
    reports: &[(&str, &SectionReport)],
    quorum: usize,
    expected: bool,
) -> SectionReport {
    if reports.is_empty() {
        let mut empty = SectionReport::empty(section);
        if expected {
            with_body(&mut empty, |b| {
                b.base_mut().warnings.push(Message::new(
                    codes::EVNT02,
                    format!("no fresh vantage covers the {} section", section.title()),
                ));
                b.base_mut().raise(Severity::Warning);
                b.set_healthy(true);
            });
        } else {
            with_body(&mut empty, |b| b.set_healthy(true));
        }
        return empty;
    }
    let quorum = quorum.max(1);
    let sevs: Vec<Severity> = reports.iter().map(|(_, r)| r.severity()).collect();
    let agreed = agreed(&sevs, quorum);
    let representative = reports
        .iter()
        .filter(|(_, r)| r.severity() == agreed)
        .min_by_key(|(name, _)| preference(name))
        .or_else(|| reports.iter().min_by_key(|(_, r)| r.severity()))
        .map(|(_, r)| (*r).clone());
    let Some(mut out) = representative else {
        return SectionReport::empty(section);
    };
    if out.severity() > agreed {
        // No vantage sits exactly at the agreed level: what it saw is below quorum, so its
        // failure is reported by EVNT03 below, not as the section's own error.
        with_body(&mut out, |b| {
            let base = b.base_mut();
            base.severity = agreed;
            base.error = None;
            base.warnings.clear();
            b.set_healthy(true);
        });
    }
    let below: Vec<String> = reports
        .iter()
        .filter(|(_, r)| r.severity() > agreed)
        .map(|(name, r)| {
            let what = r
                .base()
                .error
                .clone()
                .or_else(|| r.base().warnings.first().map(ToString::to_string))
                .unwrap_or_default();
            format!("{name} ({}: {what})", r.severity())
        })
        .collect();
    if !below.is_empty() {
        with_body(&mut out, |b| {
            b.base_mut().warnings.push(Message::new(
                codes::EVNT03,
                format!(
                    "seen by {} of {} vantages, fewer than the quorum of {quorum}: {}",
                    below.len(),
                    reports.len(),
                    below.join(", ")
                ),
            ));
            b.base_mut().raise(Severity::Warning);
        });
    }
    out
}

/// Apply `f` to the typed body of a section report.
pub fn with_body(report: &mut SectionReport, f: impl FnOnce(&mut dyn BodyMut)) {
    match report {
        SectionReport::AccessUrl(r) => f(r),
        SectionReport::Database(r) => f(r),
        SectionReport::Derp(r) => f(r),
        SectionReport::Websocket(r) => f(r),
        SectionReport::WorkspaceProxy(r) => f(r),
        SectionReport::ProvisionerDaemons(r) => f(r),
    }
}

/// Object-safe view of [`SectionBody`] for [`with_body`].
pub trait BodyMut {
    fn base_mut(&mut self) -> &mut vantage_proto::report::Base;
    fn set_healthy(&mut self, healthy: bool);
}

impl<T: SectionBody> BodyMut for T {
    fn base_mut(&mut self) -> &mut vantage_proto::report::Base {
        SectionBody::base_mut(self)
    }
    fn set_healthy(&mut self, healthy: bool) {
        SectionBody::set_healthy(self, healthy);
    }
}

/// The highest severity that at least `quorum` of `sevs` are at or above.
fn agreed(sevs: &[Severity], quorum: usize) -> Severity {
    Severity::ALL
        .into_iter()
        .rev()
        .find(|s| sevs.iter().filter(|v| *v >= s).count() >= quorum.max(1))
        .unwrap_or(Severity::Ok)
}

/// Prefer the server's own vantage, then the first by name.
fn preference(name: &str) -> (bool, &str) {
    (!crate::config::is_server_vantage(name), name)
}

/// The DERP section across vantages: each region from the vantages that checked it (quorum
/// per region, the worst agreed region report shown), regions nobody fresh covers (EVNT02),
/// the section-level findings of each vantage (ESTUN01/ESTUN02, naming the vantages), and
/// EDERP03 when the effective map has no DERP-capable node.
pub fn aggregate_derp(
    reports: &[(&str, &DerpReport)],
    quorum: usize,
    expected: &[(i64, String)],
    has_derp_nodes: bool,
) -> DerpReport {
    let mut out = DerpReport {
        healthy: true,
        netcheck_logs: Some(Vec::new()),
        ..Default::default()
    };
    for id in derp_region_ids(reports, expected) {
        let key = id.to_string();
        let views: Vec<(&str, &DerpRegionReport)> = reports
            .iter()
            .filter_map(|(n, r)| r.regions.get(&key).map(|v| (*n, v)))
            .collect();
        if views.is_empty() {
            derp_region_uncovered(&mut out, id, expected);
        } else {
            merge_derp_region(&mut out, id, &views, quorum);
        }
    }
    fold_derp_findings(&mut out, reports);
    if !has_derp_nodes {
        let m = Message::new(
            codes::EDERP03,
            "No DERP servers are available: the effective DERP map has no node that can relay traffic.",
        );
        out.base.fail(&m);
        out.base.warnings.push(m);
        out.healthy = false;
    }
    out
}

/// Every region id to aggregate: the expected ones and any a vantage reported.
fn derp_region_ids(reports: &[(&str, &DerpReport)], expected: &[(i64, String)]) -> BTreeSet<i64> {
    let mut ids: BTreeSet<i64> = expected.iter().map(|(id, _)| *id).collect();
    for (_, r) in reports {
        ids.extend(r.regions.keys().filter_map(|k| k.parse::<i64>().ok()));
    }
    ids
}

/// Region `id` has no fresh vantage's view: an EVNT02 warning naming it.
fn derp_region_uncovered(out: &mut DerpReport, id: i64, expected: &[(i64, String)]) {
    let name = expected
        .iter()
        .find(|(e, _)| *e == id)
        .map_or("", |(_, n)| n.as_str());
    out.base.warnings.push(Message::new(
        codes::EVNT02,
        format!("no fresh vantage covers DERP region {name} ({id})"),
    ));
    out.base.raise(Severity::Warning);
}

/// Merge the vantages' `views` of region `id` under `quorum` into `out`: the agreed region
/// report, its warnings, EVNT03 for views worse than agreed, healthy and severity.
fn merge_derp_region(
    out: &mut DerpReport,
    id: i64,
    views: &[(&str, &DerpRegionReport)],
    quorum: usize,
) {
    let sevs: Vec<Severity> = views.iter().map(|(_, v)| v.severity).collect();
    let level = agreed(&sevs, quorum);
    let region = derp_representative(views, level);
    let below: Vec<String> = views
        .iter()
        .filter(|(_, v)| v.severity > level)
        .map(|(n, v)| format!("{n} ({})", v.severity))
        .collect();
    out.base.warnings.extend(region.warnings.iter().cloned());
    if !below.is_empty() {
        out.base.warnings.push(Message::new(
            codes::EVNT03,
            format!(
                "DERP region {} ({id}): seen by {} of {} vantages, fewer than the quorum of {}: {}",
                region.region_name(),
                below.len(),
                views.len(),
                quorum.max(1),
                below.join(", ")
            ),
        ));
        out.base.raise(Severity::Warning);
    }
    if !region.healthy {
        out.healthy = false;
    }
    out.base.raise(level);
    out.regions.insert(id.to_string(), region);
}

/// The region report to show at the agreed `level`: the preferred vantage's at that level,
/// or else the mildest one, lowered to `level` and cleared of its findings.
fn derp_representative(views: &[(&str, &DerpRegionReport)], level: Severity) -> DerpRegionReport {
    views
        .iter()
        .filter(|(_, v)| v.severity == level)
        .min_by_key(|(n, _)| preference(n))
        .map(|(_, v)| (*v).clone())
        .unwrap_or_else(|| {
            // Nobody sits exactly at the agreed level: show the mildest, at that level.
            let mut v = views
                .iter()
                .min_by_key(|(_, v)| v.severity)
                .map(|(_, v)| (*v).clone())
                .unwrap_or_default();
            v.clear_findings(level);
            v
        })
}

/// The section-level findings (ESTUN01/ESTUN02) of each vantage, one warning per code naming
/// the vantages that saw it; ESTUN01 raises the section to a warning.
fn fold_derp_findings(out: &mut DerpReport, reports: &[(&str, &DerpReport)]) {
    let mut findings: BTreeMap<String, (Message, Vec<&str>)> = BTreeMap::new();
    for (name, r) in reports {
        for w in &r.base.warnings {
            if [codes::ESTUN01, codes::ESTUN02].contains(&w.code.as_str()) {
                findings
                    .entry(w.code.clone())
                    .or_insert_with(|| (w.clone(), Vec::new()))
                    .1
                    .push(name);
            }
        }
    }
    for (code, (m, names)) in findings {
        out.base.warnings.push(Message::new(
            &code,
            format!("{} (seen from {})", m.message, names.join(", ")),
        ));
        if code == codes::ESTUN01 {
            out.base.raise(Severity::Warning);
        }
    }
}

/// The WorkspaceProxy section across vantages: each proxy with the worst status that a quorum
/// of the fresh vantages polling it agree on, then Coder's counting rules over all proxies;
/// proxies nobody fresh polls are named (EVNT02).
pub fn aggregate_proxies(
    reports: &[(&str, &vantage_proto::report::WorkspaceProxyReport)],
    proxies: &[vantage_probe::rules::workspace_proxy::ProxyInput],
    quorum: usize,
) -> vantage_proto::report::WorkspaceProxyReport {
    use vantage_probe::rules::workspace_proxy;
    use vantage_proto::pb;
    fn rank(status: &str) -> Severity {
        match status {
            workspace_proxy::STATUS_OK => Severity::Ok,
            workspace_proxy::STATUS_UNREGISTERED | workspace_proxy::STATUS_UNKNOWN => {
                Severity::Warning
            }
            _ => Severity::Error,
        }
    }
    let mut inputs = Vec::with_capacity(proxies.len());
    let mut uncovered = Vec::new();
    for p in proxies {
        let views: Vec<(&str, &vantage_proto::report::WorkspaceProxy)> = reports
            .iter()
            .filter_map(|(n, r)| {
                r.workspace_proxies
                    .regions
                    .iter()
                    .find(|w| w.name == p.proxy.name)
                    .map(|w| (*n, w))
            })
            .collect();
        let Some(level) = (!views.is_empty()).then(|| {
            let sevs: Vec<Severity> = views.iter().map(|(_, w)| rank(&w.status.status)).collect();
            agreed(&sevs, quorum)
        }) else {
            if !p.proxy.url.is_empty() {
                uncovered.push(p.proxy.name.clone());
            }
            inputs.push(p.clone());
            continue;
        };
        let chosen = views
            .iter()
            .filter(|(_, w)| rank(&w.status.status) == level)
            .min_by_key(|(n, _)| preference(n))
            .or_else(|| views.iter().min_by_key(|(_, w)| rank(&w.status.status)))
            .map(|(_, w)| *w);
        let mut input = p.clone();
        if let Some(w) = chosen {
            input.result = Some(pb::WorkspaceProxyResult {
                name: w.name.clone(),
                status: w.status.status.clone(),
                errors: w.status.report.errors.clone(),
                warnings: w.status.report.warnings.clone(),
                version: w.version.clone(),
            });
            input.checked_at = Some(w.status.checked_at);
        }
        inputs.push(input);
    }
    let mut out = workspace_proxy::section(&inputs);
    for name in uncovered {
        out.base.warnings.push(Message::new(
            codes::EVNT02,
            format!("no fresh vantage polls workspace proxy {name}"),
        ));
        out.base.raise(Severity::Warning);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::report::AccessUrlReport;

    fn acc(sev: Severity, err: Option<&str>) -> SectionReport {
        let mut r = AccessUrlReport::default();
        r.base.severity = sev;
        r.base.error = err.map(str::to_owned);
        r.healthy = sev == Severity::Ok;
        SectionReport::AccessUrl(r)
    }

    #[test]
    fn quorum_table() {
        let ok = acc(Severity::Ok, None);
        let warn = acc(
            Severity::Warning,
            Some("EACS04: /healthz did not return 200 OK"),
        );
        let err = acc(
            Severity::Error,
            Some("EACS03: get healthz endpoint: refused"),
        );
        struct Case<'a> {
            name: &'a str,
            reports: Vec<(&'a str, &'a SectionReport)>,
            quorum: usize,
            severity: Severity,
            evnt03: Option<&'a str>,
        }
        let cases = [
            Case {
                name: "all ok",
                reports: vec![("a", &ok), ("b", &ok)],
                quorum: 1,
                severity: Severity::Ok,
                evnt03: None,
            },
            Case {
                name: "quorum 1 takes the worst",
                reports: vec![("a", &ok), ("b", &err)],
                quorum: 1,
                severity: Severity::Error,
                evnt03: None,
            },
            Case {
                name: "one error below quorum 2 is a warning naming it",
                reports: vec![("a", &ok), ("b", &err), ("c", &ok)],
                quorum: 2,
                severity: Severity::Warning,
                evnt03: Some("b (error: EACS03"),
            },
            Case {
                name: "two errors reach quorum 2",
                reports: vec![("a", &err), ("b", &err), ("c", &ok)],
                quorum: 2,
                severity: Severity::Error,
                evnt03: None,
            },
            Case {
                name: "error+warning agree on at least warning",
                reports: vec![("a", &err), ("b", &warn), ("c", &ok)],
                quorum: 2,
                severity: Severity::Warning,
                evnt03: Some("a (error"),
            },
            Case {
                name: "quorum above the vantage count",
                reports: vec![("a", &err)],
                quorum: 3,
                severity: Severity::Warning,
                evnt03: Some("seen by 1 of 1"),
            },
        ];
        for c in cases {
            let out = aggregate(Section::AccessUrl, &c.reports, c.quorum, true);
            assert_eq!(out.severity(), c.severity, "{}", c.name);
            let evnt: Vec<_> = out
                .base()
                .warnings
                .iter()
                .filter(|w| w.code == "EVNT03")
                .collect();
            match c.evnt03 {
                None => assert!(evnt.is_empty(), "{}: {evnt:?}", c.name),
                Some(text) => assert!(
                    evnt.len() == 1 && evnt[0].message.contains(text),
                    "{}: {evnt:?}",
                    c.name
                ),
            }
        }
    }

    #[test]
    fn nobody_covering_is_evnt02_only_when_expected() {
        let out = aggregate(Section::Websocket, &[], 1, true);
        assert_eq!(out.severity(), Severity::Warning);
        assert_eq!(out.base().warnings[0].code, "EVNT02");
        let out = aggregate(Section::WorkspaceProxy, &[], 1, false);
        assert_eq!(out.severity(), Severity::Ok);
        assert!(out.base().warnings.is_empty());
    }

    fn derp_view(sev: &str, healthy: bool, error: Option<&str>) -> DerpReport {
        let mut region = serde_json::json!({
            "healthy": healthy, "severity": sev,
            "warnings": [{"code": "EDERP02", "message": "one node down"}],
            "region": {"EmbeddedRelay": false, "RegionID": 7, "RegionCode": "fra",
                "RegionName": "Frankfurt", "Nodes": [{"Name": "7a", "RegionID": 7, "HostName": "h"}]},
            "node_reports": [{"node": {"Name": "7a"}, "error": error, "extra": [1]}],
        });
        if let Some(e) = error {
            region["error"] = e.into();
        }
        let mut r = DerpReport::default();
        let typed = serde_json::from_value(region).expect("a region report");
        r.regions.insert("7".to_owned(), typed);
        r
    }

    #[test]
    fn a_derp_region_below_quorum_is_shown_at_the_agreed_level_without_its_findings() {
        let ok = derp_view("ok", true, None);
        let bad = derp_view("error", false, Some("node 7a failed"));
        // Nobody sits at the agreed level: the failing view, cleared of its findings.
        let out = aggregate_derp(&[("a", &bad)], 2, &[(7, "Frankfurt".into())], true);
        assert_eq!(out.base.severity, Severity::Warning);
        assert!(out.healthy);
        let region = serde_json::to_value(&out.regions["7"]).expect("JSON");
        let mut expected = serde_json::to_value(&bad.regions["7"]).expect("JSON");
        let o = expected.as_object_mut().expect("an object");
        o.remove("error");
        o.insert("severity".into(), serde_json::json!("ok"));
        o.insert("healthy".into(), serde_json::json!(true));
        o.insert("warnings".into(), serde_json::json!([]));
        assert_eq!(region, expected);
        let evnt03: Vec<_> = out
            .base
            .warnings
            .iter()
            .filter(|w| w.code == "EVNT03")
            .collect();
        assert_eq!(out.base.warnings.len(), 1, "{:?}", out.base.warnings);
        assert!(
            evnt03[0]
                .message
                .starts_with("DERP region Frankfurt (7): seen by 1 of 1 vantages"),
            "{evnt03:?}"
        );
        // A view at the agreed level is shown as the vantage gave it.
        let both = [("a", &bad), ("b", &ok)];
        let out = aggregate_derp(&both, 2, &[], true);
        assert_eq!(out.regions["7"], ok.regions["7"]);
        assert_eq!(out.base.warnings[0].code, "EDERP02");
        assert_eq!(out.base.warnings[1].code, "EVNT03");
        // At quorum 1 the failing view is the region, kept as the vantage gave it.
        let out = aggregate_derp(&both, 1, &[], true);
        assert_eq!(out.base.severity, Severity::Error);
        assert!(!out.healthy);
        assert_eq!(out.regions["7"], bad.regions["7"]);
        assert_eq!(out.base.warnings[0].code, "EDERP02");
        assert_eq!(
            serde_json::to_string(&out.regions).expect("JSON"),
            serde_json::to_string(&bad.regions).expect("JSON")
        );
    }

    #[test]
    fn server_vantage_is_the_preferred_representative() {
        let a = AccessUrlReport {
            access_url: "from-a".into(),
            ..Default::default()
        };
        let s = AccessUrlReport {
            access_url: "from-server".into(),
            ..Default::default()
        };
        let (a, s) = (SectionReport::AccessUrl(a), SectionReport::AccessUrl(s));
        let out = aggregate(Section::AccessUrl, &[("a", &a), ("server", &s)], 1, true);
        let SectionReport::AccessUrl(r) = out else {
            panic!("wrong section")
        };
        assert_eq!(r.access_url, "from-server");
    }
}
