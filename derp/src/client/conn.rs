//! The connected, frame-level DERP client: connect (with the WebSocket fallback), the
//! handshake (ServerKey → ClientInfo → ServerInfo), the writer task, send and receive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::WEBSOCKET_FALLBACK_LOG;
use super::error::ClientError;
use super::options::ClientOptions;
use super::received::{ReceivedFrame, decode_server_frame};
use super::transport::{Target, Upgrade, derp_upgrade, dial, websocket_upgrade};
use crate::frame::{self, FrameError, FrameReader};
use crate::handshake::{self, ClientInfo, ServerInfo};
use crate::io::BoxStream;
use crate::key::{PrivateKey, PublicKey};

const WRITE_QUEUE: usize = 64;

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
        let Writer {
            queue: tx,
            error: writer_error,
            task: writer_task,
        } = Writer::spawn(wr, opts.write_timeout);
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

/// The writer task over a connection's write half, fed by a bounded queue.
struct Writer {
    /// Frames to write, in order.
    queue: mpsc::Sender<Vec<u8>>,
    /// Why the task stopped writing, once it has.
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Spawns the task: every queued frame is written and flushed within `write_timeout`; the
    /// first failure is recorded and ends the task, as does closing the queue. The write half is
    /// shut down on the way out.
    fn spawn(mut wr: WriteHalf<BoxStream>, write_timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let writer_error = Arc::new(Mutex::new(None));
        let err_slot = writer_error.clone();
        let task = tokio::spawn(async move {
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
        Self {
            queue: tx,
            error: writer_error,
            task,
        }
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
