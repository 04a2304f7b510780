//! Real third-party peers owned by a test: nginx (as a misconfigured reverse proxy) and coturn
//! (as a STUN server), each from its own configuration in a temporary directory, killed on drop.
//! Ports: a random high port, retried when the daemon fails to bind (no bind-then-release race).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

fn random_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    20_000 + u16::try_from((nanos ^ std::process::id()) % 40_000).unwrap_or(0)
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// How nginx treats requests in front of its upstream.
#[derive(Debug, Clone)]
pub enum NginxMode {
    /// Refuse `Upgrade: DERP` with 403, pass WebSockets (the EDERP01 situation).
    BlockDerpUpgrade(SocketAddr),
    /// Refuse every upgrade with 403.
    BlockAllUpgrades(SocketAddr),
    /// Proxy to an upstream that is down: nginx answers 502.
    BadGateway(SocketAddr),
}

/// A running nginx.
pub struct Nginx {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(mode: NginxMode) -> Nginx {
        let (map, upstream, guard) = match &mode {
            NginxMode::BlockDerpUpgrade(u) => (
                "map $http_upgrade $blocked { default 0; ~*^derp$ 1; }",
                *u,
                "if ($blocked) { return 403; }",
            ),
            NginxMode::BlockAllUpgrades(u) => (
                "map $http_upgrade $blocked { default 1; \"\" 0; }",
                *u,
                "if ($blocked) { return 403; }",
            ),
            NginxMode::BadGateway(u) => ("", *u, ""),
        };
        let mut last_log = String::new();
        for _ in 0..8 {
            let dir = tempfile::tempdir().expect("tempdir");
            let d = dir.path().display();
            let port = random_port();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {map}\n  server {{\n    listen 127.0.0.1:{port};\n\
    location / {{\n      {guard}\n      proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
      proxy_set_header Connection \"upgrade\";\n      proxy_set_header Host $host;\n      proxy_connect_timeout 2s;\n      proxy_read_timeout 120s;\n    }}\n  }}\n}}\n"
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut child = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("nginx is installed at /usr/sbin/nginx (apt-get install nginx-light)");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if wait_tcp(&mut child, addr).await {
                return Nginx {
                    addr,
                    _child: child,
                    _dir: dir,
                };
            }
            last_log = read_lossy(&dir.path().join("error.log"));
        }
        panic!("nginx did not start; last error log:\n{last_log}");
    }
}

/// Poll until `addr` accepts (bounded: 10 s), or the child exits.
async fn wait_tcp(child: &mut Child, addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return matches!(child.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A running coturn in STUN-only mode on 127.0.0.1.
pub struct Coturn {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Coturn {
    pub async fn start() -> Coturn {
        let mut last_log = String::new();
        for _ in 0..8 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = random_port();
            let log = dir.path().join("turn.log");
            let mut child = Command::new("/usr/bin/turnserver")
                .args([
                    "-n",
                    "--stun-only",
                    "--listening-ip=127.0.0.1",
                    "--no-tcp",
                    "--no-tls",
                    "--no-dtls",
                    "--no-cli",
                    "--no-rfc5780",
                    "--simple-log",
                ])
                .arg(format!("--listening-port={port}"))
                .arg(format!("--db={}", dir.path().join("turndb").display()))
                .arg(format!(
                    "--pidfile={}",
                    dir.path().join("turn.pid").display()
                ))
                .arg(format!("--log-file={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("coturn is installed at /usr/bin/turnserver (apt-get install coturn)");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Ready when it answers a STUN binding (bounded: about 10 s).
            for _ in 0..40 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if vantage_derp::stun::probe(addr, Duration::from_millis(300))
                    .await
                    .is_ok()
                {
                    return Coturn {
                        addr,
                        _child: child,
                        _dir: dir,
                    };
                }
                // A refused probe returns at once: pace the polling.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_log = read_lossy(&log);
        }
        panic!("coturn did not start; last log:\n{last_log}");
    }
}
