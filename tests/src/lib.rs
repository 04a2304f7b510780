//! Test support: real processes of our own binaries on port 0, read for their readiness line,
//! killed when dropped; and polling helpers with deadlines (never sleeps for readiness).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod peers;
pub mod pg;

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the workspace's binaries (beside the test executable's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
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
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("vantaged printed no URL within 30s")
            .unwrap()?;
        let url = line.trim().to_owned();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Poll `f` every 50 ms until it returns `Some`, or fail after `within` saying `what`.
#[track_caller]
pub fn eventually<T, F, Fut>(
    within: Duration,
    what: &'static str,
    mut f: F,
) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{caller}: timed out after {within:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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

/// The benchmarks of BENCHMARKS.md (load generators, baselines, measurements).
pub mod bench;
