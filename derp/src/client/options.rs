//! How to connect ([`ClientOptions`]) and the shared sink for a client's log lines
//! ([`ClientLog`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::key::PrivateKey;
use crate::map::Node;

/// A shared, append-only sink for a client's log lines (Coder's `client_logs`).
#[derive(Debug, Clone, Default)]
pub struct ClientLog(Arc<Mutex<Vec<String>>>);

impl ClientLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a line.
    pub fn push(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::debug!(target: "vantage_derp::client", "{line}");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// A copy of all lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether any line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The client's key; `None` ⇒ a fresh random key per connection.
    pub private_key: Option<PrivateKey>,
    /// Extra CA certificates (PEM bundle) trusted in addition to the system roots.
    pub extra_ca_pem: Option<String>,
    /// `Node.CertName`: the name the certificate must match instead of the host, or
    /// `sha256-raw:<hex>` to pin the SHA-256 of the leaf certificate's DER.
    pub cert_name: Option<String>,
    /// Skip certificate verification (`Node.InsecureForTests`).
    pub insecure_for_tests: bool,
    /// Budget for DNS + TCP + TLS + upgrade + handshake (incl. a WebSocket fallback).
    pub connect_timeout: Duration,
    /// Longest silence tolerated by [`Client::recv`](super::Client::recv) (the server sends
    /// KeepAlive every 60 s).
    pub read_timeout: Duration,
    /// Longest a single frame write may take.
    pub write_timeout: Duration,
    /// Go straight to WebSocket.
    pub force_websocket: bool,
    /// Retry over WebSocket when `Upgrade: DERP` gets a 4xx (Coder's behaviour).
    pub websocket_fallback: bool,
    /// Sets `IsProber` in ClientInfo.
    pub is_prober: bool,
    /// Where log lines go.
    pub log: ClientLog,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            private_key: None,
            extra_ca_pem: None,
            cert_name: None,
            insecure_for_tests: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(10),
            force_websocket: false,
            websocket_fallback: true,
            is_prober: false,
            log: ClientLog::new(),
        }
    }
}

impl ClientOptions {
    /// Applies a map node's TLS settings (`CertName`, `InsecureForTests`).
    pub fn with_node(mut self, node: &Node) -> Self {
        self.cert_name = (!node.cert_name.is_empty()).then(|| node.cert_name.clone());
        self.insecure_for_tests = node.insecure_for_tests;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::WEBSOCKET_FALLBACK_LOG;

    #[test]
    fn client_log_detects_fallback_line() {
        let log = ClientLog::new();
        log.push("connecting");
        assert!(!log.contains(WEBSOCKET_FALLBACK_LOG));
        log.push(format!("{WEBSOCKET_FALLBACK_LOG}: GET failed"));
        assert!(log.contains(WEBSOCKET_FALLBACK_LOG));
        assert_eq!(log.lines().len(), 2);
    }
}
