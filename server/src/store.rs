//! Where durable state lives, behind one trait. The in-memory store is the embedded default
//! (state is lost on restart, and the Database section says so with EDB03).

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use vantage_proto::Section;

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// One audited settings change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub dismissed: Vec<Section>,
}

/// Durable state.
pub trait Store: Send + Sync + 'static {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>>;
    /// Save the dismissed sections and write an audit row for the change.
    fn save_dismissed(
        &self,
        dismissed: Vec<Section>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn audit_log(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;
    /// Whether state survives a restart (false: EDB03).
    fn is_durable(&self) -> bool;
}

/// Most audit entries the memory store keeps.
const MEMORY_AUDIT: usize = 1000;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<(Vec<Section>, Vec<AuditEntry>)>,
}

impl Store for MemoryStore {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>> {
        let v = self
            .inner
            .lock()
            .map(|g| g.0.clone())
            .map_err(|_| StoreError("poisoned".into()));
        Box::pin(async move { v })
    }

    fn save_dismissed(
        &self,
        dismissed: Vec<Section>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let r = self
            .inner
            .lock()
            .map(|mut g| {
                g.0 = dismissed.clone();
                if g.1.len() == MEMORY_AUDIT {
                    g.1.remove(0);
                }
                g.1.push(AuditEntry {
                    at: Utc::now(),
                    actor,
                    dismissed,
                });
            })
            .map_err(|_| StoreError("poisoned".into()));
        Box::pin(async move { r })
    }

    fn audit_log(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let v = self
            .inner
            .lock()
            .map(|g| g.1.clone())
            .map_err(|_| StoreError("poisoned".into()));
        Box::pin(async move { v })
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_keeps_settings_and_audits() {
        let s = MemoryStore::default();
        assert!(s.load_dismissed().await.unwrap().is_empty());
        s.save_dismissed(vec![Section::Derp], "test".into())
            .await
            .unwrap();
        assert_eq!(s.load_dismissed().await.unwrap(), vec![Section::Derp]);
        let log = s.audit_log().await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].actor, "test");
    }
}
