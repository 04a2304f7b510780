//! Frames received from a server after the handshake ([`ReceivedFrame`]) and their decoding
//! ([`decode_server_frame`], total: never panics on any input).

use std::time::Duration;

use bytes::Bytes;

use crate::frame::{self, FrameError};
use crate::handshake::{self, ServerInfo};
use crate::key::{PrivateKey, PublicKey};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
