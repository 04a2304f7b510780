//! The pure rule that aggregates one section across fresh vantages (SPEC §3): the worst
//! severity that at least `quorum` vantages agree on; failures seen by fewer become an EVNT03
//! warning naming them; a section nobody fresh covers says EVNT02. No I/O.

use vantage_probe::rules::SectionReport;
use vantage_proto::report::{Message, SectionBody};
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
    // The highest severity that at least `quorum` vantages are at or above.
    let agreed = Severity::ALL
        .into_iter()
        .rev()
        .find(|s| reports.iter().filter(|(_, r)| r.severity() >= *s).count() >= quorum)
        .unwrap_or(Severity::Ok);
    // The representative: prefer the server's own vantage, then the first by name.
    let representative = reports
        .iter()
        .filter(|(_, r)| r.severity() == agreed)
        .min_by_key(|(name, _)| (*name != crate::config::SERVER_VANTAGE, *name))
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
