//! The Access URL check (`docs/coder-health.md#access-url`): `GET <access_url>/healthz`, one attempt, 5 s for the whole
//! exchange, body capped at [`MAX_BODY`](super::MAX_BODY).

use std::time::Duration;

use vantage_proto::codes;
use vantage_proto::pb;

use super::MAX_BODY;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Appended to a body that was cut at [`MAX_BODY`].
pub const TRUNCATED_NOTE: &str = "\n[vantage: response cut at 65536 bytes]";

fn failure(code: &str, message: String) -> Option<pb::Message> {
    Some(pb::Message {
        code: code.to_owned(),
        message,
    })
}

/// The full error chain, so "connection refused" or "certificate" reaches the operator.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub async fn check(
    client: &reqwest::Client,
    access_url: &str,
    timeout: Duration,
) -> pb::AccessUrlResult {
    let mut result = pb::AccessUrlResult {
        access_url: access_url.to_owned(),
        ..Default::default()
    };
    if access_url.trim().is_empty() {
        result.failure = failure(codes::EACS01, "Access URL not set".into());
        return result;
    }
    let endpoint = match url::Url::parse(access_url).and_then(|u| u.join("/healthz")) {
        Ok(u) => u,
        Err(e) => {
            result.failure = failure(codes::EACS02, format!("parse healthz endpoint: {e}"));
            return result;
        }
    };
    if !matches!(endpoint.scheme(), "http" | "https") {
        result.failure = failure(
            codes::EACS03,
            format!(
                "create healthz request: unsupported scheme {:?} (expected http or https)",
                endpoint.scheme()
            ),
        );
        return result;
    }
    let fetch = async {
        let mut response = client
            .get(endpoint.clone())
            .send()
            .await
            .map_err(|e| format!("get healthz endpoint: {}", chain(&e)))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(format!("read healthz response: {}", chain(&e))),
            }
        }
        Ok((status, body, truncated))
    };
    match tokio::time::timeout(timeout, fetch).await {
        Err(_) => {
            result.failure = failure(
                codes::EACS03,
                format!(
                    "get healthz endpoint: Get {endpoint:?}: timed out after {}",
                    vantage_proto::report::go_duration(timeout)
                ),
            );
        }
        Ok(Err(message)) => result.failure = failure(codes::EACS03, message),
        Ok(Ok((status, body, truncated))) => {
            result.reachable = true;
            result.status_code = i32::from(status);
            result.healthz_response = String::from_utf8_lossy(&body).into_owned();
            if truncated {
                result.healthz_response.push_str(TRUNCATED_NOTE);
            }
            result.body_truncated = truncated;
        }
    }
    result
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

        let r = check(&c.http, &format!("http://{ok}"), TIMEOUT).await;
        assert_eq!(
            (
                code(&r),
                r.reachable,
                r.status_code,
                r.healthz_response.as_str()
            ),
            ("", true, 200, "OK")
        );

        let r = check(&c.http, &format!("http://{unavailable}/"), TIMEOUT).await;
        assert_eq!((code(&r), r.reachable, r.status_code), ("", true, 503));
        let report = crate::rules::access_url(&r);
        assert_eq!(
            report.base.error.as_deref(),
            Some("EACS04: /healthz did not return 200 OK")
        );

        let r = check(&c.http, &format!("http://{big}"), TIMEOUT).await;
        assert!(r.body_truncated);
        assert_eq!(r.healthz_response.len(), MAX_BODY + TRUNCATED_NOTE.len());
        assert!(r.healthz_response.ends_with(TRUNCATED_NOTE));
    }

    #[tokio::test]
    async fn failures_carry_their_codes() {
        let c = ctx(&[]);
        let silent = testutil::silent().await;
        let closed = testutil::closed_port().await;

        let r = check(&c.http, "", TIMEOUT).await;
        assert_eq!(
            (code(&r), r.failure.as_ref().unwrap().message.as_str()),
            ("EACS01", "Access URL not set")
        );

        let r = check(&c.http, "http://[::1", TIMEOUT).await;
        assert_eq!(code(&r), "EACS02");
        assert!(
            r.failure
                .unwrap()
                .message
                .starts_with("parse healthz endpoint: ")
        );

        let r = check(&c.http, &format!("http://{closed}"), TIMEOUT).await;
        assert_eq!(code(&r), "EACS03");
        let msg = r.failure.unwrap().message;
        assert!(msg.starts_with("get healthz endpoint: "), "{msg}");
        assert!(msg.to_lowercase().contains("connect"), "{msg}");
        assert!(!r.reachable);

        let r = check(
            &c.http,
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

        let r = check(&ctx(&[]).http, &url, TIMEOUT).await;
        assert_eq!(code(&r), "EACS03");
        assert!(
            r.failure
                .unwrap()
                .message
                .to_lowercase()
                .contains("certificate")
        );

        let r = check(&ctx(&[cert]).http, &url, TIMEOUT).await;
        assert_eq!((code(&r), r.status_code), ("", 200));
    }
}
