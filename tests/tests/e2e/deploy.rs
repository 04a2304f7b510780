//! The files of `deploy/` pass their checks: the systemd units verify (`systemd-analyze
//! verify`, on copies pointing at the built binaries), the Kustomize server and region overlays
//! render into one fleet (one vantaged, one probe per region, no name twice) and every object
//! validates against the Kubernetes 1.30 schemas (`kubernetes-validate --strict`), and vantaged
//! serves with the example configuration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

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

/// The Python of tests/run.sh's virtual environment under target/ (it has PyYAML, a
/// dependency of kubernetes-validate), or `python3` on the PATH.
fn python() -> PathBuf {
    let venv = root().join("target/tools-venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
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

/// `kubectl kustomize deploy/kubernetes/DIR`: the YAML. The kubectl on the PATH renders it
/// (tests/run.sh installs Debian's kubernetes-client, kubectl 1.20 with kustomize v2, where none
/// is; a current kubectl has kustomize v5). The only warnings allowed are the two deprecations
/// the overlays explain (`bases`, `commonLabels`: their successors do not exist in v2).
fn kustomize(dir: &str) -> String {
    let path = root().join("deploy/kubernetes").join(dir);
    let out = run(
        Path::new("kubectl"),
        &["kustomize", path.to_str().unwrap()],
        "install kubernetes-client; tests/run.sh does",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl kustomize {dir}: {stderr}");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("'bases' is deprecated") || line.contains("'commonLabels' is deprecated"),
            "kubectl kustomize {dir} warned: {line}"
        );
    }
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, as JSON (parsed by PyYAML).
fn objects(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (tests/run.sh installs it with kubernetes-validate)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "parsing the YAML: {yaml}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Validate `yaml` (its `count` objects) against the Kubernetes 1.30 schemas, strictly.
fn validate(dir: &Path, name: &str, yaml: &str, count: usize) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = run(
        &kubernetes_validate(),
        &["-k", "1.30.0", "--strict", file.to_str().unwrap()],
        "pip install kubernetes-validate; tests/run.sh does",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.matches(" passed ").count(), count, "{said}");
}

fn kind_name(o: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&o["kind"]), s(&o["metadata"]["name"]))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The first container of a Deployment.
fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The server kustomization: one vantaged (TLS and tokens on 7080), its kubelet probes on the
/// plaintext health port 7081 (gRPC liveness of service "", readiness from /readyz).
fn assert_the_server(objects: &[Value]) {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1, "one Deployment: {objects:?}");
    let vantaged = container(deployments[0]);
    assert_eq!(vantaged["command"][0], "/usr/local/bin/vantaged");
    let args = vantaged["args"].to_string();
    for arg in [
        "--health-listen=0.0.0.0:7081",
        "--tls-cert=",
        "--token-file=",
    ] {
        assert!(args.contains(arg), "vantaged runs with {arg}: {args}");
    }
    let ports = vantaged["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "health" && p["containerPort"] == 7081),
        "{ports:?}"
    );
    let live = &vantaged["livenessProbe"]["grpc"];
    assert_eq!(live["port"], 7081, "{vantaged}");
    assert_eq!(live["service"], "", "{vantaged}");
    let ready = &vantaged["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/readyz", "{vantaged}");
    assert_eq!(ready["port"], "health", "{vantaged}");
    let service = of_kind(objects, "Service");
    assert_eq!(service.len(), 1, "{objects:?}");
    assert_eq!(of_kind(objects, "Secret").len(), 1, "{objects:?}");
}

/// A region's overlay: only its probe, named `vantage-probe-REGION`, with its region's
/// ConfigMap (vantage REGION-1 in REGION), its Secret and a selector of its own.
fn assert_the_region(region: &str, objects: &[Value]) {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1, "{region}: {objects:?}");
    let probe = deployments[0];
    assert_eq!(probe["metadata"]["name"], format!("vantage-probe-{region}"));
    assert_eq!(
        probe["spec"]["selector"]["matchLabels"]["vantage/region"],
        region
    );
    let c = container(probe);
    assert_eq!(c["command"][0], "/usr/local/bin/vantage-probe", "{c}");
    assert!(
        of_kind(objects, "Service").is_empty(),
        "{region}: {objects:?}"
    );
    let config = c["envFrom"][0]["configMapRef"]["name"].as_str().unwrap();
    let maps = of_kind(objects, "ConfigMap");
    let map = maps
        .iter()
        .find(|m| m["metadata"]["name"] == config)
        .unwrap_or_else(|| panic!("{region}: the ConfigMap {config} is rendered: {objects:?}"));
    assert_eq!(map["data"]["VANTAGE_NAME"], format!("{region}-1"));
    assert_eq!(map["data"]["VANTAGE_REGION"], region);
    let secret = format!("vantage-probe-{region}");
    let token = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "VANTAGE_TOKEN")
        .unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], secret);
    let secrets = of_kind(objects, "Secret");
    assert_eq!(secrets.len(), 1, "{region}: {objects:?}");
    assert_eq!(secrets[0]["metadata"]["name"], secret);
}

#[test]
fn the_kustomizations_render_into_one_fleet_and_validate_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut everything: Vec<Value> = Vec::new();
    let server = kustomize("server");
    let objs = objects(&server);
    assert_the_server(&objs);
    validate(dir.path(), "server", &server, objs.len());
    everything.extend(objs);
    let regions = ["fra", "iad"];
    let listed: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes/overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), regions.len(), "the overlays: {listed:?}");
    for region in regions {
        let yaml = kustomize(&format!("overlays/{region}"));
        let objs = objects(&yaml);
        assert_the_region(region, &objs);
        validate(dir.path(), region, &yaml, objs.len());
        everything.extend(objs);
    }
    // Applied to one namespace, the server and every overlay coexist: no two objects share a
    // kind and name, and no two Deployments share a selector.
    let mut seen = std::collections::BTreeSet::new();
    for o in &everything {
        let key = kind_name(o);
        assert!(seen.insert(key.clone()), "{key:?} is rendered twice");
    }
    let selectors: Vec<String> = of_kind(&everything, "Deployment")
        .iter()
        .map(|d| d["spec"]["selector"].to_string())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = selectors.iter().collect();
    assert_eq!(distinct.len(), selectors.len(), "{selectors:?}");
    assert_eq!(selectors.len(), 1 + regions.len());
    let vantageds = of_kind(&everything, "Deployment")
        .into_iter()
        .filter(|d| container(d)["command"][0] == "/usr/local/bin/vantaged")
        .count();
    assert_eq!(vantageds, 1, "exactly one vantaged in the fleet");
}

#[tokio::test]
async fn vantaged_serves_with_the_example_configuration() {
    let example = root().join("deploy/vantage.example.toml");
    let server = Server::start(&["--config", example.to_str().unwrap()]).await;
    let report = server.report().await;
    assert!(report["severity"].is_string(), "{report}");
    assert_eq!(report["vantages"]["items"][0]["name"], "server");
}
