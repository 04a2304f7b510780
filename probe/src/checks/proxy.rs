//! The workspace-proxy poll (Coder's `proxyhealth`, `docs/coder-health.md#background-proxy-poller`): `GET <proxy
//! url>/healthz-report`, one attempt, bounded by a timeout (5 s by default), body capped at
//! [`MAX_BODY`](super::MAX_BODY). Every outcome is a status with the proxy's or our own
//! errors: `ok`, `unhealthy`, `unreachable` or `unregistered`.

use std::time::Duration;

use tokio::time::Instant;
use vantage_proto::pb;

use super::MAX_BODY;
use super::chain;
use crate::rules::workspace_proxy::{
    STATUS_OK, STATUS_UNHEALTHY, STATUS_UNREACHABLE, STATUS_UNREGISTERED,
};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The header a Coder build (primary or proxy) sets on every response.
pub const BUILD_VERSION_HEADER: &str = "X-Coder-Build-Version";

/// Why the body could not be read in full.
enum BodyError {
    TooLarge,
    Read(String),
    TimedOut,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => write!(f, "body is larger than {MAX_BODY} bytes"),
            BodyError::Read(e) => write!(f, "read body: {e}"),
            BodyError::TimedOut => f.write_str("read body: timed out"),
        }
    }
}

/// Poll one proxy. Never fails: a failure is a status with errors.
pub async fn check(
    client: &reqwest::Client,
    target: &pb::WorkspaceProxyTarget,
    timeout: Duration,
) -> pb::WorkspaceProxyResult {
    let mut result = pb::WorkspaceProxyResult {
        name: target.name.clone(),
        ..Default::default()
    };
    let base = target.url.trim();
    if base.is_empty() {
        // Registered but not started: nothing to poll yet.
        result.status = STATUS_UNREGISTERED.to_owned();
        return result;
    }
    let req_url = format!("{}/healthz-report", base.strip_suffix('/').unwrap_or(base));
    let endpoint = match report_endpoint(&req_url) {
        Ok(u) => u,
        Err(e) => return unhealthy(result, e),
    };

    let deadline = Instant::now() + timeout;
    let response = match send(client, endpoint, &req_url, timeout, deadline).await {
        Ok(r) => r,
        Err(error) => {
            result.status = STATUS_UNREACHABLE.to_owned();
            result.errors.push(error);
            return result;
        }
    };

    let status = response.status().as_u16();
    let build_version = header(&response, BUILD_VERSION_HEADER);
    let content_type = header(&response, reqwest::header::CONTENT_TYPE.as_str());
    let body = read_body(response, deadline).await;

    if status != 200 {
        return unhealthy(result, status_error(status, &req_url, &body));
    }
    let decoded = match &body {
        Ok(bytes) => decode_report(bytes),
        Err(e) => Err(e.to_string()),
    };
    match decoded {
        Ok((errors, warnings)) => {
            result.status = if errors.is_empty() {
                STATUS_OK
            } else {
                STATUS_UNHEALTHY
            }
            .to_owned();
            result.errors = errors;
            result.warnings = warnings;
            result.version = build_version;
            result
        }
        Err(decode_err) => unhealthy(
            result,
            not_a_report(&req_url, &build_version, &content_type, &decode_err),
        ),
    }
}

/// The report URL parsed, or the error for an unusable proxy URL (only http and https).
fn report_endpoint(req_url: &str) -> Result<url::Url, String> {
    match url::Url::parse(req_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        Ok(u) => Err(format!(
            "failed to parse proxy url: unsupported scheme {:?} (expected http or https)",
            u.scheme()
        )),
        Err(e) => Err(format!("failed to parse proxy url: {e}")),
    }
}

/// Sends the GET before `deadline`; the error is the text of an unreachable proxy.
async fn send(
    client: &reqwest::Client,
    endpoint: url::Url,
    req_url: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<reqwest::Response, String> {
    match tokio::time::timeout_at(deadline, client.get(endpoint).send()).await {
        Err(_) => Err(format!(
            "request to proxy failed: Get {req_url:?}: timed out after {}",
            vantage_proto::report::go_duration(timeout)
        )),
        Ok(Err(e)) => Err(format!("request to proxy failed: {}", chain(&e))),
        Ok(Ok(r)) => Ok(r),
    }
}

/// A response header as text, `""` when absent or not visible ASCII.
fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The two-line error for a 200 whose body is not a health report: whether the answer looks
/// like a Coder build at all, then why the body was refused (bad JSON, or not JSON).
fn not_a_report(
    req_url: &str,
    build_version: &str,
    content_type: &str,
    decode_err: &str,
) -> String {
    let not_proxy = if build_version.is_empty() {
        format!("proxy url {req_url:?} is not a coder proxy instance, verify the url is correct")
    } else {
        format!(
            "proxy url {req_url:?} is a coder instance, but unable to decode the response payload. Could this be a primary coderd and not a proxy?"
        )
    };
    let mime = mime_type(content_type);
    let detail = if mime == "application/json" {
        format!("received a status code 200, but failed to decode health report body: {decode_err}")
    } else {
        format!(
            "attempted to query health at {req_url:?} but got back the incorrect content type: unexpected non-JSON response {content_type:?}"
        )
    };
    format!("{not_proxy}\n{detail}")
}

fn unhealthy(mut result: pb::WorkspaceProxyResult, error: String) -> pb::WorkspaceProxyResult {
    result.status = STATUS_UNHEALTHY.to_owned();
    result.errors.push(error);
    result
}

/// Read at most [`MAX_BODY`] bytes before `deadline`.
async fn read_body(
    mut response: reqwest::Response,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| BodyError::Read(chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(BodyError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// The media type of a `Content-Type` value, lower-cased, without parameters.
fn mime_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decode a health report as Go's `json.Decoder` into `{errors, warnings}` does: the first JSON
/// value only (trailing data is ignored), `null` anywhere is empty, unknown keys are ignored,
/// keys match case-insensitively.
fn decode_report(body: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| {
            // An empty body: Go reports EOF.
            Err(serde::de::Error::custom("EOF"))
        })
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    match value {
        serde_json::Value::Null => {}
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let into = if key.eq_ignore_ascii_case("errors") {
                    &mut errors
                } else if key.eq_ignore_ascii_case("warnings") {
                    &mut warnings
                } else {
                    continue;
                };
                *into = string_list(&key, v)?;
            }
        }
        other => {
            return Err(format!(
                "cannot decode {} as a health report (expected an object with \"errors\" and \"warnings\")",
                json_kind(&other)
            ));
        }
    }
    Ok((errors, warnings))
}

fn string_list(key: &str, v: serde_json::Value) -> Result<Vec<String>, String> {
    match v {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Null => Ok(String::new()),
                other => Err(format!(
                    "cannot decode {} in {key:?} as a string",
                    json_kind(&other)
                )),
            })
            .collect(),
        other => Err(format!(
            "cannot decode {} as {key:?} (expected a list of strings)",
            json_kind(&other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Coder-style API error body.
#[derive(serde::Deserialize)]
struct ApiError {
    message: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    validations: Vec<Validation>,
}

#[derive(serde::Deserialize)]
struct Validation {
    #[serde(default)]
    field: String,
    #[serde(default)]
    detail: String,
}

/// Most bytes of one piece of a proxy's error body copied into the report.
const MAX_ERROR_TEXT: usize = 256;
/// Most validations of a proxy's error body copied into the report.
const MAX_VALIDATIONS: usize = 8;

/// At most [`MAX_ERROR_TEXT`] bytes of `s` (cut on a character boundary, marked with `…`).
fn cut(s: &str) -> String {
    if s.len() <= MAX_ERROR_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The multi-line error for a non-200 answer (shown where newlines are respected). What the
/// proxy sent is cut to a few hundred bytes per piece.
fn status_error(status: u16, req_url: &str, body: &Result<Vec<u8>, BodyError>) -> String {
    let mut out = format!(
        "unexpected status code {status}. \nEncountered error, send a request to {req_url:?} from the host of the vantage that reported this, to debug this issue."
    );
    let bytes = match body {
        Ok(b) => b.as_slice(),
        Err(e) => {
            out.push_str(&format!("\nError: {e}"));
            return out;
        }
    };
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(api) => {
            let (message, detail) = (cut(&api.message), cut(&api.detail));
            out.push_str(&format!(
                "\nError Message: {message}\nError Detail: {detail}"
            ));
            for v in api.validations.iter().take(MAX_VALIDATIONS) {
                out.push_str(&format!(
                    "\n\tValidation: {}={}",
                    cut(&v.field),
                    cut(&v.detail)
                ));
            }
            out.push_str(&format!(
                "\nError: unexpected status code {status}: {message}"
            ));
            if !api.detail.is_empty() {
                out.push_str(&format!("\n\tError: {detail}"));
            }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            if text.is_empty() {
                out.push_str(&format!(
                    "\nError: unexpected status code {status}: empty body"
                ));
            } else {
                out.push_str(&format!(
                    "\nError: unexpected status code {status}: {}",
                    cut(text)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
