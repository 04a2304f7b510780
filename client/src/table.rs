//! Human-readable renderings of reports, events and vantages for the CLI.

use std::fmt::Write as _;

use vantage_proto::pb;
use vantage_proto::{Section, Severity, convert};

pub(crate) fn sev(n: i32) -> &'static str {
    Severity::from_pb(n).map_or("-", Severity::as_str)
}

fn cell(sev_n: i32, error: &str, warnings: &[pb::Message]) -> String {
    let code = if !error.is_empty() {
        error.split(':').next().unwrap_or("").to_owned()
    } else {
        warnings.first().map(|w| w.code.clone()).unwrap_or_default()
    };
    if code.is_empty() {
        sev(sev_n).to_owned()
    } else {
        format!("{} {code}", sev(sev_n))
    }
}

pub(crate) fn pad(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Sections × vantages, then the messages.
pub fn report(r: &pb::Report) -> String {
    let mut names: Vec<String> = r
        .vantages
        .iter()
        .filter(|v| !v.stale)
        .map(|v| v.name.clone())
        .collect();
    names.sort();
    let mut rows = vec![{
        let mut h = vec!["SECTION".to_owned(), "AGGREGATE".to_owned()];
        h.extend(names.iter().map(|n| n.to_uppercase()));
        h
    }];
    for s in &r.sections {
        let title = Section::from_pb(s.section).map_or("?", Section::title);
        let mut row = vec![
            format!("{title}{}", if s.dismissed { " (dismissed)" } else { "" }),
            cell(s.severity, &s.error, &s.warnings),
        ];
        for n in &names {
            row.push(
                s.vantage_reports
                    .iter()
                    .find(|v| &v.vantage == n)
                    .map_or_else(
                        || "-".to_owned(),
                        |v| cell(v.severity, &v.error, &v.warnings),
                    ),
            );
        }
        rows.push(row);
    }
    let mut out = format!(
        "severity: {}  healthy: {}  revision: {}\n\n",
        sev(r.severity),
        r.healthy,
        r.revision
    );
    out.push_str(&pad(&rows));
    let mut messages = String::new();
    for s in &r.sections {
        let title = Section::from_pb(s.section).map_or("?", Section::title);
        if !s.error.is_empty() {
            let _ = writeln!(messages, "{title}: error: {}", s.error);
        }
        for w in &s.warnings {
            let _ = writeln!(messages, "{title}: warning: {}: {}", w.code, w.message);
        }
        for v in &s.vantage_reports {
            if !v.error.is_empty() {
                let _ = writeln!(messages, "{title} @ {}: error: {}", v.vantage, v.error);
            }
        }
    }
    for w in &r.vantages_warnings {
        let _ = writeln!(messages, "Vantages: warning: {}: {}", w.code, w.message);
    }
    if !messages.is_empty() {
        out.push('\n');
        out.push_str(&messages);
    }
    out
}

pub(crate) fn time(t: Option<&prost_types::Timestamp>) -> String {
    convert::from_timestamp(t).map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// How long before `now` a time was, as people say it: "12 s ago", "3 min ago", "2 h ago",
/// "4 d ago" ("-" without a time; a time ahead of `now` counts as "0 s ago").
pub fn age(t: Option<&prost_types::Timestamp>, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(t) = convert::from_timestamp(t) else {
        return "-".to_owned();
    };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// The vantages list, last seen and stale since as ages at `now`.
pub fn vantages(list: &[pb::Vantage], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut rows = vec![
        vec![
            "NAME",
            "REGION",
            "VERSION",
            "STATE",
            "CONNECTED",
            "LAST SEEN",
            "STALE SINCE",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>(),
    ];
    for v in list {
        rows.push(vec![
            v.name.clone(),
            v.region.clone(),
            v.version.clone(),
            if v.stale { "stale" } else { "fresh" }.to_owned(),
            if v.connected { "yes" } else { "no" }.to_owned(),
            age(v.last_seen.as_ref(), now),
            age(v.stale_since.as_ref(), now),
        ]);
    }
    pad(&rows)
}

/// `report --vantages`: every vantage with its state and age, then what each one sees wrong,
/// section by section (the EVNT messages first).
pub fn vantage_detail(r: &pb::Report, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = vantages(&r.vantages, now);
    let mut lines = String::new();
    for w in &r.vantages_warnings {
        let _ = writeln!(lines, "  {}: {}", w.code, w.message);
    }
    let mut names: Vec<&str> = r.vantages.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    for name in names {
        for s in &r.sections {
            let Some(v) = s.vantage_reports.iter().find(|v| v.vantage == name) else {
                continue;
            };
            let title = Section::from_pb(s.section).map_or("?", Section::title);
            if !v.error.is_empty() {
                let _ = writeln!(lines, "  {name} {title}: {}: {}", sev(v.severity), v.error);
            }
            for w in &v.warnings {
                let _ = writeln!(
                    lines,
                    "  {name} {title}: warning: {}: {}",
                    w.code, w.message
                );
            }
        }
    }
    if !lines.is_empty() {
        out.push('\n');
        out.push_str(&lines);
    }
    out
}

/// One line per event: its time and age at `now` (a resumed stream replays older events), and
/// in a snapshot each vantage's state with the age of its last report.
pub fn event(ev: &pb::WatchEvent, now: chrono::DateTime<chrono::Utc>) -> String {
    let at = format!(
        "{} ({})",
        time(ev.time.as_ref()),
        age(ev.time.as_ref(), now)
    );
    match &ev.event {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            let r = s.report.as_ref();
            let mut line = format!(
                "{at} rev={} snapshot{} severity={}",
                ev.revision,
                if s.resync { " (resync)" } else { "" },
                r.map_or("-", |r| sev(r.severity))
            );
            for sec in r.map(|r| r.sections.as_slice()).unwrap_or_default() {
                let _ = write!(
                    line,
                    " {}={}",
                    Section::from_pb(sec.section).map_or("?", Section::settings_name),
                    sev(sec.severity)
                );
            }
            for v in r.map(|r| r.vantages.as_slice()).unwrap_or_default() {
                let _ = write!(
                    line,
                    " | {} {} seen {}",
                    v.name,
                    if v.stale { "stale" } else { "fresh" },
                    age(v.last_seen.as_ref(), now)
                );
            }
            line
        }
        Some(pb::watch_event::Event::SectionChange(c)) => {
            let who = if c.vantage.is_empty() {
                "aggregate"
            } else {
                c.vantage.as_str()
            };
            let why = if !c.error.is_empty() {
                format!(" {}", c.error)
            } else {
                c.warnings
                    .first()
                    .map(|w| format!(" {}: {}", w.code, w.message))
                    .unwrap_or_default()
            };
            format!(
                "{at} rev={} {} {who}: {} -> {}{why}",
                ev.revision,
                Section::from_pb(c.section).map_or("?", Section::settings_name),
                sev(c.from),
                sev(c.to)
            )
        }
        Some(pb::watch_event::Event::VantageChange(c)) => {
            format!(
                "{at} rev={} vantage {}: {}",
                ev.revision, c.vantage, c.change
            )
        }
        None => format!("{at} rev={} (empty event)", ev.revision),
    }
}

/// One event as a JSON object (for NDJSON output).
pub fn event_json(ev: &pb::WatchEvent) -> serde_json::Value {
    use serde_json::json;
    let at = convert::from_timestamp(ev.time.as_ref()).map(|t| t.to_rfc3339());
    let msgs = |ws: &[pb::Message]| -> Vec<serde_json::Value> {
        ws.iter()
            .map(|w| json!({"code": w.code, "message": w.message}))
            .collect()
    };
    match &ev.event {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            let report = s
                .report
                .as_ref()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.json).ok())
                .unwrap_or(serde_json::Value::Null);
            json!({"revision": ev.revision, "time": at, "type": "snapshot", "resync": s.resync, "report": report})
        }
        Some(pb::watch_event::Event::SectionChange(c)) => json!({
            "revision": ev.revision, "time": at, "type": "section_change",
            "section": Section::from_pb(c.section).map(Section::settings_name),
            "vantage": c.vantage,
            "from": Severity::from_pb(c.from).map(Severity::as_str),
            "to": Severity::from_pb(c.to).map(Severity::as_str),
            "error": c.error, "warnings": msgs(&c.warnings),
        }),
        Some(pb::watch_event::Event::VantageChange(c)) => json!({
            "revision": ev.revision, "time": at, "type": "vantage_change", "vantage": c.vantage, "change": c.change,
        }),
        None => json!({"revision": ev.revision, "time": at, "type": "empty"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::Report {
        pb::Report {
            revision: 7,
            severity: pb::Severity::Warning as i32,
            healthy: false,
            sections: vec![pb::SectionReport {
                section: pb::Section::AccessUrl as i32,
                severity: pb::Severity::Warning as i32,
                error: "EACS04: /healthz did not return 200 OK".into(),
                vantage_reports: vec![
                    pb::VantageSectionReport {
                        vantage: "fra-1".into(),
                        severity: pb::Severity::Warning as i32,
                        error: "EACS04: /healthz did not return 200 OK".into(),
                        ..Default::default()
                    },
                    pb::VantageSectionReport {
                        vantage: "server".into(),
                        severity: pb::Severity::Ok as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            vantages: vec![
                pb::Vantage {
                    name: "server".into(),
                    ..Default::default()
                },
                pb::Vantage {
                    name: "fra-1".into(),
                    region: "fra".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn report_table_snapshot() {
        let out = super::report(&report());
        let want = "severity: warning  healthy: false  revision: 7\n\n\
SECTION     AGGREGATE       FRA-1           SERVER\n\
Access URL  warning EACS04  warning EACS04  ok\n\n\
Access URL: error: EACS04: /healthz did not return 200 OK\n\
Access URL @ fra-1: error: EACS04: /healthz did not return 200 OK\n";
        assert_eq!(out, want);
    }

    #[test]
    fn change_line_names_section_vantage_and_transition() {
        let ev = pb::WatchEvent {
            revision: 3,
            epoch: String::new(),
            time: None,
            event: Some(pb::watch_event::Event::SectionChange(pb::SectionChange {
                section: pb::Section::Websocket as i32,
                vantage: String::new(),
                from: pb::Severity::Ok as i32,
                to: pb::Severity::Error as i32,
                error: "EWS01: websocket dial: refused".into(),
                warnings: vec![],
            })),
        };
        let now = chrono::Utc::now();
        assert_eq!(
            event(&ev, now),
            "- (-) rev=3 Websocket aggregate: ok -> error EWS01: websocket dial: refused"
        );
        assert_eq!(event_json(&ev)["to"], "error");
    }

    fn at(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
        Some(convert::timestamp(t))
    }

    #[test]
    fn ages_read_like_people_say_them() {
        let now = chrono::Utc::now();
        let ago = |s: i64| age(at(now - chrono::Duration::seconds(s)).as_ref(), now);
        assert_eq!(ago(0), "0 s ago");
        assert_eq!(ago(119), "119 s ago");
        assert_eq!(ago(120), "2 min ago");
        assert_eq!(ago(7199), "119 min ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(ago(3 * 86_400), "3 d ago");
        assert_eq!(
            ago(-30),
            "0 s ago",
            "a clock ahead of ours is not in the future"
        );
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn snapshots_and_vantage_detail_show_ages_and_what_each_vantage_sees() {
        let now = chrono::Utc::now();
        let mut r = report();
        r.vantages[1].last_seen = at(now - chrono::Duration::seconds(12));
        r.vantages[1].stale = true;
        r.vantages[1].stale_since = at(now - chrono::Duration::seconds(3));
        r.vantages_warnings = vec![pb::Message {
            code: "EVNT01".into(),
            message: "vantage fra-1 has not reported for 12s".into(),
        }];
        let snap = pb::WatchEvent {
            revision: 9,
            time: at(now - chrono::Duration::seconds(5)),
            event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
                resync: false,
                report: Some(r.clone()),
            })),
            ..Default::default()
        };
        let line = event(&snap, now);
        assert!(line.contains("(5 s ago) rev=9 snapshot"), "{line}");
        assert!(line.contains("| fra-1 stale seen 12 s ago"), "{line}");
        let detail = vantage_detail(&r, now);
        assert!(detail.contains("12 s ago"), "{detail}");
        assert!(detail.contains("3 s ago"), "{detail}");
        assert!(
            detail.contains("EVNT01: vantage fra-1 has not reported"),
            "{detail}"
        );
        assert!(
            detail.contains("fra-1 Access URL: warning: EACS04: /healthz did not return 200 OK"),
            "{detail}"
        );
    }
}
