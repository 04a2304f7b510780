//! The registries of components that announce themselves (`docs/behaviour.md#registryservice`):
//! provisioner daemons (by heartbeat; stale after 90 s without one) and workspace proxies (from
//! the configuration or by registration). [`Registry`] is the in-memory truth, bounded and
//! validated; [`RegistryStore`] keeps it across restarts; [`RegistryApi`] serves it over gRPC.
//!
//! The registry only knows *what* exists. Whether a proxy is healthy comes from the probes'
//! polls ([`vantage_probe::checks::proxy`]) and the section rules
//! ([`vantage_probe::rules::workspace_proxy`], [`vantage_probe::rules::provisioners`]).
//!
//! Changes are applied in memory under a short lock, then persisted outside it; a store that
//! fails makes the call fail (`Unavailable`), and the next heartbeat or registration retries.
//! Saves of one entry may reach the store out of order: a store keeps the newer one
//! (`last_seen_at` for daemons, `updated_at` for proxies).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::RwLock;
use vantage_probe::rules::provisioners::STALE_AFTER;
use vantage_probe::rules::workspace_proxy::ProxyInput;
use vantage_proto::convert;
use vantage_proto::pb;

use crate::store::StoreError;

mod api;
pub mod follow;
mod model;
mod store;

pub use api::RegistryApi;
pub use model::*;
pub use store::*;

/// Wall-clock time; tests give one that follows tokio's (pausable) clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Default)]
struct State {
    daemons: BTreeMap<String, ProvisionerDaemon>,
    proxies: BTreeMap<String, WorkspaceProxy>,
}

/// The provisioner-daemon and workspace-proxy registries.
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    state: RwLock<State>,
    clock: Clock,
    max_entries: usize,
    /// Link-local and metadata networks proxy URLs may point at all the same.
    allowed_proxy_networks: Vec<ipnet::IpNet>,
    /// Bumped on every change, so assignments and sections can follow.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// A registry over `store`, starting from what it holds.
    pub async fn open(store: Arc<dyn RegistryStore>) -> Result<Registry, StoreError> {
        let snapshot = store.load_registry().await?;
        let mut state = State::default();
        for d in snapshot.daemons {
            state.daemons.insert(d.name.clone(), d);
        }
        for p in snapshot.proxies {
            state.proxies.insert(p.name.clone(), p);
        }
        Ok(Registry {
            store,
            state: RwLock::new(state),
            clock: Arc::new(Utc::now),
            max_entries: MAX_ENTRIES,
            allowed_proxy_networks: Vec::new(),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Allow proxy URLs in these link-local or metadata networks (`allowed_proxy_networks`).
    pub fn allow_proxy_networks(mut self, networks: Vec<ipnet::IpNet>) -> Registry {
        self.allowed_proxy_networks = networks;
        self
    }

    /// An empty registry over a [`MemoryRegistryStore`].
    pub fn in_memory() -> Registry {
        Registry {
            store: Arc::new(MemoryRegistryStore::default()),
            state: RwLock::new(State::default()),
            clock: Arc::new(Utc::now),
            max_entries: MAX_ENTRIES,
            allowed_proxy_networks: Vec::new(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Re-read the store (another replica may have changed it): entries it holds replace
    /// ours when they are newer; entries it no longer holds are dropped. Configured proxies
    /// stay as configured.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let snapshot = self.store.load_registry().await?;
        let changed = {
            let mut state = self.state.write().await;
            let mut next = State::default();
            for d in snapshot.daemons {
                let keep = match state.daemons.get(&d.name) {
                    Some(mine) if mine.last_seen_at > d.last_seen_at => mine.clone(),
                    _ => d,
                };
                next.daemons.insert(keep.name.clone(), keep);
            }
            for p in snapshot.proxies {
                let keep = match state.proxies.get(&p.name) {
                    Some(mine) if mine.updated_at > p.updated_at => mine.clone(),
                    _ => p,
                };
                next.proxies.insert(keep.name.clone(), keep);
            }
            for (name, p) in &state.proxies {
                if p.source == ProxySource::Config && !next.proxies.contains_key(name) {
                    next.proxies.insert(name.clone(), p.clone());
                }
            }
            let changed = next.daemons != state.daemons || next.proxies != state.proxies;
            if changed {
                *state = next;
            }
            changed
        };
        if changed {
            self.changed();
        }
        Ok(())
    }

    /// A receiver that changes whenever the registry does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Replace the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Lower the bound on entries (tests; [`MAX_ENTRIES`] otherwise).
    pub fn with_max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.min(MAX_ENTRIES);
        self
    }

    /// The registry's idea of now: what to pass to the provisioner rules.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Record a heartbeat: the daemon is created on its first (with a new id) and its fields
    /// and `last_seen_at` refreshed on every one.
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<ProvisionerDaemon, RegistryError> {
        let now = self.now();
        let (record, pruned) = {
            let mut state = self.state.write().await;
            let mut pruned = Vec::new();
            if !state.daemons.contains_key(&hb.name) && state.daemons.len() >= self.max_entries {
                pruned = prune(&mut state.daemons, now, DAEMON_RETENTION);
                if state.daemons.len() >= self.max_entries {
                    return Err(RegistryError::Full(format!(
                        "the registry already holds {} provisioner daemons (the most it keeps)",
                        state.daemons.len()
                    )));
                }
            }
            let record = match state.daemons.get(&hb.name) {
                Some(old) => ProvisionerDaemon {
                    id: old.id.clone(),
                    created_at: old.created_at,
                    ..daemon_record(hb, now)
                },
                None => daemon_record(hb, now),
            };
            state.daemons.insert(record.name.clone(), record.clone());
            (record, pruned)
        };
        self.changed();
        if !pruned.is_empty() {
            tracing::info!(
                count = pruned.len(),
                "forgot provisioner daemons unseen for 7 days"
            );
            self.store.delete_daemons(pruned).await?;
        }
        self.store.save_daemon(record.clone()).await?;
        Ok(record)
    }

    /// Forget daemons unseen for longer than `older_than`; returns how many.
    pub async fn prune_daemons(&self, older_than: Duration) -> Result<usize, RegistryError> {
        let now = self.now();
        let pruned = prune(&mut self.state.write().await.daemons, now, older_than);
        let n = pruned.len();
        if n > 0 {
            self.changed();
            self.store.delete_daemons(pruned).await?;
        }
        Ok(n)
    }

    /// Register (or update) a proxy. Over a configured proxy of the same name, the
    /// registration supplies the URL and version, and the fields the configuration leaves
    /// empty; the entry stays configured.
    pub async fn register_proxy(&self, spec: ProxySpec) -> Result<WorkspaceProxy, RegistryError> {
        spec.validate("")?;
        check_proxy_network("url", &spec.url, &self.allowed_proxy_networks)?;
        let now = self.now();
        let record = {
            let mut state = self.state.write().await;
            let record = match state.proxies.get(&spec.name) {
                Some(old) if old.source == ProxySource::Config => {
                    let or = |configured: &str, announced: String| {
                        if configured.is_empty() {
                            announced
                        } else {
                            configured.to_owned()
                        }
                    };
                    WorkspaceProxy {
                        url: spec.url,
                        version: spec.version,
                        display_name: or(&old.display_name, spec.display_name),
                        region: or(&old.region, spec.region),
                        icon_url: or(&old.icon_url, spec.icon_url),
                        derp_enabled: old.derp_enabled || spec.derp_enabled,
                        derp_only: old.derp_only || spec.derp_only,
                        updated_at: now,
                        ..old.clone()
                    }
                }
                Some(old) => WorkspaceProxy {
                    id: old.id.clone(),
                    created_at: old.created_at,
                    ..proxy_record(spec, now, ProxySource::Registered)
                },
                None => {
                    if state.proxies.len() >= self.max_entries {
                        return Err(full_proxies(state.proxies.len()));
                    }
                    proxy_record(spec, now, ProxySource::Registered)
                }
            };
            state.proxies.insert(record.name.clone(), record.clone());
            record
        };
        self.changed();
        self.store.save_proxy(record.clone()).await?;
        Ok(record)
    }

    /// Remove a registered proxy (a configured one stays: `Configured`).
    pub async fn deregister_proxy(&self, name: &str) -> Result<(), RegistryError> {
        check_name("name", name)?;
        {
            let mut state = self.state.write().await;
            match state.proxies.get(name) {
                None => return Err(RegistryError::NotFound(name.to_owned())),
                Some(p) if p.source == ProxySource::Config => {
                    return Err(RegistryError::Configured(name.to_owned()));
                }
                Some(_) => {
                    state.proxies.remove(name);
                }
            }
        }
        self.changed();
        self.store.delete_proxy(name.to_owned()).await?;
        Ok(())
    }

    /// Make the configured proxies exactly `specs` (at start and on every configuration
    /// change): new ones are added, existing ones keep their id and creation time and take the
    /// configured fields (an empty configured URL keeps a registered one), configured ones no
    /// longer listed are removed. Registered proxies are untouched, unless a configured one
    /// takes their name. All or nothing: nothing changes when a spec is invalid.
    pub async fn configure_proxies(&self, specs: Vec<ProxySpec>) -> Result<(), RegistryError> {
        let mut names = HashSet::new();
        for (i, s) in specs.iter().enumerate() {
            s.validate(&format!("workspace_proxies[{i}]."))?;
            check_proxy_network(
                &format!("workspace_proxies[{i}].url"),
                &s.url,
                &self.allowed_proxy_networks,
            )?;
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("workspace_proxies[{i}].name"),
                    format!("{} is configured twice", shown(&s.name)),
                ));
            }
        }
        let now = self.now();
        let (saves, deletes) = {
            let mut state = self.state.write().await;
            let new_names = specs
                .iter()
                .filter(|s| !state.proxies.contains_key(&s.name))
                .count();
            let removed: Vec<String> = state
                .proxies
                .values()
                .filter(|p| p.source == ProxySource::Config && !names.contains(p.name.as_str()))
                .map(|p| p.name.clone())
                .collect();
            let after = state.proxies.len() + new_names - removed.len();
            if after > self.max_entries {
                return Err(full_proxies(state.proxies.len()));
            }
            for n in &removed {
                state.proxies.remove(n);
            }
            let mut saves = Vec::new();
            for spec in specs {
                let record = match state.proxies.get(&spec.name) {
                    Some(old) => {
                        let url = if spec.url.is_empty() {
                            old.url.clone()
                        } else {
                            spec.url.clone()
                        };
                        let version = if spec.version.is_empty() {
                            old.version.clone()
                        } else {
                            spec.version.clone()
                        };
                        let fresh = WorkspaceProxy {
                            id: old.id.clone(),
                            created_at: old.created_at,
                            url,
                            version,
                            updated_at: old.updated_at,
                            ..proxy_record(spec, now, ProxySource::Config)
                        };
                        if &fresh == old {
                            continue;
                        }
                        WorkspaceProxy {
                            updated_at: now,
                            ..fresh
                        }
                    }
                    None => proxy_record(spec, now, ProxySource::Config),
                };
                state.proxies.insert(record.name.clone(), record.clone());
                saves.push(record);
            }
            (saves, removed)
        };
        if !saves.is_empty() || !deletes.is_empty() {
            self.changed();
        }
        for name in deletes {
            self.store.delete_proxy(name).await?;
        }
        for record in saves {
            self.store.save_proxy(record).await?;
        }
        Ok(())
    }

    /// Make the proxies imported from Coder exactly `specs` (each import): new ones are added,
    /// changed ones updated (keeping id and creation time), ones Coder no longer lists
    /// removed. A configured or registered proxy of the same name wins over Coder's (skipped).
    /// Invalid specs are skipped and named in the result.
    pub async fn sync_coder_proxies(
        &self,
        specs: Vec<ProxySpec>,
    ) -> Result<Vec<String>, RegistryError> {
        let now = self.now();
        let mut skipped = Vec::new();
        let (saves, deletes) = {
            let mut state = self.state.write().await;
            let mut names = HashSet::new();
            let mut saves = Vec::new();
            for spec in specs {
                if let Err(e) = spec.validate("") {
                    skipped.push(e.to_string());
                    continue;
                }
                let old = state.proxies.get(&spec.name);
                if old.is_some_and(|o| o.source != ProxySource::Coder) {
                    continue;
                }
                names.insert(spec.name.clone());
                let fresh = match old {
                    Some(o) => WorkspaceProxy {
                        id: o.id.clone(),
                        created_at: o.created_at,
                        updated_at: o.updated_at,
                        ..proxy_record(spec, now, ProxySource::Coder)
                    },
                    None if state.proxies.len() >= self.max_entries => {
                        return Err(full_proxies(state.proxies.len()));
                    }
                    None => proxy_record(spec, now, ProxySource::Coder),
                };
                if old == Some(&fresh) {
                    continue;
                }
                let record = WorkspaceProxy {
                    updated_at: now,
                    ..fresh
                };
                state.proxies.insert(record.name.clone(), record.clone());
                saves.push(record);
            }
            let removed: Vec<String> = state
                .proxies
                .values()
                .filter(|p| p.source == ProxySource::Coder && !names.contains(&p.name))
                .map(|p| p.name.clone())
                .collect();
            for n in &removed {
                state.proxies.remove(n);
            }
            (saves, removed)
        };
        if !saves.is_empty() || !deletes.is_empty() {
            self.changed();
        }
        for name in deletes {
            self.store.delete_proxy(name).await?;
        }
        for record in saves {
            self.store.save_proxy(record).await?;
        }
        Ok(skipped)
    }

    /// Every daemon, stale ones included, by name (the inputs of
    /// [`vantage_probe::rules::provisioners::section`]).
    pub async fn daemons(&self) -> Vec<ProvisionerDaemon> {
        self.state.read().await.daemons.values().cloned().collect()
    }

    /// The proxies of `region` (every proxy when `None`), by name.
    pub async fn proxies(&self, region: Option<&str>) -> Vec<WorkspaceProxy> {
        self.state
            .read()
            .await
            .proxies
            .values()
            .filter(|p| region.is_none_or(|r| p.region == r))
            .cloned()
            .collect()
    }

    /// The inputs of [`vantage_probe::rules::workspace_proxy::section`], without polls.
    pub async fn proxy_inputs(&self) -> Vec<ProxyInput> {
        self.state
            .read()
            .await
            .proxies
            .values()
            .map(|p| p.clone().unpolled())
            .collect()
    }

    /// What a vantage of `region` polls: the proxies of its region, or every proxy when `all`.
    /// Proxies without a URL are included (the poll says `unregistered`, as Coder does).
    pub async fn proxy_targets(&self, region: &str, all: bool) -> Vec<pb::WorkspaceProxyTarget> {
        self.state
            .read()
            .await
            .proxies
            .values()
            .filter(|p| all || p.region == region)
            .map(WorkspaceProxy::target)
            .collect()
    }
}

fn daemon_record(hb: Heartbeat, now: DateTime<Utc>) -> ProvisionerDaemon {
    ProvisionerDaemon {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: hb.organization_id,
        key_id: NIL_UUID.to_owned(),
        name: hb.name,
        version: hb.version,
        api_version: hb.api_version,
        provisioners: hb.provisioners,
        tags: hb.tags,
        created_at: now,
        last_seen_at: Some(now),
    }
}

/// The registry's entry for a validated `spec`, new at `now`.
fn proxy_record(spec: ProxySpec, now: DateTime<Utc>, source: ProxySource) -> WorkspaceProxy {
    WorkspaceProxy {
        id: uuid::Uuid::new_v4().to_string(),
        name: spec.name,
        display_name: spec.display_name,
        icon_url: spec.icon_url,
        url: spec.url,
        region: spec.region,
        derp_enabled: spec.derp_enabled,
        derp_only: spec.derp_only,
        version: spec.version,
        created_at: now,
        updated_at: now,
        source,
    }
}

fn full_proxies(n: usize) -> RegistryError {
    RegistryError::Full(format!(
        "the registry already holds {n} workspace proxies (the most it keeps)"
    ))
}

/// Remove the daemons unseen for longer than `older_than`; their names.
fn prune(
    daemons: &mut BTreeMap<String, ProvisionerDaemon>,
    now: DateTime<Utc>,
    older_than: Duration,
) -> Vec<String> {
    let gone: Vec<String> = daemons
        .values()
        .filter(|d| {
            (now - d.last_seen_at.unwrap_or(d.created_at))
                .to_std()
                .is_ok_and(|age| age > older_than)
        })
        .map(|d| d.name.clone())
        .collect();
    for n in &gone {
        daemons.remove(n);
    }
    gone
}

#[cfg(test)]
mod tests {
    use tonic::{Request, Status};

    use super::*;
    use pb::registry_service_server::RegistryService as _;
    use tonic::Code;
    use vantage_probe::rules::{provisioners, workspace_proxy};
    use vantage_proto::Severity;

    /// A wall clock that follows tokio's clock, so `tokio::time::pause`/`advance` move it.
    fn tokio_clock() -> Clock {
        let base = DateTime::from_timestamp(1_750_000_000, 0).expect("valid");
        let start = tokio::time::Instant::now();
        Arc::new(move || {
            base + chrono::TimeDelta::from_std(start.elapsed()).expect("test durations fit")
        })
    }

    fn api(registry: Registry) -> RegistryApi {
        RegistryApi {
            registry: Arc::new(registry),
        }
    }

    fn hb(name: &str, version: &str, api_version: &str) -> pb::ProvisionerHeartbeatRequest {
        pb::ProvisionerHeartbeatRequest {
            name: name.into(),
            version: version.into(),
            api_version: api_version.into(),
            provisioners: vec!["terraform".into()],
            tags: [("scope".to_owned(), "organization".to_owned())].into(),
            organization_id: None,
        }
    }

    fn reg(name: &str, url: &str, region: &str) -> pb::RegisterWorkspaceProxyRequest {
        pb::RegisterWorkspaceProxyRequest {
            name: name.into(),
            display_name: format!("Proxy {name}"),
            url: url.into(),
            region: region.into(),
            ..Default::default()
        }
    }

    fn with_version(
        r: pb::RegisterWorkspaceProxyRequest,
        version: &str,
    ) -> pb::RegisterWorkspaceProxyRequest {
        pb::RegisterWorkspaceProxyRequest {
            version: version.into(),
            ..r
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_id_and_daemon_goes_stale_after_90s() {
        let a = api(Registry::in_memory().with_clock(tokio_clock()));
        let first = a
            .provisioner_heartbeat(Request::new(hb("d1", "v2.26.0", "1.9")))
            .await
            .expect("heartbeat")
            .into_inner();
        let d1 = first.daemon.expect("daemon");
        assert_eq!(d1.organization_id, NIL_UUID);
        assert_eq!(first.stale_after, Some(convert::duration(STALE_AFTER)));

        tokio::time::advance(Duration::from_secs(30)).await;
        let second = a
            .provisioner_heartbeat(Request::new(hb("d1", "v2.26.1", "1.9")))
            .await
            .expect("heartbeat")
            .into_inner()
            .daemon
            .expect("daemon");
        assert_eq!(second.id, d1.id, "id assigned once");
        assert_eq!(second.created_at, d1.created_at);
        assert_eq!(second.version, "v2.26.1");
        assert_ne!(second.last_seen_at, d1.last_seen_at);

        let registry = &a.registry;
        let section = |registry: &Registry, inputs: &[ProvisionerDaemon]| {
            provisioners::section(
                inputs,
                registry.now(),
                "v2.26.0",
                provisioners::CURRENT_API_MAJOR,
                true,
                STALE_AFTER,
            )
        };
        let r = section(registry, &registry.daemons().await);
        assert_eq!(r.base.severity, Severity::Ok);
        assert_eq!(r.items.len(), 1);

        tokio::time::advance(Duration::from_secs(90)).await;
        let r = section(registry, &registry.daemons().await);
        assert_eq!(r.items.len(), 1, "exactly 90 s: still fresh");

        tokio::time::advance(Duration::from_millis(1)).await;
        let r = section(registry, &registry.daemons().await);
        assert!(r.items.is_empty(), "past 90 s: stale");
        assert_eq!(r.base.severity, Severity::Error);
        assert_eq!(r.base.warnings[0].code, "EPD01");

        let listed = a
            .list_provisioner_daemons(Request::new(pb::ListProvisionerDaemonsRequest {}))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.daemons.len(), 1, "stale daemons are still listed");
    }

    #[tokio::test]
    async fn heartbeat_validation_names_the_field() {
        let a = api(Registry::in_memory());
        let cases: Vec<(&str, pb::ProvisionerHeartbeatRequest, &str)> = vec![
            ("empty name", hb("", "v1.0.0", "1.0"), "name: "),
            ("bad name", hb("a b", "v1.0.0", "1.0"), "name: "),
            ("long name", hb(&"x".repeat(65), "v1.0.0", "1.0"), "name: "),
            (
                "control char",
                hb("d", "v1\n", "1.0"),
                "version: must not contain control characters",
            ),
            (
                "too many tags",
                pb::ProvisionerHeartbeatRequest {
                    tags: (0..=MAX_TAGS)
                        .map(|i| (format!("k{i}"), "v".into()))
                        .collect(),
                    ..hb("d", "v1.0.0", "1.0")
                },
                "tags: at most 64 entries",
            ),
            (
                "empty tag key",
                pb::ProvisionerHeartbeatRequest {
                    tags: [(String::new(), "v".to_owned())].into(),
                    ..hb("d", "v1.0.0", "1.0")
                },
                "tags: a tag key is empty",
            ),
            (
                "bad provisioner",
                pb::ProvisionerHeartbeatRequest {
                    provisioners: vec!["ok".into(), "no way".into()],
                    ..hb("d", "v1.0.0", "1.0")
                },
                "provisioners[1]: ",
            ),
            (
                "bad organization",
                pb::ProvisionerHeartbeatRequest {
                    organization_id: Some("nope".into()),
                    ..hb("d", "v1.0.0", "1.0")
                },
                "organization_id: \"nope\" is not a UUID",
            ),
        ];
        for (name, req, want) in cases {
            let err = a
                .provisioner_heartbeat(Request::new(req))
                .await
                .expect_err(name);
            assert_eq!(err.code(), Code::InvalidArgument, "{name}");
            assert!(err.message().starts_with(want), "{name}: {}", err.message());
        }
        assert!(
            a.registry.daemons().await.is_empty(),
            "bad input changes nothing"
        );

        // An invalid version is accepted: the section reports it (EUNKNOWN).
        let ok = a
            .provisioner_heartbeat(Request::new(pb::ProvisionerHeartbeatRequest {
                organization_id: Some("6BA7B810-9DAD-11D1-80B4-00C04FD430C8".into()),
                ..hb("d", "2.26.0", "x.y")
            }))
            .await
            .expect("accepted")
            .into_inner();
        assert_eq!(
            ok.daemon.expect("daemon").organization_id,
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn daemons_are_bounded_and_old_ones_make_room() {
        let a = api(Registry::in_memory()
            .with_clock(tokio_clock())
            .with_max_entries(2));
        for n in ["a", "b"] {
            a.provisioner_heartbeat(Request::new(hb(n, "v1.0.0", "1.0")))
                .await
                .expect("fits");
        }
        let err = a
            .provisioner_heartbeat(Request::new(hb("c", "v1.0.0", "1.0")))
            .await
            .expect_err("full");
        assert_eq!(err.code(), Code::ResourceExhausted);
        // A known daemon still heartbeats when full.
        a.provisioner_heartbeat(Request::new(hb("a", "v1.0.0", "1.0")))
            .await
            .expect("known daemon");

        tokio::time::advance(DAEMON_RETENTION + Duration::from_secs(1)).await;
        a.provisioner_heartbeat(Request::new(hb("c", "v1.0.0", "1.0")))
            .await
            .expect("room after forgetting daemons unseen for 7 days");
        let names: Vec<String> = a
            .registry
            .daemons()
            .await
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, vec!["c".to_owned()]);

        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(
            a.registry
                .prune_daemons(Duration::from_secs(60))
                .await
                .expect("prune"),
            1
        );
    }

    #[tokio::test]
    async fn proxy_registration_listing_and_targets() {
        let a = api(Registry::in_memory());
        let eu = a
            .register_workspace_proxy(Request::new(reg("eu-1", "https://eu-1.example.com/", "eu")))
            .await
            .expect("register")
            .into_inner();
        assert_eq!(eu.source, "registered");
        a.register_workspace_proxy(Request::new(reg("us-1", "http://us-1.example.com", "us")))
            .await
            .expect("register");
        a.register_workspace_proxy(Request::new(reg("eu-0", "", "eu")))
            .await
            .expect("an empty URL is allowed");

        // Re-registering keeps the id.
        let again = a
            .register_workspace_proxy(Request::new(with_version(
                reg("eu-1", "https://eu-1.example.com/", "eu"),
                "v2.26.0",
            )))
            .await
            .expect("re-register")
            .into_inner();
        assert_eq!(again.id, eu.id);
        assert_eq!(again.version, "v2.26.0");

        let targets = a.registry.proxy_targets("eu", false).await;
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["eu-0", "eu-1"]);
        assert_eq!(targets[1].url, "https://eu-1.example.com/");
        assert_eq!(a.registry.proxy_targets("eu", true).await.len(), 3);
        assert!(a.registry.proxy_targets("ap", false).await.is_empty());

        let listed = a
            .list_workspace_proxies(Request::new(pb::ListWorkspaceProxiesRequest {
                region: "us".into(),
            }))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.proxies.len(), 1);
        assert_eq!(listed.proxies[0].name, "us-1");

        // Inputs feed the section: never polled → eu-0 unregistered, the others unknown.
        let inputs = a.registry.proxy_inputs().await;
        assert_eq!(inputs.len(), 3);
        assert_eq!(inputs[0].status(), "unregistered");
        assert_eq!(inputs[1].status(), "unknown");
        let r = workspace_proxy::section(&inputs);
        assert_eq!(r.base.severity, Severity::Error, "no proxy healthy yet");

        a.deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
            name: "us-1".into(),
        }))
        .await
        .expect("deregister");
        let err = a
            .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
                name: "us-1".into(),
            }))
            .await
            .expect_err("gone");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(a.registry.proxies(None).await.len(), 2);
    }

    #[tokio::test]
    async fn proxy_validation_names_the_field() {
        let a = api(Registry::in_memory());
        let cases: Vec<(&str, pb::RegisterWorkspaceProxyRequest, &str)> = vec![
            ("bad name", reg("", "https://x.example.com", "eu"), "name: "),
            (
                "ftp url",
                reg("p", "ftp://x.example.com", "eu"),
                "url: must be an http:// or https:// URL",
            ),
            ("not a url", reg("p", "x.example.com", "eu"), "url: "),
            (
                "query",
                reg("p", "https://x.example.com/?a=b", "eu"),
                "url: must not have a query or fragment",
            ),
            (
                "bad region",
                reg("p", "https://x.example.com", "e u"),
                "region: ",
            ),
            (
                "long display name",
                pb::RegisterWorkspaceProxyRequest {
                    display_name: "x".repeat(MAX_TEXT + 1),
                    ..reg("p", "", "eu")
                },
                "display_name: at most 256 bytes",
            ),
        ];
        for (name, req, want) in cases {
            let err = a
                .register_workspace_proxy(Request::new(req))
                .await
                .expect_err(name);
            assert_eq!(err.code(), Code::InvalidArgument, "{name}");
            assert!(err.message().starts_with(want), "{name}: {}", err.message());
        }
        assert!(a.registry.proxies(None).await.is_empty());
        let err = a
            .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
                name: "no such".into(),
            }))
            .await
            .expect_err("invalid name");
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn proxies_are_bounded() {
        let a = api(Registry::in_memory().with_max_entries(1));
        a.register_workspace_proxy(Request::new(reg("a", "", "eu")))
            .await
            .expect("fits");
        let err = a
            .register_workspace_proxy(Request::new(reg("b", "", "eu")))
            .await
            .expect_err("full");
        assert_eq!(err.code(), Code::ResourceExhausted);
        a.register_workspace_proxy(Request::new(reg("a", "https://a.example.com", "eu")))
            .await
            .expect("updating a known proxy is fine when full");
    }

    #[tokio::test]
    async fn configured_proxies_take_registrations_and_cannot_be_deregistered() {
        let registry = Registry::in_memory();
        let spec = |name: &str, url: &str| ProxySpec {
            name: name.into(),
            display_name: format!("Configured {name}"),
            url: url.into(),
            region: "eu".into(),
            ..Default::default()
        };
        registry
            .configure_proxies(vec![
                spec("eu-1", ""),
                spec("eu-2", "https://eu-2.example.com"),
            ])
            .await
            .expect("configure");
        let a = api(registry);
        let before = a.registry.proxies(None).await;
        assert!(before.iter().all(|p| p.source == ProxySource::Config));

        // The proxy starts and announces its URL; configured fields win.
        let r = a
            .register_workspace_proxy(Request::new(with_version(
                reg("eu-1", "https://eu-1.example.com", "us"),
                "v2.26.0",
            )))
            .await
            .expect("register")
            .into_inner();
        assert_eq!(r.source, "config");
        assert_eq!(r.id, before[0].id);
        assert_eq!(r.url, "https://eu-1.example.com");
        assert_eq!(r.region, "eu");
        assert_eq!(r.display_name, "Configured eu-1");

        let err = a
            .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
                name: "eu-1".into(),
            }))
            .await
            .expect_err("configured");
        assert_eq!(err.code(), Code::FailedPrecondition);

        // Reconfigure: eu-2 dropped, eu-1 keeps its registered URL and id.
        a.registry
            .configure_proxies(vec![spec("eu-1", "")])
            .await
            .expect("reconfigure");
        let after = a.registry.proxies(None).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].id, before[0].id);
        assert_eq!(after[0].url, "https://eu-1.example.com");

        // Invalid or duplicate specs change nothing.
        let err = a
            .registry
            .configure_proxies(vec![spec("x", ""), spec("x", "")])
            .await
            .expect_err("duplicate");
        assert!(
            err.to_string().starts_with("workspace_proxies[1].name: "),
            "{err}"
        );
        let err = a
            .registry
            .configure_proxies(vec![spec("x", "gopher://x")])
            .await
            .expect_err("bad url");
        assert!(
            err.to_string().starts_with("workspace_proxies[0].url: "),
            "{err}"
        );
        assert_eq!(a.registry.proxies(None).await, after);
    }

    #[tokio::test]
    async fn store_round_trip_restores_the_registry() {
        let store: Arc<dyn RegistryStore> = Arc::new(MemoryRegistryStore::default());
        let first = Registry::open(store.clone()).await.expect("open");
        let d = first
            .heartbeat(Heartbeat::try_from(hb("d1", "v2.26.0", "1.9")).expect("valid heartbeat"))
            .await
            .expect("heartbeat");
        let p = first
            .register_proxy(ProxySpec {
                name: "eu-1".into(),
                url: "https://eu-1.example.com".into(),
                region: "eu".into(),
                ..Default::default()
            })
            .await
            .expect("register");

        let second = Registry::open(store.clone()).await.expect("reopen");
        assert_eq!(second.daemons().await, vec![d.clone()]);
        assert_eq!(second.proxies(None).await, vec![p]);
        second.deregister_proxy("eu-1").await.expect("deregister");
        assert!(
            Registry::open(store.clone())
                .await
                .expect("reopen")
                .proxies(None)
                .await
                .is_empty()
        );

        // An older save arriving late does not overwrite a newer one.
        let older = ProvisionerDaemon {
            last_seen_at: d.last_seen_at.map(|t| t - chrono::TimeDelta::seconds(5)),
            version: "v0.1.0".into(),
            ..d.clone()
        };
        store.save_daemon(older).await.expect("save");
        let loaded = store.load_registry().await.expect("load");
        assert_eq!(loaded.daemons, vec![d]);
    }

    #[test]
    fn store_errors_are_unavailable_without_internals() {
        let s = Status::from(RegistryError::Store(StoreError::Database {
            what: "saving a proxy",
            reason: "connection to 10.0.0.5 refused".into(),
        }));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.0.0.5"));
    }
}
