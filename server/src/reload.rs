//! SIGHUP reloads the configuration file (`--config`), under the same flags and variables
//! (`docs/behaviour.md#configuration-reload`): the workspace proxies of the file, the DERP map
//! source and its refresh, the global interval and the `[sections.*]` intervals and timeouts
//! are applied at once (probes get their new assignments straight away). Every other setting
//! that changed is logged as needing a restart and not applied. A file that cannot be read or
//! is invalid changes nothing: the error names the field, the value and what was expected.
//! The TLS certificate and the token file are reloaded on the same signal by `security`.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::ingest::derpfeed::MapSource;
use crate::ingest::inventory::Timing;
use crate::registry::Registry;

/// What a reload changes.
pub(crate) struct Live {
    pub(crate) registry: Arc<Registry>,
    pub(crate) map_source: Arc<watch::Sender<MapSource>>,
    pub(crate) timing: Arc<watch::Sender<Timing>>,
}

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The settings applied that changed.
    pub(crate) applied: Vec<&'static str>,
    /// The settings that changed but need a restart.
    pub(crate) need_restart: Vec<&'static str>,
}

/// With a configuration file: SIGHUP reads it again and applies what can change.
pub(crate) fn reload_on_hangup(
    config: &Config,
    targets: &crate::app::Targets,
    stores: &crate::app::Stores,
    cancel: &CancellationToken,
) {
    if config.source.file.is_none() {
        return;
    }
    let live = Live {
        registry: stores.registry.clone(),
        map_source: targets.map_source.clone(),
        timing: targets.timing.clone(),
    };
    on_hangup(config.clone(), live, cancel);
}

/// Reload `config`'s file on every SIGHUP until `cancel`.
fn on_hangup(config: Config, live: Live, cancel: &CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be caught: the configuration file is not reloaded");
            return;
        }
    };
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut current = config;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            let file = current.source.file.clone().unwrap_or_default();
            match reload(&mut current, &live).await {
                Ok(o) => tracing::info!(
                    file = %file.display(),
                    applied = ?o.applied,
                    "configuration reloaded"
                ),
                Err(e) => tracing::error!(
                    file = %file.display(),
                    field = %e.field,
                    "configuration not reloaded, keeping the previous one: {e}"
                ),
            }
        }
    });
}

/// Read the file again and apply what can change; on error nothing changes.
pub(crate) async fn reload(current: &mut Config, live: &Live) -> Result<Outcome, ConfigError> {
    let next = current.reread()?;
    let mut applied = current.clone();
    applied.interval = next.interval;
    applied.sections = next.sections.clone();
    applied.derp_map = next.derp_map.clone();
    applied.derp_map_refresh = next.derp_map_refresh;
    applied.workspace_proxies = next.workspace_proxies.clone();
    // What runs on must stay valid with what is applied (stale_after against the interval).
    applied.validate().map_err(|e| ConfigError {
        message: format!(
            "{} (the settings that need a restart are kept as they run)",
            e.message
        ),
        field: e.field,
    })?;
    let changed = reloadable_changes(current, &applied);
    if current.workspace_proxies != applied.workspace_proxies {
        live.registry
            .configure_proxies(applied.workspace_proxies.clone())
            .await
            .map_err(|e| ConfigError {
                field: "workspace_proxies".into(),
                message: e.to_string(),
            })?;
    }
    let need_restart = needs_restart(&applied, &next);
    for setting in &need_restart {
        tracing::warn!(
            setting,
            "changed in the configuration file: needs a restart, not applied"
        );
    }
    live.map_source.send_if_modified(|now| {
        let next = MapSource {
            source: applied.derp_map.clone(),
            refresh: applied.derp_map_refresh,
        };
        let changed = *now != next;
        *now = next;
        changed
    });
    live.timing.send_if_modified(|now| {
        let next = Timing {
            interval: applied.interval,
            sections: applied.sections.clone(),
        };
        let changed = *now != next;
        *now = next;
        changed
    });
    *current = applied;
    Ok(Outcome {
        applied: changed,
        need_restart,
    })
}

/// The reloadable settings that differ.
fn reloadable_changes(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.interval != b.interval {
        out.push("interval");
    }
    if a.sections != b.sections {
        out.push("sections");
    }
    if a.derp_map != b.derp_map {
        out.push("derp_map");
    }
    if a.derp_map_refresh != b.derp_map_refresh {
        out.push("derp_map_refresh");
    }
    if a.workspace_proxies != b.workspace_proxies {
        out.push("workspace_proxies");
    }
    out
}

/// Destructures `$a` exhaustively (a new setting must be sorted here) and names the fields of
/// the first list that differ in `$b`.
macro_rules! differing {
    ($a:expr, $b:expr; compare $($field:ident),* ; skip $($skipped:ident),* $(,)?) => {{
        let Config { $($field,)* $($skipped: _,)* } = $a;
        let mut out = Vec::new();
        $( if *$field != $b.$field { out.push(stringify!($field)); } )*
        out
    }};
}

/// The settings a reload does not apply that differ between `a` and `b` (names only: some
/// are secrets).
fn needs_restart(a: &Config, b: &Config) -> Vec<&'static str> {
    differing!(a, b;
        compare listen, access_url, database_url, database_threshold, insecure_no_auth,
        tls_cert, tls_key, tls_client_ca, token_file, stale_after, forget_after, quorum,
        raise_after, clear_after, history, write_queue, server_vantage, force_timeout, drain,
        shutdown_grace, health_listen, server_vantage_name, event_retention,
        observation_retention, embedded_relay, stun_listen, stun_servers, derp_node_timeout,
        derp_all_vantages, server_checks_derp, proxies_all_vantages,
        provisioner_daemons_required, provisioner_stale_after, max_vantages,
        allowed_proxy_networks, coder_url, coder_token, coder_refresh, check_database_url,
        embedded_relay_region, coder, alerting;
        // Applied by a reload, or not settings.
        skip interval, sections, derp_map, derp_map_refresh, workspace_proxies, deprecations,
        source,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vantage_proto::Section;

    use super::*;
    use crate::config::Flags;

    fn load(path: &std::path::Path) -> Config {
        let argv = ["vantaged", "--config", path.to_str().unwrap()];
        Config::load(Flags::try_parse_args(argv).unwrap()).unwrap()
    }

    fn live(config: &Config) -> Live {
        Live {
            registry: Arc::new(Registry::in_memory()),
            map_source: Arc::new(
                watch::channel(MapSource {
                    source: config.derp_map.clone(),
                    refresh: config.derp_map_refresh,
                })
                .0,
            ),
            timing: Arc::new(watch::channel(Timing::new(config.interval)).0),
        }
    }

    const PROXY: &str =
        "[[workspace_proxies]]\nname = \"syd\"\nurl = \"http://127.0.0.1:9\"\nregion = \"syd\"\n";

    #[tokio::test]
    async fn a_reload_applies_proxies_map_and_intervals_and_names_what_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(&path, "interval = \"30s\"\n").unwrap();
        let mut config = load(&path);
        let live = live(&config);
        let mut timing = live.timing.subscribe();
        let mut source = live.map_source.subscribe();
        std::fs::write(
            &path,
            format!(
                "interval = \"20s\"\nquorum = 2\nderp_map = \"/etc/map.json\"\n\
                 [sections.derp]\ninterval = \"15s\"\n{PROXY}"
            ),
        )
        .unwrap();
        let o = reload(&mut config, &live).await.unwrap();
        assert_eq!(
            o.applied,
            vec!["interval", "sections", "derp_map", "workspace_proxies"]
        );
        // stale_after follows the interval (3 x) unless given: it needs a restart too.
        assert_eq!(o.need_restart, vec!["stale_after", "quorum"]);
        assert!(timing.has_changed().unwrap() && source.has_changed().unwrap());
        let t = timing.borrow_and_update().clone();
        assert_eq!(t.interval, Duration::from_secs(20));
        assert_eq!(
            t.sections.get(Section::Derp).interval,
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            source.borrow_and_update().source.as_deref(),
            Some("/etc/map.json")
        );
        assert_eq!(config.quorum, 1, "not applied");
        let names: Vec<String> = live
            .registry
            .proxies(None)
            .await
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["syd"]);
    }

    #[tokio::test]
    async fn an_invalid_file_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(&path, format!("interval = \"30s\"\n{PROXY}")).unwrap();
        let mut config = load(&path);
        let live = live(&config);
        live.registry
            .configure_proxies(config.workspace_proxies.clone())
            .await
            .unwrap();
        let before = config.clone();
        let timing = live.timing.subscribe();
        for (text, field) in [
            ("interval = \"soon\"\n", "interval"),
            (
                "[sections.derp]\ntimeout = \"1h\"\n",
                "sections.derp.timeout",
            ),
            // Longer than the stale_after that runs on (3 x 30s): not applied.
            ("interval = \"2m\"\nstale_after = \"10m\"\n", "stale_after"),
            (
                "[[workspace_proxies]]\nname = \"\"\nurl = \"http://127.0.0.1:9\"\n",
                "workspace_proxies",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = reload(&mut config, &live).await.unwrap_err();
            assert!(e.field.starts_with(field), "{text}: {e}");
            assert!(!e.message.is_empty(), "{text}");
            assert_eq!(config, before, "{text}");
            assert!(!timing.has_changed().unwrap(), "{text}");
        }
        assert_eq!(live.registry.proxies(None).await.len(), 1);
    }
}
