//! DERP test support: relays served over real TCP (plain HTTP with `axum::serve`, or TLS with
//! a test CA), nodes and regions pointing at them, and a raw HTTP GET. Real peers (nginx,
//! coturn) and ports come from `vantage-testkit`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_derp::map::{Node, Region};
use vantage_derp::relay::{self, Relay};
use vantage_testkit::loopback_listener;

/// A relay served by `axum::serve`, merged into a larger router (as vantaged does).
pub struct TestRelay {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(Arc::new(Relay::new())).await
    }

    pub async fn start_with(relay: Arc<Relay>) -> Self {
        let (listener, addr) = loopback_listener().await;
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .merge(relay::router(relay.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            relay,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> url::Url {
        derp_url(self.addr)
    }

    /// A plain-HTTP DERP node pointing at this relay, STUN disabled.
    pub fn node(&self, name: &str, region_id: i64) -> Node {
        http_node(name, region_id, self.addr.port())
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `http://ADDR/derp`: a relay at `addr`, or nginx in front of one.
pub fn derp_url(addr: SocketAddr) -> url::Url {
    url::Url::parse(&format!("http://{addr}/derp")).expect("url")
}

pub fn http_node(name: &str, region_id: i64, port: u16) -> Node {
    Node {
        name: name.into(),
        region_id,
        host_name: "127.0.0.1".into(),
        derp_port: i64::from(port),
        force_http: true,
        stun_port: -1,
        ..Node::default()
    }
}

pub fn region(region_id: i64, nodes: Vec<Node>) -> Region {
    Region {
        region_id,
        region_code: format!("r{region_id}"),
        region_name: format!("Region {region_id}"),
        nodes,
        ..Region::default()
    }
}

/// A test CA and a leaf for `localhost` / 127.0.0.1 signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_der: Vec<u8>,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf");
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("signed leaf");
        let leaf_der = leaf.der().to_vec();
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der");
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(leaf_der.clone())],
            key_der,
        )
        .expect("server config");
        Self {
            ca_pem: ca.pem(),
            leaf_der,
            server_config: Arc::new(server_config),
        }
    }
}

/// Serves the relay router over TLS on 127.0.0.1:0 (hyper HTTP/1.1 with upgrades).
pub async fn start_tls_relay(
    relay: Arc<Relay>,
    pki: &TestPki,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = loopback_listener().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
    let app = relay::router(relay);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

/// A minimal HTTP/1.1 GET over a fresh connection: status and body.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (status, body.to_string())
}
