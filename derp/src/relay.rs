//! An embedded DERP relay: the HTTP endpoints (`GET /derp` with `Upgrade: DERP` or WebSocket
//! subprotocol `derp`, 426 to a plain GET, `/derp/probe`, `/derp/latency-check`) as an axum
//! [`router`], and the server side of the protocol: handshake, routing SendPacket → RecvPacket
//! by destination key, Ping → Pong, periodic KeepAlive, PeerGone on disconnect.
//!
//! Each connection has a bounded send queue (32 frames by default); when it is full packets are
//! dropped, as DERP does. A client that sends a malformed or oversize frame is disconnected;
//! nobody else is affected. Every wait is bounded (handshake, writes, idle reads).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::frame::{self, FrameError, FrameReader, KEY_LEN};
use crate::handshake::{self, ServerInfo};
use crate::key::{PrivateKey, PublicKey};

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// KeepAlive period (DERP: 60 s).
    pub keepalive: Duration,
    /// Random extra delay added to each KeepAlive period, up to this (DERP: 5 s).
    pub keepalive_jitter: Duration,
    /// Frames queued per client before packets are dropped (DERP: 32).
    pub queue_depth: usize,
    /// Budget to write ServerKey and to receive ClientInfo (DERP: 10 s each).
    pub handshake_timeout: Duration,
    /// Budget for one frame write (DERP: 2 s).
    pub write_timeout: Duration,
    /// A client silent for this long is disconnected.
    pub idle_timeout: Duration,
    /// The ServerInfo sent to clients (token-bucket advice).
    pub server_info: ServerInfo,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(60),
            keepalive_jitter: Duration::from_secs(5),
            queue_depth: 32,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            server_info: ServerInfo::default(),
        }
    }
}

struct Peer {
    conn_id: u64,
    tx: mpsc::Sender<Bytes>,
}

/// The relay's state: its key and the connected clients.
pub struct Relay {
    key: PrivateKey,
    config: RelayConfig,
    peers: Mutex<HashMap<PublicKey, Peer>>,
    next_conn: AtomicU64,
    dropped_packets: AtomicU64,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("public_key", &self.public_key())
            .field("clients", &self.client_count())
            .finish_non_exhaustive()
    }
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest sent-to set kept per connection (for PeerGone notices).
const MAX_TRACKED_PEERS: usize = 1024;

impl Relay {
    /// A relay with a random server key and default settings.
    pub fn new() -> Self {
        Self::with_config(PrivateKey::generate(), RelayConfig::default())
    }

    /// A relay with the given key and settings.
    pub fn with_config(key: PrivateKey, config: RelayConfig) -> Self {
        Self {
            key,
            config,
            peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            dropped_packets: AtomicU64::new(0),
        }
    }

    /// The server's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Number of connected (handshaken) clients.
    pub fn client_count(&self) -> usize {
        self.lock_peers().len()
    }

    /// Packets dropped so far (full queues, unknown destinations).
    pub fn dropped_packets(&self) -> u64 {
        self.dropped_packets.load(Ordering::Relaxed)
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<PublicKey, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the DERP protocol on an already upgraded byte stream until the client leaves or
    /// misbehaves. Errors are the client's fault or the network's; they end only this client.
    pub async fn serve_stream<S>(self: Arc<Self>, stream: S) -> Result<(), FrameError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = FrameReader::new(rd, frame::SERVER_MAX_CLIENT_INFO_LEN);
        let hs = self.config.handshake_timeout;
        let server_key = handshake::server_key_frame(&self.public_key());
        timed(hs, async {
            wr.write_all(&server_key).await?;
            wr.flush().await?;
            Ok(())
        })
        .await?;
        let f = timed(hs, reader.read_frame()).await?;
        if f.frame_type != frame::FRAME_CLIENT_INFO {
            return Err(FrameError::Unexpected(f.frame_type));
        }
        let (client_key, _info) = handshake::parse_client_info(&self.key, &f.payload)?;
        let si = handshake::server_info_frame(
            &self.key,
            &client_key,
            handshake::random_nonce(),
            &self.config.server_info,
        );
        timed(self.config.write_timeout, async {
            wr.write_all(&si).await?;
            wr.flush().await?;
            Ok(())
        })
        .await?;
        reader.set_max_len(frame::SERVER_MAX_FRAME_LEN);

        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(self.config.queue_depth.max(1));
        self.lock_peers().insert(
            client_key,
            Peer {
                conn_id,
                tx: tx.clone(),
            },
        );
        tracing::debug!(client = %client_key.short(), conn_id, "derp client connected");
        let mut writer = tokio::spawn(write_loop(wr, rx, self.config.clone()));
        let mut sent_to: HashSet<PublicKey> = HashSet::new();
        let result = loop {
            let f = tokio::select! {
                r = tokio::time::timeout(self.config.idle_timeout, reader.read_frame()) => match r {
                    Ok(Ok(f)) => f,
                    Ok(Err(FrameError::Eof)) => break Ok(()),
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(FrameError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "client idle",
                    ))),
                },
                _ = &mut writer => break Ok(()),
            };
            if let Err(e) = self.handle_frame(client_key, &tx, &mut sent_to, f) {
                break Err(e);
            }
        };
        writer.abort();
        self.disconnect(client_key, conn_id, &sent_to);
        if let Err(e) = &result {
            tracing::debug!(client = %client_key.short(), error = %e, "derp client dropped");
        }
        result
    }

    fn handle_frame(
        &self,
        me: PublicKey,
        my_tx: &mpsc::Sender<Bytes>,
        sent_to: &mut HashSet<PublicKey>,
        f: frame::Frame,
    ) -> Result<(), FrameError> {
        let p = &f.payload;
        match f.frame_type {
            frame::FRAME_SEND_PACKET => {
                if p.len() > KEY_LEN + frame::MAX_PACKET_SIZE {
                    return Err(FrameError::TooLarge {
                        frame_type: f.frame_type,
                        len: p.len(),
                        max: KEY_LEN + frame::MAX_PACKET_SIZE,
                    });
                }
                let (dst, data) = frame::split_key(p).ok_or_else(|| {
                    FrameError::Malformed(format!("SendPacket of {} bytes", p.len()))
                })?;
                let out = Bytes::from(frame::encode_frame(
                    frame::FRAME_RECV_PACKET,
                    &[me.as_bytes(), data],
                ));
                let delivered = match self.lock_peers().get(&dst) {
                    Some(peer) => peer.tx.try_send(out).is_ok(),
                    None => false,
                };
                if !delivered {
                    self.dropped_packets.fetch_add(1, Ordering::Relaxed);
                }
                if sent_to.len() < MAX_TRACKED_PEERS {
                    sent_to.insert(dst);
                }
            }
            frame::FRAME_PING => {
                if p.len() < 8 || p.len() > 1000 {
                    return Err(FrameError::Malformed(format!("Ping of {} bytes", p.len())));
                }
                let _ = my_tx.try_send(Bytes::from(frame::encode_frame(
                    frame::FRAME_PONG,
                    &[&p[..8]],
                )));
            }
            frame::FRAME_NOTE_PREFERRED if p.len() != 1 => {
                return Err(FrameError::Malformed(format!(
                    "NotePreferred of {} bytes",
                    p.len()
                )));
            }
            frame::FRAME_WATCH_CONNS | frame::FRAME_CLOSE_PEER | frame::FRAME_FORWARD_PACKET => {
                // Mesh privileges need a mesh key; this relay has no mesh.
                return Err(FrameError::Malformed(format!(
                    "mesh frame {:#04x} from a non-mesh client",
                    f.frame_type
                )));
            }
            frame::FRAME_CLIENT_INFO | frame::FRAME_SERVER_KEY | frame::FRAME_SERVER_INFO => {
                return Err(FrameError::Unexpected(f.frame_type));
            }
            // Pong, KeepAlive and unknown types: ignored.
            _ => {}
        }
        Ok(())
    }

    fn disconnect(&self, me: PublicKey, conn_id: u64, sent_to: &HashSet<PublicKey>) {
        let mut peers = self.lock_peers();
        if peers.get(&me).is_some_and(|p| p.conn_id == conn_id) {
            peers.remove(&me);
        }
        let mut gone = me.as_bytes().to_vec();
        gone.push(frame::PEER_GONE_DISCONNECTED);
        let notice = Bytes::from(frame::encode_frame(frame::FRAME_PEER_GONE, &[&gone]));
        for dst in sent_to {
            if let Some(peer) = peers.get(dst) {
                let _ = peer.tx.try_send(notice.clone());
            }
        }
    }
}

async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, FrameError>>,
) -> Result<T, FrameError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress for {limit:?}"),
        ))),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    config: RelayConfig,
) {
    let next_keepalive = || {
        let jitter_ms = u64::try_from(config.keepalive_jitter.as_millis()).unwrap_or(0);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
        };
        tokio::time::Instant::now() + config.keepalive + jitter
    };
    let keepalive = tokio::time::sleep_until(next_keepalive());
    tokio::pin!(keepalive);
    loop {
        let out = tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => b,
                None => break,
            },
            _ = &mut keepalive => {
                keepalive.as_mut().reset(next_keepalive());
                Bytes::from(frame::encode_frame(frame::FRAME_KEEP_ALIVE, &[]))
            }
        };
        let res = tokio::time::timeout(config.write_timeout, async {
            wr.write_all(&out).await?;
            wr.flush().await
        })
        .await;
        if !matches!(res, Ok(Ok(()))) {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// The relay's HTTP routes, ready to be merged into another `Router<()>` and served with
/// `axum::serve`: `GET /derp` (DERP or WebSocket upgrade, 426 otherwise), `GET`/`HEAD`
/// `/derp/probe` and `/derp/latency-check` (200, empty body).
pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/derp", get(derp_handler))
        .route("/derp/probe", get(probe_handler).head(probe_handler))
        .route(
            "/derp/latency-check",
            get(probe_handler).head(probe_handler),
        )
        .with_state(relay)
}

async fn probe_handler() -> Response {
    (
        StatusCode::OK,
        [(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        )],
    )
        .into_response()
}

fn header_lower(req: &Request, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

async fn derp_handler(State(relay): State<Arc<Relay>>, req: Request) -> Response {
    let upgrade = header_lower(&req, header::UPGRADE);
    let protocols = header_lower(&req, header::SEC_WEBSOCKET_PROTOCOL);
    let wants_ws = upgrade == "websocket" && protocols.split(',').any(|p| p.trim() == "derp");
    if wants_ws {
        let (mut parts, _body) = req.into_parts();
        let ws =
            match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(ws) => ws,
                Err(rejection) => return rejection.into_response(),
            };
        return ws
            .protocols(["derp"])
            .max_message_size(4 << 20)
            .max_frame_size(4 << 20)
            .on_upgrade(move |socket| async move {
                if socket.protocol().and_then(|p| p.to_str().ok()) != Some("derp") {
                    // The subprotocol was offered, so this cannot happen; close politely anyway.
                    let mut socket = socket;
                    let _ = socket
                        .send(axum::extract::ws::Message::Close(Some(
                            axum::extract::ws::CloseFrame {
                                code: 1008,
                                reason: "client must speak the derp subprotocol".into(),
                            },
                        )))
                        .await;
                    return;
                }
                let _ = relay.serve_stream(crate::io::axum_stream(socket)).await;
            });
    }
    if (upgrade == "derp" || upgrade == "websocket") && req.version() == http::Version::HTTP_11 {
        let on_upgrade = hyper::upgrade::on(req);
        let handshake_timeout = relay.config.handshake_timeout;
        let public_key = relay.public_key().to_hex();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, on_upgrade).await {
                Ok(Ok(upgraded)) => {
                    let io = hyper_util::rt::TokioIo::new(upgraded);
                    let _ = relay.serve_stream(io).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "derp upgrade failed"),
                Err(_) => tracing::debug!("derp upgrade timed out"),
            }
        });
        let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("DERP"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert("Derp-Version", HeaderValue::from(frame::PROTOCOL_VERSION));
        if let Ok(v) = HeaderValue::from_str(&public_key) {
            h.insert("Derp-Public-Key", v);
        }
        return resp;
    }
    (
        StatusCode::UPGRADE_REQUIRED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "DERP requires connection upgrade\n",
    )
        .into_response()
}
