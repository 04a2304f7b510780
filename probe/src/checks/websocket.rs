//! The Websocket check (`docs/coder-health.md#websocket`): dial `<access_url>/api/v2/debug/ws` (ws/wss by scheme),
//! send the text frames "0", "1", "2" and expect each echoed back; 5 s for the whole check.
//! Against an attached Coder the dial carries `Coder-Session-Token` when the assignment gives
//! one; without one, Coder's answer 401/403 means "reached, echo not checked", not a failure.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use vantage_proto::codes;
use vantage_proto::pb;

use super::chain;
use super::{MAX_BODY, http1};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The echo endpoint, relative to the access URL.
pub const ECHO_PATH: &str = "/api/v2/debug/ws";

fn failed(result: &mut pb::WebsocketResult, code: &str, message: String) {
    result.failure = Some(pb::Message {
        code: code.to_owned(),
        message,
    });
}

/// The echo URL for an access URL: `https` → `wss`, anything else → `ws`.
pub fn echo_url(access_url: &str) -> Result<url::Url, url::ParseError> {
    let mut u = url::Url::parse(access_url)?.join(ECHO_PATH)?;
    let scheme = if u.scheme() == "https" { "wss" } else { "ws" };
    // Changing between special schemes is always allowed.
    let _ = u.set_scheme(scheme);
    Ok(u)
}

/// The header Coder reads a session token from.
pub const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";

/// Why Coder's echo was not checked when the dial had no credentials.
pub const NOT_CHECKED: &str = "the echo was not checked: Coder's /api/v2/debug/ws needs an \
     Owner's session token, and vantaged gives one to probes only with [coder] websocket_token \
     over TLS";

/// What every run of the check against one target shares, worked out once: the echo
/// endpoint, or the failure each run reports.
pub struct Plan {
    target: pb::WebsocketTarget,
    endpoint: Result<http1::Endpoint, pb::Message>,
}

impl Plan {
    pub fn new(target: &pb::WebsocketTarget) -> Plan {
        let endpoint = match echo_url(&target.url) {
            // Coder reports this one without a code.
            Err(e) => Err(pb::Message {
                code: String::new(),
                message: format!("parse access url: {e}"),
            }),
            Ok(url) => http1::Endpoint::new(url).map_err(|e| pb::Message {
                code: codes::EWS01.to_owned(),
                message: format!("websocket dial: {e}"),
            }),
        };
        Plan {
            target: target.clone(),
            endpoint,
        }
    }

    /// The target it was made for.
    pub fn target(&self) -> &pb::WebsocketTarget {
        &self.target
    }
}

/// One run of the check: [`Plan::new`] and [`run`].
pub async fn check(
    tls: &Arc<rustls::ClientConfig>,
    target: &pb::WebsocketTarget,
    timeout: Duration,
) -> pb::WebsocketResult {
    run(tls, &Plan::new(target), timeout).await
}

/// One run of the check as `plan` says.
pub async fn run(
    tls: &Arc<rustls::ClientConfig>,
    plan: &Plan,
    timeout: Duration,
) -> pb::WebsocketResult {
    let mut result = pb::WebsocketResult::default();
    let endpoint = match &plan.endpoint {
        Ok(e) => e,
        Err(failure) => {
            result.failure = Some(failure.clone());
            return result;
        }
    };
    let echoed = echo(tls, endpoint, &plan.target, &mut result);
    if tokio::time::timeout(timeout, echoed).await.is_err() && result.failure.is_none() {
        let code = if result.code == 101 {
            codes::EWS02
        } else {
            codes::EWS01
        };
        let what = if code == codes::EWS01 {
            "websocket dial"
        } else {
            "read message"
        };
        failed(
            &mut result,
            code,
            format!(
                "{what}: timed out after {}",
                vantage_proto::report::go_duration(timeout)
            ),
        );
    }
    result
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// A failed step: its code and message.
type Failure = (&'static str, String);

async fn echo(
    tls: &Arc<rustls::ClientConfig>,
    endpoint: &http1::Endpoint,
    target: &pb::WebsocketTarget,
    result: &mut pb::WebsocketResult,
) {
    let Some(mut ws) = dial(tls, endpoint, target, result).await else {
        return;
    };
    for i in 0..3u8 {
        if let Err((code, message)) = echo_one(&mut ws, i.to_string()).await {
            failed(result, code, message);
            return;
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "goodbye".into(),
        }))
        .await;
}

/// Dials the echo endpoint (an HTTP/1.1 upgrade, RFC 6455 section 4.1) and records the HTTP
/// status (and, on a refusal, the body) in `result`; a failure is recorded as EWS01. Coder
/// refusing a dial without credentials is recorded as `not_checked` instead.
async fn dial(
    tls: &Arc<rustls::ClientConfig>,
    endpoint: &http1::Endpoint,
    target: &pb::WebsocketTarget,
    result: &mut pb::WebsocketResult,
) -> Option<Ws> {
    let dial_failed = |result: &mut pb::WebsocketResult, why: String| {
        failed(result, codes::EWS01, format!("websocket dial: {why}"));
    };
    let key = generate_key();
    let mut request = endpoint
        .get()
        .header(CONNECTION, HeaderValue::from_static("Upgrade"))
        .header(UPGRADE, HeaderValue::from_static("websocket"))
        .header(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"))
        .header(SEC_WEBSOCKET_KEY, key.as_str());
    if !target.session_token.is_empty() {
        let Ok(mut value) = HeaderValue::from_str(&target.session_token) else {
            // The token itself is never repeated.
            dial_failed(
                result,
                "the session token is not a valid HTTP header value".into(),
            );
            return None;
        };
        value.set_sensitive(true);
        request = request.header(SESSION_TOKEN_HEADER, value);
    }
    let request = match request.body(Empty::new()) {
        Ok(r) => r,
        Err(e) => {
            dial_failed(result, e.to_string());
            return None;
        }
    };
    let answer = match endpoint.connect(tls).await {
        Ok(stream) => http1::upgrade(stream, request, MAX_BODY).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(http1::Upgrade::Switched(headers, io)) => {
            result.code = 101;
            if let Err(why) = accepted(&headers, &key) {
                dial_failed(result, why);
                return None;
            }
            Some(WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await)
        }
        Ok(http1::Upgrade::Refused(answer)) => {
            result.code = i32::from(answer.status.as_u16());
            result.body = String::from_utf8_lossy(&answer.body).into_owned();
            let refused = matches!(result.code, 401 | 403);
            if target.coder && target.session_token.is_empty() && refused {
                result.not_checked = NOT_CHECKED.to_owned();
                return None;
            }
            dial_failed(
                result,
                format!(
                    "expected handshake response status code 101 but got {}",
                    answer.status.as_u16()
                ),
            );
            None
        }
        Err(e) => {
            dial_failed(result, e.to_string());
            None
        }
    }
}

/// Whether a `101` answers this dial: `Upgrade: websocket`, `Connection: upgrade` and the
/// `Sec-WebSocket-Accept` derived from our key (RFC 6455 section 4.1, client step 5).
fn accepted(headers: &hyper::HeaderMap, key: &str) -> Result<(), String> {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(UPGRADE, "websocket") {
        return Err("the 101 response lacks \"Upgrade: websocket\"".into());
    }
    if !has(CONNECTION, "upgrade") {
        return Err("the 101 response lacks \"Connection: upgrade\"".into());
    }
    let want = derive_accept_key(key.as_bytes());
    match headers.get(SEC_WEBSOCKET_ACCEPT) {
        Some(got) if got.as_bytes() == want.as_bytes() => Ok(()),
        Some(got) => Err(format!(
            "the 101 response's Sec-WebSocket-Accept is {:?}, expected {want:?}",
            String::from_utf8_lossy(got.as_bytes())
        )),
        None => Err("the 101 response lacks Sec-WebSocket-Accept".into()),
    }
}

/// Sends `want` as a text frame and expects it echoed back.
async fn echo_one(ws: &mut Ws, want: String) -> Result<(), Failure> {
    if let Err(e) = ws.send(Message::text(want.clone())).await {
        return Err((codes::EWS02, format!("write message: {}", chain(&e))));
    }
    let got = next_message(ws).await?;
    check_echo(&want, got)
}

/// The next frame that is not a Ping or Pong.
async fn next_message(ws: &mut Ws) -> Result<Message, Failure> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Ok(m),
            Some(Err(e)) => {
                return Err((codes::EWS02, format!("read message: {}", chain(&e))));
            }
            None => {
                return Err((codes::EWS02, "read message: connection closed".to_owned()));
            }
        }
    }
}

/// Whether `got` is the echo of `want`: EWS03 for another text or frame type, EWS02 for a
/// Close.
fn check_echo(want: &str, got: Message) -> Result<(), Failure> {
    match got {
        Message::Text(text) if text.as_str() == want => Ok(()),
        Message::Text(text) => Err((
            codes::EWS03,
            format!(
                "received incorrect message: wanted {want:?}, got {:?}",
                text.as_str()
            ),
        )),
        Message::Close(frame) => {
            let why = frame
                .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                .unwrap_or_else(|| "no status".into());
            Err((
                codes::EWS02,
                format!("read message: connection closed: {why}"),
            ))
        }
        other => {
            let kind = match other {
                Message::Binary(_) => "binary",
                _ => "frame",
            };
            Err((
                codes::EWS03,
                format!("received incorrect message type: {kind}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_url_follows_scheme() {
        assert_eq!(
            echo_url("https://x.example.com/base").unwrap().as_str(),
            "wss://x.example.com/api/v2/debug/ws"
        );
        assert_eq!(
            echo_url("http://127.0.0.1:8080").unwrap().as_str(),
            "ws://127.0.0.1:8080/api/v2/debug/ws"
        );
        assert!(echo_url("not a url").is_err());
    }
}

#[cfg(test)]
mod server_tests {
    use axum::Router;
    use axum::extract::ws::{Message as WsMsg, WebSocket, WebSocketUpgrade};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;
    use crate::testutil;

    #[derive(Clone, Copy)]
    enum Mode {
        Echo,
        Wrong,
        Binary,
        CloseAfterFirst,
    }

    async fn serve(mut ws: WebSocket, mode: Mode) {
        let mut n = 0;
        while let Some(Ok(m)) = ws.recv().await {
            let WsMsg::Text(t) = m else { continue };
            n += 1;
            let reply = match mode {
                Mode::Echo => WsMsg::Text(t),
                Mode::Wrong => WsMsg::Text("nope".into()),
                Mode::Binary => WsMsg::Binary(t.as_bytes().to_vec().into()),
                Mode::CloseAfterFirst if n > 1 => return,
                Mode::CloseAfterFirst => WsMsg::Text(t),
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    }

    async fn server(mode: Mode) -> String {
        let router = Router::new().route(
            ECHO_PATH,
            get(move |ws: WebSocketUpgrade| async move { ws.on_upgrade(move |s| serve(s, mode)) }),
        );
        format!("http://{}", testutil::http(router).await)
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::tls::client_config(&[]).unwrap()
    }

    fn at(url: &str) -> pb::WebsocketTarget {
        pb::WebsocketTarget {
            url: url.to_owned(),
            ..Default::default()
        }
    }

    fn code(r: &pb::WebsocketResult) -> (&str, &str) {
        r.failure
            .as_ref()
            .map_or(("", ""), |f| (f.code.as_str(), f.message.as_str()))
    }

    #[tokio::test]
    async fn echo_table() {
        let cases = [
            (Mode::Echo, "", ""),
            (
                Mode::Wrong,
                "EWS03",
                "received incorrect message: wanted \"0\", got \"nope\"",
            ),
            (
                Mode::Binary,
                "EWS03",
                "received incorrect message type: binary",
            ),
            (Mode::CloseAfterFirst, "EWS02", "read message: "),
        ];
        for (mode, want_code, want_msg) in cases {
            let url = server(mode).await;
            let r = check(&tls(), &at(&url), TIMEOUT).await;
            let (c, m) = code(&r);
            assert_eq!(c, want_code, "{m}");
            assert!(m.starts_with(want_msg), "{m}");
            assert_eq!(r.code, 101);
        }
    }

    #[tokio::test]
    async fn dial_failures_keep_status_and_body() {
        let forbidden = testutil::http(Router::new().route(
            ECHO_PATH,
            get(|| async { (StatusCode::FORBIDDEN, "no websockets here").into_response() }),
        ))
        .await;
        let r = check(&tls(), &at(&format!("http://{forbidden}")), TIMEOUT).await;
        assert_eq!(code(&r).0, "EWS01");
        assert!(code(&r).1.starts_with("websocket dial: "));
        assert_eq!((r.code, r.body.as_str()), (403, "no websockets here"));

        let closed = testutil::closed_port().await;
        let r = check(&tls(), &at(&format!("http://{closed}")), TIMEOUT).await;
        assert_eq!((code(&r).0, r.code), ("EWS01", 0));

        let silent = testutil::silent().await;
        let r = check(
            &tls(),
            &at(&format!("http://{silent}")),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(code(&r), ("EWS01", "websocket dial: timed out after 300ms"));

        let r = check(&tls(), &at("::not a url"), TIMEOUT).await;
        assert_eq!(code(&r).0, "", "parse errors carry no code, as in Coder");
        assert!(code(&r).1.starts_with("parse access url: "));
    }

    #[tokio::test]
    async fn wss_with_a_given_ca() {
        let (cert, key) = testutil::self_signed();
        let router = Router::new().route(
            ECHO_PATH,
            get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(|s| serve(s, Mode::Echo)) }),
        );
        let addr = testutil::https(router, cert.clone(), key).await;
        let url = format!("https://localhost:{}", addr.port());
        let r = check(&tls(), &at(&url), TIMEOUT).await;
        assert_eq!(code(&r).0, "EWS01");
        let trusted = crate::tls::client_config(&[cert]).unwrap();
        let r = check(&trusted, &at(&url), TIMEOUT).await;
        assert_eq!(code(&r), ("", ""));
    }

    /// Coder's echo: a dial without the Owner's token is refused (401), with it echoed.
    async fn coder_echo() -> String {
        let router = Router::new().route(
            ECHO_PATH,
            get(
                |headers: axum::http::HeaderMap, ws: WebSocketUpgrade| async move {
                    match headers.get(SESSION_TOKEN_HEADER).map(|v| v.as_bytes()) {
                        Some(b"owner") => ws.on_upgrade(|s| serve(s, Mode::Echo)).into_response(),
                        Some(_) => {
                            (StatusCode::FORBIDDEN, "{\"message\":\"Forbidden.\"}").into_response()
                        }
                        None => (StatusCode::UNAUTHORIZED, "{\"message\":\"not logged in\"}")
                            .into_response(),
                    }
                },
            ),
        );
        format!("http://{}", testutil::http(router).await)
    }

    #[tokio::test]
    async fn coders_echo_with_and_without_credentials() {
        let url = coder_echo().await;
        let target = |coder: bool, token: &str| pb::WebsocketTarget {
            url: url.clone(),
            coder,
            session_token: token.to_owned(),
        };
        // No token: reached, not checked, not a failure.
        let r = check(&tls(), &target(true, ""), TIMEOUT).await;
        assert_eq!(code(&r), ("", ""));
        assert_eq!((r.code, r.not_checked.as_str()), (401, NOT_CHECKED));
        // The Owner's token: the echo runs.
        let r = check(&tls(), &target(true, "owner"), TIMEOUT).await;
        assert_eq!((code(&r), r.code), (("", ""), 101));
        assert!(r.not_checked.is_empty());
        // A token Coder refuses is a failure, and the token is not repeated.
        let r = check(&tls(), &target(true, "member-secret"), TIMEOUT).await;
        assert_eq!((code(&r).0, r.code), ("EWS01", 403));
        assert!(!code(&r).1.contains("member-secret"), "{}", code(&r).1);
        // Not Coder's echo: a refusal is a failure as before.
        let r = check(&tls(), &target(false, ""), TIMEOUT).await;
        assert_eq!((code(&r).0, r.code), ("EWS01", 401));
        assert!(r.not_checked.is_empty());
    }

    #[tokio::test]
    async fn a_101_must_prove_it_read_our_key() {
        let wrong = testutil::raw(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: c29tZXRoaW5nIGVsc2U=\r\n\r\n",
        )
        .await;
        let r = check(&tls(), &at(&format!("http://{wrong}")), TIMEOUT).await;
        let (c, m) = code(&r);
        assert_eq!((c, r.code), ("EWS01", 101));
        assert!(
            m.starts_with("websocket dial: the 101 response's Sec-WebSocket-Accept is \"c29tZXRoaW5nIGVsc2U=\""),
            "{m}"
        );

        let no_upgrade =
            testutil::raw(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n").await;
        let r = check(&tls(), &at(&format!("http://{no_upgrade}")), TIMEOUT).await;
        assert_eq!(
            code(&r),
            (
                "EWS01",
                "websocket dial: the 101 response lacks \"Upgrade: websocket\""
            )
        );
    }
}
