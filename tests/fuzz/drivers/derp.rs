//! What each DERP fuzz target does with one input. Shared, word for word, by the fuzz targets
//! (`tests/fuzz/fuzz_targets/`) and the stable test that replays the corpus
//! (`derp/tests/it/fuzz_corpus.rs`): any input must end in `Ok` or `Err`, never a panic.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_derp::client::decode_server_frame;
use vantage_derp::frame::{self, FrameReader};
use vantage_derp::handshake::{self, ClientInfo};
use vantage_derp::relay::RelayConfig;
use vantage_derp::{DerpMap, PrivateKey, Relay, stun};

/// Fixed keys (and nonce) so that every input replays the same way.
fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32])
}
const NONCE: [u8; frame::NONCE_LEN] = [7; frame::NONCE_LEN];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

/// The client's side: frames read from what a server sent, each decoded as the client does.
/// Returns how many frames decoded.
pub fn client_frames(data: &[u8]) -> usize {
    let me = key(1);
    let server = key(2).public_key();
    let mut reader = FrameReader::new(data, frame::CLIENT_MAX_FRAME_LEN);
    futures::executor::block_on(async {
        let mut decoded = 0;
        while let Ok(f) = reader.read_frame().await {
            if decode_server_frame(&f, &me, &server).is_ok() {
                decoded += 1;
            }
        }
        decoded
    })
}

/// The handshake messages: the first byte chooses which, the rest is its payload. Modes 3
/// and 4 seal the rest as the JSON inside the box, so the JSON decoding is reached too.
pub fn handshake(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let client = key(1);
    let server = key(2);
    match mode % 5 {
        0 => handshake::parse_server_key(rest).is_ok(),
        1 => handshake::parse_client_info(&server, rest).is_ok(),
        2 => handshake::parse_server_info(&client, &server.public_key(), rest).is_ok(),
        3 => {
            let sealed = handshake::seal(&client, &server.public_key(), NONCE, rest);
            let payload = [client.public_key().as_bytes().as_slice(), &sealed].concat();
            handshake::parse_client_info(&server, &payload).is_ok()
        }
        _ => {
            let sealed = handshake::seal(&server, &client.public_key(), NONCE, rest);
            handshake::parse_server_info(&client, &server.public_key(), &sealed).is_ok()
        }
    }
}

/// The relay's side: a client stream served by a real relay. An even first byte puts a
/// genuine ClientInfo before the rest, so the frames after the handshake are reached.
pub fn relay(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let server = key(2);
    let relay = Arc::new(Relay::with_config(
        server.clone(),
        RelayConfig {
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            ..RelayConfig::default()
        },
    ));
    let mut stream = Vec::new();
    if mode % 2 == 0 {
        stream.extend(handshake::client_info_frame(
            &key(1),
            &server.public_key(),
            NONCE,
            &ClientInfo::default(),
        ));
    }
    stream.extend_from_slice(rest);
    runtime().block_on(async move {
        let (mut client, relay_end) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(relay.serve_stream(relay_end));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let write = async {
            let _ = wr.write_all(&stream).await;
            let _ = wr.shutdown().await;
        };
        let drain = async {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let (_, _, served) = tokio::join!(write, drain, served);
        served.is_ok_and(|r| r.is_ok())
    })
}

/// A STUN answer: the transaction ID expected is the one at the answer's own offset 8..20,
/// so matching answers are reached.
pub fn stun(data: &[u8]) -> bool {
    let mut txid = [0u8; 12];
    if let Some(id) = data.get(8..20) {
        txid.copy_from_slice(id);
    }
    stun::parse_response(data, txid).is_ok()
}

/// A DERP map: parsed, and of a valid one every node's URL and STUN port, and its JSON again.
pub fn derp_map(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(map) = DerpMap::parse(text) else {
        return false;
    };
    for node in map.regions.values().flat_map(|r| &r.nodes) {
        let _ = node.derp_url();
        let _ = node.effective_stun_port();
    }
    let _ = map.has_derp_nodes();
    // What a valid map writes, it reads back.
    DerpMap::parse(&map.to_json()).is_ok()
}
