//! The DERP frame codec: a 5-byte header (frame type, u32 big-endian payload length) followed by
//! the payload, the frame-type numbers and the protocol's size limits (`docs/derp-stun.md#framing`).
//!
//! [`FrameReader`] buffers internally and is cancel-safe: dropping a pending `read_frame` future
//! loses no bytes, so it can sit in a `select!`.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The 8-byte magic at the start of a ServerKey payload: `DERP🔑`.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xF0, 0x9F, 0x94, 0x91];
/// DERP protocol version spoken here.
pub const PROTOCOL_VERSION: u32 = 2;
/// Length of the frame header (type + length).
pub const HEADER_LEN: usize = 5;
/// Length of a raw key on the wire.
pub const KEY_LEN: usize = 32;
/// Length of a NaCl box nonce.
pub const NONCE_LEN: usize = 24;
/// Largest packet carried by SendPacket/RecvPacket (excluding the key).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest info JSON (ClientInfo/ServerInfo) accepted.
pub const MAX_INFO_LEN: usize = 1 << 20;
/// Largest frame a client accepts; larger is a fatal error.
pub const CLIENT_MAX_FRAME_LEN: usize = 1 << 20;
/// Largest ClientInfo frame payload a server accepts.
pub const SERVER_MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// Largest frame a server accepts after the handshake (ForwardPacket: two keys + a packet).
pub const SERVER_MAX_FRAME_LEN: usize = 2 * KEY_LEN + MAX_PACKET_SIZE;
/// Sanity limit for writing a frame.
pub const MAX_WRITE_FRAME_LEN: usize = 10 << 20;

/// ServerKey (S→C): magic ‖ server public key.
pub const FRAME_SERVER_KEY: u8 = 0x01;
/// ClientInfo (C→S): client key ‖ nonce ‖ box(JSON).
pub const FRAME_CLIENT_INFO: u8 = 0x02;
/// ServerInfo (S→C): nonce ‖ box(JSON).
pub const FRAME_SERVER_INFO: u8 = 0x03;
/// SendPacket (C→S): destination key ‖ packet.
pub const FRAME_SEND_PACKET: u8 = 0x04;
/// RecvPacket (S→C): source key ‖ packet.
pub const FRAME_RECV_PACKET: u8 = 0x05;
/// KeepAlive (S→C): empty.
pub const FRAME_KEEP_ALIVE: u8 = 0x06;
/// NotePreferred (C→S): one byte.
pub const FRAME_NOTE_PREFERRED: u8 = 0x07;
/// PeerGone (S→C): peer key ‖ reason.
pub const FRAME_PEER_GONE: u8 = 0x08;
/// PeerPresent (S→C, mesh watchers).
pub const FRAME_PEER_PRESENT: u8 = 0x09;
/// ForwardPacket (C→S, mesh).
pub const FRAME_FORWARD_PACKET: u8 = 0x0a;
/// WatchConns (C→S, mesh).
pub const FRAME_WATCH_CONNS: u8 = 0x10;
/// ClosePeer (C→S, mesh).
pub const FRAME_CLOSE_PEER: u8 = 0x11;
/// Ping: 8 opaque bytes.
pub const FRAME_PING: u8 = 0x12;
/// Pong: the 8 bytes being answered.
pub const FRAME_PONG: u8 = 0x13;
/// Health (S→C): problem text, empty = healthy.
pub const FRAME_HEALTH: u8 = 0x14;
/// Restarting (S→C): reconnect-in ms ‖ try-for ms.
pub const FRAME_RESTARTING: u8 = 0x15;

/// PeerGone reason: the peer disconnected.
pub const PEER_GONE_DISCONNECTED: u8 = 0x00;
/// PeerGone reason: the destination is not connected here.
pub const PEER_GONE_NOT_HERE: u8 = 0x01;

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed")]
    Eof,
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received of the frame (header included).
        have: usize,
        /// Bytes the frame needed (header included).
        want: usize,
    },
    /// A frame longer than allowed in this context.
    #[error("frame type {frame_type:#04x} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Frame type byte.
        frame_type: u8,
        /// Announced payload length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// A frame whose payload does not fit its type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame that was not expected at this point of the protocol.
    #[error("unexpected frame type {0:#04x}")]
    Unexpected(u8),
}

/// One frame: its type byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type (one of the `FRAME_*` constants, or unknown).
    pub frame_type: u8,
    /// The payload (without the header).
    pub payload: Bytes,
}

/// Encodes a frame (header + concatenated payload parts).
pub fn encode_frame(frame_type: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.push(frame_type);
    // Lengths above u32::MAX are refused by `write_frame`; saturate here (never on the wire).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame_type: u8,
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_WRITE_FRAME_LEN {
        return Err(FrameError::TooLarge {
            frame_type,
            len,
            max: MAX_WRITE_FRAME_LEN,
        });
    }
    w.write_all(&encode_frame(frame_type, parts)).await?;
    w.flush().await?;
    Ok(())
}

/// Reads frames from a byte stream, enforcing a maximum payload length.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with an empty buffer.
    pub fn new(inner: R, max_len: usize) -> Self {
        Self::with_prefix(inner, &[], max_len)
    }

    /// A reader whose stream starts with `prefix` (bytes already read past an HTTP response).
    pub fn with_prefix(inner: R, prefix: &[u8], max_len: usize) -> Self {
        let mut buf = BytesMut::with_capacity(prefix.len().max(4096));
        buf.extend_from_slice(prefix);
        Self {
            inner,
            buf,
            max_len,
        }
    }

    /// Changes the largest accepted payload length.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Reads the next frame. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Frame, FrameError> {
        loop {
            if self.buf.len() >= HEADER_LEN {
                let frame_type = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > self.max_len {
                    return Err(FrameError::TooLarge {
                        frame_type,
                        len,
                        max: self.max_len,
                    });
                }
                if self.buf.len() >= HEADER_LEN + len {
                    self.buf.advance(HEADER_LEN);
                    let payload = self.buf.split_to(len).freeze();
                    return Ok(Frame {
                        frame_type,
                        payload,
                    });
                }
                let missing = HEADER_LEN + len - self.buf.len();
                self.buf.reserve(missing.min(64 << 10));
            } else {
                self.buf.reserve(4096);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Err(FrameError::Eof);
                }
                let want = if self.buf.len() >= HEADER_LEN {
                    let l =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                    HEADER_LEN + usize::try_from(l).unwrap_or(usize::MAX - HEADER_LEN)
                } else {
                    HEADER_LEN
                };
                return Err(FrameError::Truncated {
                    have: self.buf.len(),
                    want,
                });
            }
        }
    }

    /// The inner stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Splits `key ‖ rest` payloads (SendPacket, RecvPacket, PeerGone …).
pub fn split_key(payload: &[u8]) -> Option<(crate::PublicKey, &[u8])> {
    if payload.len() < KEY_LEN {
        return None;
    }
    let (k, rest) = payload.split_at(KEY_LEN);
    Some((crate::PublicKey::from_slice(k)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hexfmt;

    fn h(s: &str) -> Vec<u8> {
        hexfmt::decode(&s.replace(' ', "")).expect("hex")
    }

    async fn decode_one(bytes: &[u8]) -> Result<Frame, FrameError> {
        FrameReader::new(bytes, CLIENT_MAX_FRAME_LEN)
            .read_frame()
            .await
    }

    /// The wire examples of `docs/derp-stun.md#framing`.
    #[tokio::test]
    async fn reference_frame_bytes() {
        let cases: &[(&str, u8, &[u8])] = &[
            (
                "12 00 00 00 08 01 02 03 04 05 06 07 08",
                FRAME_PING,
                &[1, 2, 3, 4, 5, 6, 7, 8],
            ),
            (
                "13 00 00 00 08 01 02 03 04 05 06 07 08",
                FRAME_PONG,
                &[1, 2, 3, 4, 5, 6, 7, 8],
            ),
            ("14 00 00 00 03 42 41 44", FRAME_HEALTH, b"BAD"),
            ("14 00 00 00 00", FRAME_HEALTH, b""),
            (
                "15 00 00 00 08 00 00 00 01 00 00 00 02",
                FRAME_RESTARTING,
                &[0, 0, 0, 1, 0, 0, 0, 2],
            ),
            ("06 00 00 00 00", FRAME_KEEP_ALIVE, b""),
        ];
        for (hex, ty, payload) in cases {
            let bytes = h(hex);
            let f = decode_one(&bytes).await.expect("decodes");
            assert_eq!(f.frame_type, *ty, "{hex}");
            assert_eq!(&f.payload[..], *payload, "{hex}");
            assert_eq!(encode_frame(*ty, &[payload]), bytes, "{hex}");
        }
    }

    #[test]
    fn magic_is_derp_key_emoji() {
        assert_eq!(MAGIC.as_slice(), "DERP🔑".as_bytes());
    }

    #[tokio::test]
    async fn limits_and_truncation() {
        let big = encode_frame(FRAME_RECV_PACKET, &[&[0u8; 100]]);
        let err = FrameReader::new(big.as_slice(), 99).read_frame().await;
        assert!(matches!(
            err,
            Err(FrameError::TooLarge {
                len: 100,
                max: 99,
                ..
            })
        ));
        let err = decode_one(&big[..50]).await;
        assert!(matches!(
            err,
            Err(FrameError::Truncated {
                have: 50,
                want: 105
            })
        ));
        let err = decode_one(&big[..3]).await;
        assert!(matches!(
            err,
            Err(FrameError::Truncated { have: 3, want: 5 })
        ));
        assert!(matches!(decode_one(&[]).await, Err(FrameError::Eof)));
    }

    #[tokio::test]
    async fn several_frames_and_prefix() {
        let mut bytes = encode_frame(FRAME_KEEP_ALIVE, &[]);
        bytes.extend(encode_frame(FRAME_HEALTH, &[b"x"]));
        let (prefix, rest) = bytes.split_at(7);
        let mut r = FrameReader::with_prefix(rest, prefix, 100);
        assert_eq!(
            r.read_frame().await.expect("1").frame_type,
            FRAME_KEEP_ALIVE
        );
        assert_eq!(&r.read_frame().await.expect("2").payload[..], b"x");
        assert!(matches!(r.read_frame().await, Err(FrameError::Eof)));
    }
}
