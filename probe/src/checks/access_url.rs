//! The Access URL check (Coder §7.1): `GET <access_url>/healthz`, one attempt, 5 s for the whole
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
