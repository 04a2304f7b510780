//! A stand-in of Coder's REST API for the tests, built from Coder's documentation and source
//! (shapes and status codes, not code): a real axum HTTP server on port 0 with the routes the
//! importer reads, `Coder-Session-Token` checks (401 with the `{message, detail}` envelope),
//! `X-Coder-Build-Version` on every answer, both forms of the workspace-proxy list, an OSS
//! mode where the enterprise routes answer 404, and switches to revoke a token, go away (503),
//! add a DERP region or a proxy, and report a replica error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// What a token may do, as Coder's built-in roles decide it for these routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Member,
    /// A custom role without `workspace_proxy:read` (the proxies route answers 403).
    NoProxyRead,
    /// A custom role that may read the proxies but neither the agents' connection info (the
    /// DERP map) nor the organization's provisioner daemons (both answer 403).
    NoDerpNoDaemonRead,
}

pub const OWNER_TOKEN: &str = "0wnerT0ken-abcdefghijklmnopqrstuv";
pub const MEMBER_TOKEN: &str = "memberT0ke-abcdefghijklmnopqrstuv";
pub const NO_PROXY_TOKEN: &str = "noProxyT0k-abcdefghijklmnopqrstuv";
pub const NO_DERP_NO_DAEMON_TOKEN: &str = "noDerpDaem-abcdefghijklmnopqrstuv";
pub const DEFAULT_ORG: &str = "6f1a9c52-2f1e-4c4e-9a39-0d1b7c0c0a01";

/// The stand-in's state; tests change it through [`CoderStandIn::with`].
#[derive(Debug)]
pub struct Deployment {
    pub version: String,
    pub tokens: HashMap<String, Role>,
    /// Enterprise routes answer 404 `Route not found.`.
    pub oss: bool,
    /// Every route answers 503.
    pub away: bool,
    /// `/workspaceproxies` answers a bare array (older servers).
    pub bare_proxy_list: bool,
    pub derp_map: Value,
    /// `derp_force_websockets` of `/workspaceagents/connection`.
    pub derp_force_websockets: bool,
    pub proxies: Vec<Value>,
    pub daemons: Vec<Value>,
    pub replicas: Vec<Value>,
    /// What Coder's own check says of its database: `None` healthy, else the EDB01 error.
    pub database_error: Option<String>,
    /// Requests seen, by path, and whether each carried a token.
    pub requests: Vec<(String, bool)>,
    /// The build info's `dashboard_url`: the stand-in's own URL, as a Coder's is its access URL.
    pub dashboard_url: String,
    /// WebSocket echoes served at `/api/v2/debug/ws` (to an Owner).
    pub echoes: usize,
}

/// A running stand-in.
pub struct CoderStandIn {
    pub url: String,
    state: Arc<Mutex<Deployment>>,
}

impl CoderStandIn {
    /// An enterprise deployment of `version` with no proxies, daemons or replicas yet.
    pub async fn start(version: &str) -> CoderStandIn {
        let tokens = [
            (OWNER_TOKEN, Role::Owner),
            (MEMBER_TOKEN, Role::Member),
            (NO_PROXY_TOKEN, Role::NoProxyRead),
            (NO_DERP_NO_DAEMON_TOKEN, Role::NoDerpNoDaemonRead),
        ]
        .into_iter()
        .map(|(t, r)| (t.to_owned(), r))
        .collect();
        let state = Arc::new(Mutex::new(Deployment {
            version: version.to_owned(),
            tokens,
            oss: false,
            away: false,
            bare_proxy_list: false,
            derp_map: json!({"Regions": {}}),
            derp_force_websockets: false,
            proxies: Vec::new(),
            daemons: Vec::new(),
            replicas: Vec::new(),
            database_error: None,
            requests: Vec::new(),
            dashboard_url: String::new(),
            echoes: 0,
        }));
        let app = Router::new()
            .route("/api/v2/buildinfo", get(buildinfo))
            .route("/api/v2/workspaceagents/connection", get(connection))
            .route("/api/v2/workspaceproxies", get(workspace_proxies))
            .route("/api/v2/regions", get(regions))
            .route("/api/v2/organizations", get(organizations))
            .route(
                "/api/v2/organizations/{org}/provisionerdaemons",
                get(provisioner_daemons),
            )
            .route("/api/v2/replicas", get(replicas))
            .route("/api/v2/debug/health", get(debug_health))
            .route("/api/v2/debug/ws", get(debug_ws))
            .route("/healthz", get(|| async { "OK" }))
            .fallback(|State(s): State<Arc<Mutex<Deployment>>>| async move {
                let version = lock(&s).version.clone();
                envelope(&version, StatusCode::NOT_FOUND, "Route not found.", None)
            })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        lock(&state).dashboard_url = url.trim_end_matches('/').to_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CoderStandIn { url, state }
    }

    /// Change the deployment.
    pub fn with<R>(&self, f: impl FnOnce(&mut Deployment) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Revoke a token: it answers 401 from now on.
    pub fn revoke(&self, token: &str) {
        self.with(|d| d.tokens.remove(token));
    }
}

fn lock(s: &Mutex<Deployment>) -> std::sync::MutexGuard<'_, Deployment> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A workspace proxy as `/api/v2/workspaceproxies` lists it.
pub fn proxy(name: &str, url: &str, status: &str, errors: &[&str]) -> Value {
    json!({
        "id": format!("00000000-0000-4000-8000-{:012x}", name.len() * 7919 + name.as_bytes()[0] as usize),
        "name": name, "display_name": name.to_uppercase(), "icon_url": "/emojis/1f30f.png",
        "healthy": status == "ok", "path_app_url": url, "wildcard_hostname": "",
        "derp_enabled": true, "derp_only": false,
        "status": {"status": status, "report": {"errors": errors, "warnings": []},
                   "checked_at": chrono::Utc::now().to_rfc3339()},
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "deleted": false, "version": "v2.26.0"
    })
}

/// A provisioner daemon as `…/provisionerdaemons` lists it, last seen now.
pub fn daemon(name: &str, version: &str) -> Value {
    json!({
        "id": format!("d0000000-0000-4000-8000-{:012x}", name.len()), "organization_id": DEFAULT_ORG,
        "key_id": "00000000-0000-0000-0000-000000000001", "key_name": "built-in",
        "created_at": "2026-01-01T00:00:00Z", "last_seen_at": chrono::Utc::now().to_rfc3339(),
        "name": name, "version": version, "api_version": "1.9", "provisioners": ["terraform"],
        "tags": {"scope": "organization", "owner": ""}, "status": "idle",
        "current_job": null, "previous_job": null
    })
}

/// A coderd replica as `/api/v2/replicas` lists it.
pub fn replica(hostname: &str, error: &str) -> Value {
    json!({
        "id": format!("r0000000-0000-4000-8000-{:012x}", hostname.len()), "hostname": hostname,
        "created_at": "2026-01-01T00:00:00Z", "relay_address": format!("http://{hostname}:8080"),
        "region_id": 999, "error": error, "database_latency": 1200
    })
}

type Shared = State<Arc<Mutex<Deployment>>>;

fn envelope(version: &str, status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    let mut body = json!({ "message": message });
    if let Some(d) = detail {
        body["detail"] = json!(d);
    }
    ok(version, status, body)
}

fn ok(version: &str, status: StatusCode, body: Value) -> Response {
    (
        status,
        [("X-Coder-Build-Version", version.to_owned())],
        axum::Json(body),
    )
        .into_response()
}

/// The caller's role, or the answer Coder gives instead (503 away, 401 without a valid token).
fn auth(
    s: &Mutex<Deployment>,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Role, String), Box<Response>> {
    let mut d = lock(s);
    let token = headers
        .get("Coder-Session-Token")
        .and_then(|v| v.to_str().ok());
    d.requests.push((path.to_owned(), token.is_some()));
    if d.away {
        return Err(Box::new(envelope(
            &d.version,
            StatusCode::SERVICE_UNAVAILABLE,
            "Coder is shutting down.",
            None,
        )));
    }
    let Some(token) = token else {
        return Err(Box::new(envelope(
            &d.version,
            StatusCode::UNAUTHORIZED,
            "You must be logged in to perform this action.",
            Some("Cookie \"coder_session_token\" or query parameter must be provided."),
        )));
    };
    match d.tokens.get(token) {
        Some(r) => Ok((*r, d.version.clone())),
        None => Err(Box::new(envelope(
            &d.version,
            StatusCode::UNAUTHORIZED,
            "You must be logged in to perform this action.",
            Some("API key is invalid or expired."),
        ))),
    }
}

async fn buildinfo(State(s): Shared, headers: HeaderMap) -> Response {
    let mut d = lock(&s);
    d.requests.push((
        "/api/v2/buildinfo".into(),
        headers.contains_key("Coder-Session-Token"),
    ));
    if d.away {
        return envelope(
            &d.version,
            StatusCode::SERVICE_UNAVAILABLE,
            "Coder is shutting down.",
            None,
        );
    }
    let body = json!({
        "external_url": "https://github.com/coder/coder", "version": d.version,
        "dashboard_url": d.dashboard_url, "telemetry": false, "workspace_proxy": false,
        "agent_api_version": "2.3", "provisioner_api_version": "1.9", "upgrade_message": "",
        "deployment_id": "11111111-2222-4333-8444-555555555555"
    });
    ok(&d.version, StatusCode::OK, body)
}

async fn connection(State(s): Shared, headers: HeaderMap) -> Response {
    let (role, version) = match auth(&s, "/api/v2/workspaceagents/connection", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if role == Role::NoDerpNoDaemonRead {
        return envelope(&version, StatusCode::FORBIDDEN, "Forbidden.", None);
    }
    let (map, force) = {
        let d = lock(&s);
        (d.derp_map.clone(), d.derp_force_websockets)
    };
    ok(
        &version,
        StatusCode::OK,
        json!({"derp_map": map, "derp_force_websockets": force, "disable_direct_connections": false}),
    )
}

async fn workspace_proxies(State(s): Shared, headers: HeaderMap) -> Response {
    let (role, version) = match auth(&s, "/api/v2/workspaceproxies", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let d = lock(&s);
    if d.oss {
        return envelope(&version, StatusCode::NOT_FOUND, "Route not found.", None);
    }
    if role == Role::NoProxyRead {
        return envelope(
            &version,
            StatusCode::FORBIDDEN,
            "You are not authorized to use this endpoint.",
            None,
        );
    }
    let mut list = vec![primary(&d)];
    list.extend(d.proxies.iter().cloned());
    let body = if d.bare_proxy_list {
        json!(list)
    } else {
        json!({"regions": list})
    };
    ok(&version, StatusCode::OK, body)
}

fn primary(_d: &Deployment) -> Value {
    json!({"id": "11111111-2222-4333-8444-555555555555", "name": "primary", "display_name": "Default",
           "icon_url": "/emojis/1f3e1.png", "healthy": true, "path_app_url": "https://coder.example.com",
           "wildcard_hostname": "", "derp_enabled": true, "derp_only": false,
           "status": {"status": "ok", "report": {"errors": [], "warnings": []}, "checked_at": chrono::Utc::now().to_rfc3339()},
           "created_at": chrono::Utc::now().to_rfc3339(), "updated_at": chrono::Utc::now().to_rfc3339(),
           "deleted": false, "version": ""})
}

async fn regions(State(s): Shared, headers: HeaderMap) -> Response {
    let (_, version) = match auth(&s, "/api/v2/regions", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let d = lock(&s);
    let keys = [
        "id",
        "name",
        "display_name",
        "icon_url",
        "healthy",
        "path_app_url",
        "wildcard_hostname",
    ];
    let reduce = |p: &Value| -> Value {
        keys.iter()
            .map(|k| ((*k).to_owned(), p[*k].clone()))
            .collect()
    };
    let mut list = vec![reduce(&primary(&d))];
    if !d.oss {
        list.extend(
            d.proxies
                .iter()
                .filter(|p| p["derp_only"] != true)
                .map(reduce),
        );
    }
    ok(&version, StatusCode::OK, json!({"regions": list}))
}

async fn organizations(State(s): Shared, headers: HeaderMap) -> Response {
    let (_, version) = match auth(&s, "/api/v2/organizations", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    ok(
        &version,
        StatusCode::OK,
        json!([{
            "id": DEFAULT_ORG, "name": "coder", "display_name": "Coder", "description": "",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "is_default": true, "icon": ""
        }]),
    )
}

async fn provisioner_daemons(
    State(s): Shared,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v2/organizations/{org}/provisionerdaemons");
    let (role, version) = match auth(&s, &path, &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if role == Role::NoDerpNoDaemonRead {
        return envelope(&version, StatusCode::FORBIDDEN, "Forbidden.", None);
    }
    if org != DEFAULT_ORG && org != "default" {
        return envelope(
            &version,
            StatusCode::NOT_FOUND,
            "Resource not found or you do not have access to this resource",
            None,
        );
    }
    let list = lock(&s).daemons.clone();
    ok(&version, StatusCode::OK, json!(list))
}

/// Coder's own report: Owner only (the debug routes answer 403 to everyone else).
async fn debug_health(State(s): Shared, headers: HeaderMap) -> Response {
    let (role, version) = match auth(&s, "/api/v2/debug/health", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if role != Role::Owner {
        return envelope(&version, StatusCode::FORBIDDEN, "Forbidden.", None);
    }
    let d = lock(&s);
    let now = chrono::Utc::now().to_rfc3339();
    let db = match &d.database_error {
        None => json!({"healthy": true, "severity": "ok", "warnings": [], "dismissed": false,
                       "reachable": true, "latency": "1.2ms", "latency_ms": 1, "threshold_ms": 15}),
        Some(e) => {
            json!({"healthy": false, "severity": "error", "warnings": [], "dismissed": false,
                          "error": e, "reachable": false, "latency": "", "latency_ms": 0, "threshold_ms": 15})
        }
    };
    let body = json!({
        "time": now, "healthy": d.database_error.is_none(),
        "severity": if d.database_error.is_none() { "ok" } else { "error" },
        "access_url": {"healthy": true, "severity": "ok", "warnings": [], "dismissed": false,
                       "access_url": "https://coder.example.com", "reachable": true, "status_code": 200,
                       "healthz_response": "OK"},
        "database": db,
        "websocket": {"healthy": true, "severity": "ok", "warnings": [], "dismissed": false, "body": "", "code": 0},
        "coder_version": d.version
    });
    ok(&version, StatusCode::OK, body)
}

/// Coder's WebSocket echo: under `/debug`, so an Owner's session token (401 without a valid
/// token, 403 for any other role); each message is written back with its type.
async fn debug_ws(
    State(s): Shared,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let (role, version) = match auth(&s, "/api/v2/debug/ws", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if role != Role::Owner {
        return envelope(&version, StatusCode::FORBIDDEN, "Forbidden.", None);
    }
    lock(&s).echoes += 1;
    ws.on_upgrade(|mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Text(_) | Message::Binary(_)) && socket.send(m).await.is_err() {
                return;
            }
        }
    })
}

async fn replicas(State(s): Shared, headers: HeaderMap) -> Response {
    let (role, version) = match auth(&s, "/api/v2/replicas", &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let d = lock(&s);
    if d.oss {
        return envelope(&version, StatusCode::NOT_FOUND, "Route not found.", None);
    }
    // Coder hides the replicas from a caller that may not read them.
    if role != Role::Owner {
        return envelope(
            &version,
            StatusCode::NOT_FOUND,
            "Resource not found or you do not have access to this resource",
            None,
        );
    }
    ok(&version, StatusCode::OK, json!(d.replicas))
}
