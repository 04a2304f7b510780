//! A DERP client: dial a node's URL (HTTP/1.1 `Upgrade: DERP`, over TLS for `https`), fall back
//! to WebSocket (subprotocol `derp`) when the upgrade is refused with a 4xx, run the handshake
//! (ServerKey → ClientInfo → ServerInfo), then send and receive packets.
//!
//! The connection is split: a writer task owns the write half (fed by a bounded channel, every
//! write bounded by `write_timeout`), and [`Client::recv`] reads through a cancel-safe
//! [`FrameReader`](crate::frame::FrameReader), so `recv` may sit in a `select!`.
//!
//! By concern:
//! - `options`: how to connect ([`ClientOptions`]) and where log lines go ([`ClientLog`]);
//! - `error`: why connecting, sending or receiving failed ([`ClientError`]);
//! - `transport`: TCP, the `Upgrade: DERP` request and the WebSocket fallback;
//! - `tls`: the TLS configuration, `CertName` pins and `InsecureForTests`;
//! - `conn`: the connected, frame-level [`Client`] (handshake, writer task, send, recv);
//! - `received`: frames received after the handshake ([`ReceivedFrame`], [`decode_server_frame`]).

mod conn;
mod error;
mod options;
mod received;
mod tls;
mod transport;

pub use conn::Client;
pub use error::ClientError;
pub use options::{ClientLog, ClientOptions};
pub use received::{ReceivedFrame, decode_server_frame};

/// The log line (prefix) that marks a fallback to WebSocket; Coder's `uses_websocket` test.
pub const WEBSOCKET_FALLBACK_LOG: &str = "We'll use WebSockets on the next connection attempt";
