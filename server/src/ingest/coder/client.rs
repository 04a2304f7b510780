//! The HTTP client of Coder's REST API: every request bounded by a timeout, every body by
//! [`MAX_BODY`]; the token travels as `Coder-Session-Token`, only to the Coder URL (redirects
//! are not followed), and is never part of an error or a log line.

use std::time::Duration;

use futures::StreamExt as _;
use serde::de::DeserializeOwned;

use crate::config::Secret;

/// The header Coder reads the session token from.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body read from Coder.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a request to Coder gave nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoderError {
    /// Connection failure, timeout, or an oversized / unreadable body.
    #[error("{0}")]
    Unreachable(String),
    /// A status other than 2xx, with Coder's `message` (and `detail`) when it sent the envelope.
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// A 2xx body that is not the expected JSON.
    #[error("unexpected body: {0}")]
    Body(String),
}

impl CoderError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CoderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Coder's error envelope.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: String,
}

/// A client of one Coder deployment.
#[derive(Clone)]
pub struct CoderClient {
    http: reqwest::Client,
    base: url::Url,
    token: Option<Secret>,
}

impl CoderClient {
    pub fn new(base: url::Url, token: Option<Secret>) -> Result<CoderClient, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // The token goes to the Coder URL only: never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(CoderClient { http, base, token })
    }

    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// `GET <base><path>` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CoderError> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| CoderError::Unreachable(format!("{path}: {e}")))?;
        let mut req = self.http.get(url).header("Accept", "application/json");
        if let Some(t) = &self.token {
            req = req.header(TOKEN_HEADER, t.expose());
        }
        // Errors from reqwest name the URL, never the headers.
        let resp = req
            .send()
            .await
            .map_err(|e| CoderError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        let body = read_bounded(resp).await?;
        if !status.is_success() {
            let message = match serde_json::from_slice::<Envelope>(&body) {
                Ok(e) if !e.detail.is_empty() => format!("{} ({})", e.message, e.detail),
                Ok(e) => e.message,
                Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
            };
            return Err(CoderError::Status {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| CoderError::Body(e.to_string()))
    }
}

async fn read_bounded(resp: reqwest::Response) -> Result<Vec<u8>, CoderError> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CoderError::Unreachable(e.without_url().to_string()))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(CoderError::Unreachable(format!(
                "the body is larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
