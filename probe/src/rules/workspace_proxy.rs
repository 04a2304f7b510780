//! Coder's WorkspaceProxy section rules (`docs/coder-health.md#the-check`, steps 4–8), pure: count healthy
//! proxies and proxies with warnings, turn each proxy's own report into EWP04 messages, and the
//! EWP01/EWP02 failures of updating or fetching the proxies. `regions` is always a list, never
//! `null` (`docs/behaviour.md#difference-3`).

use chrono::{DateTime, Utc};
use vantage_proto::convert::from_timestamp;
use vantage_proto::report::{
    Message, ProxyHealthReport, WorkspaceProxies, WorkspaceProxy as ProxyRegion,
    WorkspaceProxyReport, WorkspaceProxyStatus,
};
use vantage_proto::{Severity, codes, pb};

/// The statuses a proxy poll can give (Coder's `proxyhealth` statuses).
pub const STATUS_OK: &str = "ok";
pub const STATUS_UNREACHABLE: &str = "unreachable";
pub const STATUS_UNHEALTHY: &str = "unhealthy";
pub const STATUS_UNREGISTERED: &str = "unregistered";
pub const STATUS_UNKNOWN: &str = "unknown";

/// Where a registered workspace proxy comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxySource {
    /// The server's configuration: it owns the entry, the API cannot remove it.
    Config,
    /// `RegisterWorkspaceProxy` (the default: an entry announced rather than configured).
    #[default]
    Registered,
    /// Imported from the attached Coder deployment (`--coder-url`); replaced on every import.
    Coder,
}

impl ProxySource {
    /// Its name in the API, the store and the report (`config`, `registered`, `coder`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProxySource::Config => "config",
            ProxySource::Registered => "registered",
            ProxySource::Coder => "coder",
        }
    }

    /// The source named `s` ([`ProxySource::as_str`]), `None` for any other text.
    pub fn parse(s: &str) -> Option<ProxySource> {
        match s {
            "config" => Some(ProxySource::Config),
            "registered" => Some(ProxySource::Registered),
            "coder" => Some(ProxySource::Coder),
            _ => None,
        }
    }
}

/// A registered workspace proxy: the one domain type of the server's registry, the
/// assignments (name, URL, region) and the rules' input. Converted to protobuf, JSON and SQL
/// only at the edges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceProxy {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub icon_url: String,
    /// Empty: not started yet (`unregistered`).
    pub url: String,
    pub region: String,
    pub derp_enabled: bool,
    pub derp_only: bool,
    /// The version the proxy registered with; a poll's version (from the build-version
    /// header) takes precedence.
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub source: ProxySource,
}

impl WorkspaceProxy {
    /// What a probe polls: the proxy's name and URL.
    pub fn target(&self) -> pb::WorkspaceProxyTarget {
        pb::WorkspaceProxyTarget {
            name: self.name.clone(),
            url: self.url.clone(),
        }
    }

    /// The rule input, never polled yet (join the latest polls with [`observed`]).
    pub fn unpolled(self) -> ProxyInput {
        ProxyInput {
            proxy: self,
            deleted: false,
            result: None,
            checked_at: None,
        }
    }
}

/// One workspace proxy as the rules see it: the registered proxy and, if it was polled, the
/// latest poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyInput {
    pub proxy: WorkspaceProxy,
    /// Coder lists deleted proxies; the rules drop them before counting.
    pub deleted: bool,
    /// The latest poll, `None` if never polled.
    pub result: Option<pb::WorkspaceProxyResult>,
    pub checked_at: Option<DateTime<Utc>>,
}

impl ProxyInput {
    /// The poll status: the latest result's, or (never polled) `unregistered` for a proxy
    /// without a URL and `unknown` otherwise.
    pub fn status(&self) -> &str {
        match &self.result {
            Some(r) if !r.status.is_empty() => &r.status,
            _ if self.proxy.url.is_empty() => STATUS_UNREGISTERED,
            _ => STATUS_UNKNOWN,
        }
    }

    fn to_report(&self) -> ProxyRegion {
        let p = &self.proxy;
        let status = self.status().to_owned();
        let (errors, warnings, polled_version) = match &self.result {
            Some(r) => (r.errors.clone(), r.warnings.clone(), r.version.as_str()),
            None => (Vec::new(), Vec::new(), ""),
        };
        let version = if polled_version.is_empty() {
            p.version.clone()
        } else {
            polled_version.to_owned()
        };
        ProxyRegion {
            id: p.id.clone(),
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            icon_url: p.icon_url.clone(),
            healthy: status == STATUS_OK,
            path_app_url: p.url.clone(),
            wildcard_hostname: String::new(),
            derp_enabled: p.derp_enabled,
            derp_only: p.derp_only,
            status: WorkspaceProxyStatus {
                status,
                report: ProxyHealthReport { errors, warnings },
                checked_at: self.checked_at.unwrap_or_default(),
            },
            created_at: p.created_at,
            updated_at: p.updated_at,
            deleted: self.deleted,
            version,
        }
    }
}

/// The registry's proxies that `observations` cover, each with its latest poll (by
/// `observed_at`): one vantage's view, for [`section`]. Observations of proxies no longer in
/// the registry, and observations of other checks, are ignored.
pub fn observed<'a>(
    proxies: &[ProxyInput],
    observations: impl IntoIterator<Item = &'a pb::Observation>,
) -> Vec<ProxyInput> {
    use pb::observation::Result as ObsResult;
    let mut out: Vec<ProxyInput> = Vec::new();
    for o in observations {
        let Some(ObsResult::WorkspaceProxy(r)) = &o.result else {
            continue;
        };
        let name = if r.name.is_empty() {
            &o.target
        } else {
            &r.name
        };
        let at = from_timestamp(o.observed_at.as_ref());
        if let Some(seen) = out.iter_mut().find(|p| &p.proxy.name == name) {
            if at >= seen.checked_at {
                seen.result = Some(r.clone());
                seen.checked_at = at;
            }
            continue;
        }
        if let Some(p) = proxies.iter().find(|p| &p.proxy.name == name) {
            out.push(ProxyInput {
                result: Some(r.clone()),
                checked_at: at,
                ..p.clone()
            });
        }
    }
    out
}

/// The WorkspaceProxy section from the proxies (`docs/coder-health.md#the-check`, steps 4–8).
pub fn section(proxies: &[ProxyInput]) -> WorkspaceProxyReport {
    let mut live: Vec<&ProxyInput> = proxies.iter().filter(|p| !p.deleted).collect();
    live.sort_by(|a, b| {
        (a.proxy.created_at.cmp(&b.proxy.created_at)).then(a.proxy.name.cmp(&b.proxy.name))
    });
    let regions: Vec<ProxyRegion> = live.iter().map(|p| p.to_report()).collect();

    let mut report = WorkspaceProxyReport::default();
    let total = regions.len();
    let mut healthy = 0usize;
    let mut warning = 0usize;
    let mut errors = Vec::new();
    for p in &regions {
        if p.healthy {
            healthy += 1;
        }
        if !p.status.report.warnings.is_empty() {
            warning += 1;
        }
        for w in &p.status.report.warnings {
            report
                .base
                .warnings
                .push(Message::new(codes::EWP04, format!("{}: {w}", p.name)));
        }
        for e in &p.status.report.errors {
            errors.push(format!("{}: {e}", p.name));
        }
    }

    report.base.severity = if total == 0 || (healthy == total && warning == 0) {
        Severity::Ok
    } else if healthy == 0 {
        Severity::Error
    } else {
        Severity::Warning
    };
    report.healthy = report.base.severity < Severity::Error;

    if report.base.severity == Severity::Error {
        if !errors.is_empty() {
            let joined = errors
                .iter()
                .map(|e| Message::new(codes::EWP04, e.as_str()).to_string())
                .collect::<Vec<_>>()
                .join("\n");
            report.base.error = Some(joined);
        }
    } else {
        for e in errors {
            report.base.warnings.push(Message::new(codes::EWP04, e));
        }
    }
    report.workspace_proxies = WorkspaceProxies { regions };
    report
}

/// Updating the proxies' health failed (EWP01): a warning, no proxies listed, `regions: []`.
pub fn ewp01(err: &str) -> WorkspaceProxyReport {
    let mut report = WorkspaceProxyReport {
        healthy: true,
        ..Default::default()
    };
    report.base.severity = Severity::Warning;
    report.base.warnings.push(Message::new(
        codes::EWP01,
        format!("update proxy health: {err}"),
    ));
    report
}

/// Fetching the proxies failed (EWP02): an error, `regions: []`.
pub fn ewp02(err: &str) -> WorkspaceProxyReport {
    let mut report = WorkspaceProxyReport::default();
    report.base.fail(&Message::new(
        codes::EWP02,
        format!("fetch workspace proxies: {err}"),
    ));
    report.healthy = false;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use vantage_proto::convert::timestamp;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).expect("valid")
    }

    fn proxy(name: &str, minutes: i64) -> ProxyInput {
        WorkspaceProxy {
            id: format!("id-{name}"),
            name: name.into(),
            display_name: name.to_uppercase(),
            url: format!("https://{name}.example.com"),
            region: "eu".into(),
            created_at: t0() + TimeDelta::minutes(minutes),
            updated_at: t0() + TimeDelta::minutes(minutes),
            ..Default::default()
        }
        .unpolled()
    }

    fn polled(mut p: ProxyInput, status: &str, errors: &[&str], warnings: &[&str]) -> ProxyInput {
        p.result = Some(pb::WorkspaceProxyResult {
            name: p.proxy.name.clone(),
            status: status.into(),
            errors: errors.iter().map(|s| (*s).to_owned()).collect(),
            warnings: warnings.iter().map(|s| (*s).to_owned()).collect(),
            version: String::new(),
        });
        p.checked_at = Some(t0() + TimeDelta::hours(1));
        p
    }

    fn ok(name: &str, minutes: i64) -> ProxyInput {
        polled(proxy(name, minutes), STATUS_OK, &[], &[])
    }

    fn w(text: &str) -> Message {
        Message::new("EWP04", text)
    }

    #[test]
    fn section_table() {
        struct Case {
            name: &'static str,
            proxies: Vec<ProxyInput>,
            severity: Severity,
            healthy: bool,
            error: Option<&'static str>,
            warnings: Vec<Message>,
            /// Region names in report order.
            regions: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "no proxies: ok, regions []",
                proxies: vec![],
                severity: Severity::Ok,
                healthy: true,
                error: None,
                warnings: vec![],
                regions: vec![],
            },
            Case {
                name: "all healthy: ok",
                proxies: vec![ok("a", 0), ok("b", 1)],
                severity: Severity::Ok,
                healthy: true,
                error: None,
                warnings: vec![],
                regions: vec!["a", "b"],
            },
            Case {
                name: "healthy with a warning: warning, EWP04 <name>: <w>",
                proxies: vec![
                    ok("a", 0),
                    polled(proxy("b", 1), STATUS_OK, &[], &["version mismatch"]),
                ],
                severity: Severity::Warning,
                healthy: true,
                error: None,
                warnings: vec![w("b: version mismatch")],
                regions: vec!["a", "b"],
            },
            Case {
                name: "one of two unhealthy: warning, its errors become EWP04 warnings",
                proxies: vec![
                    ok("a", 0),
                    polled(proxy("b", 1), STATUS_UNHEALTHY, &["boom", "bang"], &["meh"]),
                ],
                severity: Severity::Warning,
                healthy: true,
                error: None,
                warnings: vec![w("b: meh"), w("b: boom"), w("b: bang")],
                regions: vec!["a", "b"],
            },
            Case {
                name: "none healthy: error, errors joined into error, warnings stay warnings",
                proxies: vec![
                    polled(
                        proxy("a", 0),
                        STATUS_UNREACHABLE,
                        &["request to proxy failed: x"],
                        &[],
                    ),
                    polled(proxy("b", 1), STATUS_UNHEALTHY, &["boom"], &["meh"]),
                ],
                severity: Severity::Error,
                healthy: false,
                error: Some("EWP04: a: request to proxy failed: x\nEWP04: b: boom"),
                warnings: vec![w("b: meh")],
                regions: vec!["a", "b"],
            },
            Case {
                name: "quirk: unregistered proxy with no errors gives a warning with no message",
                proxies: vec![
                    ok("a", 0),
                    polled(proxy("b", 1), STATUS_UNREGISTERED, &[], &[]),
                ],
                severity: Severity::Warning,
                healthy: true,
                error: None,
                warnings: vec![],
                regions: vec!["a", "b"],
            },
            Case {
                name: "lone never-polled proxy without URL is unregistered: error with no text",
                proxies: vec![{
                    let mut p = proxy("a", 0);
                    p.proxy.url = String::new();
                    p
                }],
                severity: Severity::Error,
                healthy: false,
                error: None,
                warnings: vec![],
                regions: vec!["a"],
            },
            Case {
                name: "never-polled proxy with URL is unknown, lowers the healthy count",
                proxies: vec![ok("a", 0), proxy("b", 1)],
                severity: Severity::Warning,
                healthy: true,
                error: None,
                warnings: vec![],
                regions: vec!["a", "b"],
            },
            Case {
                name: "deleted proxies are dropped before counting",
                proxies: vec![
                    ok("a", 0),
                    ProxyInput {
                        deleted: true,
                        ..polled(proxy("gone", 1), STATUS_UNREACHABLE, &["x"], &[])
                    },
                ],
                severity: Severity::Ok,
                healthy: true,
                error: None,
                warnings: vec![],
                regions: vec!["a"],
            },
            Case {
                name: "sorted by created_at ascending, messages follow that order",
                proxies: vec![
                    polled(proxy("late", 10), STATUS_OK, &[], &["w-late"]),
                    polled(proxy("early", -10), STATUS_OK, &[], &["w-early"]),
                    ok("mid", 0),
                ],
                severity: Severity::Warning,
                healthy: true,
                error: None,
                warnings: vec![w("early: w-early"), w("late: w-late")],
                regions: vec!["early", "mid", "late"],
            },
        ];
        for c in cases {
            let r = section(&c.proxies);
            assert_eq!(r.base.severity, c.severity, "{}", c.name);
            assert_eq!(r.healthy, c.healthy, "{}", c.name);
            assert_eq!(r.base.error.as_deref(), c.error, "{}", c.name);
            assert_eq!(r.base.warnings, c.warnings, "{}", c.name);
            let names: Vec<&str> = r
                .workspace_proxies
                .regions
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(names, c.regions, "{}", c.name);
        }
    }

    #[test]
    fn region_fields_and_json_shape() {
        let mut p = polled(proxy("a", 0), STATUS_OK, &[], &["w"]);
        p.proxy.derp_enabled = true;
        p.proxy.version = "v2.25.0".into();
        let r = section(std::slice::from_ref(&p));
        let region = &r.workspace_proxies.regions[0];
        assert!(region.healthy);
        assert_eq!(region.path_app_url, "https://a.example.com");
        assert_eq!(region.status.status, "ok");
        assert_eq!(region.status.report.warnings, vec!["w".to_owned()]);
        assert_eq!(region.status.checked_at, t0() + TimeDelta::hours(1));
        assert_eq!(
            region.version, "v2.25.0",
            "registered version without a polled one"
        );
        assert!(region.derp_enabled);

        let mut p2 = p.clone();
        if let Some(r) = p2.result.as_mut() {
            r.version = "v2.26.0".into();
        }
        assert_eq!(
            section(&[p2]).workspace_proxies.regions[0].version,
            "v2.26.0"
        );

        let json = serde_json::to_value(section(&[])).expect("serialises");
        assert_eq!(json["workspace_proxies"]["regions"], serde_json::json!([]));
        assert_eq!(json["warnings"], serde_json::json!([]));
        assert_eq!(json["severity"], "ok");
        assert!(json.get("error").is_none());
    }

    #[test]
    fn ewp01_and_ewp02() {
        let r = ewp01("poll: boom");
        assert_eq!(r.base.severity, Severity::Warning);
        assert!(r.healthy);
        assert_eq!(r.base.error, None);
        assert_eq!(
            r.base.warnings,
            vec![Message::new("EWP01", "update proxy health: poll: boom")]
        );
        let json = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["workspace_proxies"]["regions"], serde_json::json!([]));

        let r = ewp02("store: down");
        assert_eq!(r.base.severity, Severity::Error);
        assert!(!r.healthy);
        assert_eq!(
            r.base.error.as_deref(),
            Some("EWP02: fetch workspace proxies: store: down")
        );
        assert!(r.base.warnings.is_empty());
        assert!(r.workspace_proxies.regions.is_empty());
    }

    #[test]
    fn observed_takes_latest_poll_of_known_proxies() {
        let registry = vec![proxy("a", 0), proxy("b", 1)];
        let obs = |name: &str, status: &str, secs: i64| pb::Observation {
            target: name.into(),
            observed_at: Some(timestamp(t0() + TimeDelta::seconds(secs))),
            result: Some(pb::observation::Result::WorkspaceProxy(
                pb::WorkspaceProxyResult {
                    name: name.into(),
                    status: status.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let other = pb::Observation {
            result: Some(pb::observation::Result::UnknownError("x".into())),
            ..Default::default()
        };
        let list = [
            obs("a", STATUS_UNREACHABLE, 20),
            obs("a", STATUS_OK, 10),
            obs("gone", STATUS_OK, 10),
            other,
        ];
        let seen = observed(&registry, &list);
        assert_eq!(seen.len(), 1, "b was not observed, gone is not registered");
        assert_eq!(seen[0].proxy.name, "a");
        assert_eq!(
            seen[0].status(),
            STATUS_UNREACHABLE,
            "latest by observed_at"
        );
        assert_eq!(seen[0].checked_at, Some(t0() + TimeDelta::seconds(20)));
    }
}
