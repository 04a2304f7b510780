//! Where durable state lives, behind one trait. The in-memory store is the embedded default
//! (state is lost on restart, and the Database section says so with EDB03); [`crate::store::pg`]
//! keeps it in PostgreSQL, shared by every replica.
//!
//! What a store holds:
//!
//! - settings: the dismissed sections (each with an optional end time, reason and actor:
//!   [`DismissalNote`]), and an audit row per change;
//! - vantages: what is known of each vantage, including the highest applied sequence number
//!   of its current instance (`applied_seq`, what the hub acknowledges);
//! - observations: a cluster-wide, append-only log (ids from one sequence, in commit order)
//!   plus the latest observation per (vantage, check);
//! - events: the `Watch` history, with cluster-wide monotonic revisions, for resuming.
//!
//! The PostgreSQL store also answers `GetHistory` from its logs ([`Store::history`]); the
//! memory store leaves that to the aggregator's bounded ring.
//!
//! Stores announce changes on [`Store::listen`] ([`Notice`]); the PostgreSQL store forwards
//! the database's `NOTIFY`s, so a replica sees what the others stored. Notices are hints: a
//! receiver re-reads (`observations_after`, `events_after`, `load_dismissed`) and treats
//! [`Notice::Reconnected`] or a lagged receiver as "something may have been missed".
//!
//! [`WriteBehind`] puts a bounded queue and one writer task in front of a store for the ingest
//! path, so a slow database never stalls a probe stream.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use vantage_proto::{Section, pb};

mod memory;
pub mod pg;
mod write_behind;

pub use memory::*;
pub use write_behind::*;

/// A store failure, with what was being done. Texts never carry a connection URL (so no
/// password); a setting's problem names the setting.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A setting is unusable (e.g. `database_url` is no PostgreSQL URL).
    #[error("store: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The database at `target` (`host:port/db`) cannot be used at start: unreachable,
    /// refusing, or the migrations failed or timed out.
    #[error("store: database_url: cannot use postgres at {target}: {reason}")]
    Unavailable { target: String, reason: String },
    /// Listening for other replicas' notifications failed at start.
    #[error("store: database_url: cannot listen for notifications at {target}: {reason}")]
    Listen { target: String, reason: String },
    /// Listening for other replicas' notifications did not get going in time at start.
    #[error("store: database_url: timed out listening for notifications at {target}")]
    ListenTimeout { target: String },
    /// The database failed while `what` was being done.
    #[error("store: {what}: {reason}")]
    Database { what: &'static str, reason: String },
    /// `what` took longer than the store's bound.
    #[error("store: {what}: timed out after {}", humantime::format_duration(*after))]
    Timeout { what: &'static str, after: Duration },
    /// The in-memory store already holds the most `what` it keeps.
    #[error("store: memory store: already holds {max} {what} (the most it keeps)")]
    Full { what: &'static str, max: usize },
    /// A lock was poisoned (a holder panicked); the text says so, and whose.
    #[error("store: {0}")]
    Poisoned(&'static str),
}

/// One audited settings change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub dismissed: Vec<Section>,
    /// The change's end times and reasons (empty for a plain dismissal).
    pub notes: Vec<DismissalNote>,
}

/// What is known of one dismissal besides its section being dismissed: until when (a
/// maintenance window), why, who and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DismissalNote {
    #[serde(with = "section_name")]
    pub section: Section,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// The dismissed sections and the end times of the timed ones, as stored.
pub async fn load_settings(
    store: &dyn Store,
) -> Result<(Vec<Section>, Vec<(Section, DateTime<Utc>)>), StoreError> {
    let dismissed = store.load_dismissed().await?;
    let until = store
        .load_dismissal_notes()
        .await?
        .into_iter()
        .filter_map(|n| Some((n.section, n.until?)))
        .collect();
    Ok((dismissed, until))
}

/// A section in JSON: its settings name (`DERP`).
mod section_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use vantage_proto::Section;

    pub fn serialize<S: Serializer>(s: &Section, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.settings_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Section, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a store keeps of a vantage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VantageRecord {
    pub name: String,
    pub region: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// The probe process the sequence numbers belong to.
    pub instance_id: String,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The highest sequence number applied for `instance_id` (0: none). Saves of the same
    /// instance keep the maximum; a new instance starts over.
    pub applied_seq: u64,
}

/// An observation to append to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewObservation {
    pub vantage: String,
    pub instance_id: String,
    pub observation: pb::Observation,
}

/// An observation as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObservation {
    /// Position in the cluster-wide log (increasing in commit order).
    pub id: i64,
    pub vantage: String,
    pub instance_id: String,
    pub observation: pb::Observation,
}

/// A `Watch` event to append: an encoded `pb::WatchEvent` without its revision (the store
/// assigns it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub payload: Vec<u8>,
}

/// A change announced by a store. A hint only: re-read the store to learn what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Observations up to this log id were stored.
    Observations(i64),
    /// Events up to this revision were stored.
    Events(u64),
    /// The settings changed.
    Settings,
    /// The store's notification connection was lost and is back: notices may have been
    /// missed, so re-read everything.
    Reconnected,
}

/// `NOTIFY` channel for stored observations (payload: the highest id).
pub const CHANNEL_OBSERVATIONS: &str = "vantage_observations";
/// `NOTIFY` channel for stored events (payload: the highest revision).
pub const CHANNEL_EVENTS: &str = "vantage_events";
/// `NOTIFY` channel for settings changes (empty payload).
pub const CHANNEL_SETTINGS: &str = "vantage_settings";
/// Capacity of a store's notice broadcast; a receiver further behind gets `Lagged` and must
/// re-read as for [`Notice::Reconnected`].
pub const NOTICE_CAPACITY: usize = 1024;
/// Most rows one `observations_after`/`events_after` call returns, whatever `limit` says.
pub const MAX_PAGE: usize = 10_000;
/// Most audit entries `audit_log` returns (the newest).
pub const AUDIT_PAGE: usize = 1000;

/// A stored `Watch` event: its revision and its encoded `pb::WatchEvent` (without revision).
pub type StoredEvent = (u64, Vec<u8>);

/// Durable state. Object-safe: used as `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>>;
    /// Save the dismissed sections and write an audit row for the change (one transaction);
    /// other replicas are told ([`Notice::Settings`]).
    fn save_dismissed(
        &self,
        dismissed: Vec<Section>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.save_dismissal_notes(dismissed, Vec::new(), actor)
    }
    /// The notes of the current dismissals (see [`DismissalNote`]).
    fn load_dismissal_notes(&self) -> BoxFuture<'_, Result<Vec<DismissalNote>, StoreError>>;
    /// Like [`Store::save_dismissed`], with the notes of the dismissals (audited too).
    fn save_dismissal_notes(
        &self,
        dismissed: Vec<Section>,
        notes: Vec<DismissalNote>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The newest [`AUDIT_PAGE`] audit entries, oldest first.
    fn audit_log(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;
    /// Whether state survives a restart (false: EDB03).
    fn is_durable(&self) -> bool;
    /// A trivial round trip to the backing database (always fine in memory).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Insert or update vantages by name. `last_seen_at` only moves forward; `applied_seq`
    /// keeps the maximum for the same `instance_id` and starts over for a new one.
    fn upsert_vantages(
        &self,
        vantages: Vec<VantageRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every vantage, by name.
    fn load_vantages(&self) -> BoxFuture<'_, Result<Vec<VantageRecord>, StoreError>>;
    /// Forget a vantage and its latest observations; whether it was known. The log keeps
    /// its old observations until pruned.
    fn forget_vantage(&self, name: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// In one transaction: append to the log in the given order, replace the latest
    /// observation per (vantage, check_id) and advance each vantage's `applied_seq`. Returns
    /// the ids, one per observation, increasing. Other replicas are told
    /// ([`Notice::Observations`] with the highest id).
    fn append_observations(
        &self,
        observations: Vec<NewObservation>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>>;
    /// Up to `limit` (at most [`MAX_PAGE`]) logged observations with an id above
    /// `after_id`, in id order.
    fn observations_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>>;
    /// The latest observation of every (vantage, check_id), in id order.
    fn latest_observations(&self) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>>;
    /// Keep only the newest `keep_last` log entries; how many were removed.
    fn prune_observation_log(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Append events in the given order; their revisions, increasing (cluster-wide).
    /// Other replicas are told ([`Notice::Events`] with the highest revision).
    fn append_events(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<u64>, StoreError>>;
    /// Up to `limit` (at most [`MAX_PAGE`]) events with a revision above `after_revision`,
    /// in revision order.
    fn events_after(
        &self,
        after_revision: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;
    /// The oldest revision still held (`None`: no events).
    fn oldest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// The newest revision held (`None`: no events).
    fn latest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Keep only the newest `keep_last` events; how many were removed.
    fn prune_events(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The history `filter` selects from what this store logs: section transitions from the
    /// stored section-change events and per-check samples from the observation log, oldest
    /// first, bounded like the in-memory ring (the newest [`MAX_TRANSITIONS`] transitions and
    /// [`MAX_SAMPLES`] samples per series, at most [`MAX_SERIES`] series). `None`: this store
    /// logs no history, and the aggregator's in-memory ring answers (the memory store).
    ///
    /// [`MAX_TRANSITIONS`]: crate::aggregator::MAX_TRANSITIONS
    /// [`MAX_SAMPLES`]: crate::aggregator::MAX_SAMPLES
    /// [`MAX_SERIES`]: crate::aggregator::MAX_SERIES
    fn history(
        &self,
        filter: crate::aggregator::HistoryFilter,
    ) -> BoxFuture<'_, Result<Option<pb::History>, StoreError>>;

    /// Changes announced by this store (and, for a shared database, by other replicas).
    fn listen(&self) -> broadcast::Receiver<Notice>;

    /// Whether this replica keeps the cluster's clock: stores the events time alone causes
    /// (staleness), so each is stored once. A store no other replica shares always does.
    fn clock_leader(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    #[test]
    fn store_errors_say_what_failed() {
        let target = || "127.0.0.1:5432/vantage".to_owned();
        let cases = [
            (
                StoreError::Invalid {
                    field: "database_url",
                    reason: "names no host".into(),
                },
                "store: database_url: names no host",
            ),
            (
                StoreError::Unavailable {
                    target: target(),
                    reason: "connecting: refused".into(),
                },
                "store: database_url: cannot use postgres at 127.0.0.1:5432/vantage: connecting: refused",
            ),
            (
                StoreError::Listen {
                    target: target(),
                    reason: "listening: timed out".into(),
                },
                "store: database_url: cannot listen for notifications at 127.0.0.1:5432/vantage: listening: timed out",
            ),
            (
                StoreError::ListenTimeout { target: target() },
                "store: database_url: timed out listening for notifications at 127.0.0.1:5432/vantage",
            ),
            (
                StoreError::Database {
                    what: "loading settings",
                    reason: "ERROR: boom (XX000)".into(),
                },
                "store: loading settings: ERROR: boom (XX000)",
            ),
            (
                StoreError::Timeout {
                    what: "storing events",
                    after: std::time::Duration::from_millis(1500),
                },
                "store: storing events: timed out after 1s 500ms",
            ),
            (
                StoreError::Full {
                    what: "vantages",
                    max: 10,
                },
                "store: memory store: already holds 10 vantages (the most it keeps)",
            ),
            (
                StoreError::Poisoned("memory store: poisoned"),
                "store: memory store: poisoned",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    fn obs(vantage: &str, instance: &str, seq: u64) -> NewObservation {
        NewObservation {
            vantage: vantage.into(),
            instance_id: instance.into(),
            observation: pb::Observation {
                seq,
                check_id: "c".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_batch_ends_with_its_last_instance() {
        let batch = [
            obs("a", "i1", 5),
            obs("a", "i1", 3),
            obs("b", "j", 1),
            obs("a", "i2", 1),
            obs("a", "i2", 2),
        ];
        let got = applied_by_batch(&batch);
        assert_eq!(got["a"], ("i2", 2));
        assert_eq!(got["b"], ("j", 1));
    }

    #[tokio::test]
    async fn write_behind_stores_in_order_over_memory() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let wb = WriteBehind::spawn(store.clone(), WriteBehindOptions::default());
        let a = wb.submit(vec![obs("a", "i", 1), obs("a", "i", 2)]);
        let b = wb.submit(vec![obs("a", "i", 3)]);
        assert_eq!(a.stored().await.unwrap(), vec![1, 2]);
        assert_eq!(b.stored().await.unwrap(), vec![3]);
        assert_eq!(*wb.stored().borrow(), 3);
        assert_eq!(wb.dropped(), 0);
        assert_eq!(store.load_vantages().await.unwrap()[0].applied_seq, 3);
    }
}
