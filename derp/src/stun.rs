//! STUN Binding for DERP health: the Tailscale-shaped request (SOFTWARE `tailnode` +
//! FINGERPRINT, random 96-bit transaction ID), response parsing (XOR-MAPPED-ADDRESS 0x0020 or
//! 0x8020, else MAPPED-ADDRESS), the UDP probe with Tailscale's retry schedule (reference
//! `docs/derp-stun.md`), and a [`StunResponder`] that answers Binding requests on a socket it is
//! given. Encoding and decoding use `stun_codec`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use rand::RngCore;
use stun_codec::rfc5389::Attribute;
use stun_codec::rfc5389::attributes::{
    Fingerprint, MappedAddress, Software, XorMappedAddress, XorMappedAddress2,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The STUN magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// SOFTWARE value Tailscale's STUN servers insist on.
pub const SOFTWARE: &str = "tailnode";
/// How long one read waits before the request is sent again.
pub const READ_WAIT: Duration = Duration::from_secs(2);
/// Pause before a resend.
pub const RESEND_PAUSE: Duration = Duration::from_millis(100);
/// A read error sooner than this after the send (e.g. ICMP port unreachable) fails the probe.
pub const FAST_FAILURE: Duration = Duration::from_secs(1);

/// A successful STUN probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunOutcome {
    /// Our address as the STUN server saw it.
    pub mapped: SocketAddr,
    /// Time from the (last) send to the answer.
    pub latency: Duration,
    /// The local address of the probe's socket.
    pub local: SocketAddr,
}

/// Why a STUN probe failed.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    /// Could not create or connect the UDP socket.
    #[error("create socket: {0}")]
    Socket(std::io::Error),
    /// Sending failed.
    #[error("send to {addr}: {source}")]
    Send {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading failed quickly (e.g. port unreachable).
    #[error("read from {addr}: {source}")]
    Read {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer before the deadline.
    #[error("timeout reading from {0}")]
    Timeout(IpAddr),
    /// The answer was not a valid STUN Binding success response.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The answer carried another transaction ID.
    #[error("read wrong tx back")]
    WrongTransaction,
}

/// A fresh random transaction ID.
pub fn new_transaction_id() -> [u8; 12] {
    let mut id = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

/// The Tailscale-shaped Binding request (48 bytes).
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut msg: Message<Attribute> =
        Message::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    msg.add_attribute(Software::new_static(SOFTWARE));
    // Fingerprint::new only fails when the message cannot be encoded, which a fixed
    // SOFTWARE-only request always can; fall back to no fingerprint rather than panic.
    if let Ok(fp) = Fingerprint::new(&msg) {
        msg.add_attribute(fp);
    }
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .unwrap_or_default()
}

/// A Binding success response with a single XOR-MAPPED-ADDRESS (Tailscale's server shape).
pub fn binding_response(txid: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let mut msg: Message<Attribute> = Message::new(
        MessageClass::SuccessResponse,
        BINDING,
        TransactionId::new(txid),
    );
    msg.add_attribute(XorMappedAddress::new(mapped));
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .unwrap_or_default()
}

fn decode(buf: &[u8]) -> Result<Message<Attribute>, StunError> {
    if buf.len() < 20 || buf[0] & 0xC0 != 0 || buf[4..8] != MAGIC_COOKIE {
        return Err(StunError::Malformed("not a STUN message".into()));
    }
    // Trim anything beyond the declared length, as Tailscale does.
    let declared = 20 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let buf = &buf[..buf.len().min(declared)];
    match MessageDecoder::<Attribute>::new().decode_from_bytes(buf) {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(broken)) => Err(StunError::Malformed(format!(
            "broken message: {}",
            broken.error()
        ))),
        Err(e) => Err(StunError::Malformed(e.to_string())),
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Parses a Binding success response for `txid` and returns the mapped address.
pub fn parse_response(buf: &[u8], txid: [u8; 12]) -> Result<SocketAddr, StunError> {
    let msg = decode(buf)?;
    if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
        return Err(StunError::Malformed(format!(
            "{:?} {:?} instead of a Binding success response",
            msg.class(),
            msg.method()
        )));
    }
    if *msg.transaction_id().as_bytes() != txid {
        return Err(StunError::WrongTransaction);
    }
    let addr = msg
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| {
            msg.get_attribute::<XorMappedAddress2>()
                .map(|a| a.address())
        })
        .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()))
        .ok_or_else(|| StunError::Malformed("no mapped address".into()))?;
    Ok(unmap(addr))
}

/// Sends Binding requests to `addr` until one is answered or `timeout` passes: each send
/// waits up to 2 s for an answer; a read error within 1 s of the send fails at once; otherwise
/// the request is resent after 100 ms. A garbled answer or a wrong transaction ID fails.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<StunOutcome, StunError> {
    let deadline = Instant::now() + timeout;
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // An ephemeral client socket (like a TCP connect), connected so that stray datagrams are
    // filtered and ICMP errors surface as read errors.
    let socket = UdpSocket::bind(bind).await.map_err(StunError::Socket)?;
    socket.connect(addr).await.map_err(StunError::Socket)?;
    let local = socket.local_addr().map_err(StunError::Socket)?;
    let txid = new_transaction_id();
    let request = binding_request(txid);
    let mut buf = vec![0u8; 9000];
    loop {
        if Instant::now() >= deadline {
            return Err(StunError::Timeout(addr.ip()));
        }
        socket
            .send(&request)
            .await
            .map_err(|source| StunError::Send { addr, source })?;
        let sent_at = Instant::now();
        let read_until = (sent_at + READ_WAIT).min(deadline);
        match tokio::time::timeout_at(read_until, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let mapped = parse_response(&buf[..n], txid)?;
                return Ok(StunOutcome {
                    mapped,
                    latency: sent_at.elapsed(),
                    local,
                });
            }
            Ok(Err(source)) => {
                if Instant::now() >= deadline {
                    return Err(StunError::Timeout(addr.ip()));
                }
                if sent_at.elapsed() < FAST_FAILURE {
                    return Err(StunError::Read { addr, source });
                }
            }
            Err(_) => {
                if Instant::now() >= deadline {
                    return Err(StunError::Timeout(addr.ip()));
                }
            }
        }
        tokio::time::sleep_until((Instant::now() + RESEND_PAUSE).min(deadline)).await;
    }
}

/// Answers STUN Binding requests on a socket it is given (libraries never bind on their own).
#[derive(Debug)]
pub struct StunResponder {
    socket: UdpSocket,
    mapped_override: Option<SocketAddr>,
}

impl StunResponder {
    /// A responder on `socket`.
    pub fn new(socket: UdpSocket) -> Self {
        Self {
            socket,
            mapped_override: None,
        }
    }

    /// Answers every request with `addr` instead of the sender's address (tests of ESTUN02).
    pub fn with_mapped_override(mut self, addr: SocketAddr) -> Self {
        self.mapped_override = Some(addr);
        self
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `shutdown` completes. Datagrams that are not Binding requests are ignored.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = tokio::select! {
                _ = &mut shutdown => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "stun recv");
                        // Avoid a hot loop on a persistent socket error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let Some(reply) = self.answer(&buf[..n], from) else {
                continue;
            };
            if let Err(e) = self.socket.send_to(&reply, from).await {
                tracing::debug!(error = %e, %from, "stun send");
            }
        }
    }

    fn answer(&self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let msg = decode(datagram).ok()?;
        if msg.class() != MessageClass::Request || msg.method() != BINDING {
            return None;
        }
        let mapped = self.mapped_override.unwrap_or_else(|| unmap(from));
        Some(binding_response(*msg.transaction_id().as_bytes(), mapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hexfmt;

    fn h(s: &str) -> Vec<u8> {
        hexfmt::decode(s).expect("hex")
    }
    const RFC_TXID: &str = "b7e7a701bc34d686fa87dfae";

    fn txid(s: &str) -> [u8; 12] {
        <[u8; 12]>::try_from(h(s).as_slice()).expect("12")
    }

    /// The known answer of `docs/derp-stun.md#tailscales-stun-request`.
    #[test]
    fn tailscale_request_bytes() {
        let req = binding_request(txid("0102030405060708090a0b0c"));
        assert_eq!(
            hexfmt::encode(&req),
            "000100142112a4420102030405060708090a0b0c802200087461696c6e6f646580280004b32c370f"
        );
    }

    /// RFC 5769 §2.2 and §2.3 (`docs/derp-stun.md#rfc-5769-vectors`), plus Tailscale's response shape.
    #[test]
    fn rfc5769_vectors() {
        let v4 = h(
            "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
        );
        assert_eq!(
            parse_response(&v4, txid(RFC_TXID)).expect("v4"),
            "192.0.2.1:32853".parse::<SocketAddr>().expect("addr")
        );
        let v6 = h(
            "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
        );
        assert_eq!(
            parse_response(&v6, txid(RFC_TXID)).expect("v6"),
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse::<SocketAddr>()
                .expect("addr")
        );
        assert!(matches!(
            parse_response(&v4, txid("0102030405060708090a0b0c")),
            Err(StunError::WrongTransaction)
        ));
        let mut bad = v4.clone();
        bad[70] ^= 0xff;
        assert!(matches!(
            parse_response(&bad, txid(RFC_TXID)),
            Err(StunError::Malformed(_))
        ));
        let ts = h("0101000c2112a4420102030405060708090a0b0c002000080001a147e112a643");
        let want: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        assert_eq!(
            parse_response(&ts, txid("0102030405060708090a0b0c")).expect("ts"),
            want
        );
        // Trailing bytes beyond the declared length are ignored.
        let mut padded = ts.clone();
        padded.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_response(&padded, txid("0102030405060708090a0b0c")).expect("pad"),
            want
        );
        assert_eq!(binding_response(txid("0102030405060708090a0b0c"), want), ts);
        // 0x8020 variant.
        let mut alt = ts.clone();
        alt[20] = 0x80;
        assert_eq!(
            parse_response(&alt, txid("0102030405060708090a0b0c")).expect("8020"),
            want
        );
    }

    #[test]
    fn garbage_never_panics() {
        let id = new_transaction_id();
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_response(&junk, id);
        }
        // A request is not a response.
        assert!(parse_response(&binding_request(id), id).is_err());
    }

    #[tokio::test]
    async fn responder_answers_probe_and_override() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(StunResponder::new(sock).run(async move {
            let _ = stop_rx.await;
        }));
        let out = probe(addr, Duration::from_secs(5)).await.expect("probe");
        assert_eq!(out.mapped.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(out.mapped.port(), out.local.port());
        let _ = stop_tx.send(());
        task.await.expect("join");

        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let fake: SocketAddr = "203.0.113.7:4242".parse().expect("addr");
        let responder = StunResponder::new(sock).with_mapped_override(fake);
        let task = tokio::spawn(responder.run(std::future::pending()));
        let out = probe(addr, Duration::from_secs(5)).await.expect("probe");
        assert_eq!(out.mapped, fake);
        task.abort();
    }

    /// A silent server: requests are resent every ~2.1 s until the deadline (paused time).
    #[tokio::test(start_paused = true)]
    async fn retry_schedule_against_silent_server() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let err = probe(addr, Duration::from_secs(5))
            .await
            .expect_err("no answer");
        assert!(matches!(err, StunError::Timeout(_)), "{err}");
        assert_eq!(err.to_string(), "timeout reading from 127.0.0.1");
        let mut count = 0;
        let mut buf = [0u8; 100];
        while silent.try_recv_from(&mut buf).is_ok() {
            count += 1;
        }
        // Sends at t = 0, 2.1 s and 4.2 s.
        assert_eq!(count, 3);
    }

    /// A closed port answers with ICMP port unreachable: the probe fails at once.
    #[tokio::test]
    async fn closed_port_fails_fast() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        drop(sock);
        let started = std::time::Instant::now();
        let err = probe(addr, Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    }
}
