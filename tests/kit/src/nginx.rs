//! nginx as a (mis)configured reverse proxy, from its own configuration in a temporary
//! directory, killed on drop.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::net::{random_port, wait_tcp};
use crate::read_lossy;

/// Where Debian's `nginx-light` installs nginx.
const NGINX: &str = "/usr/sbin/nginx";

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

/// A running nginx on 127.0.0.1.
pub struct Nginx {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Start nginx in `mode` on a random port (nginx must be told its port), retried with
    /// another port when it fails to bind.
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
            let mut child = Command::new(NGINX)
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
