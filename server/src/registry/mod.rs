//! The registries of components that announce themselves (SPEC §4 `RegistryService`):
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};
use vantage_probe::rules::provisioners::{DaemonInput, STALE_AFTER};
use vantage_probe::rules::workspace_proxy::ProxyInput;
use vantage_proto::convert;
use vantage_proto::pb;

use crate::store::StoreError;

/// Most daemons, and most proxies, the registry holds (each).
pub const MAX_ENTRIES: usize = 10_000;
/// Most tags a daemon may carry.
pub const MAX_TAGS: usize = 64;
/// Most provisioner types a daemon may list.
pub const MAX_PROVISIONERS: usize = 32;
/// A daemon unseen for this long is forgotten when room is needed (Coder purges after 7 days).
pub const DAEMON_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The organization of a daemon that names none.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 256;
const MAX_URL: usize = 2048;
const MAX_TAG_KEY: usize = 128;

/// Why a registry call failed. Turned into a `tonic::Status` in one place (`From`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input; names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Full(String),
    #[error("no workspace proxy named {0:?}")]
    NotFound(String),
    #[error(
        "workspace proxy {0:?} comes from the server configuration: remove it there, not over the API"
    )]
    Configured(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            RegistryError::Full(_) => Status::resource_exhausted(e.to_string()),
            RegistryError::NotFound(_) => Status::not_found(e.to_string()),
            RegistryError::Configured(_) => Status::failed_precondition(e.to_string()),
            RegistryError::Store(err) => {
                tracing::warn!(error = %err, "registry store failed");
                Status::unavailable("the registry could not be saved; retry later")
            }
        }
    }
}

/// A provisioner daemon as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRecord {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub provisioners: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl DaemonRecord {
    pub fn to_input(&self) -> DaemonInput {
        DaemonInput {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            key_id: NIL_UUID.to_owned(),
            created_at: self.created_at,
            last_seen_at: Some(self.last_seen_at),
            name: self.name.clone(),
            version: self.version.clone(),
            api_version: self.api_version.clone(),
            provisioners: self.provisioners.clone(),
            tags: self.tags.clone(),
        }
    }

    pub fn to_pb(&self) -> pb::ProvisionerDaemonInfo {
        pb::ProvisionerDaemonInfo {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            api_version: self.api_version.clone(),
            provisioners: self.provisioners.clone(),
            tags: self.tags.clone().into_iter().collect(),
            created_at: Some(convert::timestamp(self.created_at)),
            last_seen_at: Some(convert::timestamp(self.last_seen_at)),
        }
    }
}

/// Where a proxy entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// The server's configuration: it owns the entry, the API cannot remove it.
    Config,
    /// `RegisterWorkspaceProxy`.
    Registered,
}

impl ProxySource {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxySource::Config => "config",
            ProxySource::Registered => "registered",
        }
    }
}

/// A workspace proxy as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRecord {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub icon_url: String,
    pub url: String,
    pub region: String,
    pub derp_enabled: bool,
    pub derp_only: bool,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub source: ProxySource,
}

impl ProxyRecord {
    /// The rule input, never polled yet (the caller joins the latest polls,
    /// e.g. with [`vantage_probe::rules::workspace_proxy::observed`]).
    pub fn to_input(&self) -> ProxyInput {
        ProxyInput {
            id: self.id.clone(),
            name: self.name.clone(),
            display_name: self.display_name.clone(),
            icon_url: self.icon_url.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
            derp_enabled: self.derp_enabled,
            derp_only: self.derp_only,
            version: self.version.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted: false,
            result: None,
            checked_at: None,
        }
    }

    pub fn to_pb(&self) -> pb::WorkspaceProxyRegistration {
        pb::WorkspaceProxyRegistration {
            id: self.id.clone(),
            name: self.name.clone(),
            display_name: self.display_name.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
            icon_url: self.icon_url.clone(),
            derp_enabled: self.derp_enabled,
            derp_only: self.derp_only,
            version: self.version.clone(),
            created_at: Some(convert::timestamp(self.created_at)),
            updated_at: Some(convert::timestamp(self.updated_at)),
            source: self.source.as_str().to_owned(),
        }
    }

    pub fn to_target(&self) -> pb::WorkspaceProxyTarget {
        pb::WorkspaceProxyTarget {
            name: self.name.clone(),
            url: self.url.clone(),
        }
    }
}

/// A validated heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub provisioners: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub organization_id: String,
}

impl TryFrom<pb::ProvisionerHeartbeatRequest> for Heartbeat {
    type Error = RegistryError;

    fn try_from(r: pb::ProvisionerHeartbeatRequest) -> Result<Self, Self::Error> {
        check_name("name", &r.name)?;
        check_text("version", &r.version, MAX_TEXT)?;
        check_text("api_version", &r.api_version, MAX_TEXT)?;
        if r.provisioners.len() > MAX_PROVISIONERS {
            return Err(invalid(
                "provisioners",
                format!(
                    "at most {MAX_PROVISIONERS} entries (got {})",
                    r.provisioners.len()
                ),
            ));
        }
        for (i, p) in r.provisioners.iter().enumerate() {
            check_name(&format!("provisioners[{i}]"), p)?;
        }
        if r.tags.len() > MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("at most {MAX_TAGS} entries (got {})", r.tags.len()),
            ));
        }
        let tags: BTreeMap<String, String> = r.tags.into_iter().collect();
        for (k, v) in &tags {
            if k.is_empty() {
                return Err(invalid("tags", "a tag key is empty"));
            }
            check_text("tags", k, MAX_TAG_KEY)?;
            check_text(&format!("tags[{}]", shown(k)), v, MAX_TEXT)?;
        }
        let organization_id = match r.organization_id.as_deref() {
            None | Some("") => NIL_UUID.to_owned(),
            Some(id) => uuid::Uuid::parse_str(id)
                .map_err(|_| invalid("organization_id", format!("{} is not a UUID", shown(id))))?
                .hyphenated()
                .to_string(),
        };
        Ok(Heartbeat {
            name: r.name,
            version: r.version,
            api_version: r.api_version,
            provisioners: r.provisioners,
            tags,
            organization_id,
        })
    }
}

/// A validated workspace proxy, from the configuration or a registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySpec {
    pub name: String,
    pub display_name: String,
    /// Empty: not started yet (`unregistered`).
    pub url: String,
    pub region: String,
    pub icon_url: String,
    pub derp_enabled: bool,
    pub derp_only: bool,
    pub version: String,
}

impl ProxySpec {
    /// Check every field; errors name the field, prefixed by `at` (e.g. `workspace_proxies[2].`).
    pub fn validate(&self, at: &str) -> Result<(), RegistryError> {
        check_name(&format!("{at}name"), &self.name)?;
        check_text(&format!("{at}display_name"), &self.display_name, MAX_TEXT)?;
        check_proxy_url(&format!("{at}url"), &self.url)?;
        if !self.region.is_empty() {
            check_name(&format!("{at}region"), &self.region)?;
        }
        check_text(&format!("{at}icon_url"), &self.icon_url, MAX_URL)?;
        check_text(&format!("{at}version"), &self.version, MAX_TEXT)?;
        Ok(())
    }
}

impl TryFrom<pb::RegisterWorkspaceProxyRequest> for ProxySpec {
    type Error = RegistryError;

    fn try_from(r: pb::RegisterWorkspaceProxyRequest) -> Result<Self, Self::Error> {
        let spec = ProxySpec {
            name: r.name,
            display_name: r.display_name,
            url: r.url,
            region: r.region,
            icon_url: r.icon_url,
            derp_enabled: r.derp_enabled,
            derp_only: r.derp_only,
            version: r.version,
        };
        spec.validate("")?;
        Ok(spec)
    }
}

/// At most 64 characters of `s`, quoted, for error messages (input is never echoed in full).
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// 1–64 characters of `[A-Za-z0-9._-]`.
fn check_name(field: &str, v: &str) -> Result<(), RegistryError> {
    let ok = !v.is_empty()
        && v.len() <= MAX_NAME
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "must be 1-{MAX_NAME} characters of A-Z, a-z, 0-9, '.', '_' or '-' (got {})",
                shown(v)
            ),
        ))
    }
}

/// At most `max` bytes, no control characters.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), RegistryError> {
    if v.len() > max {
        return Err(invalid(
            field,
            format!("at most {max} bytes (got {})", v.len()),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Empty, or an absolute http(s) URL with a host and no query or fragment.
fn check_proxy_url(field: &str, v: &str) -> Result<(), RegistryError> {
    if v.is_empty() {
        return Ok(());
    }
    check_text(field, v, MAX_URL)?;
    let u = url::Url::parse(v)
        .map_err(|e| invalid(field, format!("{} is not a valid URL: {e}", shown(v))))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid(
            field,
            format!(
                "must be an http:// or https:// URL (got scheme {:?})",
                u.scheme()
            ),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "must name a host"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid(field, "must not have a query or fragment"));
    }
    Ok(())
}

/// Everything a store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySnapshot {
    pub daemons: Vec<DaemonRecord>,
    pub proxies: Vec<ProxyRecord>,
}

/// Where the registry lives across restarts. Saves are upserts by name; of two saves of one
/// entry a store keeps the newer (`last_seen_at` / `updated_at`), whatever order they arrive in.
pub trait RegistryStore: Send + Sync + 'static {
    fn load_registry(&self) -> BoxFuture<'_, Result<RegistrySnapshot, StoreError>>;
    fn save_daemon(&self, daemon: DaemonRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_daemons(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>>;
    fn save_proxy(&self, proxy: ProxyRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_proxy(&self, name: String) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The embedded default: state is lost on restart.
#[derive(Default)]
pub struct MemoryRegistryStore {
    inner: Mutex<(
        BTreeMap<String, DaemonRecord>,
        BTreeMap<String, ProxyRecord>,
    )>,
}

impl MemoryRegistryStore {
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &mut (
                BTreeMap<String, DaemonRecord>,
                BTreeMap<String, ProxyRecord>,
            ),
        ) -> T,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let r = self
            .inner
            .lock()
            .map(|mut g| f(&mut g))
            .map_err(|_| StoreError::Poisoned("poisoned"));
        Box::pin(async move { r })
    }
}

impl RegistryStore for MemoryRegistryStore {
    fn load_registry(&self) -> BoxFuture<'_, Result<RegistrySnapshot, StoreError>> {
        self.with(|(d, p)| RegistrySnapshot {
            daemons: d.values().cloned().collect(),
            proxies: p.values().cloned().collect(),
        })
    }

    fn save_daemon(&self, daemon: DaemonRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |(d, _)| {
            if d.get(&daemon.name)
                .is_none_or(|old| old.last_seen_at <= daemon.last_seen_at)
            {
                d.insert(daemon.name.clone(), daemon);
            }
        })
    }

    fn delete_daemons(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |(d, _)| {
            for n in names {
                d.remove(&n);
            }
        })
    }

    fn save_proxy(&self, proxy: ProxyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |(_, p)| {
            if p.get(&proxy.name)
                .is_none_or(|old| old.updated_at <= proxy.updated_at)
            {
                p.insert(proxy.name.clone(), proxy);
            }
        })
    }

    fn delete_proxy(&self, name: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |(_, p)| {
            p.remove(&name);
        })
    }
}

/// Wall-clock time; tests give one that follows tokio's (pausable) clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Default)]
struct State {
    daemons: BTreeMap<String, DaemonRecord>,
    proxies: BTreeMap<String, ProxyRecord>,
}

/// The provisioner-daemon and workspace-proxy registries.
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    state: RwLock<State>,
    clock: Clock,
    max_entries: usize,
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
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// An empty registry over a [`MemoryRegistryStore`].
    pub fn in_memory() -> Registry {
        Registry {
            store: Arc::new(MemoryRegistryStore::default()),
            state: RwLock::new(State::default()),
            clock: Arc::new(Utc::now),
            max_entries: MAX_ENTRIES,
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
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<DaemonRecord, RegistryError> {
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
                Some(old) => DaemonRecord {
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
    pub async fn register_proxy(&self, spec: ProxySpec) -> Result<ProxyRecord, RegistryError> {
        spec.validate("")?;
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
                    ProxyRecord {
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
                Some(old) => ProxyRecord {
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
                        let fresh = ProxyRecord {
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
                        ProxyRecord {
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

    /// Every daemon, stale ones included, by name.
    pub async fn daemons(&self) -> Vec<DaemonRecord> {
        self.state.read().await.daemons.values().cloned().collect()
    }

    /// The proxies of `region` (every proxy when `None`), by name.
    pub async fn proxies(&self, region: Option<&str>) -> Vec<ProxyRecord> {
        self.state
            .read()
            .await
            .proxies
            .values()
            .filter(|p| region.is_none_or(|r| p.region == r))
            .cloned()
            .collect()
    }

    /// The inputs of [`vantage_probe::rules::provisioners::section`].
    pub async fn provisioner_inputs(&self) -> Vec<DaemonInput> {
        self.state
            .read()
            .await
            .daemons
            .values()
            .map(DaemonRecord::to_input)
            .collect()
    }

    /// The inputs of [`vantage_probe::rules::workspace_proxy::section`], without polls.
    pub async fn proxy_inputs(&self) -> Vec<ProxyInput> {
        self.state
            .read()
            .await
            .proxies
            .values()
            .map(ProxyRecord::to_input)
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
            .map(ProxyRecord::to_target)
            .collect()
    }
}

fn daemon_record(hb: Heartbeat, now: DateTime<Utc>) -> DaemonRecord {
    DaemonRecord {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: hb.organization_id,
        name: hb.name,
        version: hb.version,
        api_version: hb.api_version,
        provisioners: hb.provisioners,
        tags: hb.tags,
        created_at: now,
        last_seen_at: now,
    }
}

fn proxy_record(spec: ProxySpec, now: DateTime<Utc>, source: ProxySource) -> ProxyRecord {
    ProxyRecord {
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
    daemons: &mut BTreeMap<String, DaemonRecord>,
    now: DateTime<Utc>,
    older_than: Duration,
) -> Vec<String> {
    let gone: Vec<String> = daemons
        .values()
        .filter(|d| {
            (now - d.last_seen_at)
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

/// `vantage.v1.RegistryService`.
#[derive(Clone)]
pub struct RegistryApi {
    pub registry: Arc<Registry>,
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistryApi {
    async fn provisioner_heartbeat(
        &self,
        request: Request<pb::ProvisionerHeartbeatRequest>,
    ) -> Result<Response<pb::ProvisionerHeartbeatResponse>, Status> {
        let hb = Heartbeat::try_from(request.into_inner())?;
        let record = self.registry.heartbeat(hb).await?;
        Ok(Response::new(pb::ProvisionerHeartbeatResponse {
            daemon: Some(record.to_pb()),
            stale_after: Some(convert::duration(STALE_AFTER)),
        }))
    }

    async fn register_workspace_proxy(
        &self,
        request: Request<pb::RegisterWorkspaceProxyRequest>,
    ) -> Result<Response<pb::WorkspaceProxyRegistration>, Status> {
        let spec = ProxySpec::try_from(request.into_inner())?;
        let record = self.registry.register_proxy(spec).await?;
        Ok(Response::new(record.to_pb()))
    }

    async fn deregister_workspace_proxy(
        &self,
        request: Request<pb::DeregisterWorkspaceProxyRequest>,
    ) -> Result<Response<pb::DeregisterWorkspaceProxyResponse>, Status> {
        self.registry
            .deregister_proxy(&request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeregisterWorkspaceProxyResponse {}))
    }

    async fn list_workspace_proxies(
        &self,
        request: Request<pb::ListWorkspaceProxiesRequest>,
    ) -> Result<Response<pb::ListWorkspaceProxiesResponse>, Status> {
        let region = request.into_inner().region;
        let filter = (!region.is_empty()).then_some(region.as_str());
        let proxies = self
            .registry
            .proxies(filter)
            .await
            .iter()
            .map(ProxyRecord::to_pb)
            .collect();
        Ok(Response::new(pb::ListWorkspaceProxiesResponse { proxies }))
    }

    async fn list_provisioner_daemons(
        &self,
        _request: Request<pb::ListProvisionerDaemonsRequest>,
    ) -> Result<Response<pb::ListProvisionerDaemonsResponse>, Status> {
        let daemons = self
            .registry
            .daemons()
            .await
            .iter()
            .map(DaemonRecord::to_pb)
            .collect();
        Ok(Response::new(pb::ListProvisionerDaemonsResponse {
            daemons,
        }))
    }
}

#[cfg(test)]
mod tests {
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
        let section = |registry: &Registry, inputs: &[DaemonInput]| {
            provisioners::section(
                inputs,
                registry.now(),
                "v2.26.0",
                provisioners::CURRENT_API_MAJOR,
                true,
                STALE_AFTER,
            )
        };
        let r = section(registry, &registry.provisioner_inputs().await);
        assert_eq!(r.base.severity, Severity::Ok);
        assert_eq!(r.items.len(), 1);

        tokio::time::advance(Duration::from_secs(90)).await;
        let r = section(registry, &registry.provisioner_inputs().await);
        assert_eq!(r.items.len(), 1, "exactly 90 s: still fresh");

        tokio::time::advance(Duration::from_millis(1)).await;
        let r = section(registry, &registry.provisioner_inputs().await);
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
        let older = DaemonRecord {
            last_seen_at: d.last_seen_at - chrono::TimeDelta::seconds(5),
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
