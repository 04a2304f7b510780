//! Transport security with real processes: TLS (certificates made here with rcgen), mutual
//! TLS, tokens with roles from `vantaged token new`, the CLI's and the probe's exit statuses,
//! a certificate reload under an open connection, and the HTTP header-read timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use vantage_proto::transport::{KeepAlive, Target, TlsFiles};
use vantage_testkit::eventually;
use vantage_tests::{Server, bin, cli};

/// A CA and the server and client certificates it signed, as PEM files in `dir`.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "vantage test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
        pki.issue("client", ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `NAME.pem` (the certificate, then the CA's) and `NAME.key`, for localhost and
    /// 127.0.0.1; the certificate's DER.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Vec<u8> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        let chain = format!("{}{}", cert.pem(), self.ca.pem());
        std::fs::write(self.path(&format!("{name}.pem")), chain).unwrap();
        cert.der().to_vec()
    }

    pub(crate) fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.s("server.pem"),
            "--tls-key".into(),
            self.s("server.key"),
        ]
    }
}

/// `vantaged token new ARGS`: the secret and the entry, checked against `sha256sum`.
pub(crate) async fn new_token(args: &[&str]) -> (String, String) {
    let out = Command::new(bin("vantaged"))
        .args(["token", "new"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (secret, entry) = text.split_once('\n').unwrap();
    (secret.to_owned(), entry.to_owned())
}

/// Tokens for every role, written to `tokens.toml` in `dir`.
struct Tokens {
    reader: String,
    admin: String,
    fra: String,
    file: PathBuf,
}

async fn tokens(dir: &Path) -> Tokens {
    let (reader, e1) = new_token(&["--name", "dash", "--role", "reader"]).await;
    let (admin, e2) = new_token(&["--name", "ops", "--role", "admin"]).await;
    let (fra, e3) = new_token(&[
        "--name",
        "fra-probes",
        "--role",
        "probe",
        "--vantage",
        "fra-*",
    ])
    .await;
    let file = dir.join("tokens.toml");
    std::fs::write(&file, format!("{e1}\n{e2}\n{e3}")).unwrap();
    Tokens {
        reader,
        admin,
        fra,
        file,
    }
}

/// A `vantage-probe` with `args`, its stderr in `log`.
fn probe(args: &[&str], log: &Path) -> tokio::process::Child {
    Command::new(bin("vantage-probe"))
        .args(args)
        .env("VANTAGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn http_client(pki: &Pki) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn token_new_prints_the_secret_and_an_entry_whose_sha256_is_the_secrets() {
    let (secret, entry) =
        new_token(&["--name", "fra", "--role", "probe", "--vantage", "fra-*"]).await;
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(!entry.contains(&secret), "{entry}");
    let sum = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", &secret])
        .output()
        .await
        .unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    let digest = sum.split_whitespace().next().unwrap();
    assert!(
        entry.contains(&format!("sha256 = \"{digest}\"")),
        "{entry} vs {digest}"
    );
    assert!(entry.starts_with("[[tokens]]\n"), "{entry}");
    assert!(entry.contains("role = \"probe\"") && entry.contains("vantages = [\"fra-*\"]"));
    let bad = Command::new(bin("vantaged"))
        .args(["token", "new", "--name", "x", "--role", "root"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("root"));
}

#[tokio::test]
async fn over_tls_tokens_bind_roles_and_names() {
    let pki = Pki::new();
    let t = tokens(pki.dir.path()).await;
    let mut args = pki.server_args();
    args.extend(["--token-file".into(), t.file.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let url = server.url.as_str();
    let ca = pki.s("ca.pem");

    // A probe attaches over TLS with its token.
    let log_ok = pki.path("fra-1.log");
    let _fra = probe(
        &[
            "--server",
            url,
            "--ca-file",
            &ca,
            "--token",
            &t.fra,
            "--name",
            "fra-1",
            "--region",
            "fra",
        ],
        &log_ok,
    );
    eventually(
        Duration::from_secs(30),
        "fra-1 listed for a reader",
        || async {
            let out = cli(&[
                "--server",
                url,
                "--ca-file",
                &ca,
                "--token",
                &t.reader,
                "vantages",
            ])
            .await;
            (code(&out) == 0 && String::from_utf8_lossy(&out.stdout).contains("fra-1"))
                .then_some(())
        },
    )
    .await;

    // A fra-* token claiming iad-1, and an unknown token: refused, and the probe says why.
    let log_iad = pki.path("iad-1.log");
    let _iad = probe(
        &[
            "--server",
            url,
            "--ca-file",
            &ca,
            "--token",
            &t.fra,
            "--name",
            "iad-1",
        ],
        &log_iad,
    );
    let log_bad = pki.path("bad.log");
    let _bad = probe(
        &[
            "--server",
            url,
            "--ca-file",
            &ca,
            "--token",
            "definitely-wrong",
            "--name",
            "fra-2",
        ],
        &log_bad,
    );
    for (log, why) in [
        (&log_iad, "may not claim vantage name \"iad-1\""),
        (&log_bad, "the token is not known"),
    ] {
        eventually(
            Duration::from_secs(20),
            "the refusal in the probe's log",
            || async {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                (text.contains("ERROR") && text.contains(why)).then_some(())
            },
        )
        .await;
    }
    let text = std::fs::read_to_string(&log_iad).unwrap();
    assert!(text.contains("fra-*"), "names the globs: {text}");
    let once = cli_probe_once(url, &ca, &t.fra, "iad-9").await;
    assert_eq!(code(&once), 4, "{}", stderr(&once));

    // The CLI: no token 4, a reader may not change settings or forget (4, naming admin),
    // an admin may; an unverifiable server 3.
    let report = cli(&["--server", url, "--ca-file", &ca, "report"]).await;
    assert_eq!(code(&report), 4, "{}", stderr(&report));
    for cmd in [
        &["settings", "dismiss", "DERP"][..],
        &["vantages", "forget", "fra-1"],
    ] {
        let mut argv = vec!["--server", url, "--ca-file", &ca, "--token", &t.reader];
        argv.extend_from_slice(cmd);
        let out = cli(&argv).await;
        assert_eq!(code(&out), 4, "{cmd:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("needs role admin"),
            "{}",
            stderr(&out)
        );
    }
    let out = cli(&[
        "--server",
        url,
        "--ca-file",
        &ca,
        "--token",
        &t.admin,
        "settings",
        "dismiss",
        "DERP",
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = cli(&["--server", url, "--token", &t.admin, "report"]).await;
    assert_eq!(
        code(&out),
        3,
        "an unknown CA is not trusted: {}",
        stderr(&out)
    );

    http_surface(&pki, url, &t).await;

    // grpc.health.v1 is open over TLS.
    let target = Target::new(
        url,
        &TlsFiles {
            ca_file: Some(pki.path("ca.pem")),
            ..TlsFiles::default()
        },
    )
    .unwrap();
    let channel = target.connect(KeepAlive::Off).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // Answered without a token (its status follows the report, which is not the point here).
    let r = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("grpc.health.v1 needs no token");
    assert_ne!(r.into_inner().status, 0, "a known status");
}

async fn cli_probe_once(url: &str, ca: &str, token: &str, name: &str) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(bin("vantage-probe"))
            .args([
                "--server",
                url,
                "--ca-file",
                ca,
                "--token",
                token,
                "--name",
                name,
                "--once",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Over HTTPS: open paths, 401 without a token, 403 naming the role, refusals in /metrics.
async fn http_surface(pki: &Pki, url: &str, t: &Tokens) {
    let http = http_client(pki);
    for open in ["/healthz", "/health", "/health/codes", "/derp/probe"] {
        let r = http.get(format!("{url}{open}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    let r = http
        .get(format!("{url}/api/v2/debug/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = http
        .get(format!("{url}/api/v2/debug/health"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{url}/api/v2/debug/health"))
        .bearer_auth(&t.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(format!("{url}/api/v2/debug/health/settings"))
        .bearer_auth(&t.reader)
        .header("content-type", "application/json")
        .body(r#"{"dismissed_healthchecks":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("needs role admin"), "{body}");
    let r = http
        .get(format!("{url}/api/v2/debug/health?force=true"))
        .bearer_auth(&t.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "force is an admin's");
    let metrics = http
        .get(format!("{url}/metrics"))
        .bearer_auth(&t.reader)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing_token",
        "unknown_token",
        "wrong_role",
        "vantage_name",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "vantage_auth_refusals_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{reason}: {metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1, "{line}");
    }
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_at_the_handshake() {
    let pki = Pki::new();
    let mut args = pki.server_args();
    args.extend(["--tls-client-ca".into(), pki.s("ca.pem")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args).await;
    let url = server.url.as_str();
    let ca = pki.s("ca.pem");
    let out = cli(&["--server", url, "--ca-file", &ca, "vantages"]).await;
    assert_eq!(code(&out), 3, "no client certificate: {}", stderr(&out));
    let http = http_client(&pki);
    assert!(http.get(format!("{url}/healthz")).send().await.is_err());
    let (cert, key) = (pki.s("client.pem"), pki.s("client.key"));
    let out = cli(&[
        "--server",
        url,
        "--ca-file",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "vantages",
    ])
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("server"));
    // The refused handshakes are counted by reason.
    let mut pem = std::fs::read(pki.path("client.pem")).unwrap();
    pem.extend(std::fs::read(pki.path("client.key")).unwrap());
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let metrics = with_cert
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = vantage_tests::metric(
        &metrics,
        "vantage_auth_refusals_total{reason=\"tls_handshake\"}",
    );
    assert!(refused >= 2.0, "{refused} handshakes refused");
}

/// The token file is reloaded when it changes, and on SIGHUP even when nothing shows a change
/// (same length, modification time put back): each path on its own.
#[tokio::test]
async fn the_token_file_reloads_on_change_and_on_sighup_each_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    // Two admin tokens whose entries have the same length.
    let (first, first_entry) = new_token(&["--name", "ops-a", "--role", "admin"]).await;
    let (second, second_entry) = new_token(&["--name", "ops-b", "--role", "admin"]).await;
    assert_eq!(first_entry.len(), second_entry.len());
    std::fs::write(&file, &first_entry).unwrap();
    let server = Server::start(&["--token-file", file.to_str().unwrap()]).await;
    let works = |token: String| {
        let url = server.url.clone();
        async move { code(&cli(&["--server", &url, "--token", &token, "vantages"]).await) == 0 }
    };
    assert!(works(first.clone()).await);
    assert!(!works(second.clone()).await);

    // Same length, modification time put back: the file watch sees no change.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, &second_entry).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        works(first.clone()).await,
        "reloaded without a visible change"
    );
    // SIGHUP reloads all the same.
    server.hangup();
    eventually(
        Duration::from_secs(15),
        "the second token after SIGHUP",
        || {
            let (a, b) = (works(second.clone()), works(first.clone()));
            async move { (a.await && !b.await).then_some(()) }
        },
    )
    .await;

    // A visible change, no signal: the file watch reloads.
    let (third, third_entry) = new_token(&["--name", "ops-c", "--role", "admin"]).await;
    std::fs::write(&file, format!("{third_entry}\n# changed\n")).unwrap();
    eventually(
        Duration::from_secs(15),
        "the third token after the change",
        || {
            let ok = works(third.clone());
            async move { ok.await.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn https_to_a_plaintext_server_fails_and_remote_plaintext_is_a_usage_error() {
    let server = Server::start(&[]).await;
    let https = server.url.replace("http://", "https://");
    let out = cli(&["--server", &https, "report"]).await;
    assert_eq!(code(&out), 3, "never downgrades: {}", stderr(&out));
    let once = Command::new(bin("vantage-probe"))
        .args(["--server", &https, "--name", "x", "--once"])
        .output()
        .await
        .unwrap();
    assert_eq!(code(&once), 3, "{}", stderr(&once));

    let remote = "http://192.0.2.10:7080";
    let out = cli(&["--server", remote, "report"]).await;
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--insecure-plaintext"),
        "{}",
        stderr(&out)
    );
    let p = Command::new(bin("vantage-probe"))
        .args(["--server", remote, "--name", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(code(&p), 64, "{}", stderr(&p));
    let out = cli(&["--server", &server.url, "report"]).await;
    assert!(
        matches!(code(&out), 0..=2),
        "loopback plaintext still works: {}",
        stderr(&out)
    );
}

/// The certificate of a fresh TLS connection to `addr`, verified against `ca`.
async fn served_cert(addr: &str, ca: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_certificate_reload_keeps_open_connections_working() {
    let pki = Pki::new();
    let (admin, entry) = new_token(&["--name", "ops", "--role", "admin"]).await;
    let token_file = pki.path("tokens.toml");
    std::fs::write(&token_file, &entry).unwrap();
    let mut args = pki.server_args();
    args.extend(["--token-file".into(), token_file.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args).await;
    let addr = server.url.trim_start_matches("https://").to_owned();
    let target = Target::new(
        &server.url,
        &TlsFiles {
            ca_file: Some(pki.path("ca.pem")),
            ..TlsFiles::default()
        },
    )
    .unwrap();
    let client = vantage_client::Client::connect_to(&target, Some(&admin))
        .await
        .unwrap();
    client.vantages().await.unwrap();
    let ca = pki.ca.der().to_vec();
    let before = served_cert(&addr, &ca).await;
    let fresh = pki.issue("server", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    assert_ne!(before, fresh);
    eventually(
        Duration::from_secs(15),
        "the new certificate served",
        || async { (served_cert(&addr, &ca).await == fresh).then_some(()) },
    )
    .await;
    // The connection opened before the reload still answers.
    client.vantages().await.unwrap();

    // SIGHUP reloads (and does not stop the server); a token added to the file is accepted.
    let (reader, more) = new_token(&["--name", "dash", "--role", "reader"]).await;
    let ca_pem = pki.s("ca.pem");
    let refused = cli(&[
        "--server",
        &server.url,
        "--ca-file",
        &ca_pem,
        "--token",
        &reader,
        "vantages",
    ])
    .await;
    assert_eq!(code(&refused), 4, "{}", stderr(&refused));
    std::fs::write(&token_file, format!("{entry}\n{more}")).unwrap();
    server.hangup();
    eventually(
        Duration::from_secs(15),
        "the new token accepted",
        || async {
            let out = cli(&[
                "--server",
                &server.url,
                "--ca-file",
                &ca_pem,
                "--token",
                &reader,
                "vantages",
            ])
            .await;
            (code(&out) == 0).then_some(())
        },
    )
    .await;
    client.vantages().await.unwrap();
}

#[tokio::test]
async fn a_partial_request_line_is_closed_by_the_header_timeout() {
    let server = Server::start(&[]).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /healthz HT").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open for 30s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited <= Duration::from_secs(20),
        "closed after {waited:?}"
    );
}

/// With a token file the page still loads (its HTML, script and style sheet hold no data) and
/// then asks for a reader token: the data behind it answers 401 without one.
#[tokio::test]
async fn with_a_token_file_the_page_and_its_files_load_without_a_token_and_the_data_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let t = tokens(dir.path()).await;
    let file = t.file.display().to_string();
    let server = Server::start(&["--token-file", &file]).await;
    let url = server.url.as_str();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let page = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    // Every file the page itself loads from the server.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/health/"))
        .collect();
    for path in ["/health/page.js", "/health/page.css"] {
        assert!(assets.contains(&path), "the page loads {path}: {assets:?}");
    }
    for path in &assets {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} without a token");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    for data in [
        "/api/v2/debug/health",
        "/api/v2/debug/health/history",
        "/metrics",
    ] {
        let r = http.get(format!("{url}{data}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{data} without a token");
    }
    let r = http
        .get(format!("{url}/api/v2/debug/health"))
        .bearer_auth(&t.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "with the reader token");
}
