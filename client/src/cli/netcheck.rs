//! `vantage netcheck`: the DERP and STUN checks run from this machine.

use std::process::ExitCode;

use vantage_proto::transport::Target;

use super::{EX_UNREACHABLE, out, usage};

/// `vantage netcheck`: the DERP section computed on this machine, like `coder netcheck`.
pub(crate) async fn netcheck(
    target: &Target,
    token: Option<&str>,
    derp_map: Option<&str>,
    ca_file: Option<&std::path::Path>,
    node_timeout: std::time::Duration,
) -> ExitCode {
    use vantage_derp::health::{NodeCheckOptions, check_map};
    let text = match derp_map {
        Some(src) if src.starts_with("http://") || src.starts_with("https://") => {
            fetch(src, None, None).await
        }
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--derp-map: reading {path}: {e}"))
        }
        None => {
            let url = format!(
                "{}/api/v2/debug/derp-map",
                target.url().trim_end_matches('/')
            );
            fetch(&url, Some(target), token).await
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vantage: {e}");
            return ExitCode::from(EX_UNREACHABLE);
        }
    };
    let map = match vantage_derp::DerpMap::parse(&text) {
        Ok(m) => m,
        Err(e) => return usage(&format!("--derp-map: {e}")),
    };
    let mut opts = NodeCheckOptions {
        deadline: node_timeout,
        ..NodeCheckOptions::default()
    };
    if let Some(p) = ca_file {
        match std::fs::read_to_string(p) {
            Ok(pem) => opts.client.extra_ca_pem = Some(pem),
            Err(e) => return usage(&format!("--ca-file: reading {}: {e}", p.display())),
        }
    }
    eprintln!("Gathering a network report. This may take a few seconds...");
    let report = check_map(&map, &opts).await;
    let json = serde_json::json!({ "derp": report });
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    ));
    let sev = match report.severity {
        vantage_derp::health::Severity::Ok => 0,
        vantage_derp::health::Severity::Warning => 1,
        vantage_derp::health::Severity::Error => 2,
    };
    ExitCode::from(sev)
}

/// GET `url`; from our server (`target`) with its TLS configuration and the token.
async fn fetch(url: &str, target: Option<&Target>, token: Option<&str>) -> Result<String, String> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(tls) = target.and_then(Target::tls) {
        let mut config = (**tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        builder = builder.use_preconfigured_tls(config);
    }
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("fetching {url}: HTTP {}", resp.status()));
    }
    resp.text().await.map_err(|e| format!("reading {url}: {e}"))
}
