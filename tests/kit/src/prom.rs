//! Alertmanager and Prometheus (Debian's `prometheus-alertmanager` and `prometheus`) on
//! loopback, from their own files in a temporary directory, killed on drop. Both must be told
//! their port: a random one, retried with another when the child cannot bind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::net::{random_port, wait_tcp};

/// Where Debian installs Alertmanager.
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
/// Where Debian installs Prometheus.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Where Debian installs promtool.
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// A running child serving HTTP on `url`, with its directory.
pub struct PromChild {
    pub url: String,
    pub dir: PathBuf,
    _child: Child,
    _tmp: tempfile::TempDir,
}

/// Start `program` with `args(dir, listen)` on a random port until one binds; its URL has
/// `scheme`.
async fn start(
    program: &str,
    scheme: &str,
    args: impl Fn(&Path, &str) -> Vec<String>,
) -> PromChild {
    for _ in 0..8 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let port = random_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(program)
            .args(args(tmp.path(), &listen))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is installed (tests/run.sh installs it): {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if wait_tcp(&mut child, addr).await {
            return PromChild {
                url: format!("{scheme}://{listen}"),
                dir: tmp.path().to_owned(),
                _child: child,
                _tmp: tmp,
            };
        }
    }
    panic!("{program} did not start on any of 8 ports");
}

/// Alertmanager with one receiver and gossip off (`--cluster.listen-address=`).
pub async fn alertmanager() -> PromChild {
    alertmanager_with_web_config(None).await
}

/// Alertmanager as [`alertmanager`], with a `--web.config.file` of this content (TLS, basic
/// auth users as bcrypt hashes). With `tls_server_config` in it the URL is `https://`.
pub async fn alertmanager_with_web_config(web_config: Option<&str>) -> PromChild {
    let web = web_config.map(str::to_owned);
    let scheme = if web
        .as_deref()
        .is_some_and(|w| w.contains("tls_server_config"))
    {
        "https"
    } else {
        "http"
    };
    start(ALERTMANAGER, scheme, move |dir, listen| {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
        )
        .expect("write alertmanager.yml");
        let mut args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address={listen}"),
            "--cluster.listen-address=".to_owned(),
        ];
        if let Some(web) = &web {
            let file = dir.join("web.yml");
            std::fs::write(&file, web).expect("write web.yml");
            args.push(format!("--web.config.file={}", file.display()));
        }
        args
    })
    .await
}

/// Prometheus scraping `target` (host:port) every second and evaluating `rules` (files).
pub async fn prometheus(target: &str, rules: &[PathBuf]) -> PromChild {
    let rule_files: Vec<String> = rules
        .iter()
        .map(|r| format!("  - {}\n", r.display()))
        .collect();
    let yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n  - job_name: vantage\n    static_configs:\n      - targets: ['{target}']\n",
        rule_files.concat()
    );
    start(PROMETHEUS, "http", move |dir, listen| {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, &yml).expect("write prometheus.yml");
        vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={listen}"),
        ]
    })
    .await
}
