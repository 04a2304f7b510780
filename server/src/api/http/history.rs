//! `GET /api/v2/debug/health/history?section=…&since=…`: the history (section transitions and
//! per-check outcomes; from the database's logs with PostgreSQL, else the in-memory ring) as
//! JSON.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use vantage_proto::{Section, Severity, convert, pb};

use super::{api_error, coder_json, json_response, unavailable};
use crate::aggregator::HistoryFilter;
use crate::api::{App, HistoryError};

#[derive(Debug, Serialize)]
struct HistoryJson {
    transitions: Vec<TransitionJson>,
    checks: Vec<SeriesJson>,
}

#[derive(Debug, Serialize)]
struct TransitionJson {
    time: Option<DateTime<Utc>>,
    section: String,
    /// Empty for the aggregate.
    vantage: String,
    /// Empty for the first evaluation.
    from: String,
    to: String,
    error: String,
    warnings: Vec<MessageJson>,
}

#[derive(Debug, Serialize)]
struct MessageJson {
    code: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct SeriesJson {
    vantage: String,
    section: String,
    target: String,
    samples: Vec<SampleJson>,
}

#[derive(Debug, Serialize)]
struct SampleJson {
    time: Option<DateTime<Utc>>,
    ok: bool,
    duration_ms: f64,
    error: String,
}

/// Parse `since`: a duration back from `now` (`1h`, `90s`) or an RFC 3339 time.
pub(super) fn parse_since(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(value).map_err(|e| {
        format!(
            "since: {value:?} is neither a duration like \"1h\" nor an RFC 3339 time like \"2026-01-02T15:04:05Z\" ({e})"
        )
    })?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("since: {value:?} reaches back too far"))
}

fn section_name(n: i32) -> String {
    Section::from_pb(n).map_or_else(String::new, |s| s.json_key().to_owned())
}

fn severity_name(n: i32) -> String {
    Severity::from_pb(n).map_or_else(String::new, |s| s.as_str().to_owned())
}

fn to_json(h: pb::History) -> HistoryJson {
    let time = |t: Option<prost_types::Timestamp>| convert::from_timestamp(t.as_ref());
    HistoryJson {
        transitions: h
            .transitions
            .into_iter()
            .map(|t| TransitionJson {
                time: time(t.time),
                section: section_name(t.section),
                vantage: t.vantage,
                from: severity_name(t.from),
                to: severity_name(t.to),
                error: t.error,
                warnings: t
                    .warnings
                    .into_iter()
                    .map(|m| MessageJson {
                        code: m.code,
                        message: m.message,
                    })
                    .collect(),
            })
            .collect(),
        checks: h
            .checks
            .into_iter()
            .map(|c| SeriesJson {
                vantage: c.vantage,
                section: section_name(c.section),
                target: c.target,
                samples: c
                    .samples
                    .into_iter()
                    .map(|s| SampleJson {
                        time: time(s.time),
                        ok: s.ok,
                        duration_ms: convert::from_duration(s.duration.as_ref())
                            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                        error: s.error,
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) async fn get_history(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut filter = HistoryFilter::default();
    if let Some(s) = q.get("section").filter(|s| !s.is_empty()) {
        match s.parse::<Section>() {
            Ok(s) => filter.section = Some(s),
            Err(e) => {
                let allowed: Vec<&str> = Section::ALL.iter().map(|s| s.settings_name()).collect();
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid section parameter {s:?}."),
                    &format!("section: {e}; expected one of {}", allowed.join(", ")),
                );
            }
        }
    }
    if let Some(s) = q.get("since").filter(|s| !s.is_empty()) {
        match parse_since(s, Utc::now()) {
            Ok(t) => filter.since = Some(t),
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid since parameter {s:?}."),
                    &e,
                );
            }
        }
    }
    match app.history(filter).await {
        Ok(h) => json_response(StatusCode::OK, coder_json(&to_json(h))),
        Err(HistoryError::Stopped) => unavailable(),
        Err(HistoryError::Store(e)) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The stored history cannot be read.",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times_and_names_itself_when_bad() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap();
        assert_eq!(
            parse_since("1h", now).unwrap().to_rfc3339(),
            "2026-01-02T11:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        let err = parse_since("yesterday", now).unwrap_err();
        assert!(err.starts_with("since: \"yesterday\""), "{err}");
    }
}
