//! The Access URL check (`docs/coder-health.md#access-url`): `GET <access_url>/healthz`, one attempt, 5 s for the whole
//! exchange, body capped at [`MAX_BODY`](super::MAX_BODY).

use std::sync::Arc;
use std::time::Duration;

use vantage_proto::codes;
use vantage_proto::pb;

use super::{MAX_BODY, http1};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Appended to a body that was cut at [`MAX_BODY`].
pub const TRUNCATED_NOTE: &str = "\n[vantage: response cut at 65536 bytes]";

fn failure(code: &str, message: String) -> Option<pb::Message> {
    Some(pb::Message {
        code: code.to_owned(),
        message,
    })
}

/// What every run of the check against one access URL shares, worked out once: the
/// `/healthz` endpoint, or the failure each run reports (the URL is unset or unusable).
pub struct Plan {
    access_url: String,
    endpoint: Result<http1::Endpoint, pb::Message>,
}

impl Plan {
    pub fn new(access_url: &str) -> Plan {
        let fail = |code: &str, message: String| {
            Err(pb::Message {
                code: code.to_owned(),
                message,
            })
        };
        let endpoint = if access_url.trim().is_empty() {
            fail(codes::EACS01, "Access URL not set".into())
        } else {
            match healthz(access_url) {
                Err(e) => fail(codes::EACS02, format!("parse healthz endpoint: {e}")),
                Ok(url) => http1::Endpoint::new(url)
                    .or_else(|e| fail(codes::EACS03, format!("create healthz request: {e}"))),
            }
        };
        Plan {
            access_url: access_url.to_owned(),
            endpoint,
        }
    }

    /// The access URL as configured.
    pub fn access_url(&self) -> &str {
        &self.access_url
    }
}

/// One run of the check: [`Plan::new`] and [`run`].
pub async fn check(
    tls: &Arc<rustls::ClientConfig>,
    access_url: &str,
    timeout: Duration,
) -> pb::AccessUrlResult {
    run(tls, &Plan::new(access_url), timeout).await
}

/// One run of the check as `plan` says.
pub async fn run(
    tls: &Arc<rustls::ClientConfig>,
    plan: &Plan,
    timeout: Duration,
) -> pb::AccessUrlResult {
    let mut result = pb::AccessUrlResult {
        access_url: plan.access_url.clone(),
        ..Default::default()
    };
    let endpoint = match &plan.endpoint {
        Ok(e) => e,
        Err(failure) => {
            result.failure = Some(failure.clone());
            return result;
        }
    };
    match tokio::time::timeout(timeout, http1::get(tls, endpoint, MAX_BODY)).await {
        Err(_) => {
            result.failure = failure(
                codes::EACS03,
                format!(
                    "get healthz endpoint: Get {:?}: timed out after {}",
                    endpoint.shown(),
                    vantage_proto::report::go_duration(timeout)
                ),
            );
        }
        Ok(Err(http1::Error::Body(e))) => {
            result.failure = failure(codes::EACS03, format!("read healthz response: {e}"));
        }
        Ok(Err(e)) => {
            result.failure = failure(
                codes::EACS03,
                format!("get healthz endpoint: Get {:?}: {e}", endpoint.shown()),
            );
        }
        Ok(Ok(answer)) => {
            result.reachable = true;
            result.status_code = i32::from(answer.status.as_u16());
            result.healthz_response = String::from_utf8_lossy(&answer.body).into_owned();
            if answer.truncated {
                result.healthz_response.push_str(TRUNCATED_NOTE);
            }
            result.body_truncated = answer.truncated;
        }
    }
    result
}

/// `<access_url>/healthz`: the access URL's path, query and fragment replaced, as resolving
/// `/healthz` against it does.
fn healthz(access_url: &str) -> Result<url::Url, url::ParseError> {
    let mut url = url::Url::parse(access_url)?;
    if url.cannot_be_a_base() {
        return Err(url::ParseError::RelativeUrlWithCannotBeABaseBase);
    }
    url.set_path("/healthz");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;
    use crate::checks::CheckContext;
    use crate::testutil;

    fn ctx(extra: &[rustls::pki_types::CertificateDer<'static>]) -> CheckContext {
        CheckContext::new(crate::tls::client_config(extra).unwrap()).unwrap()
    }

    fn code(r: &pb::AccessUrlResult) -> &str {
        r.failure.as_ref().map_or("", |f| f.code.as_str())
    }

    #[tokio::test]
    async fn answers_from_real_servers() {
        let ok = testutil::http(Router::new().route("/healthz", get(|| async { "OK" }))).await;
        let unavailable = testutil::http(Router::new().route(
            "/healthz",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        ))
        .await;
        let big = testutil::http(
            Router::new().route("/healthz", get(|| async { "x".repeat(MAX_BODY + 10) })),
        )
        .await;
        let c = ctx(&[]);

        let r = check(&c.tls, &format!("http://{ok}"), TIMEOUT).await;
        assert_eq!(
            (
                code(&r),
                r.reachable,
                r.status_code,
                r.healthz_response.as_str()
            ),
            ("", true, 200, "OK")
        );

        let r = check(&c.tls, &format!("http://{unavailable}/"), TIMEOUT).await;
        assert_eq!((code(&r), r.reachable, r.status_code), ("", true, 503));
        let report = crate::rules::access_url(&r);
        assert_eq!(
            report.base.error.as_deref(),
            Some("EACS04: /healthz did not return 200 OK")
        );

        let r = check(&c.tls, &format!("http://{big}"), TIMEOUT).await;
        assert!(r.body_truncated);
        assert_eq!(r.healthz_response.len(), MAX_BODY + TRUNCATED_NOTE.len());
        assert!(r.healthz_response.ends_with(TRUNCATED_NOTE));
    }

    #[tokio::test]
    async fn failures_carry_their_codes() {
        let c = ctx(&[]);
        let silent = testutil::silent().await;
        let closed = testutil::closed_port().await;

        let r = check(&c.tls, "", TIMEOUT).await;
        assert_eq!(
            (code(&r), r.failure.as_ref().unwrap().message.as_str()),
            ("EACS01", "Access URL not set")
        );

        let r = check(&c.tls, "http://[::1", TIMEOUT).await;
        assert_eq!(code(&r), "EACS02");
        assert!(
            r.failure
                .unwrap()
                .message
                .starts_with("parse healthz endpoint: ")
        );

        let r = check(&c.tls, &format!("http://{closed}"), TIMEOUT).await;
        assert_eq!(code(&r), "EACS03");
        let msg = r.failure.unwrap().message;
        assert!(msg.starts_with("get healthz endpoint: "), "{msg}");
        assert!(msg.to_lowercase().contains("connect"), "{msg}");
        assert!(!r.reachable);

        let r = check(
            &c.tls,
            &format!("http://{silent}"),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(code(&r), "EACS03");
        assert!(r.failure.unwrap().message.contains("timed out after 300ms"));
    }

    #[tokio::test]
    async fn self_signed_tls_needs_the_ca() {
        let (cert, key) = testutil::self_signed();
        let addr = testutil::https(
            Router::new().route("/healthz", get(|| async { "OK" })),
            cert.clone(),
            key,
        )
        .await;
        let url = format!("https://localhost:{}", addr.port());

        let r = check(&ctx(&[]).tls, &url, TIMEOUT).await;
        assert_eq!(code(&r), "EACS03");
        assert!(
            r.failure
                .unwrap()
                .message
                .to_lowercase()
                .contains("certificate")
        );

        let r = check(&ctx(&[cert]).tls, &url, TIMEOUT).await;
        assert_eq!((code(&r), r.status_code), ("", 200));
    }

    #[tokio::test]
    async fn redirects_are_followed_as_gos_client_follows_them() {
        use axum::http::header::LOCATION;
        use axum::response::IntoResponse;
        let target = testutil::http(Router::new().route("/ready", get(|| async { "ready" }))).await;
        // /healthz -> (relative) /hop -> (absolute, another server) /ready
        let first = testutil::http(
            Router::new()
                .route(
                    "/healthz",
                    get(|| async { (StatusCode::FOUND, [(LOCATION, "/hop")]).into_response() }),
                )
                .route(
                    "/hop",
                    get(move || async move {
                        let to = format!("http://{target}/ready");
                        (StatusCode::PERMANENT_REDIRECT, [(LOCATION, to)]).into_response()
                    }),
                ),
        )
        .await;
        let c = ctx(&[]);
        let r = check(&c.tls, &format!("http://{first}"), TIMEOUT).await;
        assert_eq!(
            (code(&r), r.status_code, r.healthz_response.as_str()),
            ("", 200, "ready")
        );

        // A loop ends after 10 redirects; the message hides the URL's password.
        let looped = testutil::http(Router::new().route(
            "/healthz",
            get(|| async { (StatusCode::FOUND, [(LOCATION, "/healthz")]).into_response() }),
        ))
        .await;
        let r = check(&c.tls, &format!("http://me:secret@{looped}"), TIMEOUT).await;
        let msg = r.failure.as_ref().unwrap().message.as_str();
        assert_eq!(code(&r), "EACS03");
        assert_eq!(
            msg,
            format!(
                "get healthz endpoint: Get \"http://me:xxxxx@{looped}/healthz\": stopped after 10 redirects"
            )
        );

        // A 3xx without a Location is an answer, as in Go.
        let bare = testutil::http(
            Router::new().route("/healthz", get(|| async { StatusCode::MOVED_PERMANENTLY })),
        )
        .await;
        let r = check(&c.tls, &format!("http://{bare}"), TIMEOUT).await;
        assert_eq!((code(&r), r.reachable, r.status_code), ("", true, 301));

        // A redirect away from HTTP says where it pointed.
        let away = testutil::http(Router::new().route(
            "/healthz",
            get(|| async { (StatusCode::FOUND, [(LOCATION, "ftp://files/")]).into_response() }),
        ))
        .await;
        let r = check(&c.tls, &format!("http://{away}"), TIMEOUT).await;
        let msg = r.failure.unwrap().message;
        assert!(
            msg.ends_with(
                "redirect to \"ftp://files/\": unsupported scheme \"ftp\" (expected http or https)"
            ),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn basic_credentials_reach_the_server() {
        use axum::http::header::AUTHORIZATION;
        let echo = testutil::http(Router::new().route(
            "/healthz",
            get(|headers: axum::http::HeaderMap| async move {
                headers
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }),
        ))
        .await;
        let r = check(
            &ctx(&[]).tls,
            &format!("http://me:s%40cret@{echo}"),
            TIMEOUT,
        )
        .await;
        // base64("me:s@cret")
        assert_eq!(r.healthz_response, "Basic bWU6c0BjcmV0");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_read_failure_and_a_bad_answer_a_get_failure() {
        let short = testutil::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nOK").await;
        let r = check(&ctx(&[]).tls, &format!("http://{short}"), TIMEOUT).await;
        let msg = r.failure.unwrap().message;
        assert!(msg.starts_with("read healthz response: "), "{msg}");
        assert!(!r.reachable);

        let garbage = testutil::raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        let r = check(&ctx(&[]).tls, &format!("http://{garbage}"), TIMEOUT).await;
        let msg = r.failure.unwrap().message;
        assert!(
            msg.starts_with(&format!(
                "get healthz endpoint: Get \"http://{garbage}/healthz\": "
            )),
            "{msg}"
        );
    }
}
