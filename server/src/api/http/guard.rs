//! What the HTTP surface refuses before it does anything: a settings change that is not JSON
//! or names a `Host` this server does not serve (DNS rebinding), query values it does not
//! know, paths it does not serve (404, or gRPC `UNIMPLEMENTED` for a gRPC request), and
//! WebSocket echo sockets beyond the cap.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api_error;

/// Most bytes of one WebSocket echo message (a bigger one is closed with 1009).
pub const MAX_ECHO_MESSAGE: usize = 64 * 1024;
/// Most echo sockets open at once (one more is answered 503).
pub const MAX_ECHO_SOCKETS: usize = 256;

/// The `Host` values this server answers settings changes for: its listen address and its
/// access URL (`host:port`, and the bare host where the port is the scheme's default).
#[derive(Debug, Clone, Default)]
pub struct Served {
    hosts: Arc<Vec<String>>,
}

impl Served {
    /// From the base (listen) URL and the access URL.
    pub fn new(urls: &[&str]) -> Served {
        let mut hosts = Vec::new();
        for u in urls {
            let Ok(u) = url::Url::parse(u) else { continue };
            let Some(host) = u.host_str() else { continue };
            let host = host.to_ascii_lowercase();
            let port = u.port_or_known_default();
            if let Some(p) = port {
                hosts.push(format!("{host}:{p}"));
            }
            if u.port().is_none() {
                hosts.push(host.clone());
            }
            let loopback = host == "127.0.0.1" || host == "[::1]";
            if let (true, Some(p)) = (loopback, port) {
                hosts.push(format!("localhost:{p}"));
            }
        }
        hosts.sort();
        hosts.dedup();
        Served {
            hosts: Arc::new(hosts),
        }
    }

    /// A settings change must be JSON and name a host this server serves.
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            return Err(Box::new(api_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Invalid Content-Type header.",
                &format!("header Content-Type is {content_type:?}; expected \"application/json\""),
            )));
        }
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return Err(Box::new(api_error(
                StatusCode::BAD_REQUEST,
                "Missing Host header.",
                "header Host is required for a settings change",
            )));
        };
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(Box::new(api_error(
                StatusCode::MISDIRECTED_REQUEST,
                "Invalid Host header.",
                &format!(
                    "header Host is {host:?}; this server serves {}",
                    self.hosts.join(", ")
                ),
            )));
        }
        Ok(())
    }
}

/// A boolean query parameter: absent, `true` or `false` (anything else names the parameter).
pub fn bool_param(name: &str, value: Option<&String>) -> Result<bool, Box<Response>> {
    match value.map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Box::new(api_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid query parameter {name:?}."),
            &format!("{name}={other:?}; allowed values are \"true\" and \"false\""),
        ))),
    }
}

/// Any path no route serves: 404 for HTTP, `UNIMPLEMENTED` for a gRPC request.
pub async fn not_found(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no gRPC method {}", request.uri().path()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    api_error(
        StatusCode::NOT_FOUND,
        "Not found.",
        &format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn writes_need_json_and_a_served_host() {
        let s = Served::new(&["http://127.0.0.1:7080", "https://coder.example.com"]);
        let ok = |h: &HeaderMap| s.check_write(h).is_ok();
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        assert!(ok(&headers(&[
            json.clone(),
            (header::HOST, "127.0.0.1:7080")
        ])));
        assert!(ok(&headers(&[
            json.clone(),
            (header::HOST, "localhost:7080")
        ])));
        assert!(ok(&headers(&[
            json.clone(),
            (header::HOST, "coder.example.com")
        ])));
        let status = |h: &HeaderMap| s.check_write(h).err().map(|r| r.status());
        assert_eq!(
            status(&headers(&[
                json.clone(),
                (header::HOST, "evil.example:7080")
            ])),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
        assert_eq!(
            status(&headers(&[
                (header::CONTENT_TYPE, "text/plain"),
                (header::HOST, "127.0.0.1:7080")
            ])),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(status(&headers(&[json])), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn bool_params_name_the_parameter() {
        assert_eq!(bool_param("force", None).ok(), Some(false));
        assert_eq!(bool_param("force", Some(&"true".into())).ok(), Some(true));
        let e = bool_param("force", Some(&"bogus".into())).err();
        assert_eq!(e.map(|r| r.status()), Some(StatusCode::BAD_REQUEST));
    }
}
