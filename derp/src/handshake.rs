//! The DERP handshake messages: ServerKey (magic ‖ server key), ClientInfo (client key ‖ nonce ‖
//! NaCl box of JSON) and ServerInfo (nonce ‖ NaCl box of JSON), `docs/derp-stun.md#keys-and-crypto` and `#handshake`.
//!
//! The box is NaCl's `crypto_box` (X25519 + XSalsa20-Poly1305), i.e. `crypto_box::SalsaBox`.
//! These functions are pure; the client and relay modules drive them over a stream.

use crypto_box::SalsaBox;
use crypto_box::aead::Aead;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameError, KEY_LEN, MAGIC, NONCE_LEN};
use crate::key::{PrivateKey, PublicKey};

/// The JSON a client sends (sealed) in ClientInfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Protocol version (2).
    #[serde(rename = "version", alias = "Version", default)]
    pub version: u32,
    /// Mesh key (64 hex), for privileged mesh clients.
    #[serde(
        rename = "meshKey",
        alias = "MeshKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh_key: Option<String>,
    /// Whether the client answers Pings.
    #[serde(rename = "CanAckPings", alias = "canAckPings", default)]
    pub can_ack_pings: bool,
    /// Marks prober connections.
    #[serde(
        rename = "IsProber",
        alias = "isProber",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_prober: bool,
}

impl Default for ClientInfo {
    fn default() -> Self {
        Self {
            version: frame::PROTOCOL_VERSION,
            mesh_key: None,
            can_ack_pings: false,
            is_prober: false,
        }
    }
}

/// The JSON a server sends (sealed) in ServerInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version (2).
    #[serde(rename = "version", alias = "Version", default)]
    pub version: u32,
    /// Advisory client send rate limit, bytes per second (0 = none).
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        alias = "tokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: i64,
    /// Advisory burst size, bytes (0 = none).
    #[serde(
        rename = "TokenBucketBytesBurst",
        alias = "tokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: i64,
}

impl Default for ServerInfo {
    fn default() -> Self {
        Self {
            version: frame::PROTOCOL_VERSION,
            token_bucket_bytes_per_second: 0,
            token_bucket_bytes_burst: 0,
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A fresh random 24-byte nonce.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// Seals `plaintext` from `me` to `peer`: nonce ‖ tag ‖ ciphertext.
pub fn seal(
    me: &PrivateKey,
    peer: &PublicKey,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let sealed = SalsaBox::new(&peer.to_box_key(), me.box_key())
        .encrypt(&crypto_box::Nonce::from(nonce), plaintext)
        // XSalsa20-Poly1305 encryption fails only for messages beyond ~256 GiB.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens nonce ‖ box from `peer` to `me`; `None` when too short or not authentic.
pub fn open(me: &PrivateKey, peer: &PublicKey, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, boxed) = data.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).ok()?;
    SalsaBox::new(&peer.to_box_key(), me.box_key())
        .decrypt(&crypto_box::Nonce::from(nonce), boxed)
        .ok()
}

/// The complete ServerKey frame.
pub fn server_key_frame(server: &PublicKey) -> Vec<u8> {
    frame::encode_frame(frame::FRAME_SERVER_KEY, &[&MAGIC, server.as_bytes()])
}

/// Checks a ServerKey payload (≥ 40 bytes, magic) and returns the server key.
pub fn parse_server_key(payload: &[u8]) -> Result<PublicKey, FrameError> {
    if payload.len() < MAGIC.len() + KEY_LEN {
        return Err(FrameError::Malformed(format!(
            "ServerKey payload of {} bytes, want at least 40",
            payload.len()
        )));
    }
    if payload[..MAGIC.len()] != MAGIC {
        return Err(FrameError::Malformed(
            "ServerKey without the DERP magic".into(),
        ));
    }
    PublicKey::from_slice(&payload[MAGIC.len()..MAGIC.len() + KEY_LEN])
        .ok_or_else(|| FrameError::Malformed("ServerKey key".into()))
}

/// The complete ClientInfo frame, sealed from `client` to `server` with `nonce`.
pub fn client_info_frame(
    client: &PrivateKey,
    server: &PublicKey,
    nonce: [u8; NONCE_LEN],
    info: &ClientInfo,
) -> Vec<u8> {
    let json = serde_json::to_vec(info).unwrap_or_default();
    let sealed = seal(client, server, nonce, &json);
    frame::encode_frame(
        frame::FRAME_CLIENT_INFO,
        &[client.public_key().as_bytes(), &sealed],
    )
}

/// Opens a ClientInfo payload on the server: returns the client key and its info.
pub fn parse_client_info(
    server: &PrivateKey,
    payload: &[u8],
) -> Result<(PublicKey, ClientInfo), FrameError> {
    if payload.len() < KEY_LEN + NONCE_LEN {
        return Err(FrameError::Malformed(format!(
            "ClientInfo payload of {} bytes, want at least 56",
            payload.len()
        )));
    }
    let (key, sealed) =
        frame::split_key(payload).ok_or_else(|| FrameError::Malformed("ClientInfo key".into()))?;
    let json = open(server, &key, sealed)
        .ok_or_else(|| FrameError::Malformed("ClientInfo box does not open".into()))?;
    let info: ClientInfo = serde_json::from_slice(&json)
        .map_err(|e| FrameError::Malformed(format!("ClientInfo JSON: {e}")))?;
    Ok((key, info))
}

/// The complete ServerInfo frame, sealed from `server` to `client` with `nonce`.
pub fn server_info_frame(
    server: &PrivateKey,
    client: &PublicKey,
    nonce: [u8; NONCE_LEN],
    info: &ServerInfo,
) -> Vec<u8> {
    let json = serde_json::to_vec(info).unwrap_or_default();
    let sealed = seal(server, client, nonce, &json);
    frame::encode_frame(frame::FRAME_SERVER_INFO, &[&sealed])
}

/// Opens a ServerInfo payload on the client.
pub fn parse_server_info(
    client: &PrivateKey,
    server: &PublicKey,
    payload: &[u8],
) -> Result<ServerInfo, FrameError> {
    if payload.len() < NONCE_LEN || payload.len() > NONCE_LEN + frame::MAX_INFO_LEN {
        return Err(FrameError::Malformed(format!(
            "ServerInfo payload of {} bytes",
            payload.len()
        )));
    }
    let json = open(client, server, payload)
        .ok_or_else(|| FrameError::Malformed("ServerInfo box does not open".into()))?;
    serde_json::from_slice(&json)
        .map_err(|e| FrameError::Malformed(format!("ServerInfo JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hexfmt;

    fn h(s: &str) -> Vec<u8> {
        hexfmt::decode(s).expect("hex")
    }
    fn k32(s: &str) -> [u8; 32] {
        <[u8; 32]>::try_from(h(s).as_slice()).expect("32")
    }
    fn alice() -> PrivateKey {
        PrivateKey::from_bytes(k32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ))
    }
    fn bob() -> PrivateKey {
        PrivateKey::from_bytes(k32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ))
    }

    /// `docs/derp-stun.md#nacl-box`: the classic NaCl crypto_box vector (alice's secret → bob's public).
    #[test]
    fn nacl_box_vector() {
        let nonce =
            <[u8; 24]>::try_from(h("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37").as_slice())
                .expect("24");
        let msg = h(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffce5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb310e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f937763848645e0705",
        );
        let want = h(
            "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74e355a5",
        );
        let sealed = seal(&alice(), &bob().public_key(), nonce, &msg);
        assert_eq!(&sealed[..24], &nonce);
        assert_eq!(hexfmt::encode(&sealed[24..]), hexfmt::encode(&want));
        let opened = open(&bob(), &alice().public_key(), &sealed).expect("opens");
        assert_eq!(opened, msg);
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert!(open(&bob(), &alice().public_key(), &tampered).is_none());
    }

    /// `docs/derp-stun.md#derp-handshake-frames`: the three handshake frames with deterministic nonces.
    #[test]
    fn handshake_frames() {
        let server_key = server_key_frame(&bob().public_key());
        assert_eq!(
            hexfmt::encode(&server_key),
            "010000002844455250f09f9491de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        assert_eq!(
            parse_server_key(&server_key[5..]).expect("key"),
            bob().public_key()
        );

        let mut nonce = [0u8; 24];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = u8::try_from(i).expect("small");
        }
        let ci = client_info_frame(&alice(), &bob().public_key(), nonce, &ClientInfo::default());
        assert_eq!(
            hexfmt::encode(&ci),
            "02000000698520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a000102030405060708090a0b0c0d0e0f101112131415161739a83465456b7b50331fde35dd22274b7e6c26c069053c122ea5a24c8fa8fbbf8f83ba8b258ec2ea09f11d5c27469d7977"
        );
        let (ck, info) = parse_client_info(&bob(), &ci[5..]).expect("client info");
        assert_eq!(ck, alice().public_key());
        assert_eq!(info, ClientInfo::default());

        let mut nonce = [0u8; 24];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = 100 + u8::try_from(i).expect("small");
        }
        let si = server_info_frame(&bob(), &alice().public_key(), nonce, &ServerInfo::default());
        assert_eq!(
            hexfmt::encode(&si),
            "03000000356465666768696a6b6c6d6e6f707172737475767778797a7b449f2eaae7074d453b1001634f490219214bda71a6207f1cb1465f4014"
        );
        let info = parse_server_info(&alice(), &bob().public_key(), &si[5..]).expect("server info");
        assert_eq!(info, ServerInfo::default());
    }

    #[test]
    fn bad_handshake_payloads() {
        assert!(parse_server_key(&[0u8; 39]).is_err());
        assert!(parse_server_key(&[0u8; 40]).is_err());
        assert!(parse_client_info(&bob(), &[0u8; 55]).is_err());
        assert!(parse_client_info(&bob(), &[0u8; 200]).is_err());
        assert!(parse_server_info(&alice(), &bob().public_key(), &[0u8; 23]).is_err());
        // A box that opens but carries no JSON.
        let sealed = seal(&bob(), &alice().public_key(), [7; 24], b"not json");
        assert!(parse_server_info(&alice(), &bob().public_key(), &sealed).is_err());
        // Bucket values round-trip and are omitted when zero.
        let info = ServerInfo {
            token_bucket_bytes_per_second: 10,
            token_bucket_bytes_burst: 20,
            ..ServerInfo::default()
        };
        let json = serde_json::to_string(&info).expect("json");
        assert_eq!(
            json,
            r#"{"version":2,"TokenBucketBytesPerSecond":10,"TokenBucketBytesBurst":20}"#
        );
    }
}
