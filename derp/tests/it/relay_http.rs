//! Client ↔ relay over plain HTTP and WebSocket, served by `axum::serve`.

use std::sync::Arc;
use std::time::Duration;

use vantage_derp::PrivateKey;
use vantage_derp::client::{Client, ClientOptions, ReceivedFrame};
use vantage_derp::frame::{self, FrameReader};
use vantage_derp::handshake::{self, ClientInfo, ServerInfo};
use vantage_derp::health::{self, NodeCheckOptions, Severity};
use vantage_derp::relay::{Relay, RelayConfig};

use crate::support::{TestRelay, http_get, region};

async fn recv_packet(c: &Client) -> (vantage_derp::PublicKey, Vec<u8>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("frame in time")
            .expect("recv")
        {
            ReceivedFrame::RecvPacket { src, payload } => return (src, payload.to_vec()),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn two_clients_exchange_packets_over_http() {
    let relay = TestRelay::start().await;
    let opts = ClientOptions::default();
    let a = Client::connect(&relay.url(), &opts)
        .await
        .expect("a connects");
    let b = Client::connect(&relay.url(), &opts)
        .await
        .expect("b connects");
    assert!(!a.uses_websocket());
    assert_eq!(a.server_key(), relay.relay.public_key());
    assert_eq!(a.server_info().version, 2);
    assert_ne!(a.public_key(), b.public_key());
    a.send(b.public_key(), b"hello b").await.expect("send");
    assert_eq!(recv_packet(&b).await, (a.public_key(), b"hello b".to_vec()));
    b.send(a.public_key(), &[7u8; 65536])
        .await
        .expect("max size");
    let (src, data) = recv_packet(&a).await;
    assert_eq!(src, b.public_key());
    assert_eq!(data.len(), 65536);
    assert!(a.send(b.public_key(), &[0u8; 65537]).await.is_err());
    assert_eq!(relay.relay.client_count(), 2);
}

#[tokio::test]
async fn fixed_key_and_log_lines() {
    let relay = TestRelay::start().await;
    let key = PrivateKey::generate();
    let opts = ClientOptions {
        private_key: Some(key.clone()),
        ..ClientOptions::default()
    };
    let c = Client::connect(&relay.url(), &opts).await.expect("connect");
    assert_eq!(c.public_key(), key.public_key());
    assert!(
        opts.log
            .lines()
            .iter()
            .any(|l| l.contains("connected to server"))
    );
}

#[tokio::test]
async fn websocket_transport_works() {
    let relay = TestRelay::start().await;
    let opts = ClientOptions {
        force_websocket: true,
        ..ClientOptions::default()
    };
    let a = Client::connect(&relay.url(), &opts).await.expect("ws a");
    let b = Client::connect(&relay.url(), &ClientOptions::default())
        .await
        .expect("b");
    assert!(a.uses_websocket());
    // Several frames, some large, to exercise message reassembly.
    for i in 0..20u8 {
        a.send(b.public_key(), &vec![i; 1000 + usize::from(i) * 3000])
            .await
            .expect("send");
    }
    for i in 0..20u8 {
        let (src, data) = recv_packet(&b).await;
        assert_eq!(src, a.public_key());
        assert_eq!(data.len(), 1000 + usize::from(i) * 3000);
    }
    b.send(a.public_key(), b"back").await.expect("send back");
    assert_eq!(recv_packet(&a).await.1, b"back");
}

#[tokio::test]
async fn http_endpoints() {
    let relay = TestRelay::start().await;
    let (status, body) = http_get(relay.addr, "/derp", &[]).await;
    assert_eq!(status, 426);
    assert_eq!(body, "DERP requires connection upgrade\n");
    for path in ["/derp/probe", "/derp/latency-check"] {
        let (status, body) = http_get(relay.addr, path, &[]).await;
        assert_eq!((status, body.as_str()), (200, ""), "{path}");
    }
    // The surrounding router still answers.
    assert_eq!(
        http_get(relay.addr, "/healthz", &[]).await,
        (200, "ok".into())
    );
}

#[tokio::test]
async fn upgrade_response_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start().await;
    let mut tcp = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("derp-version: 2"), "{text}");
    assert!(
        text.contains(&format!(
            "derp-public-key: {}",
            relay.relay.public_key().to_hex()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn ping_pong_and_peer_gone() {
    let relay = TestRelay::start().await;
    let opts = ClientOptions::default();
    let a = Client::connect(&relay.url(), &opts).await.expect("a");
    let b = Client::connect(&relay.url(), &opts).await.expect("b");
    a.send_ping([1, 2, 3, 4, 5, 6, 7, 8]).await.expect("ping");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), a.recv())
            .await
            .expect("in time")
            .expect("recv")
        {
            ReceivedFrame::Pong(data) => {
                assert_eq!(data, [1, 2, 3, 4, 5, 6, 7, 8]);
                break;
            }
            _ => continue,
        }
    }
    a.send(b.public_key(), b"x").await.expect("send");
    let _ = recv_packet(&b).await;
    let gone = a.public_key();
    drop(a);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .expect("in time")
            .expect("recv")
        {
            ReceivedFrame::PeerGone { peer, reason } => {
                assert_eq!((peer, reason), (gone, frame::PEER_GONE_DISCONNECTED));
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn misbehaving_clients_are_dropped_alone() {
    let relay = TestRelay::start().await;
    let opts = ClientOptions::default();
    let good_a = Client::connect(&relay.url(), &opts).await.expect("a");
    let good_b = Client::connect(&relay.url(), &opts).await.expect("b");
    let bad_frames: Vec<Vec<u8>> = vec![
        frame::encode_frame(frame::FRAME_NOTE_PREFERRED, &[&[1, 1]]),
        frame::encode_frame(frame::FRAME_SEND_PACKET, &[&[0u8; 10]]),
        frame::encode_frame(frame::FRAME_SEND_PACKET, &[&vec![0u8; 32 + 65537]]),
        frame::encode_frame(frame::FRAME_PING, &[&[1, 2, 3]]),
        frame::encode_frame(frame::FRAME_CLIENT_INFO, &[&[0u8; 80]]),
        frame::encode_frame(frame::FRAME_WATCH_CONNS, &[]),
        // Announces 2 MiB: above the server's frame limit.
        vec![0x04, 0x00, 0x20, 0x00, 0x00],
    ];
    for bytes in bad_frames {
        let bad = Client::connect(&relay.url(), &opts)
            .await
            .expect("bad connects");
        bad.send_raw(bytes.clone()).await.expect("queued");
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), bad.recv()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "relay kept a client that sent {:02x?}", &bytes[..5]);
        good_a
            .send(good_b.public_key(), b"still here")
            .await
            .expect("send");
        assert_eq!(recv_packet(&good_b).await.1, b"still here");
    }
    assert_eq!(relay.relay.client_count(), 2);
}

/// KeepAlive timing on an in-memory stream with paused time.
#[tokio::test(start_paused = true)]
async fn keepalive_every_configured_period() {
    let relay = Arc::new(Relay::with_config(
        PrivateKey::generate(),
        RelayConfig {
            keepalive: Duration::from_secs(60),
            keepalive_jitter: Duration::ZERO,
            ..RelayConfig::default()
        },
    ));
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(relay.clone().serve_stream(server_io));
    let (rd, mut wr) = tokio::io::split(client_io);
    let mut reader = FrameReader::new(rd, frame::CLIENT_MAX_FRAME_LEN);
    let sk = reader.read_frame().await.expect("server key");
    let server_key = handshake::parse_server_key(&sk.payload).expect("key");
    let me = PrivateKey::generate();
    let ci = handshake::client_info_frame(
        &me,
        &server_key,
        handshake::random_nonce(),
        &ClientInfo::default(),
    );
    tokio::io::AsyncWriteExt::write_all(&mut wr, &ci)
        .await
        .expect("write");
    let si = reader.read_frame().await.expect("server info");
    assert_eq!(
        handshake::parse_server_info(&me, &server_key, &si.payload).expect("open"),
        ServerInfo::default()
    );
    let start = tokio::time::Instant::now();
    for i in 1..=3u32 {
        let f = reader.read_frame().await.expect("keepalive");
        assert_eq!(f.frame_type, frame::FRAME_KEEP_ALIVE);
        assert_eq!(start.elapsed(), Duration::from_secs(60) * i);
    }
    drop(reader);
    drop(wr);
    let _ = server.await;
    assert_eq!(relay.client_count(), 0);
}

#[tokio::test]
async fn check_node_against_relay() {
    let relay = TestRelay::start().await;
    let node = relay.node("1a", 1);
    let reg = region(1, vec![node.clone()]);
    let out = health::check_node(&reg, &node, &NodeCheckOptions::default()).await;
    let r = &out.report;
    assert!(r.can_exchange_messages, "{r:#?}");
    assert!(r.healthy);
    assert_eq!(r.severity, Severity::Ok);
    assert!(!r.uses_websocket);
    assert!(
        !r.round_trip_ping.is_empty() && r.round_trip_ping != "0s",
        "{}",
        r.round_trip_ping
    );
    assert_eq!(r.client_logs.len(), 2);
    assert!(
        r.client_errs.iter().all(|e| e.is_empty()),
        "{:?}",
        r.client_errs
    );
    assert!(!r.stun.enabled);
    assert!(r.error.is_none());
    assert!(out.elapsed < Duration::from_secs(5));
    let json = serde_json::to_value(r).expect("json");
    assert_eq!(json["node"]["Name"], "1a");
    assert_eq!(json["stun"]["Error"], serde_json::Value::Null);
}

#[tokio::test]
async fn token_bucket_reaches_node_info() {
    let relay = Arc::new(Relay::with_config(
        PrivateKey::generate(),
        RelayConfig {
            server_info: ServerInfo {
                token_bucket_bytes_per_second: 1_000_000,
                token_bucket_bytes_burst: 2_000_000,
                ..ServerInfo::default()
            },
            ..RelayConfig::default()
        },
    ));
    let relay = TestRelay::start_with(relay).await;
    let node = relay.node("1a", 1);
    let out = health::check_node(
        &region(1, vec![node.clone()]),
        &node,
        &NodeCheckOptions::default(),
    )
    .await;
    assert_eq!(
        out.report.node_info.token_bucket_bytes_per_second,
        1_000_000
    );
    assert_eq!(out.report.node_info.token_bucket_bytes_burst, 2_000_000);
}
