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
        let names = self.check_configured(&specs)?;
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

    /// Every configured spec valid, each name once: the names.
    fn check_configured<'a>(
        &self,
        specs: &'a [ProxySpec],
    ) -> Result<HashSet<&'a str>, RegistryError> {
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
        Ok(names)
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
mod tests;
