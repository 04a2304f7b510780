//! X25519 node keys as used on the DERP wire: 32 raw bytes, shown as 64 lower-case hex digits.

use std::fmt;

use rand::RngCore;

use crate::hexfmt;

/// Length of a raw public or private key.
pub const KEY_LEN: usize = 32;

/// An X25519 public key (a Tailscale "node key").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Builds a key from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(Self)
    }

    /// Parses 64 hex digits, optionally prefixed with `nodekey:`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.strip_prefix("nodekey:").unwrap_or(text);
        Self::from_slice(&hexfmt::decode(text)?)
    }

    /// 64 lower-case hex digits without prefix (the `Derp-Public-Key` header form).
    pub fn to_hex(&self) -> String {
        hexfmt::encode(&self.0)
    }

    /// A short form for log lines: `[` + the first 8 hex digits + `]`.
    pub fn short(&self) -> String {
        format!("[{}]", &self.to_hex()[..8])
    }

    pub(crate) fn to_box_key(self) -> crypto_box::PublicKey {
        crypto_box::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nodekey:{}", self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An X25519 private key (with its public key computed once). `Debug` never shows the secret.
#[derive(Clone)]
pub struct PrivateKey {
    secret: crypto_box::SecretKey,
    public: PublicKey,
}

impl PrivateKey {
    /// A fresh random key, clamped as Tailscale does.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// A key from raw bytes (clamped).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        let secret = crypto_box::SecretKey::from(bytes);
        let public = PublicKey(*secret.public_key().as_bytes());
        Self { secret, public }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn box_key(&self) -> &crypto_box::SecretKey {
        &self.secret
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key().to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> [u8; 32] {
        let v = hexfmt::decode(s).expect("hex");
        <[u8; 32]>::try_from(v.as_slice()).expect("32 bytes")
    }

    /// `docs/derp-stun.md#known-answer-vectors` (RFC 7748 §6.1).
    #[test]
    fn x25519_known_answers() {
        let alice = PrivateKey::from_bytes(h(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = PrivateKey::from_bytes(h(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            bob.public_key().to_hex(),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
    }

    #[test]
    fn hex_forms() {
        let k = PrivateKey::generate().public_key();
        assert_eq!(PublicKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(PublicKey::from_hex(&k.to_string()), Some(k));
        assert_eq!(PublicKey::from_hex("abcd"), None);
        assert_eq!(k.short().len(), 10);
    }
}
