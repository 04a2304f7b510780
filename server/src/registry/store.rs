//! Where the registry lives across restarts: the [`RegistryStore`] trait and the in-memory
//! store.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::*;

/// Everything a store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySnapshot {
    pub daemons: Vec<ProvisionerDaemon>,
    pub proxies: Vec<WorkspaceProxy>,
}

/// Where the registry lives across restarts. Saves are upserts by name; of two saves of one
/// entry a store keeps the newer (`last_seen_at` / `updated_at`), whatever order they arrive in.
pub trait RegistryStore: Send + Sync + 'static {
    fn load_registry(&self) -> BoxFuture<'_, Result<RegistrySnapshot, StoreError>>;
    fn save_daemon(&self, daemon: ProvisionerDaemon) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_daemons(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>>;
    fn save_proxy(&self, proxy: WorkspaceProxy) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_proxy(&self, name: String) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The embedded default: state is lost on restart.
#[derive(Default)]
pub struct MemoryRegistryStore {
    inner: Mutex<(
        BTreeMap<String, ProvisionerDaemon>,
        BTreeMap<String, WorkspaceProxy>,
    )>,
}

impl MemoryRegistryStore {
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &mut (
                BTreeMap<String, ProvisionerDaemon>,
                BTreeMap<String, WorkspaceProxy>,
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

    fn save_daemon(&self, daemon: ProvisionerDaemon) -> BoxFuture<'_, Result<(), StoreError>> {
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

    fn save_proxy(&self, proxy: WorkspaceProxy) -> BoxFuture<'_, Result<(), StoreError>> {
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
