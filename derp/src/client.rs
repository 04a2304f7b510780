//! A DERP client: dial a node's URL (HTTP/1.1 `Upgrade: DERP`, over TLS for `https`), fall back
//! to WebSocket (subprotocol `derp`) when the upgrade is refused with a 4xx, run the handshake
//! (ServerKey → ClientInfo → ServerInfo), then send and receive packets.
//!
//! The connection is split: a writer task owns the write half (fed by a bounded channel, every
//! write bounded by `write_timeout`), and [`Client::recv`] reads through a cancel-safe
//! [`FrameReader`], so `recv` may sit in a `select!`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::frame::{self, FrameError, FrameReader};
use crate::handshake::{self, ClientInfo, ServerInfo};
use crate::io::BoxStream;
use crate::key::{PrivateKey, PublicKey};
use crate::map::Node;

/// The log line (prefix) that marks a fallback to WebSocket; Coder's `uses_websocket` test.
pub const WEBSOCKET_FALLBACK_LOG: &str = "We'll use WebSockets on the next connection attempt";

const MAX_RESPONSE_HEADER: usize = 16 << 10;
const MAX_ERROR_BODY: usize = 1024;
const WRITE_QUEUE: usize = 64;

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
    /// Longest silence tolerated by [`Client::recv`] (the server sends KeepAlive every 60 s).
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

/// A frame received after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceivedFrame {
    /// A packet relayed from `src`.
    RecvPacket {
        /// The sender's key.
        src: PublicKey,
        /// The packet.
        payload: Bytes,
    },
    /// A (further) ServerInfo.
    ServerInfo(ServerInfo),
    /// KeepAlive.
    KeepAlive,
    /// A Ping from the server (a Pong has already been queued).
    Ping([u8; 8]),
    /// A Pong answering one of our Pings.
    Pong([u8; 8]),
    /// A peer we sent to left, or was never here.
    PeerGone {
        /// The peer.
        peer: PublicKey,
        /// 0x00 disconnected, 0x01 not here.
        reason: u8,
    },
    /// A peer is present (mesh watchers).
    PeerPresent {
        /// The peer.
        peer: PublicKey,
    },
    /// Server health text (empty = healthy again).
    Health {
        /// The problem.
        problem: String,
    },
    /// The server is restarting.
    Restarting {
        /// Reconnect after this.
        reconnect_in: Duration,
        /// Keep trying for this long.
        try_for: Duration,
    },
    /// A frame type the client does not act on.
    Unknown {
        /// Its type byte.
        frame_type: u8,
    },
}

/// Decodes a frame received from a server. Never panics on any input.
pub fn decode_server_frame(
    f: &frame::Frame,
    me: &PrivateKey,
    server: &PublicKey,
) -> Result<ReceivedFrame, FrameError> {
    let p = &f.payload;
    let short = |what: &str, want: usize| {
        FrameError::Malformed(format!(
            "{what} payload of {} bytes, want ≥ {want}",
            p.len()
        ))
    };
    let eight =
        |p: &[u8]| -> Option<[u8; 8]> { p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) };
    Ok(match f.frame_type {
        frame::FRAME_RECV_PACKET => {
            let (src, data) = frame::split_key(p).ok_or_else(|| short("RecvPacket", 32))?;
            ReceivedFrame::RecvPacket {
                src,
                payload: p.slice(p.len() - data.len()..),
            }
        }
        frame::FRAME_KEEP_ALIVE => ReceivedFrame::KeepAlive,
        frame::FRAME_PING => ReceivedFrame::Ping(eight(p).ok_or_else(|| short("Ping", 8))?),
        frame::FRAME_PONG => ReceivedFrame::Pong(eight(p).ok_or_else(|| short("Pong", 8))?),
        frame::FRAME_PEER_GONE => {
            let (peer, rest) = frame::split_key(p).ok_or_else(|| short("PeerGone", 32))?;
            ReceivedFrame::PeerGone {
                peer,
                reason: rest
                    .first()
                    .copied()
                    .unwrap_or(frame::PEER_GONE_DISCONNECTED),
            }
        }
        frame::FRAME_PEER_PRESENT => {
            let (peer, _) = frame::split_key(p).ok_or_else(|| short("PeerPresent", 32))?;
            ReceivedFrame::PeerPresent { peer }
        }
        frame::FRAME_HEALTH => ReceivedFrame::Health {
            problem: String::from_utf8_lossy(p).into_owned(),
        },
        frame::FRAME_RESTARTING => {
            let b = eight(p).ok_or_else(|| short("Restarting", 8))?;
            let ms = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
            ReceivedFrame::Restarting {
                reconnect_in: Duration::from_millis(u64::from(ms(&b[..4]))),
                try_for: Duration::from_millis(u64::from(ms(&b[4..]))),
            }
        }
        frame::FRAME_SERVER_INFO => {
            ReceivedFrame::ServerInfo(handshake::parse_server_info(me, server, p)?)
        }
        other => ReceivedFrame::Unknown { frame_type: other },
    })
}

/// A connected DERP client.
pub struct Client {
    key: PrivateKey,
    public_key: PublicKey,
    server_key: PublicKey,
    server_info: ServerInfo,
    uses_websocket: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    reader: tokio::sync::Mutex<FrameReader<ReadHalf<BoxStream>>>,
    writer: mpsc::Sender<Vec<u8>>,
    writer_error: Arc<Mutex<Option<String>>>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("public_key", &self.public_key)
            .field("server_key", &self.server_key)
            .field("uses_websocket", &self.uses_websocket)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = self.writer_task.take() {
            task.abort();
        }
    }
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    host_header: String,
    path: String,
}

impl Target {
    fn from_url(url: &url::Url) -> Result<Self, ClientError> {
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

impl Client {
    /// Connects to `url` (`http(s)://host[:port]/derp`) and completes the DERP handshake,
    /// waiting for ServerInfo. The whole attempt is bounded by `opts.connect_timeout`.
    pub async fn connect(url: &url::Url, opts: &ClientOptions) -> Result<Client, ClientError> {
        let deadline = Instant::now() + opts.connect_timeout;
        match tokio::time::timeout_at(deadline, Self::connect_inner(url, opts)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(format!(
                "connect to {url} timed out after {:?}",
                opts.connect_timeout
            ))),
        }
    }

    async fn connect_inner(url: &url::Url, opts: &ClientOptions) -> Result<Client, ClientError> {
        let target = Target::from_url(url)?;
        let key = opts
            .private_key
            .clone()
            .unwrap_or_else(PrivateKey::generate);
        if !opts.force_websocket {
            opts.log
                .push(format!("connecting to {url} with Upgrade: DERP"));
            let stream = dial(&target, opts).await?;
            match derp_upgrade(stream, &target).await? {
                Upgrade::Switched(stream, prefix) => {
                    return Self::handshake(stream, &prefix, key, opts, false).await;
                }
                Upgrade::Refused { status, body }
                    if opts.websocket_fallback && (400..500).contains(&status) =>
                {
                    let reason = ClientError::UpgradeRefused { status, body };
                    opts.log.push(format!("{WEBSOCKET_FALLBACK_LOG}: {reason}"));
                }
                Upgrade::Refused { status, body } => {
                    return Err(ClientError::UpgradeRefused { status, body });
                }
            }
        }
        opts.log.push(format!("connecting to {url} over WebSocket"));
        let stream = dial(&target, opts).await?;
        let ws = websocket_upgrade(stream, &target).await?;
        Self::handshake(ws, &[], key, opts, true).await
    }

    async fn handshake(
        stream: BoxStream,
        prefix: &[u8],
        key: PrivateKey,
        opts: &ClientOptions,
        uses_websocket: bool,
    ) -> Result<Client, ClientError> {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = FrameReader::with_prefix(rd, prefix, frame::CLIENT_MAX_FRAME_LEN);
        let first = reader.read_frame().await.map_err(handshake_err)?;
        if first.frame_type != frame::FRAME_SERVER_KEY {
            return Err(ClientError::Handshake(FrameError::Unexpected(
                first.frame_type,
            )));
        }
        let server_key =
            handshake::parse_server_key(&first.payload).map_err(ClientError::Handshake)?;
        let info = ClientInfo {
            is_prober: opts.is_prober,
            ..ClientInfo::default()
        };
        let ci = handshake::client_info_frame(&key, &server_key, handshake::random_nonce(), &info);
        wr.write_all(&ci)
            .await
            .map_err(|e| ClientError::Handshake(e.into()))?;
        wr.flush()
            .await
            .map_err(|e| ClientError::Handshake(e.into()))?;
        let server_info = loop {
            let f = reader.read_frame().await.map_err(handshake_err)?;
            match f.frame_type {
                frame::FRAME_SERVER_INFO => {
                    break handshake::parse_server_info(&key, &server_key, &f.payload)
                        .map_err(ClientError::Handshake)?;
                }
                frame::FRAME_KEEP_ALIVE => continue,
                other => return Err(ClientError::Handshake(FrameError::Unexpected(other))),
            }
        };
        opts.log.push(format!(
            "connected to server {} as {} (websocket: {uses_websocket})",
            server_key.short(),
            key.public_key().short()
        ));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let writer_error = Arc::new(Mutex::new(None));
        let err_slot = writer_error.clone();
        let write_timeout = opts.write_timeout;
        let writer_task = tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                let res = tokio::time::timeout(write_timeout, async {
                    wr.write_all(&buf).await?;
                    wr.flush().await
                })
                .await;
                let problem = match res {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => format!("write: {e}"),
                    Err(_) => format!("write timed out after {write_timeout:?}"),
                };
                *err_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(problem);
                break;
            }
            let _ = wr.shutdown().await;
        });
        Ok(Client {
            public_key: key.public_key(),
            key,
            server_key,
            server_info,
            uses_websocket,
            read_timeout: opts.read_timeout,
            write_timeout: opts.write_timeout,
            reader: tokio::sync::Mutex::new(reader),
            writer: tx,
            writer_error,
            writer_task: Some(writer_task),
        })
    }

    /// This client's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The server's public key (from ServerKey).
    pub fn server_key(&self) -> PublicKey {
        self.server_key
    }

    /// The ServerInfo received during the handshake.
    pub fn server_info(&self) -> ServerInfo {
        self.server_info
    }

    /// Whether this connection runs over WebSocket.
    pub fn uses_websocket(&self) -> bool {
        self.uses_websocket
    }

    fn closed_error(&self) -> ClientError {
        let why = self
            .writer_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "writer stopped".into());
        ClientError::Closed(why)
    }

    async fn queue(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        match tokio::time::timeout(self.write_timeout, self.writer.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout(format!(
                "send queue full for {:?}",
                self.write_timeout
            ))),
        }
    }

    /// Sends `payload` (≤ 64 KiB) to the client with key `dst` through the server.
    pub async fn send(&self, dst: PublicKey, payload: &[u8]) -> Result<(), ClientError> {
        if payload.len() > frame::MAX_PACKET_SIZE {
            return Err(ClientError::PacketTooLarge(payload.len()));
        }
        self.queue(frame::encode_frame(
            frame::FRAME_SEND_PACKET,
            &[dst.as_bytes(), payload],
        ))
        .await
    }

    /// Sends a Ping with 8 bytes of data (the server answers with a Pong).
    pub async fn send_ping(&self, data: [u8; 8]) -> Result<(), ClientError> {
        self.queue(frame::encode_frame(frame::FRAME_PING, &[&data]))
            .await
    }

    /// Flushes queued frames (bounded by `write_timeout`) and closes the connection.
    pub async fn close(mut self) {
        let task = self.writer_task.take();
        // Dropping the only sender ends the writer loop once the queue is drained.
        let (placeholder, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writer, placeholder));
        if let Some(mut task) = task
            && tokio::time::timeout(self.write_timeout, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    /// Sends raw bytes on the connection (tests of server robustness).
    #[doc(hidden)]
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.queue(bytes).await
    }

    /// Receives the next frame, waiting at most `read_timeout`. Pings are answered with a Pong
    /// automatically (and still returned). Cancel-safe.
    pub async fn recv(&self) -> Result<ReceivedFrame, ClientError> {
        let mut reader = self.reader.lock().await;
        let f = match tokio::time::timeout(self.read_timeout, reader.read_frame()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "no frame from the server for {:?}",
                    self.read_timeout
                )));
            }
        };
        let received = decode_server_frame(&f, &self.key, &self.server_key)?;
        if let ReceivedFrame::Ping(data) = received {
            // Best effort, like the Go client: a full queue drops the Pong.
            let _ = self
                .writer
                .try_send(frame::encode_frame(frame::FRAME_PONG, &[&data]));
        }
        Ok(received)
    }
}

fn handshake_err(e: FrameError) -> ClientError {
    match e {
        FrameError::Eof => ClientError::Handshake(FrameError::Malformed(
            "server closed the connection during the handshake (rejected or handshake failed)"
                .into(),
        )),
        other => ClientError::Handshake(other),
    }
}

async fn dial(target: &Target, opts: &ClientOptions) -> Result<BoxStream, ClientError> {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

fn tls_config(
    target: &Target,
    opts: &ClientOptions,
) -> Result<(Arc<rustls::ClientConfig>, String), ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let pin = opts
        .cert_name
        .as_deref()
        .and_then(|c| c.strip_prefix("sha256-raw:"));
    let mut name = target.host.clone();
    let config = if let Some(pin) = pin {
        let want = crate::hexfmt::decode(pin.trim())
            .filter(|d| d.len() == 32)
            .ok_or_else(|| ClientError::Tls(format!("bad sha256-raw pin {pin:?}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameFreeVerifier {
                pin: Some(want),
                provider: provider(),
            }))
            .with_no_client_auth()
    } else if opts.insecure_for_tests {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameFreeVerifier {
                pin: None,
                provider: provider(),
            }))
            .with_no_client_auth()
    } else {
        if let Some(cert_name) = opts.cert_name.as_deref().filter(|c| !c.is_empty()) {
            name = cert_name.to_string();
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(native_roots().iter().cloned());
        if let Some(pem) = &opts.extra_ca_pem {
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("extra CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("extra CA certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::Tls("extra CA PEM holds no certificate".into()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // No ALPN: DERP needs HTTP/1.1 Upgrade, and offering h2 invites a server to pick it.
    Ok((Arc::new(config), name))
}

/// Accepts a certificate without checking names or chains: either any certificate
/// (`InsecureForTests`) or exactly the one whose DER hashes to the pin. Handshake signatures
/// are still verified, so the peer must hold the certificate's private key.
#[derive(Debug)]
struct NameFreeVerifier {
    pin: Option<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NameFreeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(want) => {
                let got = sha2::Sha256::digest(end_entity.as_ref());
                if got.as_slice() == want.as_slice() {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "certificate sha256 {} does not match the pinned sha256-raw:{}",
                        crate::hexfmt::encode(&got),
                        crate::hexfmt::encode(want)
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

enum Upgrade {
    Switched(BoxStream, Vec<u8>),
    Refused { status: u16, body: String },
}

async fn derp_upgrade(mut stream: BoxStream, target: &Target) -> Result<Upgrade, ClientError> {
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

async fn websocket_upgrade(stream: BoxStream, target: &Target) -> Result<BoxStream, ClientError> {
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

    #[test]
    fn decode_every_server_frame() {
        let me = PrivateKey::generate();
        let server = PrivateKey::generate();
        let sk = server.public_key();
        let peer = PrivateKey::generate().public_key();
        let dec = |ty: u8, payload: Vec<u8>| {
            decode_server_frame(
                &frame::Frame {
                    frame_type: ty,
                    payload: Bytes::from(payload),
                },
                &me,
                &sk,
            )
        };
        let mut pkt = peer.as_bytes().to_vec();
        pkt.extend_from_slice(b"hi");
        assert_eq!(
            dec(frame::FRAME_RECV_PACKET, pkt).expect("pkt"),
            ReceivedFrame::RecvPacket {
                src: peer,
                payload: Bytes::from_static(b"hi")
            }
        );
        assert!(dec(frame::FRAME_RECV_PACKET, vec![0; 31]).is_err());
        assert_eq!(
            dec(frame::FRAME_KEEP_ALIVE, vec![]).expect("ka"),
            ReceivedFrame::KeepAlive
        );
        assert_eq!(
            dec(frame::FRAME_PING, (1..=8).collect()).expect("ping"),
            ReceivedFrame::Ping([1, 2, 3, 4, 5, 6, 7, 8])
        );
        assert!(dec(frame::FRAME_PONG, vec![1, 2]).is_err());
        assert_eq!(
            dec(frame::FRAME_PEER_GONE, peer.as_bytes().to_vec()).expect("gone"),
            ReceivedFrame::PeerGone { peer, reason: 0 }
        );
        let mut gone = peer.as_bytes().to_vec();
        gone.push(1);
        assert_eq!(
            dec(frame::FRAME_PEER_GONE, gone).expect("gone"),
            ReceivedFrame::PeerGone { peer, reason: 1 }
        );
        assert_eq!(
            dec(frame::FRAME_HEALTH, b"BAD".to_vec()).expect("health"),
            ReceivedFrame::Health {
                problem: "BAD".into()
            }
        );
        assert_eq!(
            dec(frame::FRAME_RESTARTING, vec![0, 0, 0, 1, 0, 0, 0, 2]).expect("restart"),
            ReceivedFrame::Restarting {
                reconnect_in: Duration::from_millis(1),
                try_for: Duration::from_millis(2)
            }
        );
        assert_eq!(
            dec(0x7f, vec![1, 2, 3]).expect("unknown"),
            ReceivedFrame::Unknown { frame_type: 0x7f }
        );
        let si = handshake::server_info_frame(
            &server,
            &me.public_key(),
            [3; 24],
            &ServerInfo::default(),
        );
        assert_eq!(
            dec(frame::FRAME_SERVER_INFO, si[5..].to_vec()).expect("si"),
            ReceivedFrame::ServerInfo(ServerInfo::default())
        );
    }

    #[test]
    fn error_bodies_are_summarized() {
        assert_eq!(
            summarize_body(b"<html>\r\n<head><title>403 Forbidden</title></head>\n</html>\n"),
            "<html> <head><title>403 Forbidden</title></head> </html>"
        );
        let long = summarize_body("é".repeat(300).as_bytes());
        assert_eq!(long.chars().count(), 201);
    }

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
