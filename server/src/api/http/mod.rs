//! The HTTP/1.1 surface: `/healthz`, Coder's `/api/v2/debug/health` (+ settings, + the
//! WebSocket echo), the `/health` page, code docs and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use serde_json::json;

use crate::api::{App, ForceError, GivenNote, SettingsView};

pub mod guard;
mod history;
mod metrics;
pub(crate) mod page;

/// How long the echo endpoint waits for each message.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP routes; settings changes are accepted for the hosts in `served`.
pub fn router(app: App, served: guard::Served) -> Router {
    let sockets = Arc::new(tokio::sync::Semaphore::new(guard::MAX_ECHO_SOCKETS));
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/api/v2/debug/health", get(health))
        .route(
            "/api/v2/debug/health/settings",
            get(get_settings).put(move |state, peer, extensions, headers: HeaderMap, body| {
                let served = served.clone();
                async move {
                    match served.check_write(&headers) {
                        Ok(()) => put_settings(state, peer, extensions, body).await,
                        Err(refused) => *refused,
                    }
                }
            }),
        )
        .route("/api/v2/debug/health/history", get(history::get_history))
        .route("/api/v2/debug/ws", get(move |ws| echo(ws, sockets.clone())))
        .route("/health", get(health_page))
        .route("/health/codes", get(codes_page))
        .route(
            "/health/page.css",
            get(|| async { asset("text/css", page::CSS) }),
        )
        .route(
            "/health/page.js",
            get(|| async { asset("text/javascript", page::JS) }),
        )
        .route("/metrics", get(metrics))
        .with_state(app)
}

pub use vantage_proto::report::coder_json;

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn api_error(status: StatusCode, message: &str, detail: &str) -> Response {
    let mut body = json!({ "message": message });
    if !detail.is_empty() {
        body["detail"] = json!(detail);
    }
    json_response(status, coder_json(&body))
}

fn unavailable() -> Response {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is shutting down.",
        "",
    )
}

async fn health(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let format = q.get("format").map(String::as_str).unwrap_or("");
    if !matches!(format, "" | "json" | "text") {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid format option {format:?}."),
            "Allowed values are: \"json\", \"text\".",
        );
    }
    let force = match guard::bool_param("force", q.get("force")) {
        Ok(f) => f,
        Err(refused) => return *refused,
    };
    if force {
        match app.force().await {
            Ok(()) => {}
            Err(ForceError::Stopped) => return unavailable(),
            Err(ForceError::TimedOut(names)) => {
                return api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Healthcheck timed out.",
                    &ForceError::still_running(&names),
                );
            }
        }
    }
    let Ok((report, _)) = app.agg.report().await else {
        return unavailable();
    };
    if format == "text" {
        let mut r = report.to_text().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    let body = app.report_json.of(&report).await;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// Coder's settings body, plus (additive, optional) the dismissals' end times and reasons.
#[derive(Debug, Serialize, Deserialize)]
struct HealthSettings {
    dismissed_healthchecks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dismissals: Vec<DismissalBody>,
}

/// One dismissal's note: `until` (RFC 3339; absent: until undismissed) and `reason`; the
/// server fills in `actor` and `at`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DismissalBody {
    section: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    reason: String,
    #[serde(default, skip_deserializing, skip_serializing_if = "String::is_empty")]
    actor: String,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<SettingsView> for HealthSettings {
    fn from(view: SettingsView) -> Self {
        HealthSettings {
            dismissed_healthchecks: view.dismissed_names(),
            dismissals: view
                .notes
                .into_iter()
                .map(|n| DismissalBody {
                    section: n.section.settings_name().to_owned(),
                    until: n.until,
                    reason: n.reason,
                    actor: n.actor,
                    at: Some(n.at),
                })
                .collect(),
        }
    }
}

async fn get_settings(State(app): State<App>) -> Response {
    match app.settings().await {
        Ok(view) => json_response(StatusCode::OK, coder_json(&HealthSettings::from(view))),
        Err(_) => unavailable(),
    }
}

async fn put_settings(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let parsed: HealthSettings = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "Invalid health settings.",
                &format!(
                    "expected {{\"dismissed_healthchecks\": [\"DERP\", ...], \"dismissals\": [{{\"section\": \"DERP\", \"until\": \"<RFC 3339>\", \"reason\": \"...\"}}] (optional)}}: {e}"
                ),
            );
        }
    };
    let wanted = match App::parse_sections(&parsed.dismissed_healthchecks) {
        Ok(w) => w,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "Failed to validate health settings.",
                &e.to_string(),
            );
        }
    };
    let given = parsed.dismissals.into_iter().map(|b| GivenNote {
        section: b.section,
        until: Ok(b.until),
        reason: b.reason,
    });
    let notes = match App::parse_notes(&wanted, given) {
        Ok(n) => n,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "Failed to validate health settings.",
                &e,
            );
        }
    };
    match app
        .update_settings(wanted, notes, &App::actor(&extensions, "http", Some(peer)))
        .await
    {
        Ok(Some(dismissed)) => {
            let view = app.settings_view(dismissed).await;
            json_response(StatusCode::OK, coder_json(&HealthSettings::from(view)))
        }
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(status) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Failed to update health settings.",
            status.message(),
        ),
    }
}

/// `GET /api/v2/debug/derp-map`: the effective DERP map (Tailscale JSON), for
/// `vantage netcheck` and for operators.
pub fn derp_map_router(map_json: tokio::sync::watch::Receiver<std::sync::Arc<String>>) -> Router {
    Router::new().route(
        "/api/v2/debug/derp-map",
        get(move || {
            let map_json = map_json.borrow().clone();
            async move {
                let mut r = (*map_json).clone().into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
        }),
    )
}

/// At most [`guard::MAX_ECHO_SOCKETS`] at once, messages up to [`guard::MAX_ECHO_MESSAGE`].
async fn echo(ws: WebSocketUpgrade, sockets: Arc<tokio::sync::Semaphore>) -> Response {
    let Ok(permit) = sockets.try_acquire_owned() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many WebSocket echo connections.",
            &format!("at most {} at once", guard::MAX_ECHO_SOCKETS),
        );
    };
    ws.max_message_size(guard::MAX_ECHO_MESSAGE)
        .max_frame_size(guard::MAX_ECHO_MESSAGE)
        .on_upgrade(move |socket| async move {
            echo_loop(socket).await;
            drop(permit);
        })
}

/// Echo each message back with its type; 10 s per message; close "going away" / `goodbye`,
/// or 1009 "message too big" past the cap.
async fn echo_loop(mut socket: WebSocket) {
    loop {
        let msg = match tokio::time::timeout(ECHO_TIMEOUT, socket.recv()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) if is_too_big(&e) => {
                let _ = socket
                    .send(WsMessage::Close(Some(CloseFrame {
                        code: 1009,
                        reason: format!(
                            "message too big: at most {} bytes",
                            guard::MAX_ECHO_MESSAGE
                        )
                        .into(),
                    })))
                    .await;
                return;
            }
            _ => break,
        };
        let reply = match msg {
            WsMessage::Text(t) => WsMessage::Text(t),
            WsMessage::Binary(b) => WsMessage::Binary(b),
            WsMessage::Close(_) => break,
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
        };
        if tokio::time::timeout(ECHO_TIMEOUT, socket.send(reply))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
    }
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: 1001,
            reason: "goodbye".into(),
        })))
        .await;
}

/// Whether a WebSocket error is a message or frame over the size cap.
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}

async fn health_page() -> Html<&'static str> {
    Html(page::PAGE)
}

/// A static asset of the page.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn codes_page() -> Html<String> {
    Html(page::codes_page())
}

async fn metrics(
    State(app): State<App>,
    refusals: Option<axum::Extension<std::sync::Arc<crate::security::Counters>>>,
) -> Response {
    let Ok((report, _)) = app.agg.report().await else {
        return unavailable();
    };
    let vantages = app.agg.vantages().await.unwrap_or_default();
    let targets = app.agg.targets().await.unwrap_or_default();
    let body = metrics::render(&metrics::Scrape {
        report: &report,
        vantages: &vantages,
        stats: &app.agg.stats(),
        watchers: app.watchers.load(std::sync::atomic::Ordering::Relaxed),
        targets: &targets,
        writer: app.writer.as_ref(),
        alerts: app.alerts.as_ref(),
        refusals: refusals.as_ref().map(|e| e.0.as_ref()),
    });
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}
