//! The files of `deploy/` pass their checks: the systemd units verify (`systemd-analyze
//! verify`, on copies pointing at the built binaries), the Kustomize overlays render and every
//! object validates against the Kubernetes 1.30 schemas (`kubernetes-validate --strict`), and
//! vantaged serves with the example configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vantage_tests::{Server, bin};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run `program args`, failing with a hint when the tool is missing.
fn run(program: &Path, args: &[&str], install_hint: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} ({install_hint})", program.display()))
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin("vantaged").parent().unwrap().to_owned();
    let units = root().join("deploy/systemd");
    let mut paths = Vec::new();
    for (file, name) in [
        ("vantaged.service", "vantaged.service"),
        ("vantage-probe@.service", "vantage-probe@.service"),
        ("vantage-probe@.service", "vantage-probe@fra-1.service"),
    ] {
        let text = std::fs::read_to_string(units.join(file)).unwrap();
        for needed in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=\n",
            "LoadCredential=",
            "/etc/vantage/",
        ] {
            assert!(text.contains(needed), "{file} lacks {needed:?}");
        }
        let rewritten = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let path = dir.path().join(name);
        std::fs::write(&path, rewritten).unwrap();
        paths.push(path);
    }
    let probe_unit = std::fs::read_to_string(&paths[2]).unwrap();
    assert!(
        probe_unit.contains(&format!("exec {}/vantage-probe'", bins.display())),
        "{probe_unit}"
    );
    assert!(bins.join("vantage-probe").exists());

    let args: Vec<&str> = std::iter::once("verify")
        .chain(paths.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let out = run(
        Path::new("systemd-analyze"),
        &args,
        "install systemd; tests/run.sh does",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

/// `kubernetes-validate`: the one tests/run.sh installs under target/, or one on the PATH.
fn kubernetes_validate() -> PathBuf {
    let venv = root().join("target/tools-venv/bin/kubernetes-validate");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("kubernetes-validate")
    }
}

/// Whether the object under `key` (e.g. `livenessProbe:`) in `yaml` is a gRPC probe of port
/// 7080: its more-indented lines hold `grpc:` and `port: 7080`.
fn grpc_probe(yaml: &str, key: &str) -> bool {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != key);
    let Some(head) = lines.next() else {
        return false;
    };
    let indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .collect();
    body.contains(&"grpc:") && body.contains(&"port: 7080")
}

#[test]
fn the_kustomize_overlays_render_and_validate_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for region in ["fra", "iad"] {
        let overlay = root().join("deploy/kubernetes/overlays").join(region);
        let out = run(
            Path::new("kubectl"),
            &["kustomize", overlay.to_str().unwrap()],
            "install kubernetes-client; tests/run.sh does",
        );
        assert!(
            out.status.success(),
            "kubectl kustomize {region}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout).unwrap();
        for kind in ["kind: Deployment", "kind: Service", "kind: Secret"] {
            assert!(yaml.contains(kind), "{region} renders no {kind}");
        }
        assert!(
            yaml.contains(&format!("value: {region}-1"))
                && yaml.contains(&format!("value: {region}\n")),
            "the {region} overlay names its probe and region: {yaml}"
        );
        for probe in ["livenessProbe:", "readinessProbe:"] {
            assert!(
                grpc_probe(&yaml, probe),
                "vantaged has a grpc.health.v1 {probe} on port 7080: {yaml}"
            );
        }
        let file = dir.path().join(format!("{region}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let out = run(
            &kubernetes_validate(),
            &["-k", "1.30.0", "--strict", file.to_str().unwrap()],
            "pip install kubernetes-validate; tests/run.sh does",
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{region}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(said.matches(" passed ").count(), 5, "{said}");
    }
}

#[tokio::test]
async fn vantaged_serves_with_the_example_configuration() {
    let example = root().join("deploy/vantage.example.toml");
    let server = Server::start(&["--config", example.to_str().unwrap()]).await;
    let report = server.report().await;
    assert!(report["severity"].is_string(), "{report}");
    assert_eq!(report["vantages"]["items"][0]["name"], "server");
}
