//! A regional fleet on more than one network host: Linux network namespaces joined by a bridge.
//! The "core" host runs vantaged on 10.77.0.1, the "fra" and "iad" hosts run one probe each
//! from their own addresses (the STUN server on the core sees each at its own), and a DERP relay
//! (a second vantaged's embedded relay) sits on an "edge" host only fra is linked to. Cutting
//! fra's link makes fra-1 stale, and only it; restoring it makes it fresh again.
//!
//! The core serves TLS with a token file; each probe presents its region's token, bound to its
//! region's names ([`Auth`]); a wrong token and a name outside the token's globs are refused.
//!
//! README's section "Deploy a regional fleet" is this test's script: its certificate, token and
//! DERP map commands are run here as written, its network commands are those the fixture runs,
//! and every other command of it is a command this test runs (see [`assert_readme_is_the_test`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
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
    /// README's certificate and token commands, run as written in `dir` (with the built
    /// binaries for `./target/dist/`): openssl makes the CA and the server certificate for the
    /// core and edge addresses, `vantaged token new` the tokens.
    fn new(dir: &Path) -> Auth {
        let block = readme_block("openssl req -x509");
        readme_sh(dir, &block);
        let secret = |who: &str| {
            let text = std::fs::read_to_string(dir.join(format!("{who}.txt"))).unwrap();
            text.lines().next().unwrap().to_owned()
        };
        Auth {
            dir: dir.to_owned(),
            reader: secret("ops"),
            fra: secret("fra"),
            iad: secret("iad"),
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

/// README's section "Deploy a regional fleet".
fn readme_section() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("## Deploy a regional fleet")
        .expect("README has a section \"Deploy a regional fleet\"");
    let rest = &text[start + 2..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e + 1);
    rest[..end].to_owned()
}

/// The `sh` blocks of README's fleet section.
fn readme_blocks() -> Vec<String> {
    readme_section()
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

/// The `sh` block of README's fleet section that contains `marker`.
fn readme_block(marker: &str) -> String {
    readme_blocks()
        .into_iter()
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("README's fleet section has no sh block with {marker:?}"))
}

/// The directory of the built binaries, which README calls `./target/dist/`.
fn bin_dir() -> String {
    bin("vantaged").parent().unwrap().display().to_string()
}

/// Run README's `script` with `sh -e` in `dir`, the built binaries standing in for
/// `./target/dist/`.
fn readme_sh(dir: &Path, script: &str) {
    let script = script.replace("./target/dist/", &format!("{}/", bin_dir()));
    let out = std::process::Command::new("sh")
        .args(["-ec", &script])
        .current_dir(dir)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "README's commands failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command lines this test ran in namespaces, as README spells them.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `./target/dist/PROGRAM ARGS` in namespace `host`, remembered in [`RAN`] as README spells it:
/// files of the fleet's directory by their names, secrets as `"$OPS"`, `"$FRA"`, `"$IAD"`.
fn in_ns(ns: &Netns, auth: &Auth, host: &str, program: &str, args: &[String]) -> Command {
    let dir = format!("{}/", auth.dir.display());
    let spelled: Vec<String> = args
        .iter()
        .map(|a| match a {
            a if *a == auth.reader => "\"$OPS\"".to_owned(),
            a if *a == auth.fra => "\"$FRA\"".to_owned(),
            a if *a == auth.iad => "\"$IAD\"".to_owned(),
            a => a.replace(&dir, ""),
        })
        .collect();
    let line = format!(
        "ip netns exec {host} ./target/dist/{program} {}",
        spelled.join(" ")
    );
    if let Ok(mut ran) = RAN.lock()
        && !ran.contains(&line)
    {
        ran.push(line);
    }
    let mut cmd = ns.command(host, bin(program));
    cmd.args(args);
    cmd
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
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

/// Start vantaged in namespace `host` with `args`; its log goes to `log`.
async fn vantaged(ns: &Netns, auth: &Auth, host: &str, args: &[String], log: &Path) -> ReadyChild {
    let mut cmd = in_ns(ns, auth, host, "vantaged", args);
    cmd.env("VANTAGE_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap());
    ReadyChild::spawn(cmd, &format!("vantaged in {host}"))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(log).unwrap_or_default()))
}

fn probe(ns: &Netns, auth: &Auth, host: &str, name: &str) -> Child {
    let mut args = vec!["--server".to_owned(), Auth::url(CORE)];
    args.extend(auth.probe_args(host));
    args.extend(strings(&["--name", name, "--region", host]));
    let mut cmd = in_ns(ns, auth, host, "vantage-probe", &args);
    cmd.env("VANTAGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn().unwrap()
}

/// `vantage report --json`, run on the core host.
async fn report(ns: &Netns, auth: &Auth) -> Value {
    let mut args = vec!["--server".to_owned(), Auth::url(CORE)];
    args.extend(auth.client_args());
    args.extend(strings(&["report", "--json"]));
    let mut cmd = in_ns(ns, auth, "core", "vantage", &args);
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

/// Where the STUN servers saw vantage `name`: the mapped addresses of its netcheck log
/// (`netcheck: STUN <node> (region <id>) mapped this vantage to <ip:port>`) in the report.
fn stun_mapped(r: &Value, name: &str) -> Vec<SocketAddr> {
    r["derp"]["vantage_reports"][name]["netcheck_logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let (_, addr) = l.as_str()?.split_once(" mapped this vantage to ")?;
            addr.parse().ok()
        })
        .collect()
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
async fn assert_refused_without_auth(ns: &Netns, auth: &Auth) {
    let listen = format!("{CORE}:{PORT}");
    let mut cmd = in_ns(
        ns,
        auth,
        "core",
        "vantaged",
        &strings(&["--listen", &listen]),
    );
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
    let edge = vantaged(ns, auth, "edge", &edge_args, &dir.join("edge.log")).await;
    assert_eq!(edge.url, format!("http://{edge_listen}"));
    // README's DERP map, written as README writes it.
    let map = readme_block("derp-map.json");
    let heredoc = map
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with("cat > derp-map.json"))
        .take_while(|l| !l.starts_with("ip netns exec core"))
        .collect::<String>();
    readme_sh(dir, &heredoc);
    let map = dir.join("derp-map.json");
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
    let core = vantaged(ns, auth, "core", &core_args, log).await;
    assert_eq!(core.url, Auth::url(CORE));
    (core, edge)
}

/// Both probes fresh, each with its view of the access URL, of the edge region and of the
/// STUN region.
async fn both_regions_report(ns: &Netns, auth: &Auth) -> Value {
    eventually(
        Duration::from_secs(60),
        "both regions report every region",
        || async {
            let r = report(ns, auth).await;
            let done = ["fra-1", "iad-1"].iter().all(|n| {
                state(&r, n) == "fresh"
                    && r["access_url"]["vantage_reports"][*n]["severity"].is_string()
                    && seen(&r, n, "1")["severity"].is_string()
                    && seen(&r, n, "1000")["node_reports"][0]["stun"]["CanSTUN"] == true
            });
            done.then_some(r)
        },
    )
    .await
}

/// The relay only fra is linked to is healthy from fra and unreachable from iad, and the
/// aggregate (quorum 2) names who sees what; each probe came from its own host's address, and
/// the STUN server saw each at that address (the report's netcheck logs).
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
        let mapped = stun_mapped(r, name);
        assert_eq!(
            mapped
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>(),
            [addr],
            "the STUN server on the core saw {name} at {addr}: {}",
            r["derp"]["vantage_reports"][name]["netcheck_logs"]
        );
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
    let ca = auth.file("ca.pem");
    let args = strings(&[
        "--server",
        &Auth::url(CORE),
        "--ca-file",
        &ca,
        "--token",
        token,
        "--name",
        name,
        "--region",
        "iad",
        "--once",
    ]);
    let mut cmd = in_ns(ns, auth, "iad", "vantage-probe", &args);
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

/// README's fleet section is what this test did. Its network block, expanded by `sh` with `ip`
/// only printing, is what the fixture ran to build the network; every other command line
/// (continuations joined, a trailing ` &` dropped) is one this test ran, and every command line
/// the test ran is in README. Not compared, because this test runs them as written: the
/// certificate and token block, the DERP map's here-document. Not run: the release build (the
/// test runs the binaries of its own build).
fn assert_readme_is_the_test(ns: &Netns) {
    let fixture = ns.commands();
    let network = readme_block("ip netns add");
    let out = std::process::Command::new("sh")
        .args(["-ec", &format!("ip() {{ echo \"ip $*\"; }}\n{network}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let expanded: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        fixture.starts_with(&expanded),
        "README's network commands {expanded:#?} are the fixture's {fixture:#?}"
    );
    let ran = RAN.lock().unwrap().clone();
    let mut readme = BTreeSet::new();
    for block in readme_blocks() {
        if block.contains("ip netns add")
            || block.contains("openssl req")
            || block.starts_with("cargo build")
        {
            continue;
        }
        let mut heredoc = false;
        for line in block.replace("\\\n", " ").lines() {
            if line.starts_with("cat > derp-map.json") || heredoc {
                heredoc = line != "MAP";
                continue;
            }
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            readme.insert(line.strip_suffix(" &").unwrap_or(&line).to_owned());
        }
    }
    for line in &readme {
        assert!(
            ran.contains(line) || fixture.contains(line),
            "README's command is not one this test runs: {line}\nran: {ran:#?}"
        );
    }
    for line in &ran {
        assert!(
            readme.contains(line),
            "this test ran a command README does not show: {line}\nREADME: {readme:#?}"
        );
    }
}

#[tokio::test]
async fn a_regional_fleet_in_network_namespaces() {
    let ns = network("fleet");
    let dir = tempfile::tempdir().unwrap();
    let auth = Auth::new(dir.path());
    assert_refused_without_auth(&ns, &auth).await;
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
    assert_readme_is_the_test(&ns);
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
