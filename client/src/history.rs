//! `vantage history`: parsing `--since`, and the history as a table or JSON.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use vantage_proto::{Section, convert, pb};

use crate::table::{pad, sev, time};

/// How many of a series' latest samples the table draws (`+` ok, `x` failed), newest last.
const STRIP: usize = 30;

/// `since`: a duration back from `now` (`1h`, `90s`) or an RFC 3339 time.
pub fn parse_since(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(value).map_err(|e| {
        format!("{value:?} is neither a duration like \"1h\" nor an RFC 3339 time ({e})")
    })?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("{value:?} reaches back too far"))
}

fn section(n: i32) -> &'static str {
    Section::from_pb(n).map_or("-", Section::settings_name)
}

fn millis(d: Option<&prost_types::Duration>) -> f64 {
    convert::from_duration(d).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| (*c).to_owned()).collect()
}

/// Transitions (oldest first), then one row per check series with its recent outcomes.
pub fn table(h: &pb::History) -> String {
    let mut out = transitions(&h.transitions);
    out.push('\n');
    out.push_str(&checks(&h.checks));
    out
}

/// The section transitions, one row each.
fn transitions(list: &[pb::SectionTransition]) -> String {
    if list.is_empty() {
        return "no section transitions\n".to_owned();
    }
    let mut rows = vec![header(&[
        "TIME", "SECTION", "VANTAGE", "FROM", "TO", "ERROR",
    ])];
    for t in list {
        let vantage = if t.vantage.is_empty() {
            "(aggregate)".to_owned()
        } else {
            t.vantage.clone()
        };
        let detail = if t.error.is_empty() {
            t.warnings
                .first()
                .map(|w| w.code.clone())
                .unwrap_or_default()
        } else {
            t.error.clone()
        };
        rows.push(vec![
            time(t.time.as_ref()),
            section(t.section).to_owned(),
            vantage,
            sev(t.from).to_owned(),
            sev(t.to).to_owned(),
            detail,
        ]);
    }
    pad(&rows)
}

/// One row per check series: successes, average duration, a strip of recent outcomes and the
/// last error.
fn checks(list: &[pb::CheckSeries]) -> String {
    if list.is_empty() {
        return "no check outcomes\n".to_owned();
    }
    let mut rows = vec![header(&[
        "VANTAGE",
        "SECTION",
        "TARGET",
        "OK",
        "AVG MS",
        "RECENT",
        "LAST ERROR",
    ])];
    for c in list {
        let ok = c.samples.iter().filter(|s| s.ok).count();
        let avg = c
            .samples
            .iter()
            .map(|s| millis(s.duration.as_ref()))
            .sum::<f64>()
            / c.samples.len().max(1) as f64;
        let strip: String = c
            .samples
            .iter()
            .skip(c.samples.len().saturating_sub(STRIP))
            .map(|s| if s.ok { '+' } else { 'x' })
            .collect();
        let last_error = c
            .samples
            .iter()
            .rev()
            .find(|s| !s.ok)
            .map(|s| s.error.clone())
            .unwrap_or_default();
        rows.push(vec![
            c.vantage.clone(),
            section(c.section).to_owned(),
            c.target.clone(),
            format!("{ok}/{}", c.samples.len()),
            format!("{avg:.1}"),
            strip,
            last_error,
        ]);
    }
    pad(&rows)
}

/// The history as JSON (the shape of `GET /api/v2/debug/health/history`).
pub fn json(h: &pb::History) -> Value {
    let ts = |t: Option<&prost_types::Timestamp>| {
        convert::from_timestamp(t).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let sev_name = |n: i32| vantage_proto::Severity::from_pb(n).map_or("", |s| s.as_str());
    let sec_key = |n: i32| Section::from_pb(n).map_or("", Section::json_key);
    json!({
        "transitions": h.transitions.iter().map(|t| json!({
            "time": ts(t.time.as_ref()),
            "section": sec_key(t.section),
            "vantage": t.vantage,
            "from": sev_name(t.from),
            "to": sev_name(t.to),
            "error": t.error,
            "warnings": t.warnings.iter().map(|w| json!({"code": w.code, "message": w.message})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "checks": h.checks.iter().map(|c| json!({
            "vantage": c.vantage,
            "section": sec_key(c.section),
            "target": c.target,
            "samples": c.samples.iter().map(|s| json!({
                "time": ts(s.time.as_ref()),
                "ok": s.ok,
                "duration_ms": millis(s.duration.as_ref()),
                "error": s.error,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_times() {
        let now = DateTime::from_timestamp(7200, 0).unwrap_or_default();
        assert_eq!(
            parse_since("1h", now),
            Ok(DateTime::from_timestamp(3600, 0).unwrap_or_default())
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:10Z", now),
            Ok(DateTime::from_timestamp(10, 0).unwrap_or_default())
        );
        assert!(parse_since("soon", now).unwrap_err().contains("\"soon\""));
    }
}
