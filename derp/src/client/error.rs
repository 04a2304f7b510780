//! Why connecting, sending or receiving failed ([`ClientError`]).

use crate::frame::FrameError;

/// Why connecting, sending or receiving failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used.
    #[error("invalid DERP URL: {0}")]
    InvalidUrl(String),
    /// A step did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// DNS or TCP failed.
    #[error("dial {addr}: {source}")]
    Dial {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS configuration or handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The server answered the `Upgrade: DERP` request with something other than 101.
    #[error("GET failed with status code {status}{hint}: {body}", hint = if (400..500).contains(status) { " (a proxy could be disallowing the use of 'Upgrade: derp')" } else { "" })]
    UpgradeRefused {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The WebSocket upgrade was refused with an HTTP status.
    #[error("websocket upgrade refused with status code {status}: {body}")]
    WebSocketRefused {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The HTTP exchange was not understood.
    #[error("http: {0}")]
    Http(String),
    /// The WebSocket layer failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The DERP handshake failed (rejected, bad box, wrong frames).
    #[error("derp handshake: {0}")]
    Handshake(FrameError),
    /// A frame-level failure after the handshake.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A packet above 64 KiB.
    #[error("packet of {0} bytes exceeds the maximum of 65536")]
    PacketTooLarge(usize),
    /// The connection is gone.
    #[error("connection closed: {0}")]
    Closed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_message_names_the_proxy_hint() {
        let e = ClientError::UpgradeRefused {
            status: 403,
            body: "Forbidden".into(),
        };
        assert_eq!(
            e.to_string(),
            "GET failed with status code 403 (a proxy could be disallowing the use of 'Upgrade: derp'): Forbidden"
        );
        let e = ClientError::UpgradeRefused {
            status: 502,
            body: String::new(),
        };
        assert_eq!(e.to_string(), "GET failed with status code 502: ");
    }
}
