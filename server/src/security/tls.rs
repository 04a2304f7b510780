//! TLS on the listener: the certificate is resolved per handshake from a slot that a reload
//! swaps atomically ([`CertSlot`]), so new connections get the new certificate and open ones
//! keep theirs. With client CAs, a client certificate signed by one of them is required at
//! the handshake (mutual TLS). ALPN offers `h2` and `http/1.1`, so gRPC and HTTP share it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::ConfigError;

fn bad(field: &str, path: &Path, what: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        message: format!("{}: {what}", path.display()),
    }
}

fn read_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let data = std::fs::read(path).map_err(|e| bad(field, path, e))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(field, path, e))?;
    if certs.is_empty() {
        return Err(bad(
            field,
            path,
            "no certificate found (expected PEM -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let data = std::fs::read(path).map_err(|e| bad("tls_key", path, e))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| bad("tls_key", path, e))?
        .ok_or_else(|| {
            bad(
                "tls_key",
                path,
                "no private key found (expected PEM -----BEGIN PRIVATE KEY-----)",
            )
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key files, and the slot the handshakes read.
#[derive(Debug)]
pub struct CertSlot {
    pub cert: PathBuf,
    pub key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub fn load(cert: &Path, key: &Path) -> Result<CertSlot, ConfigError> {
        Ok(CertSlot {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(certified(cert, key)?)),
        })
    }

    /// Read the files again; on success the next handshake serves them.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = Arc::new(certified(&self.cert, &self.key)?);
        if let Ok(mut slot) = self.current.write() {
            *slot = fresh;
        }
        Ok(())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn certified(cert: &Path, key: &Path) -> Result<CertifiedKey, ConfigError> {
    let chain = read_certs("tls_cert", cert)?;
    let key_der = read_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad("tls_key", key, e))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        bad(
            "tls_key",
            key,
            format!("does not match the certificate {}: {e}", cert.display()),
        )
    })?;
    Ok(ck)
}

#[derive(Debug)]
struct Resolver(Arc<CertSlot>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }
}

/// The listener's TLS configuration: certificates from `slot`, client certificates
/// required and verified against `client_ca` when given, ALPN `h2` then `http/1.1`.
pub fn server_config(
    slot: Arc<CertSlot>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", &slot.cert, e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("tls_client_ca", path)? {
                roots.add(c).map_err(|e| bad("tls_client_ca", path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| bad("tls_client_ca", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver(slot)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key, ck.cert.der().to_vec())
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_pair(dir.path(), "a.test");
        let slot = CertSlot::load(&cert, &key).unwrap();
        assert_eq!(slot.get().unwrap().cert[0].as_ref(), first.as_slice());
        let (_, _, second) = write_pair(dir.path(), "b.test");
        slot.reload().unwrap();
        assert_eq!(slot.get().unwrap().cert[0].as_ref(), second.as_slice());
        std::fs::write(&cert, "garbage").unwrap();
        let e = slot.reload().unwrap_err();
        assert_eq!(e.field, "tls_cert", "{e}");
        assert!(e.message.contains("no certificate"), "{e}");
        assert_eq!(slot.get().unwrap().cert[0].as_ref(), second.as_slice());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = write_pair(dir.path(), "a.test");
        let other = rcgen::KeyPair::generate().unwrap();
        let key = dir.path().join("other.pem");
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let e = CertSlot::load(&cert, &key).unwrap_err();
        assert_eq!(e.field, "tls_key");
        assert!(e.message.contains("does not match"), "{e}");
    }

    #[test]
    fn alpn_offers_h2_and_http1() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "a.test");
        let slot = Arc::new(CertSlot::load(&cert, &key).unwrap());
        let config = server_config(slot, None).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
