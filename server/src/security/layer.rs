//! The authorization layer: one axum middleware in front of every route that maps the HTTP
//! path (or the gRPC method path) to the role it needs, checks the bearer token, puts the
//! [`Principal`] into the request's extensions and counts every refusal by reason. Handlers
//! do not change. Open without a token, as in Coder: `/healthz`, `/readyz`, `grpc.health.v1`,
//! the DERP relay and its probes, `/health/codes`, the page's HTML, script and style sheet,
//! and the WebSocket echo.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::tokens::{Principal, Role};
use super::{Counters, Refusal, TokenStore};

/// What the layer needs: the tokens and the refusal counters.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Arc<TokenStore>,
    pub counters: Arc<Counters>,
}

/// The role a request needs, or `None` when it is open.
pub fn required_role(method: &Method, path: &str, query: Option<&str>) -> Option<Role> {
    if let Some(rpc) = path.strip_prefix("/vantage.v1.") {
        return Some(grpc_role(rpc));
    }
    if path.starts_with("/grpc.health.v1.") {
        return None;
    }
    match path {
        "/healthz" | "/readyz" | "/health" | "/health/codes" | "/api/v2/debug/ws" => None,
        // The page's static files hold no data: the page loads, then asks for a reader token.
        "/health/page.js" | "/health/page.css" => None,
        "/derp" | "/derp/probe" | "/derp/latency-check" => None,
        "/api/v2/debug/health/settings" if method == Method::GET => Some(Role::Reader),
        "/api/v2/debug/health/settings" => Some(Role::Admin),
        "/api/v2/debug/health" if forces(query) => Some(Role::Admin),
        // Reflection, the report, /metrics, the DERP map and anything not listed.
        _ => Some(Role::Reader),
    }
}

/// `?force=…` other than `false` asks every vantage to run: an admin's call.
fn forces(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "force" && v != "false")
    })
}

fn grpc_role(rpc: &str) -> Role {
    match rpc {
        "ProbeService/Attach" => Role::Probe,
        "RegistryService/ProvisionerHeartbeat" => Role::Provisioner,
        "HealthService/UpdateSettings"
        | "HealthService/ForgetVantage"
        | "RegistryService/RegisterWorkspaceProxy"
        | "RegistryService/DeregisterWorkspaceProxy" => Role::Admin,
        _ => Role::Reader,
    }
}

/// The secret of an `Authorization: Bearer <secret>` header; `Err` for another scheme.
fn bearer(req: &Request) -> Option<Result<&str, ()>> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let text = value.to_str().ok();
    Some(
        text.and_then(|t| {
            let (scheme, secret) = t.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| secret.trim())
                .filter(|s| !s.is_empty())
        })
        .ok_or(()),
    )
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A refusal in the caller's protocol: a gRPC status, or 401/403 with Coder's error JSON.
fn refuse(grpc: bool, refusal: Refusal, message: String) -> Response {
    let forbidden = matches!(refusal, Refusal::WrongRole | Refusal::VantageName);
    if grpc {
        let status = if forbidden {
            tonic::Status::permission_denied(message)
        } else {
            tonic::Status::unauthenticated(message)
        };
        return status.into_http::<axum::body::Body>().into_response();
    }
    let code = if forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let body = serde_json::json!({ "message": message });
    let mut r = (code, vantage_proto::report::coder_json(&body)).into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if !forbidden {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The middleware: check the token against the role the request needs.
pub async fn authorize(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(auth.counters.clone());
    let Some(needed) = required_role(req.method(), req.uri().path(), req.uri().query()) else {
        return next.run(req).await;
    };
    let grpc = is_grpc(&req);
    let principal = match bearer(&req) {
        None => {
            auth.counters.count(Refusal::MissingToken);
            let how = if grpc {
                "authorization metadata"
            } else {
                "an Authorization header"
            };
            return refuse(
                grpc,
                Refusal::MissingToken,
                format!(
                    "a token is required: send {how} \"Bearer <token>\" of a token with role {needed}"
                ),
            );
        }
        Some(Err(())) => {
            auth.counters.count(Refusal::MissingToken);
            return refuse(
                grpc,
                Refusal::MissingToken,
                "the authorization is not \"Bearer <token>\"".to_owned(),
            );
        }
        Some(Ok(secret)) => match auth.tokens.lookup(secret) {
            Some(p) => p,
            None => {
                auth.counters.count(Refusal::UnknownToken);
                return refuse(
                    grpc,
                    Refusal::UnknownToken,
                    "the token is not known".to_owned(),
                );
            }
        },
    };
    if !principal.role.satisfies(needed) {
        auth.counters.count(Refusal::WrongRole);
        return refuse(
            grpc,
            Refusal::WrongRole,
            format!(
                "token {:?} has role {}; this needs role {needed}",
                principal.name, principal.role
            ),
        );
    }
    req.extensions_mut().insert::<Arc<Principal>>(principal);
    next.run(req).await
}

/// For `ProbeService.Attach`: whether the request's token may claim vantage `name`. Without
/// a principal (no token file: a trusted loopback client) every name may be claimed.
pub fn may_claim(extensions: &http::Extensions, name: &str) -> Result<(), tonic::Status> {
    let Some(p) = extensions.get::<Arc<Principal>>() else {
        return Ok(());
    };
    if p.may_claim(name) {
        return Ok(());
    }
    if let Some(c) = extensions.get::<Arc<Counters>>() {
        c.count(Refusal::VantageName);
    }
    Err(tonic::Status::permission_denied(format!(
        "token {:?} may not claim vantage name {name:?}: it may claim only names matching {}",
        p.name,
        p.globs()
    )))
}

/// For calls whose role depends on the message (`GetReport{force}`): whether the request's
/// token has `needed`. Without a principal (no token file) everything is allowed.
pub fn require(extensions: &http::Extensions, needed: Role) -> Result<(), tonic::Status> {
    let Some(p) = extensions.get::<Arc<Principal>>() else {
        return Ok(());
    };
    if p.role.satisfies(needed) {
        return Ok(());
    }
    if let Some(c) = extensions.get::<Arc<Counters>>() {
        c.count(Refusal::WrongRole);
    }
    Err(tonic::Status::permission_denied(format!(
        "token {:?} has role {}; this needs role {needed}",
        p.name, p.role
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_surface() {
        let get = Method::GET;
        let cases = [
            ("/healthz", None, None),
            ("/readyz", None, None),
            ("/health", None, None),
            ("/health/codes", None, None),
            ("/health/page.js", None, None),
            ("/health/page.css", None, None),
            ("/api/v2/debug/ws", None, None),
            ("/derp", None, None),
            ("/grpc.health.v1.Health/Check", None, None),
            ("/api/v2/debug/health", None, Some(Role::Reader)),
            (
                "/api/v2/debug/health",
                Some("force=true"),
                Some(Role::Admin),
            ),
            (
                "/api/v2/debug/health",
                Some("force=false"),
                Some(Role::Reader),
            ),
            ("/api/v2/debug/health/settings", None, Some(Role::Reader)),
            ("/metrics", None, Some(Role::Reader)),
            ("/vantage.v1.ProbeService/Attach", None, Some(Role::Probe)),
            ("/vantage.v1.HealthService/Watch", None, Some(Role::Reader)),
            (
                "/vantage.v1.HealthService/ForgetVantage",
                None,
                Some(Role::Admin),
            ),
            (
                "/vantage.v1.HealthService/UpdateSettings",
                None,
                Some(Role::Admin),
            ),
            (
                "/vantage.v1.RegistryService/ProvisionerHeartbeat",
                None,
                Some(Role::Provisioner),
            ),
            (
                "/vantage.v1.RegistryService/RegisterWorkspaceProxy",
                None,
                Some(Role::Admin),
            ),
            (
                "/vantage.v1.RegistryService/ListWorkspaceProxies",
                None,
                Some(Role::Reader),
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
                Some(Role::Reader),
            ),
        ];
        for (path, query, role) in cases {
            assert_eq!(required_role(&get, path, query), role, "{path}?{query:?}");
        }
        assert_eq!(
            required_role(&Method::PUT, "/api/v2/debug/health/settings", None),
            Some(Role::Admin)
        );
    }

    #[test]
    fn admin_satisfies_every_role_and_the_others_only_their_own() {
        for r in Role::ALL {
            assert!(Role::Admin.satisfies(r));
        }
        assert!(!Role::Reader.satisfies(Role::Admin));
        assert!(!Role::Probe.satisfies(Role::Reader));
        assert!(!Role::Reader.satisfies(Role::Probe));
    }
}
