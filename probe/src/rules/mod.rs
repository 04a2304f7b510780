//! The pure rules that turn a vantage's observations into its section reports, with Coder's
//! rules (`docs/coder-health.md#section-rules`). One place, used by the server for every vantage and by
//! `vantage-probe --once` for its own report. No I/O.

pub mod derp;

pub mod provisioners;
pub mod workspace_proxy;

use vantage_proto::codes;
use vantage_proto::pb;
use vantage_proto::pb::observation::Result as ObsResult;
use vantage_proto::report::{
    AccessUrlReport, Base, DatabaseReport, DerpReport, Message, ProvisionerDaemonsReport,
    SectionBody, WebsocketReport, WorkspaceProxyReport,
};
use vantage_proto::{Section, Severity};

/// One vantage's report of one section.
#[derive(Debug, Clone, PartialEq)]
pub enum SectionReport {
    AccessUrl(AccessUrlReport),
    Database(DatabaseReport),
    Derp(DerpReport),
    Websocket(WebsocketReport),
    WorkspaceProxy(WorkspaceProxyReport),
    ProvisionerDaemons(ProvisionerDaemonsReport),
}

impl SectionReport {
    pub fn section(&self) -> Section {
        match self {
            SectionReport::AccessUrl(_) => Section::AccessUrl,
            SectionReport::Database(_) => Section::Database,
            SectionReport::Derp(_) => Section::Derp,
            SectionReport::Websocket(_) => Section::Websocket,
            SectionReport::WorkspaceProxy(_) => Section::WorkspaceProxy,
            SectionReport::ProvisionerDaemons(_) => Section::ProvisionerDaemons,
        }
    }

    pub fn base(&self) -> &Base {
        match self {
            SectionReport::AccessUrl(r) => r.base(),
            SectionReport::Database(r) => r.base(),
            SectionReport::Derp(r) => r.base(),
            SectionReport::Websocket(r) => r.base(),
            SectionReport::WorkspaceProxy(r) => r.base(),
            SectionReport::ProvisionerDaemons(r) => r.base(),
        }
    }

    pub fn severity(&self) -> Severity {
        self.base().severity
    }

    /// The section with nothing to report yet, for `section` (ok, empty lists).
    pub fn empty(section: Section) -> SectionReport {
        match section {
            Section::AccessUrl => SectionReport::AccessUrl(AccessUrlReport::default()),
            Section::Database => SectionReport::Database(DatabaseReport::default()),
            Section::Derp => SectionReport::Derp(DerpReport::default()),
            Section::Websocket => SectionReport::Websocket(WebsocketReport::default()),
            Section::WorkspaceProxy => {
                SectionReport::WorkspaceProxy(WorkspaceProxyReport::default())
            }
            Section::ProvisionerDaemons => {
                SectionReport::ProvisionerDaemons(ProvisionerDaemonsReport::default())
            }
        }
    }

    /// The JSON of the section body.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            SectionReport::AccessUrl(r) => serde_json::to_value(r),
            SectionReport::Database(r) => serde_json::to_value(r),
            SectionReport::Derp(r) => serde_json::to_value(r),
            SectionReport::Websocket(r) => serde_json::to_value(r),
            SectionReport::WorkspaceProxy(r) => serde_json::to_value(r),
            SectionReport::ProvisionerDaemons(r) => serde_json::to_value(r),
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

fn msg(m: &pb::Message) -> Message {
    Message::from(m)
}

/// Access URL (`docs/coder-health.md#access-url-severity`): EACS01–03 error, EACS04 warning; `healthy` is status == 200.
pub fn access_url(r: &pb::AccessUrlResult) -> AccessUrlReport {
    let mut out = AccessUrlReport {
        access_url: r.access_url.clone(),
        reachable: r.reachable,
        status_code: i64::from(r.status_code),
        healthz_response: r.healthz_response.clone(),
        ..Default::default()
    };
    if let Some(f) = r.failure.as_ref().filter(|f| !f.message.is_empty()) {
        out.base.fail(&msg(f));
        out.healthy = false;
        return out;
    }
    out.healthy = r.status_code == 200;
    if !out.healthy {
        out.base.fail(&Message::new(
            codes::EACS04,
            "/healthz did not return 200 OK",
        ));
        out.base.severity = Severity::Warning;
    }
    out
}

/// Websocket (`docs/coder-health.md#websocket`): ok or error, never a warning.
pub fn websocket(r: &pb::WebsocketResult) -> WebsocketReport {
    let mut out = WebsocketReport {
        body: r.body.clone(),
        code: i64::from(r.code),
        not_checked: r.not_checked.clone(),
        ..Default::default()
    };
    match r.failure.as_ref().filter(|f| !f.message.is_empty()) {
        Some(f) => {
            out.base.fail(&msg(f));
            out.healthy = false;
        }
        None => out.healthy = true,
    }
    out
}

/// Database (`docs/coder-health.md#database`): median of the pings in whole milliseconds against the threshold.
pub fn database(r: &pb::DatabaseResult) -> DatabaseReport {
    use vantage_proto::convert::from_duration;
    let threshold = from_duration(r.threshold.as_ref()).unwrap_or_default();
    let mut threshold_ms = i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX);
    if threshold_ms == 0 {
        threshold_ms = 15;
    }
    let mut out = DatabaseReport {
        threshold_ms,
        ..Default::default()
    };
    if let Some(f) = r.failure.as_ref().filter(|f| !f.message.is_empty()) {
        if f.code == codes::EDB03 {
            // No database configured: a warning, not a failure (`docs/behaviour.md#difference-6`).
            out.base.warnings.push(msg(f));
            out.base.raise(Severity::Warning);
            out.healthy = true;
        } else {
            out.base.fail(&msg(f));
        }
        return out;
    }
    let mut pings: Vec<_> = r
        .pings
        .iter()
        .filter_map(|d| from_duration(Some(d)))
        .collect();
    if pings.is_empty() {
        out.base.fail(&Message::new(
            codes::EDB01,
            "ping database: no ping was recorded",
        ));
        return out;
    }
    pings.sort();
    let median = pings[pings.len() / 2];
    out.reachable = true;
    out.healthy = true;
    out.latency = vantage_proto::report::go_duration(median);
    out.latency_ms = i64::try_from(median.as_millis()).unwrap_or(i64::MAX);
    if out.latency_ms >= out.threshold_ms {
        out.base.warnings.push(Message::new(
            codes::EDB02,
            "median database ping above threshold",
        ));
        out.base.raise(Severity::Warning);
    }
    out
}

/// An unexpected failure inside a check: EUNKNOWN at error (`docs/behaviour.md#difference-1`).
pub fn unknown(section: Section, text: &str) -> SectionReport {
    let mut report = SectionReport::empty(section);
    let m = Message::new(codes::EUNKNOWN, text);
    match &mut report {
        SectionReport::AccessUrl(r) => r.base.fail(&m),
        SectionReport::Database(r) => r.base.fail(&m),
        SectionReport::Derp(r) => r.base.fail(&m),
        SectionReport::Websocket(r) => r.base.fail(&m),
        SectionReport::WorkspaceProxy(r) => r.base.fail(&m),
        SectionReport::ProvisionerDaemons(r) => r.base.fail(&m),
    }
    report
}

/// What the rules need besides observations: the registry's workspace proxies (their
/// names, display names and creation times come from there, their health from the polls).
#[derive(Debug, Clone, Default)]
pub struct RulesContext {
    pub proxies: Vec<workspace_proxy::ProxyInput>,
}

/// A vantage's report of one section from the latest observation of each of its targets.
/// Access URL, Websocket and Database take the worst target; DERP follows Coder's node →
/// region → section rules; WorkspaceProxy counts the proxies this vantage polled. `None` when
/// there is nothing to report.
pub fn section_report<'a>(
    section: Section,
    observations: impl IntoIterator<Item = &'a pb::Observation>,
    ctx: &RulesContext,
) -> Option<SectionReport> {
    let observations: Vec<&pb::Observation> = observations.into_iter().collect();
    if observations.is_empty() {
        return None;
    }
    if let Some(text) = observations.iter().find_map(|o| match &o.result {
        Some(ObsResult::UnknownError(t)) => Some(t),
        _ => None,
    }) {
        return Some(unknown(section, text));
    }
    match section {
        Section::Derp => return Some(derp::section(&observations)),
        Section::WorkspaceProxy => {
            let seen = workspace_proxy::observed(&ctx.proxies, observations.iter().copied());
            return Some(SectionReport::WorkspaceProxy(workspace_proxy::section(
                &seen,
            )));
        }
        _ => {}
    }
    let mut worst: Option<SectionReport> = None;
    for o in observations {
        let report = match o.result.as_ref()? {
            ObsResult::AccessUrl(r) if section == Section::AccessUrl => {
                SectionReport::AccessUrl(access_url(r))
            }
            ObsResult::Websocket(r) if section == Section::Websocket => {
                SectionReport::Websocket(websocket(r))
            }
            ObsResult::Database(r) if section == Section::Database => {
                SectionReport::Database(database(r))
            }
            _ => unknown(
                section,
                &format!(
                    "observation {} of {:?} carries a result of another section",
                    o.seq, o.target
                ),
            ),
        };
        if worst
            .as_ref()
            .is_none_or(|w| report.severity() > w.severity())
        {
            worst = Some(report);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vantage_proto::convert::duration;

    fn f(code: &str, text: &str) -> Option<pb::Message> {
        Some(pb::Message {
            code: code.into(),
            message: text.into(),
        })
    }

    #[test]
    fn access_url_table() {
        struct Case {
            name: &'static str,
            input: pb::AccessUrlResult,
            severity: Severity,
            healthy: bool,
            error: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "200 is ok",
                input: pb::AccessUrlResult {
                    reachable: true,
                    status_code: 200,
                    healthz_response: "OK".into(),
                    ..Default::default()
                },
                severity: Severity::Ok,
                healthy: true,
                error: None,
            },
            Case {
                name: "200 with another body is still ok (body is not compared)",
                input: pb::AccessUrlResult {
                    reachable: true,
                    status_code: 200,
                    healthz_response: "nope".into(),
                    ..Default::default()
                },
                severity: Severity::Ok,
                healthy: true,
                error: None,
            },
            Case {
                name: "503 is a warning, unhealthy",
                input: pb::AccessUrlResult {
                    reachable: true,
                    status_code: 503,
                    ..Default::default()
                },
                severity: Severity::Warning,
                healthy: false,
                error: Some("EACS04: /healthz did not return 200 OK"),
            },
            Case {
                name: "not set",
                input: pb::AccessUrlResult {
                    failure: f("EACS01", "Access URL not set"),
                    ..Default::default()
                },
                severity: Severity::Error,
                healthy: false,
                error: Some("EACS01: Access URL not set"),
            },
            Case {
                name: "fetch failed",
                input: pb::AccessUrlResult {
                    failure: f("EACS03", "get healthz endpoint: refused"),
                    ..Default::default()
                },
                severity: Severity::Error,
                healthy: false,
                error: Some("EACS03: get healthz endpoint: refused"),
            },
        ];
        for c in cases {
            let r = access_url(&c.input);
            assert_eq!(r.base.severity, c.severity, "{}", c.name);
            assert_eq!(r.healthy, c.healthy, "{}", c.name);
            assert_eq!(r.base.error.as_deref(), c.error, "{}", c.name);
            assert!(r.base.warnings.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn websocket_never_warns() {
        let ok = websocket(&pb::WebsocketResult {
            code: 101,
            ..Default::default()
        });
        assert_eq!(
            (ok.base.severity, ok.healthy, ok.code),
            (Severity::Ok, true, 101)
        );
        for code in ["EWS01", "EWS02", "EWS03", ""] {
            let r = websocket(&pb::WebsocketResult {
                failure: f(code, "x"),
                ..Default::default()
            });
            assert_eq!(r.base.severity, Severity::Error, "{code}");
            assert!(!r.healthy);
        }
        let uncoded = websocket(&pb::WebsocketResult {
            failure: f("", "parse access url: bad"),
            ..Default::default()
        });
        assert_eq!(uncoded.base.error.as_deref(), Some("parse access url: bad"));
    }

    fn pings(ms: &[u64]) -> Vec<prost_types::Duration> {
        ms.iter()
            .map(|m| duration(Duration::from_micros(*m)))
            .collect()
    }

    #[test]
    fn database_median_and_integer_boundary() {
        // Durations in microseconds; threshold 15 ms.
        let cases: &[(&[u64], Severity, i64)] = &[
            (&[1_000, 2_000, 3_000, 40_000, 50_000], Severity::Ok, 3),
            (&[14_999, 14_999, 14_999, 1, 1], Severity::Ok, 14),
            // 15.9 ms truncates to 15, and 15 >= 15 warns.
            (&[15_900, 15_900, 15_900, 1, 1], Severity::Warning, 15),
            (
                &[20_000, 20_000, 20_000, 20_000, 20_000],
                Severity::Warning,
                20,
            ),
        ];
        for (ms, sev, latency_ms) in cases {
            let r = database(&pb::DatabaseResult {
                reachable: true,
                pings: pings(ms),
                threshold: Some(duration(Duration::from_millis(15))),
                failure: None,
            });
            assert_eq!(r.base.severity, *sev, "{ms:?}");
            assert_eq!(r.latency_ms, *latency_ms, "{ms:?}");
            assert!(r.healthy && r.reachable);
            assert_eq!(r.threshold_ms, 15);
            if *sev == Severity::Warning {
                assert_eq!(r.base.warnings[0].code, "EDB02");
            }
        }
    }

    #[test]
    fn database_failures_and_defaults() {
        let failed = database(&pb::DatabaseResult {
            failure: f("EDB01", "ping database: refused"),
            ..Default::default()
        });
        assert_eq!(failed.base.severity, Severity::Error);
        assert!(!failed.healthy && !failed.reachable);
        assert_eq!(
            failed.threshold_ms, 15,
            "a zero threshold falls back to 15 ms"
        );
        let none = database(&pb::DatabaseResult {
            failure: f("EDB03", "no database configured"),
            ..Default::default()
        });
        assert_eq!(none.base.severity, Severity::Warning);
        assert_eq!(none.base.error, None);
        assert_eq!(none.base.warnings[0].code, "EDB03");
    }

    #[test]
    fn unknown_is_an_error() {
        for s in Section::ALL {
            let r = unknown(s, "boom");
            assert_eq!(r.severity(), Severity::Error);
            assert_eq!(r.base().error.as_deref(), Some("EUNKNOWN: boom"));
        }
    }

    #[test]
    fn section_report_takes_worst_and_rejects_mismatched_results() {
        let ok = pb::Observation {
            result: Some(ObsResult::AccessUrl(pb::AccessUrlResult {
                status_code: 200,
                reachable: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        let bad = pb::Observation {
            result: Some(ObsResult::AccessUrl(pb::AccessUrlResult {
                status_code: 502,
                reachable: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        let r = section_report(Section::AccessUrl, [&ok, &bad], &RulesContext::default()).unwrap();
        assert_eq!(r.severity(), Severity::Warning);
        let wrong = section_report(Section::Websocket, [&ok], &RulesContext::default()).unwrap();
        assert_eq!(
            wrong
                .base()
                .error
                .as_deref()
                .map(|e| e.starts_with("EUNKNOWN")),
            Some(true)
        );
        assert!(section_report(Section::AccessUrl, [], &RulesContext::default()).is_none());
    }
}
