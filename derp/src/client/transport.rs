//! The transport under a DERP connection: TCP (and TLS for `https`/`wss`), the HTTP/1.1
//! `Upgrade: DERP` request, and the WebSocket upgrade (subprotocol `derp`) used as fallback.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use super::options::ClientOptions;
use super::tls::tls_config;
use crate::io::BoxStream;

const MAX_RESPONSE_HEADER: usize = 16 << 10;
const MAX_ERROR_BODY: usize = 1024;

/// Where to connect, from a DERP URL.
pub(super) struct Target {
    tls: bool,
    pub(super) host: String,
    port: u16,
    host_header: String,
    path: String,
}

impl Target {
    pub(super) fn from_url(url: &url::Url) -> Result<Self, ClientError> {
        let tls = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => {
                return Err(ClientError::InvalidUrl(format!(
                    "unsupported scheme {other:?}"
                )));
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(ClientError::InvalidUrl(format!("{url} has no host"))),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url} has no port")))?;
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            tls,
            host,
            port,
            host_header,
            path,
        })
    }
}

/// TCP to the target, then TLS when its scheme asks for it.
pub(super) async fn dial(target: &Target, opts: &ClientOptions) -> Result<BoxStream, ClientError> {
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ClientError::Dial {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let (config, name) = tls_config(target, opts)?;
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| ClientError::Tls(format!("bad server name {name:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

/// The answer to `Upgrade: DERP`.
pub(super) enum Upgrade {
    Switched(BoxStream, Vec<u8>),
    Refused { status: u16, body: String },
}

/// Sends the `Upgrade: DERP` request and reads the answer: 101 (with any bytes read past the
/// headers) or a refusal with a bounded, summarized body.
pub(super) async fn derp_upgrade(
    mut stream: BoxStream,
    target: &Target,
) -> Result<Upgrade, ClientError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nUser-Agent: vantage-derp\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ClientError::Http(format!("write upgrade request: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| ClientError::Http(format!("write upgrade request: {e}")))?;
    let mut buf = Vec::with_capacity(1024);
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_RESPONSE_HEADER {
            return Err(ClientError::Http("response headers too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ClientError::Http(format!("read upgrade response: {e}")))?;
        if n == 0 {
            return Err(ClientError::Http(
                "server closed the connection before answering the upgrade".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| ClientError::Http(format!("bad status line {status_line:?}")))?;
    let rest = buf[header_end..].to_vec();
    if status == 101 {
        return Ok(Upgrade::Switched(stream, rest));
    }
    // Read a bounded part of the body for the error message.
    let content_length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = rest;
    let want = content_length.unwrap_or(MAX_ERROR_BODY).min(MAX_ERROR_BODY);
    while body.len() < want {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    body.truncate(want);
    Ok(Upgrade::Refused {
        status,
        body: summarize_body(&body),
    })
}

/// An error body as one short line: whitespace collapsed, at most 200 characters.
fn summarize_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(200) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The WebSocket upgrade (subprotocol `derp`) over an established stream.
pub(super) async fn websocket_upgrade(
    stream: BoxStream,
    target: &Target,
) -> Result<BoxStream, ClientError> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let scheme = if target.tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}{}", target.host_header, target.path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(format!("request: {e}")))?;
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("derp"),
    );
    let mut config = tungstenite::protocol::WebSocketConfig::default();
    config.max_message_size = Some(4 << 20);
    config.max_frame_size = Some(4 << 20);
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, _response)) => Ok(Box::new(crate::io::tungstenite_stream(ws))),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(|b| summarize_body(&b[..b.len().min(MAX_ERROR_BODY)]))
                .unwrap_or_default();
            Err(ClientError::WebSocketRefused { status, body })
        }
        Err(e) => Err(ClientError::WebSocket(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarized() {
        assert_eq!(
            summarize_body(b"<html>\r\n<head><title>403 Forbidden</title></head>\n</html>\n"),
            "<html> <head><title>403 Forbidden</title></head> </html>"
        );
        let long = summarize_body("é".repeat(300).as_bytes());
        assert_eq!(long.chars().count(), 201);
    }
}
