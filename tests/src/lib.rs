//! End-to-end test support: real processes of our own binaries (`vantaged`, `vantage-probe`,
//! the `vantage` CLI) on port 0, read for their readiness line, killed when dropped, and
//! [`netns`], Linux network namespaces for tests across several network hosts. Real
//! third-party peers, PostgreSQL and `eventually` come from `vantage-testkit`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod netns;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use vantage_testkit::{ReadyChild, ReadyError};

pub mod coder;

/// Where cargo put the workspace's binaries (`target/<profile>/`, beside the test's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    vantage_testkit::cargo_bin(name).unwrap_or_else(|e| {
        panic!("{e}: run the tests with `cargo test --workspace` so every binary is built")
    })
}

/// A running `vantaged`.
pub struct Server {
    child: Child,
    pub url: String,
    pub port: u16,
    args: Vec<String>,
}

impl Server {
    /// Start `vantaged --listen 127.0.0.1:0 ARGS` and wait for its readiness line.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_on(0, args.iter().map(|s| (*s).to_owned()).collect()).await
    }

    /// Like [`Server::start`], but `None` when vantaged exits before serving (e.g. a port in
    /// the arguments was taken), so a test can retry with other ports.
    pub async fn try_start(args: &[&str]) -> Option<Server> {
        Self::try_start_on(0, args.iter().map(|s| (*s).to_owned()).collect()).await
    }

    async fn start_on(port: u16, args: Vec<String>) -> Server {
        Self::try_start_on(port, args)
            .await
            .expect("vantaged exited before printing its URL")
    }

    async fn try_start_on(port: u16, args: Vec<String>) -> Option<Server> {
        let mut cmd = Command::new(bin("vantaged"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(&args)
            .env("VANTAGE_LOG", "info")
            .stderr(Stdio::inherit());
        let ReadyChild { child, url } = match ReadyChild::spawn(cmd, "vantaged").await {
            Ok(ready) => ready,
            Err(ReadyError::Exited { .. }) => return None,
            Err(e) => panic!("{e}"),
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        Some(Server {
            child,
            url,
            port,
            args,
        })
    }

    /// SIGKILL: no graceful anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM: the graceful shutdown (drain, then stop).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Wait up to `limit` for the process to exit; its status, `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }

    /// Start again on the same port with the same arguments.
    pub async fn restart(&mut self) {
        self.kill().await;
        let again = Self::start_on(self.port, self.args.clone()).await;
        *self = again;
    }

    /// GET a path, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn report(&self) -> serde_json::Value {
        self.get_json("/api/v2/debug/health").await
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGHUP: reload the configuration file, the certificate and the tokens.
    pub fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP {}", self.pid());
    }
}

/// A running `vantage-probe`.
pub struct Probe {
    child: Child,
    pub name: String,
}

impl Probe {
    pub fn start(server: &str, name: &str, region: &str) -> Probe {
        let child = Command::new(bin("vantage-probe"))
            .args(["--server", server, "--name", name, "--region", region])
            .env("VANTAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Probe {
            child,
            name: name.to_owned(),
        }
    }

    /// Like [`Probe::start`], its log (stderr) written to `log`.
    pub fn start_logged(server: &str, name: &str, region: &str, log: &std::path::Path) -> Probe {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(bin("vantage-probe"))
            .args(["--server", server, "--name", name, "--region", region])
            .env("VANTAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Probe {
            child,
            name: name.to_owned(),
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A process's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The value of one sample line of a Prometheus text body (`name{labels}`), 0 when absent.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The vantage entry named `name` in a report.
pub fn vantage<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    report["vantages"]["items"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// Run the `vantage` CLI to completion.
pub async fn cli(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin("vantage"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI did not finish within 60s")
    .unwrap()
}
