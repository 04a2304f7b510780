//! coturn (`turnserver --stun-only`) as a loopback STUN server, from its own files in a
//! temporary directory, killed on drop.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::net::{random_port, stun_answers};
use crate::read_lossy;

/// Where Debian's `coturn` installs the server.
const TURNSERVER: &str = "/usr/bin/turnserver";

/// A running coturn in STUN-only mode on 127.0.0.1 (UDP).
pub struct Coturn {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Start coturn on a random port (it must be told its port), retried with another port
    /// when it exits (port taken) or never answers; ready once it answers a STUN binding.
    pub async fn start() -> Coturn {
        let mut last_log = String::new();
        for _ in 0..8 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = random_port();
            let log = dir.path().join("turn.log");
            let mut child = Command::new(TURNSERVER)
                .args([
                    "-n",
                    "--stun-only",
                    "--listening-ip=127.0.0.1",
                    "--no-tcp",
                    "--no-tls",
                    "--no-dtls",
                    "--no-cli",
                    "--no-rfc5780",
                    "--no-software-attribute",
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
                if stun_answers(addr, Duration::from_millis(300)).await {
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
