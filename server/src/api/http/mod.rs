//! The HTTP/1.1 surface: `/healthz`, Coder's `/api/v2/debug/health` (+ settings, + the
//! WebSocket echo), the `/health` page, code docs and `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use serde_json::json;

use crate::api::{App, ForceError};

mod history;
mod metrics;
mod page;

/// How long the echo endpoint waits for each message.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/api/v2/debug/health", get(health))
        .route(
            "/api/v2/debug/health/settings",
            get(get_settings).put(put_settings),
        )
        .route("/api/v2/debug/health/history", get(history::get_history))
        .route("/api/v2/debug/ws", get(echo))
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
    if q.get("force").map(String::as_str) == Some("true") {
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
    json_response(StatusCode::OK, coder_json(&*report))
}

#[derive(Debug, Serialize, Deserialize)]
struct HealthSettings {
    dismissed_healthchecks: Vec<String>,
}

fn settings_body(dismissed: &[vantage_proto::Section]) -> HealthSettings {
    HealthSettings {
        dismissed_healthchecks: crate::api::dismissed_names(dismissed),
    }
}

async fn get_settings(State(app): State<App>) -> Response {
    match app.agg.settings(None).await {
        Ok(s) => json_response(StatusCode::OK, coder_json(&settings_body(&s.dismissed))),
        Err(_) => unavailable(),
    }
}

async fn put_settings(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: Bytes,
) -> Response {
    let parsed: HealthSettings = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "Invalid health settings.",
                &format!("expected {{\"dismissed_healthchecks\": [\"DERP\", ...]}}: {e}"),
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
    match app.update_settings(wanted, &format!("http {peer}")).await {
        Ok(Some(dismissed)) => {
            json_response(StatusCode::OK, coder_json(&settings_body(&dismissed)))
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
pub fn derp_map_router(map_json: std::sync::Arc<String>) -> Router {
    Router::new().route(
        "/api/v2/debug/derp-map",
        get(move || {
            let map_json = map_json.clone();
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

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(echo_loop)
}

/// Echo each message back with its type; 10 s per message; close "going away" / `goodbye`.
async fn echo_loop(mut socket: WebSocket) {
    loop {
        let msg = match tokio::time::timeout(ECHO_TIMEOUT, socket.recv()).await {
            Ok(Some(Ok(m))) => m,
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

async fn metrics(State(app): State<App>) -> Response {
    let Ok((report, _)) = app.agg.report().await else {
        return unavailable();
    };
    let vantages = app.agg.vantages().await.unwrap_or_default();
    let mut body = metrics::render(
        &report,
        &vantages,
        &app.agg.stats(),
        app.watchers.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Ok(targets) = app.agg.targets().await {
        metrics::render_targets(&mut body, &targets);
    }
    if let Some(w) = &app.writer {
        metrics::render_writer(&mut body, w);
    }
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
