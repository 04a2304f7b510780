//! The effective DERP map: the configured map (file or URL, Tailscale's JSON), plus the
//! embedded relay's region (999, "Embedded Relay", at the server's own `/derp`) unless
//! disabled, plus one STUN-only region per extra STUN server (as coderd builds it).

use std::time::Duration;

use vantage_derp::map::{DerpMap, embedded_region, stun_only_region};

use crate::config::ConfigError;

/// The embedded relay's region.
pub const EMBEDDED_REGION_ID: i64 = 999;
pub const EMBEDDED_REGION_NAME: &str = "Embedded Relay";
/// How long fetching a DERP map URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest DERP map accepted.
const MAX_MAP: usize = 4 * 1024 * 1024;

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: "derp_map".into(),
        message: message.into(),
    }
}

/// Read a map from a file path or an http(s) URL.
pub async fn load(source: &str) -> Result<DerpMap, ConfigError> {
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| err(format!("HTTP client: {e}")))?;
        let resp = client
            .get(source)
            .send()
            .await
            .map_err(|e| err(format!("fetching {source}: {e}")))?;
        if !resp.status().is_success() {
            return Err(err(format!("fetching {source}: HTTP {}", resp.status())));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| err(format!("reading {source}: {e}")))?;
        if body.len() > MAX_MAP {
            return Err(err(format!("{source}: larger than {MAX_MAP} bytes")));
        }
        String::from_utf8(body.to_vec()).map_err(|_| err(format!("{source}: not UTF-8")))?
    } else {
        let meta = std::fs::metadata(source).map_err(|e| err(format!("reading {source}: {e}")))?;
        if meta.len() > MAX_MAP as u64 {
            return Err(err(format!("{source}: larger than {MAX_MAP} bytes")));
        }
        std::fs::read_to_string(source).map_err(|e| err(format!("reading {source}: {e}")))?
    };
    DerpMap::parse(&text).map_err(|e| err(format!("{source}: {e}")))
}

/// Build the effective map.
pub async fn effective(
    source: Option<&str>,
    embedded: Option<(&url::Url, i64)>,
    stun_servers: &[String],
) -> Result<DerpMap, ConfigError> {
    let mut map = match source {
        Some(s) => load(s).await?,
        None => DerpMap::default(),
    };
    if let Some((access_url, id)) = embedded {
        let region =
            embedded_region(access_url, id, EMBEDDED_REGION_NAME).map_err(|e| ConfigError {
                field: "access_url".into(),
                message: e.to_string(),
            })?;
        map.regions.insert(id, region);
    }
    for (i, addr) in stun_servers.iter().enumerate() {
        let id = EMBEDDED_REGION_ID + 1 + i64::try_from(i).unwrap_or(0);
        let region = stun_only_region(id, addr).map_err(|e| ConfigError {
            field: format!("stun_servers[{i}]"),
            message: e.to_string(),
        })?;
        map.regions.insert(id, region);
    }
    Ok(map)
}

/// An attached Coder's map over `base`: Coder's regions win every region-ID clash.
pub fn merge_coder(base: &DerpMap, coder: &DerpMap) -> DerpMap {
    let mut map = base.clone();
    for (id, region) in &coder.regions {
        map.regions.insert(*id, region.clone());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_and_stun_regions_join_the_map() {
        let url = url::Url::parse("http://127.0.0.1:7080").unwrap();
        let map = effective(
            None,
            Some((&url, EMBEDDED_REGION_ID)),
            &["127.0.0.1:3478".into()],
        )
        .await
        .unwrap();
        let ids: Vec<i64> = map.regions.keys().copied().collect();
        assert_eq!(ids, vec![999, 1000]);
        assert_eq!(map.regions[&999].region_name, "Embedded Relay");
        assert!(map.regions[&1000].nodes[0].stun_only);
        assert!(map.has_derp_nodes());
        let none = effective(None, None, &[]).await.unwrap();
        assert!(!none.has_derp_nodes());
    }

    #[tokio::test]
    async fn a_broken_map_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.json");
        std::fs::write(&path, r#"{"Regions":{"1":{"RegionID":2,"Nodes":[]}}}"#).unwrap();
        let e = load(path.to_str().unwrap()).await.unwrap_err();
        assert_eq!(e.field, "derp_map");
        assert!(e.message.contains("RegionID"), "{e}");
        let e = load("/nonexistent/map.json").await.unwrap_err();
        assert!(e.message.contains("/nonexistent/map.json"), "{e}");
    }
}
