//! Test support: relays served over real TCP (plain HTTP with `axum::serve`, or TLS with a
//! test CA), nginx and coturn child processes owned by the test, and small helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vantage_derp::map::{Node, Region};
use vantage_derp::relay::{self, Relay};

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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
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
        url::Url::parse(&format!("http://{}/derp", self.addr)).expect("url")
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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
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

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random_port() -> u16 {
    rand::thread_rng().gen_range(20_000..60_000)
}

/// Which upgrades nginx refuses.
#[derive(Clone, Copy)]
pub enum NginxBlock {
    /// `Upgrade: derp` → 403, WebSocket passes.
    DerpOnly,
    /// Any `Upgrade` → 403.
    Everything,
}

/// nginx in front of a relay, run from its own config in a temporary directory.
pub struct Nginx {
    pub addr: SocketAddr,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

pub fn nginx_binary() -> &'static str {
    "/usr/sbin/nginx"
}

impl Nginx {
    pub async fn start(upstream: SocketAddr, block: NginxBlock) -> Self {
        let map = match block {
            NginxBlock::DerpOnly => r#"map $http_upgrade $blocked { default 0; ~*^derp$ 1; }"#,
            NginxBlock::Everything => r#"map $http_upgrade $blocked { default 1; "" 0; }"#,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let d = dir.path().display();
            let port = random_port();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  {map}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($blocked) {{ return 403; }}
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_read_timeout 120s;
    }}
  }}
}}
"#
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write conf");
            let child = Command::new(nginx_binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let mut child = ChildGuard(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if wait_tcp_ready(&mut child, addr).await {
                return Self {
                    addr,
                    _child: child,
                    _dir: dir,
                };
            }
            last_log = read_lossy(&dir.path().join("error.log"));
        }
        panic!("nginx did not start; last error log:\n{last_log}");
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/derp", self.addr)).expect("url")
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls `addr` until it accepts a connection (bounded: 10 s), or the child exits.
async fn wait_tcp_ready(child: &mut ChildGuard, addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.0.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return matches!(child.0.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// coturn as a loopback STUN-only server.
pub struct Coturn {
    pub addr: SocketAddr,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Coturn {
    pub async fn start() -> Self {
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = random_port();
            let child = Command::new("/usr/bin/turnserver")
                .args([
                    "-n",
                    "--stun-only",
                    "--listening-ip=127.0.0.1",
                    &format!("--listening-port={port}"),
                    "--no-tcp",
                    "--no-tls",
                    "--no-dtls",
                    "--no-cli",
                    "--no-rfc5780",
                    "--no-software-attribute",
                    "--simple-log",
                    "--log-file=stdout",
                    &format!("--db={}", dir.path().join("turndb").display()),
                    &format!("--pidfile={}", dir.path().join("turn.pid").display()),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnserver");
            let mut child = ChildGuard(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Readiness: a STUN answer (bounded: ~10 s), unless coturn exits (port taken).
            for _ in 0..40 {
                if let Ok(Some(_)) = child.0.try_wait() {
                    break;
                }
                if vantage_derp::stun::probe(addr, Duration::from_millis(250))
                    .await
                    .is_ok()
                {
                    return Self {
                        addr,
                        _child: child,
                        _dir: dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("coturn did not start");
    }
}

/// A UDP port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn closed_udp_port() -> u16 {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    s.local_addr().expect("addr").port()
}

/// A TCP port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn closed_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}
