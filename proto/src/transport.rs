//! The client side of the gRPC transport, written once for the probe's session, `--once` and
//! the typed client: how a channel to the server is set up ([`endpoint`], [`Target`]) and how
//! a bearer token is presented ([`Bearer`]). Building an [`Endpoint`] or a [`Target`] does no
//! network I/O (a [`Target`] reads its PEM files); connecting is the caller's.
//!
//! `https://` is TLS verified against the system roots plus `--ca-file`, with a client
//! certificate when one is given, and never falls back to plaintext. `http://` is accepted
//! only for a loopback host unless the caller passes `insecure_plaintext`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

/// Bound on opening the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping interval (when keepalive is on).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a channel sends HTTP/2 keepalive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// No pings: a short exchange (`vantage-probe --once`).
    Off,
    /// Ping every [`KEEPALIVE_INTERVAL`] while a call is open, close after
    /// [`KEEPALIVE_TIMEOUT`] without an answer (the typed client).
    WhileBusy,
    /// As [`KeepAlive::WhileBusy`], and also while no call is open (the probe's long-lived
    /// session, which must notice a server that silently went away).
    Always,
}

/// The endpoint for `url` (e.g. `http://127.0.0.1:7080`): [`CONNECT_TIMEOUT`], `TCP_NODELAY`,
/// and keepalive as `keep_alive` says. Fails on a URL that is not one.
pub fn endpoint(url: &str, keep_alive: KeepAlive) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(match keep_alive {
        KeepAlive::Off => endpoint,
        KeepAlive::WhileBusy => endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT),
        KeepAlive::Always => endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true),
    })
}

/// The PEM files and the plaintext opt-in of a client's connection to the server.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Extra CA certificates trusted beside the system roots (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain for mutual TLS (`--client-cert`).
    pub client_cert: Option<PathBuf>,
    /// Its private key (`--client-key`).
    pub client_key: Option<PathBuf>,
    /// Allow `http://` to a host that is not loopback (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
}

/// A server URL or TLS file that cannot be used: a usage error (exit status 64).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--server: {0:?} is not a URL (expected e.g. https://vantage.example.com)")]
    Url(String),
    #[error("--server: {0:?}: the scheme must be http or https")]
    Scheme(String),
    #[error(
        "--server: {0:?}: plaintext http:// to a host that is not loopback is refused (use https://, or pass --insecure-plaintext)"
    )]
    Plaintext(String),
    #[error("{flag}: {message}")]
    File { flag: &'static str, message: String },
}

/// Where a client connects: the checked URL and, for `https://`, the TLS configuration.
#[derive(Clone)]
pub struct Target {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// Check `url` and, for `https://`, build its TLS configuration from `files`.
    pub fn new(url: &str, files: &TlsFiles) -> Result<Target, TargetError> {
        let uri: http::Uri = url.parse().map_err(|_| TargetError::Url(url.to_owned()))?;
        let host = uri.host().ok_or_else(|| TargetError::Url(url.to_owned()))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(client_config(files)?),
            Some("http") if is_loopback_host(host) || files.insecure_plaintext => None,
            Some("http") => return Err(TargetError::Plaintext(url.to_owned())),
            _ => return Err(TargetError::Scheme(url.to_owned())),
        };
        Ok(Target {
            url: url.to_owned(),
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TLS configuration of an `https://` target (ALPN `h2`).
    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// Open a channel: plaintext h2c for `http://`, TLS (ALPN `h2`) for `https://`. Opening
    /// the TCP connection and the TLS handshake are each bounded by [`CONNECT_TIMEOUT`].
    pub async fn connect(
        &self,
        keep_alive: KeepAlive,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let endpoint = endpoint(&self.url, keep_alive)?;
        let Some(config) = self.tls.clone() else {
            return endpoint.connect().await;
        };
        let connector = tower::service_fn(move |uri: http::Uri| {
            let config = config.clone();
            async move { connect_tls(uri, config).await }
        });
        endpoint.connect_with_connector(connector).await
    }
}

/// `localhost`, or an IP literal that is a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn connect_tls(
    uri: http::Uri,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    use std::io::{Error, ErrorKind};
    let host = uri
        .host()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let timed_out = || Error::new(ErrorKind::TimedOut, "connecting timed out");
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| timed_out())??;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out())??;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

fn file_error(flag: &'static str, path: &Path, what: impl fmt::Display) -> TargetError {
    TargetError::File {
        flag,
        message: format!("{}: {what}", path.display()),
    }
}

/// Every certificate of the PEM file at `path` (at least one).
pub fn read_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TargetError> {
    let data = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            flag,
            path,
            "no certificate found (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The first private key of the PEM file at `path`.
pub fn read_key(
    flag: &'static str,
    path: &Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TargetError> {
    let data = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| file_error(flag, path, e))?
        .ok_or_else(|| {
            file_error(
                flag,
                path,
                "no private key found (expected -----BEGIN PRIVATE KEY-----)",
            )
        })
}

/// The system roots plus `--ca-file`, a client certificate when given, ALPN `h2`.
fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = &files.ca_file {
        for cert in read_certs("--ca-file", path)? {
            roots
                .add(cert)
                .map_err(|e| file_error("--ca-file", path, e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error("--ca-file", Path::new("(TLS)"), e))?
        .with_root_certificates(roots);
    let mut config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certs("--client-cert", cert)?,
                read_key("--client-key", key)?,
            )
            .map_err(|e| file_error("--client-key", key, e))?,
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TargetError::File {
                flag: "--client-key",
                message: "required with --client-cert".into(),
            });
        }
        (None, Some(_)) => {
            return Err(TargetError::File {
                flag: "--client-cert",
                message: "required with --client-key".into(),
            });
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A token that cannot be sent: not a valid header value.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InvalidToken(#[from] InvalidMetadataValue);

/// A bearer token as request metadata: `authorization: Bearer <token>`. Put it on a request
/// with [`Bearer::authorize`], or on every call of a client as an [`Interceptor`]. Its
/// `Debug` does not show the token.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// The metadata name the token travels under.
    pub const HEADER: &'static str = "authorization";

    pub fn new(token: &str) -> Result<Bearer, InvalidToken> {
        Ok(Bearer(MetadataValue::try_from(format!("Bearer {token}"))?))
    }

    /// Present the token on `request` (replacing any `authorization` it carries).
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        request.metadata_mut().insert(Self::HEADER, self.0.clone());
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.authorize(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_connect_timeout_and_nodelay() {
        for k in [KeepAlive::Off, KeepAlive::WhileBusy, KeepAlive::Always] {
            let e = endpoint("http://127.0.0.1:7080", k).expect("endpoint");
            assert_eq!(e.get_connect_timeout(), Some(CONNECT_TIMEOUT));
            assert!(e.get_tcp_nodelay());
            assert_eq!(e.uri().to_string(), "http://127.0.0.1:7080/");
        }
    }

    #[test]
    fn endpoint_rejects_what_is_not_a_url() {
        assert!(endpoint("not a url", KeepAlive::Off).is_err());
    }

    #[test]
    fn bearer_sets_the_authorization_metadata() {
        let b = Bearer::new("s3cret").expect("token");
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(Bearer::HEADER, MetadataValue::from_static("Basic x"));
        b.authorize(&mut r);
        let all: Vec<_> = r.metadata().get_all(Bearer::HEADER).iter().collect();
        assert_eq!(all, [&MetadataValue::from_static("Bearer s3cret")]);
        assert!(!format!("{b:?}").contains("s3cret"));

        let mut intercepted = b.clone();
        let r = intercepted.call(Request::new(())).expect("call");
        assert_eq!(
            r.metadata().get(Bearer::HEADER),
            Some(&MetadataValue::from_static("Bearer s3cret"))
        );
    }

    #[test]
    fn plaintext_is_for_loopback_unless_insecure() {
        let plain = TlsFiles::default();
        for ok in [
            "http://127.0.0.1:7080",
            "http://localhost:7080",
            "http://[::1]:7080",
        ] {
            let t = Target::new(ok, &plain).expect(ok);
            assert!(t.tls().is_none(), "{ok}");
        }
        let e = Target::new("http://10.0.0.1:7080", &plain).expect_err("refused");
        assert!(matches!(e, TargetError::Plaintext(_)), "{e}");
        assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
        let insecure = TlsFiles {
            insecure_plaintext: true,
            ..TlsFiles::default()
        };
        assert!(Target::new("http://10.0.0.1:7080", &insecure).is_ok());
        assert!(matches!(
            Target::new("ftp://h", &plain),
            Err(TargetError::Scheme(_))
        ));
        let t = Target::new("https://vantage.example.com", &plain).expect("https");
        let alpn = &t.tls().expect("tls").alpn_protocols;
        assert_eq!(alpn, &[b"h2".to_vec()]);
    }

    #[test]
    fn tls_files_errors_name_the_flag() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = Target::new("https://h", &files).expect_err("missing file");
        assert!(
            e.to_string().starts_with("--ca-file: /nonexistent/ca.pem"),
            "{e}"
        );
        let files = TlsFiles {
            client_cert: Some("/x.pem".into()),
            ..TlsFiles::default()
        };
        let e = Target::new("https://h", &files).expect_err("no key");
        assert!(e.to_string().contains("--client-key"), "{e}");
    }

    #[test]
    fn bearer_rejects_a_token_that_is_no_header_value() {
        assert!(Bearer::new("line\nbreak").is_err());
    }
}
