//! TLS for a DERP connection: the system roots plus extra CAs, `CertName` (a name to match
//! instead of the host, or a `sha256-raw:` pin of the leaf certificate) and `InsecureForTests`.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use super::error::ClientError;
use super::options::ClientOptions;
use super::transport::Target;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The client configuration for `target` and the name the certificate must match.
pub(super) fn tls_config(
    target: &Target,
    opts: &ClientOptions,
) -> Result<(Arc<rustls::ClientConfig>, String), ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let pin = opts
        .cert_name
        .as_deref()
        .and_then(|c| c.strip_prefix("sha256-raw:"));
    let mut name = target.host.clone();
    let config = if let Some(pin) = pin {
        let want = crate::hexfmt::decode(pin.trim())
            .filter(|d| d.len() == 32)
            .ok_or_else(|| ClientError::Tls(format!("bad sha256-raw pin {pin:?}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameFreeVerifier {
                pin: Some(want),
                provider: provider(),
            }))
            .with_no_client_auth()
    } else if opts.insecure_for_tests {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameFreeVerifier {
                pin: None,
                provider: provider(),
            }))
            .with_no_client_auth()
    } else {
        if let Some(cert_name) = opts.cert_name.as_deref().filter(|c| !c.is_empty()) {
            name = cert_name.to_string();
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(native_roots().iter().cloned());
        if let Some(pem) = &opts.extra_ca_pem {
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("extra CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("extra CA certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::Tls("extra CA PEM holds no certificate".into()));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // No ALPN: DERP needs HTTP/1.1 Upgrade, and offering h2 invites a server to pick it.
    Ok((Arc::new(config), name))
}

/// Accepts a certificate without checking names or chains: either any certificate
/// (`InsecureForTests`) or exactly the one whose DER hashes to the pin. Handshake signatures
/// are still verified, so the peer must hold the certificate's private key.
#[derive(Debug)]
struct NameFreeVerifier {
    pin: Option<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NameFreeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(want) => {
                let got = sha2::Sha256::digest(end_entity.as_ref());
                if got.as_slice() == want.as_slice() {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "certificate sha256 {} does not match the pinned sha256-raw:{}",
                        crate::hexfmt::encode(&got),
                        crate::hexfmt::encode(want)
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
