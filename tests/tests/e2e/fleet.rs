//! A regional fleet on more than one network host: Linux network namespaces joined by a bridge
//! (README "Deploy a regional fleet" runs the same commands). The "core" host runs vantaged on
//! 10.77.0.1, the "fra" and "iad" hosts run one probe each from their own addresses, and a
//! DERP relay (a second vantaged's embedded relay) sits on an "edge" host only fra is linked
//! to. Cutting fra's link makes fra-1 stale, and only it; restoring it makes it fresh again.
//!
//! The core serves TLS with a token file; each probe presents its region's token, bound to its
//! region's names ([`Auth`]); a wrong token and a name outside the token's globs are refused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::Value;
use tokio::process::Child;
use vantage_testkit::{ReadyChild, eventually};
use vantage_tests::netns::{self, Netns};
use vantage_tests::{bin, vantage};

/// vantaged's address on the fleet's network, and its port (the namespace is ours alone).
const CORE: &str = "10.77.0.1";
const PORT: u16 = 7080;
/// The region-only relay's address: on a link between the edge host and fra alone.
const EDGE: &str = "10.78.0.1";

/// What authenticates the fleet: a CA made here and the server certificate it signed for the
/// core and edge addresses, and a token file from `vantaged token new` (a reader for the CLI,
/// one probe token per region, bound to that region's names).
struct Auth {
    dir: PathBuf,
    reader: String,
    fra: String,
    iad: String,
}

impl Auth {
    async fn new(dir: &Path) -> Auth {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fleet test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = CertificateParams::new(vec![CORE.to_owned(), EDGE.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.join("server.pem"),
            format!("{}{}", cert.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let (reader, e1) = new_token(&["--name", "ops", "--role", "reader"]).await;
        let (fra, e2) =
            new_token(&["--name", "fra", "--role", "probe", "--vantage", "fra-*"]).await;
        let (iad, e3) =
            new_token(&["--name", "iad", "--role", "probe", "--vantage", "iad-*"]).await;
        std::fs::write(dir.join("tokens.toml"), format!("{e1}\n{e2}\n{e3}\n")).unwrap();
        Auth {
            dir: dir.to_owned(),
            reader,
            fra,
            iad,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn url(host: &str) -> String {
        format!("https://{host}:{PORT}")
    }

    /// TLS and the token file (the edge relay serves plaintext: DERP needs no token).
    fn server_args(&self, tls: bool) -> Vec<String> {
        let mut args = vec!["--token-file".to_owned(), self.file("tokens.toml")];
        if tls {
            args.extend([
                "--tls-cert".to_owned(),
                self.file("server.pem"),
                "--tls-key".to_owned(),
                self.file("server.key"),
            ]);
        }
        args
    }

    fn token_of(&self, region: &str) -> &str {
        if region == "fra" {
            &self.fra
        } else {
            &self.iad
        }
    }

    fn probe_args(&self, region: &str) -> Vec<String> {
        vec![
            "--ca-file".into(),
            self.file("ca.pem"),
            "--token".into(),
            self.token_of(region).to_owned(),
        ]
    }

    fn client_args(&self) -> Vec<String> {
        vec![
            "--ca-file".into(),
            self.file("ca.pem"),
            "--token".into(),
            self.reader.clone(),
        ]
    }
}

/// `vantaged token new ARGS`: the secret (first line) and the `[[tokens]]` entry.
async fn new_token(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new(bin("vantaged"))
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

/// The network: a switch (bridge `br0`) joining core (10.77.0.1), fra (.2) and iad (.3), and
/// the edge host on 10.78.0.0/24 linked to fra only.
fn network(tag: &str) -> Netns {
    let mut ns = Netns::new(tag);
    let made = (|| {
        for name in ["sw", "core", "fra", "iad", "edge"] {
            ns.add(name)?;
        }
        ns.bridge("sw", "br0")?;
        ns.veth(
            ("core", "eth0", Some("10.77.0.1/24")),
            ("sw", "core", None),
            Some("br0"),
        )?;
        ns.veth(
            ("fra", "eth0", Some("10.77.0.2/24")),
            ("sw", "fra", None),
            Some("br0"),
        )?;
        ns.veth(
            ("iad", "eth0", Some("10.77.0.3/24")),
            ("sw", "iad", None),
            Some("br0"),
        )?;
        ns.veth(
            ("edge", "eth0", Some("10.78.0.1/24")),
            ("fra", "edge", Some("10.78.0.2/24")),
            None,
        )
    })();
    if let Err(e) = made {
        panic!("the fleet's network could not be built: {e}");
    }
    ns
}

/// A DERP map whose one region, `edge`, is the relay at `url`.
fn edge_map(url: &str) -> String {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    serde_json::json!({"Regions": {"1": {"RegionID": 1, "RegionCode": "edge", "RegionName": "Edge", "Nodes": [
        {"Name": "1a", "RegionID": 1, "HostName": EDGE, "DERPPort": port, "ForceHTTP": true, "STUNPort": -1}
    ]}}})
    .to_string()
}

/// Start vantaged in namespace `host` with `args`; its log goes to `log`.
async fn vantaged(ns: &Netns, host: &str, args: &[String], log: &Path) -> ReadyChild {
    let mut cmd = ns.command(host, bin("vantaged"));
    cmd.args(args)
        .env("VANTAGE_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap());
    ReadyChild::spawn(cmd, &format!("vantaged in {host}"))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(log).unwrap_or_default()))
}

fn probe(ns: &Netns, auth: &Auth, host: &str, name: &str) -> Child {
    let mut cmd = ns.command(host, bin("vantage-probe"));
    cmd.args([
        "--server",
        &Auth::url(CORE),
        "--name",
        name,
        "--region",
        host,
    ])
    .args(auth.probe_args(host))
    .env("VANTAGE_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    cmd.spawn().unwrap()
}

/// `vantage report --json`, run on the core host.
async fn report(ns: &Netns, auth: &Auth) -> Value {
    let mut cmd = ns.command("core", bin("vantage"));
    cmd.args(["--server", &Auth::url(CORE)])
        .args(auth.client_args())
        .args(["report", "--json"]);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("vantage report took longer than 30s")
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn state<'a>(r: &'a Value, name: &str) -> &'a str {
    vantage(r, name)
        .and_then(|v| v["state"].as_str())
        .unwrap_or("absent")
}

/// The DERP region `id` as vantage `name` saw it.
fn seen<'a>(r: &'a Value, name: &str, id: &str) -> &'a Value {
    &r["derp"]["vantage_reports"][name]["regions"][id]
}

/// `args`, then the server's authentication flags (TLS or not).
fn server_args(auth: &Auth, tls: bool, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| (*a).to_owned())
        .chain(auth.server_args(tls))
        .collect()
}

/// No tokens and no `--insecure-no-auth`: vantaged refuses the core address, exit status 64.
async fn assert_refused_without_auth(ns: &Netns) {
    let listen = format!("{CORE}:{PORT}");
    let mut cmd = ns.command("core", bin("vantaged"));
    cmd.args(["--listen", &listen]);
    let refused = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("vantaged did not exit within 30s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{listen} is not a loopback address")),
        "{stderr}"
    );
}

/// The edge relay, then vantaged on core with a DERP map naming the relay; its log is `log`.
async fn start_servers(
    ns: &Netns,
    auth: &Auth,
    dir: &Path,
    log: &Path,
) -> (ReadyChild, ReadyChild) {
    let edge_listen = format!("{EDGE}:{PORT}");
    let edge_args = server_args(
        auth,
        false,
        &["--listen", &edge_listen, "--server-vantage", "false"],
    );
    let edge = vantaged(ns, "edge", &edge_args, &dir.join("edge.log")).await;
    let map = dir.join("derp-map.json");
    std::fs::write(&map, edge_map(&edge.url)).unwrap();
    let listen = format!("{CORE}:{PORT}");
    let stun = format!("{CORE}:3478");
    let core_args = server_args(
        auth,
        true,
        &[
            "--listen",
            &listen,
            "--interval",
            "500ms",
            "--stale-after",
            "3s",
            "--quorum",
            "2",
            "--stun-listen",
            &stun,
            "--stun-servers",
            &stun,
            "--derp-map",
            map.to_str().unwrap(),
            "--derp-all-vantages",
            "--server-checks-derp",
            "false",
        ],
    );
    let core = vantaged(ns, "core", &core_args, log).await;
    assert_eq!(core.url, Auth::url(CORE));
    (core, edge)
}

/// Both probes fresh, each with its view of the edge region and of the STUN region.
async fn both_regions_report(ns: &Netns, auth: &Auth) -> Value {
    eventually(
        Duration::from_secs(60),
        "both regions report every region",
        || async {
            let r = report(ns, auth).await;
            let done = ["fra-1", "iad-1"].iter().all(|n| {
                state(&r, n) == "fresh"
                    && seen(&r, n, "1")["severity"].is_string()
                    && seen(&r, n, "1000")["node_reports"][0]["stun"]["CanSTUN"] == true
            });
            done.then_some(r)
        },
    )
    .await
}

/// The relay only fra is linked to is healthy from fra and unreachable from iad, and the
/// aggregate (quorum 2) names who sees what; each probe came from its own host's address.
fn assert_who_sees_what(r: &Value, log: &Path) {
    let from_fra = &seen(r, "fra-1", "1")["node_reports"][0];
    assert_eq!(from_fra["can_exchange_messages"], true, "{from_fra}");
    assert_eq!(seen(r, "fra-1", "1")["severity"], "ok");
    let from_iad = &seen(r, "iad-1", "1")["node_reports"][0];
    assert_eq!(from_iad["can_exchange_messages"], false, "{from_iad}");
    assert_eq!(seen(r, "iad-1", "1")["severity"], "error");
    let warnings = r["derp"]["warnings"].to_string();
    assert!(
        warnings.contains("EVNT03") && warnings.contains("iad-1 (error)"),
        "{warnings}"
    );
    assert!(!warnings.contains("fra-1"), "{warnings}");
    assert_eq!(r["derp"]["regions"]["1"]["severity"], "ok");
    for name in ["fra-1", "iad-1"] {
        assert_eq!(r["access_url"]["vantage_reports"][name]["severity"], "ok");
    }
    let logged = std::fs::read_to_string(log).unwrap();
    for (name, addr) in [("fra-1", "10.77.0.2"), ("iad-1", "10.77.0.3")] {
        let v = vantage(r, name).unwrap();
        assert!(
            v["address"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{addr}:")),
            "{v}"
        );
        assert!(
            logged.lines().any(|l| l.contains("probe attached")
                && l.contains(&format!("vantage={name} "))
                && l.contains(&format!("peer={addr}:"))),
            "{name} attached from {addr}: {logged}"
        );
    }
}

/// `vantage-probe --once` from iad with `token` claiming `name`: refused (exit 4), and why.
async fn once_from_iad(ns: &Netns, auth: &Auth, token: &str, name: &str) -> String {
    let mut cmd = ns.command("iad", bin("vantage-probe"));
    cmd.args([
        "--server",
        &Auth::url(CORE),
        "--name",
        name,
        "--region",
        "iad",
        "--once",
    ])
    .args(["--ca-file", &auth.file("ca.pem"), "--token", token]);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("vantage-probe --once took longer than 60s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(4), "refused: {stderr}");
    stderr
}

/// A wrong token, and a token claiming a name outside its globs, are refused, saying why.
async fn assert_refusals(ns: &Netns, auth: &Auth) {
    let wrong = once_from_iad(ns, auth, "definitely-wrong", "iad-2").await;
    assert!(wrong.to_lowercase().contains("token"), "{wrong}");
    let outside = once_from_iad(ns, auth, &auth.fra, "iad-9").await;
    assert!(
        outside.contains("iad-9") && outside.contains("fra-*"),
        "{outside}"
    );
}

/// Cut fra's link: fra-1 goes stale, and nobody else. Restore it: fresh again.
async fn cut_and_restore_fra(ns: &Netns, auth: &Auth) {
    ns.set_link("sw", "fra", false).unwrap();
    let r = eventually(Duration::from_secs(30), "fra-1 stale", || async {
        let r = report(ns, auth).await;
        (state(&r, "fra-1") == "stale").then_some(r)
    })
    .await;
    assert_eq!(state(&r, "iad-1"), "fresh");
    assert_eq!(state(&r, "server"), "fresh");
    let evnt01 = r["vantages"]["warnings"].to_string();
    assert!(
        evnt01.contains("EVNT01") && evnt01.contains("fra-1"),
        "{evnt01}"
    );
    assert!(!evnt01.contains("iad-1"), "{evnt01}");

    ns.set_link("sw", "fra", true).unwrap();
    eventually(Duration::from_secs(90), "fra-1 fresh again", || async {
        let r = report(ns, auth).await;
        (state(&r, "fra-1") == "fresh" && state(&r, "iad-1") == "fresh").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_regional_fleet_in_network_namespaces() {
    let ns = network("fleet");
    let dir = tempfile::tempdir().unwrap();
    assert_refused_without_auth(&ns).await;
    let auth = Auth::new(dir.path()).await;
    let log = dir.path().join("vantaged.log");
    let (mut core, edge) = start_servers(&ns, &auth, dir.path(), &log).await;
    let mut fra = probe(&ns, &auth, "fra", "fra-1");
    let _iad = probe(&ns, &auth, "iad", "iad-1");
    let r = both_regions_report(&ns, &auth).await;
    assert_who_sees_what(&r, &log);
    assert_refusals(&ns, &auth).await;
    cut_and_restore_fra(&ns, &auth).await;
    // Nothing restarted.
    assert!(
        fra.try_wait().unwrap().is_none(),
        "the fra probe kept running"
    );
    assert!(
        core.child.try_wait().unwrap().is_none(),
        "vantaged kept running"
    );
    drop(edge);
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    let mut ns = Netns::new("drop");
    ns.add("a").unwrap_or_else(|e| panic!("{e}"));
    ns.add("b").unwrap();
    ns.veth(
        ("a", "eth0", Some("10.79.0.1/24")),
        ("b", "eth0", Some("10.79.0.2/24")),
        None,
    )
    .unwrap();
    let names = ns.names();
    assert!(names.iter().all(|n| netns::list().contains(n)), "{names:?}");
    drop(ns);
    assert!(
        names.iter().all(|n| !netns::list().contains(n)),
        "{names:?} left behind"
    );

    let panicked = std::panic::catch_unwind(|| {
        let mut ns = Netns::new("panic");
        ns.add("a").unwrap();
        ns.add("b").unwrap();
        ns.veth(("a", "eth0", None), ("b", "eth0", None), None)
            .unwrap();
        std::panic::panic_any(ns.names());
    });
    let names = *panicked.unwrap_err().downcast::<Vec<String>>().unwrap();
    assert_eq!(names.len(), 2);
    assert!(
        names.iter().all(|n| !netns::list().contains(n)),
        "{names:?} left behind"
    );
}
