//! The client side of the gRPC transport, written once for the probe's session, `--once` and
//! the typed client: how a channel to the server is set up ([`endpoint`]) and how a bearer
//! token is presented ([`Bearer`]). Building an [`Endpoint`] does no I/O; connecting is the
//! caller's.

use std::fmt;
use std::time::Duration;

use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

/// Bound on opening the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping interval (when keepalive is on).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a channel sends HTTP/2 keepalive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// No pings: a short exchange (`vantage-probe --once`).
    Off,
    /// Ping every [`KEEPALIVE_INTERVAL`] while a call is open, close after
    /// [`KEEPALIVE_TIMEOUT`] without an answer (the typed client).
    WhileBusy,
    /// As [`KeepAlive::WhileBusy`], and also while no call is open (the probe's long-lived
    /// session, which must notice a server that silently went away).
    Always,
}

/// The endpoint for `url` (e.g. `http://127.0.0.1:7080`): [`CONNECT_TIMEOUT`], `TCP_NODELAY`,
/// and keepalive as `keep_alive` says. Fails on a URL that is not one.
pub fn endpoint(url: &str, keep_alive: KeepAlive) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(match keep_alive {
        KeepAlive::Off => endpoint,
        KeepAlive::WhileBusy => endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT),
        KeepAlive::Always => endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
    })
}

/// A token that cannot be sent: not a valid header value.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InvalidToken(#[from] InvalidMetadataValue);

/// A bearer token as request metadata: `authorization: Bearer <token>`. Put it on a request
/// with [`Bearer::authorize`], or on every call of a client as an [`Interceptor`]. Its
/// `Debug` does not show the token.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// The metadata name the token travels under.
    pub const HEADER: &'static str = "authorization";

    pub fn new(token: &str) -> Result<Bearer, InvalidToken> {
        Ok(Bearer(MetadataValue::try_from(format!("Bearer {token}"))?))
    }

    /// Present the token on `request` (replacing any `authorization` it carries).
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        request.metadata_mut().insert(Self::HEADER, self.0.clone());
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.authorize(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_connect_timeout_and_nodelay() {
        for k in [KeepAlive::Off, KeepAlive::WhileBusy, KeepAlive::Always] {
            let e = endpoint("http://127.0.0.1:7080", k).expect("endpoint");
            assert_eq!(e.get_connect_timeout(), Some(CONNECT_TIMEOUT));
            assert!(e.get_tcp_nodelay());
            assert_eq!(e.uri().to_string(), "http://127.0.0.1:7080/");
        }
    }

    #[test]
    fn endpoint_rejects_what_is_not_a_url() {
        assert!(endpoint("not a url", KeepAlive::Off).is_err());
    }

    #[test]
    fn bearer_sets_the_authorization_metadata() {
        let b = Bearer::new("s3cret").expect("token");
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(Bearer::HEADER, MetadataValue::from_static("Basic x"));
        b.authorize(&mut r);
        let all: Vec<_> = r.metadata().get_all(Bearer::HEADER).iter().collect();
        assert_eq!(all, [&MetadataValue::from_static("Bearer s3cret")]);
        assert!(!format!("{b:?}").contains("s3cret"));

        let mut intercepted = b.clone();
        let r = intercepted.call(Request::new(())).expect("call");
        assert_eq!(
            r.metadata().get(Bearer::HEADER),
            Some(&MetadataValue::from_static("Bearer s3cret"))
        );
    }

    #[test]
    fn bearer_rejects_a_token_that_is_no_header_value() {
        assert!(Bearer::new("line\nbreak").is_err());
    }
}
