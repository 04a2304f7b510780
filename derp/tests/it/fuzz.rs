//! Robustness: random and truncated byte streams, fed to the client's frame reader and to the
//! relay over real connections, never panic, and the relay keeps serving other clients.
//! Deterministic: a fixed-seed PRNG.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_derp::PrivateKey;
use vantage_derp::client::{self, Client, ClientOptions, ReceivedFrame};
use vantage_derp::frame::{self, FrameReader};
use vantage_derp::handshake;

use crate::support::TestRelay;

/// A mix of plausible frames (valid headers, random payloads) and raw noise.
fn random_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(0..8) {
        if rng.gen_bool(0.7) {
            let ty = if rng.gen_bool(0.8) {
                rng.gen_range(0x01..=0x15)
            } else {
                rng.r#gen()
            };
            let len = match rng.gen_range(0..10) {
                0 => 0,
                1..=4 => rng.gen_range(0..16),
                5..=8 => rng.gen_range(16..200),
                _ => rng.gen_range(0..70_000),
            };
            let mut payload = vec![0u8; len];
            rng.fill(payload.as_mut_slice());
            out.extend(frame::encode_frame(ty, &[&payload]));
        } else {
            let n = rng.gen_range(0..64);
            out.extend((0..n).map(|_| rng.r#gen::<u8>()));
        }
    }
    if rng.gen_bool(0.5) && !out.is_empty() {
        let cut = rng.gen_range(0..out.len());
        out.truncate(cut);
    }
    out
}

#[tokio::test]
async fn client_frame_reader_survives_random_streams() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let me = PrivateKey::generate();
    let server = PrivateKey::generate();
    let server_pub = server.public_key();
    let genuine = handshake::server_info_frame(
        &server,
        &me.public_key(),
        handshake::random_nonce(),
        &Default::default(),
    );
    for i in 0..2_000 {
        let mut bytes = random_stream(&mut rng);
        // Sometimes a genuine ServerInfo in the middle.
        if rng.gen_bool(0.1) {
            bytes.extend_from_slice(&genuine);
        }
        let mut reader = FrameReader::new(bytes.as_slice(), frame::CLIENT_MAX_FRAME_LEN);
        for _ in 0..64 {
            match reader.read_frame().await {
                Ok(f) => {
                    let _ = client::decode_server_frame(&f, &me, &server_pub);
                }
                Err(_) => break,
            }
        }
        // The handshake parsers on (a bounded prefix of) the same bytes; X25519 is slow in
        // debug builds, so only every 20th stream.
        if i % 20 != 0 {
            continue;
        }
        let head = &bytes[..bytes.len().min(512)];
        let _ = handshake::parse_server_key(head);
        let _ = handshake::parse_client_info(&server, head);
        let _ = handshake::parse_server_info(&me, &server_pub, head);
    }
}

async fn exchange_ok(a: &Client, b: &Client, tag: &[u8]) {
    a.send(b.public_key(), tag).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .expect("relay still serving")
            .expect("recv")
        {
            ReceivedFrame::RecvPacket { payload, .. } if &payload[..] == tag => return,
            _ => continue,
        }
    }
}

/// Writes `bytes` after a raw `Upgrade: DERP`, half-closes, and drains until the relay hangs
/// up (bounded).
async fn raw_session(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req =
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n".to_vec();
    req.extend_from_slice(bytes);
    let _ = tcp.write_all(&req).await;
    let _ = tcp.shutdown().await;
    let mut sink = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    assert!(drained.is_ok(), "relay kept a garbage connection open");
}

#[tokio::test]
async fn relay_survives_random_input() {
    let relay = TestRelay::start().await;
    let opts = ClientOptions::default();
    let a = Client::connect(&relay.url(), &opts).await.expect("a");
    let b = Client::connect(&relay.url(), &opts).await.expect("b");
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);

    // Garbage instead of a handshake.
    for i in 0..150u32 {
        let bytes = random_stream(&mut rng);
        raw_session(relay.addr, &bytes).await;
        if i % 25 == 0 {
            exchange_ok(&a, &b, format!("pre {i}").as_bytes()).await;
        }
    }
    // Garbage after a valid handshake.
    for i in 0..150u32 {
        let fuzzer = Client::connect(&relay.url(), &opts)
            .await
            .expect("fuzzer connects");
        let mut bytes = random_stream(&mut rng);
        if rng.gen_bool(0.3) {
            // Aim at real peers sometimes.
            let mut pkt = b.public_key().as_bytes().to_vec();
            pkt.extend((0..rng.gen_range(0..100)).map(|_| rng.r#gen::<u8>()));
            bytes.splice(0..0, frame::encode_frame(frame::FRAME_SEND_PACKET, &[&pkt]));
        }
        let _ = fuzzer.send_raw(bytes).await;
        // Flush the garbage, then hang up (possibly mid-frame).
        fuzzer.close().await;
        if i % 25 == 0 {
            exchange_ok(&a, &b, format!("post {i}").as_bytes()).await;
        }
    }
    exchange_ok(&a, &b, b"final").await;
    exchange_ok(&b, &a, b"final back").await;
    // Every fuzzing connection was cleaned up (bounded wait).
    for _ in 0..100 {
        if relay.relay.client_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.relay.client_count(), 2);
}
