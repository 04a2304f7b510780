//! Where durable state lives, behind one trait. The in-memory store is the embedded default
//! (state is lost on restart, and the Database section says so with EDB03); [`crate::pg`]
//! keeps it in PostgreSQL, shared by every replica.
//!
//! What a store holds:
//!
//! - settings: the dismissed sections, and an audit row per change;
//! - vantages: what is known of each vantage, including the highest applied sequence number
//!   of its current instance (`applied_seq`, what the hub acknowledges);
//! - observations: a cluster-wide, append-only log (ids from one sequence, in commit order)
//!   plus the latest observation per (vantage, check);
//! - events: the `Watch` history, with cluster-wide monotonic revisions, for resuming.
//!
//! Stores announce changes on [`Store::listen`] ([`Notice`]); the PostgreSQL store forwards
//! the database's `NOTIFY`s, so a replica sees what the others stored. Notices are hints: a
//! receiver re-reads (`observations_after`, `events_after`, `load_dismissed`) and treats
//! [`Notice::Reconnected`] or a lagged receiver as "something may have been missed".
//!
//! [`WriteBehind`] puts a bounded queue and one writer task in front of a store for the ingest
//! path, so a slow database never stalls a probe stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use vantage_proto::{Section, pb};

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

    /// Changes announced by this store (and, for a shared database, by other replicas).
    fn listen(&self) -> broadcast::Receiver<Notice>;
}

/// Most audit entries the memory store keeps.
const MEMORY_AUDIT: usize = AUDIT_PAGE;
/// Most vantages the memory store keeps.
pub const MEMORY_VANTAGES: usize = 10_000;
/// The key of "the latest observation" within a vantage: the check and its target (a DERP
/// region check has one target per node).
pub fn latest_key(o: &pb::Observation) -> String {
    if o.target.is_empty() {
        o.check_id.clone()
    } else {
        format!("{}\u{1f}{}", o.check_id, o.target)
    }
}

/// Most latest observations (vantage × check) the memory store keeps.
pub const MEMORY_LATEST: usize = 100_000;
/// Most log entries the memory store keeps (the oldest go first).
pub const MEMORY_LOG: usize = 100_000;
/// Most events the memory store keeps (the oldest go first).
pub const MEMORY_EVENTS: usize = 100_000;

#[derive(Default)]
struct MemoryState {
    dismissed: Vec<Section>,
    audit: VecDeque<AuditEntry>,
    vantages: BTreeMap<String, VantageRecord>,
    latest: HashMap<(String, String), StoredObservation>,
    log: VecDeque<StoredObservation>,
    next_id: i64,
    events: VecDeque<StoredEvent>,
    next_revision: u64,
}

/// The embedded default: bounded, lost on restart. Its [`Store::listen`] never fires (there
/// is no other replica to hear from).
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
    notices: broadcast::Sender<Notice>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            inner: Mutex::new(MemoryState::default()),
            notices: broadcast::channel(1).0,
        }
    }
}

/// Per vantage, the instance a batch ends with and the highest sequence of that instance in
/// the batch: what the batch does to `applied_seq`.
pub(crate) fn applied_by_batch(observations: &[NewObservation]) -> BTreeMap<&str, (&str, u64)> {
    let mut out: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for o in observations {
        let seq = o.observation.seq;
        out.entry(o.vantage.as_str())
            .and_modify(|(inst, max)| {
                if *inst == o.instance_id {
                    *max = (*max).max(seq);
                } else {
                    *inst = o.instance_id.as_str();
                    *max = seq;
                }
            })
            .or_insert((o.instance_id.as_str(), seq));
    }
    out
}

/// The `applied_seq` after saving `(instance, seq)` over a vantage that has `old`.
fn merge_applied(old: &mut VantageRecord, instance: &str, seq: u64) {
    if old.instance_id == instance {
        old.applied_seq = old.applied_seq.max(seq);
    } else {
        old.instance_id = instance.to_owned();
        old.applied_seq = seq;
    }
}

impl MemoryStore {
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut MemoryState) -> Result<T, StoreError>,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let r = self
            .inner
            .lock()
            .map_err(|_| StoreError("memory store: poisoned".into()))
            .and_then(|mut g| f(&mut g));
        Box::pin(async move { r })
    }
}

fn full(what: &str, max: usize) -> StoreError {
    StoreError(format!(
        "memory store: already holds {max} {what} (the most it keeps)"
    ))
}

impl Store for MemoryStore {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>> {
        self.with(|s| Ok(s.dismissed.clone()))
    }

    fn save_dismissed(
        &self,
        dismissed: Vec<Section>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |s| {
            s.dismissed = dismissed.clone();
            if s.audit.len() >= MEMORY_AUDIT {
                s.audit.pop_front();
            }
            s.audit.push_back(AuditEntry {
                at: Utc::now(),
                actor,
                dismissed,
            });
            Ok(())
        })
    }

    fn audit_log(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        self.with(|s| Ok(s.audit.iter().cloned().collect()))
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn upsert_vantages(
        &self,
        vantages: Vec<VantageRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |s| {
            let new = vantages
                .iter()
                .filter(|v| !s.vantages.contains_key(&v.name))
                .map(|v| v.name.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if s.vantages.len() + new > MEMORY_VANTAGES {
                return Err(full("vantages", MEMORY_VANTAGES));
            }
            for v in vantages {
                match s.vantages.get_mut(&v.name) {
                    None => {
                        s.vantages.insert(v.name.clone(), v);
                    }
                    Some(old) => {
                        merge_applied(old, &v.instance_id, v.applied_seq);
                        old.region = v.region;
                        old.version = v.version;
                        old.labels = v.labels;
                        old.last_seen_at = old.last_seen_at.max(v.last_seen_at);
                    }
                }
            }
            Ok(())
        })
    }

    fn load_vantages(&self) -> BoxFuture<'_, Result<Vec<VantageRecord>, StoreError>> {
        self.with(|s| Ok(s.vantages.values().cloned().collect()))
    }

    fn forget_vantage(&self, name: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.with(move |s| {
            s.latest.retain(|(v, _), _| *v != name);
            Ok(s.vantages.remove(&name).is_some())
        })
    }

    fn append_observations(
        &self,
        observations: Vec<NewObservation>,
    ) -> BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        self.with(move |s| {
            let applied = applied_by_batch(&observations);
            let new_vantages = applied
                .keys()
                .filter(|v| !s.vantages.contains_key(**v))
                .count();
            if s.vantages.len() + new_vantages > MEMORY_VANTAGES {
                return Err(full("vantages", MEMORY_VANTAGES));
            }
            let new_latest = observations
                .iter()
                .map(|o| (o.vantage.clone(), latest_key(&o.observation)))
                .filter(|k| !s.latest.contains_key(k))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if s.latest.len() + new_latest > MEMORY_LATEST {
                return Err(full("latest observations", MEMORY_LATEST));
            }
            for (vantage, (instance, seq)) in applied {
                let v = s
                    .vantages
                    .entry(vantage.to_owned())
                    .or_insert_with(|| VantageRecord {
                        name: vantage.to_owned(),
                        instance_id: instance.to_owned(),
                        ..Default::default()
                    });
                merge_applied(v, instance, seq);
            }
            let mut ids = Vec::with_capacity(observations.len());
            for o in observations {
                s.next_id += 1;
                let stored = StoredObservation {
                    id: s.next_id,
                    vantage: o.vantage,
                    instance_id: o.instance_id,
                    observation: o.observation,
                };
                ids.push(stored.id);
                s.latest.insert(
                    (stored.vantage.clone(), latest_key(&stored.observation)),
                    stored.clone(),
                );
                if s.log.len() >= MEMORY_LOG {
                    s.log.pop_front();
                }
                s.log.push_back(stored);
            }
            Ok(ids)
        })
    }

    fn observations_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>> {
        self.with(move |s| {
            let start = s.log.partition_point(|o| o.id <= after_id);
            Ok(s.log
                .iter()
                .skip(start)
                .take(limit.min(MAX_PAGE))
                .cloned()
                .collect())
        })
    }

    fn latest_observations(&self) -> BoxFuture<'_, Result<Vec<StoredObservation>, StoreError>> {
        self.with(|s| {
            let mut v: Vec<_> = s.latest.values().cloned().collect();
            v.sort_by_key(|o| o.id);
            Ok(v)
        })
    }

    fn prune_observation_log(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(move |s| {
            let remove = s.log.len().saturating_sub(keep_last);
            s.log.drain(..remove);
            Ok(remove as u64)
        })
    }

    fn append_events(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        self.with(move |s| {
            let mut revisions = Vec::with_capacity(events.len());
            for e in events {
                s.next_revision += 1;
                revisions.push(s.next_revision);
                if s.events.len() >= MEMORY_EVENTS {
                    s.events.pop_front();
                }
                s.events.push_back((s.next_revision, e.payload));
            }
            Ok(revisions)
        })
    }

    fn events_after(
        &self,
        after_revision: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        self.with(move |s| {
            let start = s.events.partition_point(|(r, _)| *r <= after_revision);
            Ok(s.events
                .iter()
                .skip(start)
                .take(limit.min(MAX_PAGE))
                .cloned()
                .collect())
        })
    }

    fn oldest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.with(|s| Ok(s.events.front().map(|(r, _)| *r)))
    }

    fn latest_event_revision(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.with(|s| Ok(s.events.back().map(|(r, _)| *r)))
    }

    fn prune_events(&self, keep_last: usize) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(move |s| {
            let remove = s.events.len().saturating_sub(keep_last);
            s.events.drain(..remove);
            Ok(remove as u64)
        })
    }

    fn listen(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// Default capacity of a [`WriteBehind`] queue, in observations.
pub const WRITE_BEHIND_CAPACITY: usize = 10_000;
/// Most observations one [`WriteBehind`] transaction carries.
pub const WRITE_BEHIND_BATCH: usize = 500;

/// How a [`WriteBehind`] queue behaves.
#[derive(Debug, Clone)]
pub struct WriteBehindOptions {
    /// Most observations waiting (the batch being written is not counted).
    pub capacity: usize,
    /// Most observations per transaction (a larger submission is written whole).
    pub batch: usize,
    /// First retry delay after a failed write; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WriteBehindOptions {
    fn default() -> Self {
        WriteBehindOptions {
            capacity: WRITE_BEHIND_CAPACITY,
            batch: WRITE_BEHIND_BATCH,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A submission was dropped before it was stored: the queue overflowed (it was among the
/// oldest), or the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the observations were dropped before they were stored")]
pub struct NotStored;

/// Resolves to the log ids of a submission once it is stored.
pub struct Receipt(oneshot::Receiver<Vec<i64>>);

impl Receipt {
    /// Wait until the submission is stored (its ids, in order) or dropped.
    pub async fn stored(self) -> Result<Vec<i64>, NotStored> {
        self.0.await.map_err(|_| NotStored)
    }
}

struct Submission {
    observations: Vec<NewObservation>,
    reply: oneshot::Sender<Vec<i64>>,
}

struct Queue {
    waiting: VecDeque<Submission>,
    /// Observations in `waiting`.
    len: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    capacity: usize,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
    /// Observations in the batch being written.
    in_flight: AtomicU64,
    stored: watch::Sender<i64>,
    closed: AtomicBool,
}

impl Shared {
    /// Drop the oldest waiting submissions until the queue fits; count what was dropped.
    fn enforce(&self, q: &mut Queue) {
        while q.len > self.capacity {
            let Some(old) = q.waiting.pop_front() else {
                break;
            };
            q.len -= old.observations.len();
            self.dropped
                .fetch_add(old.observations.len() as u64, Ordering::Relaxed);
            // Dropping `old.reply` tells the submitter.
        }
    }
}

/// Closes the writer when the last [`WriteBehind`] handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// A bounded write-behind queue in front of [`Store::append_observations`], drained by one
/// task in batches. Writes that fail (the database is down) stay queued and are retried
/// with backoff; when the queue is full the oldest submissions are dropped and counted
/// ([`WriteBehind::dropped`]), and their [`Receipt`]s say so. A retried batch may be stored
/// twice if the database committed it but the answer was lost: observations carry per-instance
/// sequence numbers, so readers apply them once.
#[derive(Clone)]
pub struct WriteBehind {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl WriteBehind {
    /// Start the writer task over `store`. It runs until every handle is dropped (and then
    /// writes what is queued, unless the store keeps failing).
    pub fn spawn(store: Arc<dyn Store>, options: WriteBehindOptions) -> WriteBehind {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                len: 0,
            }),
            wake: Notify::new(),
            capacity: options.capacity.max(1),
            dropped: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stored: watch::channel(0).0,
            closed: AtomicBool::new(false),
        });
        tokio::spawn(write_behind(shared.clone(), store, options));
        WriteBehind {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        }
    }

    /// Queue observations for storing, in order; never waits. A submission larger than the
    /// whole queue is dropped (and counted) at once.
    pub fn submit(&self, observations: Vec<NewObservation>) -> Receipt {
        let (reply, rx) = oneshot::channel();
        if observations.is_empty() {
            let _ = reply.send(Vec::new());
            return Receipt(rx);
        }
        let n = observations.len();
        let Ok(mut q) = self.shared.queue.lock() else {
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return Receipt(rx);
        };
        if n > self.shared.capacity {
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return Receipt(rx);
        }
        q.len += n;
        q.waiting.push_back(Submission {
            observations,
            reply,
        });
        self.shared.enforce(&mut q);
        drop(q);
        self.shared.wake.notify_one();
        Receipt(rx)
    }

    /// Observations waiting or being written.
    pub fn queued(&self) -> u64 {
        let waiting = self.shared.queue.lock().map(|q| q.len).unwrap_or_default() as u64;
        waiting + self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Observations dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed (and were retried), since the start.
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }

    /// The highest log id stored so far (0: none yet).
    pub fn stored(&self) -> watch::Receiver<i64> {
        self.shared.stored.subscribe()
    }
}

async fn write_behind(shared: Arc<Shared>, store: Arc<dyn Store>, options: WriteBehindOptions) {
    let mut backoff = options.min_backoff;
    loop {
        // Take the next batch: whole submissions, up to `options.batch` observations.
        let batch = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            let mut batch: Vec<Submission> = Vec::new();
            let mut n = 0;
            while let Some(front) = q.waiting.front() {
                let len = front.observations.len();
                if !batch.is_empty() && n + len > options.batch {
                    break;
                }
                n += len;
                q.len -= len;
                if let Some(s) = q.waiting.pop_front() {
                    batch.push(s);
                }
            }
            shared.in_flight.store(n as u64, Ordering::Relaxed);
            batch
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let observations: Vec<NewObservation> = batch
            .iter()
            .flat_map(|s| s.observations.iter().cloned())
            .collect();
        match store.append_observations(observations).await {
            Ok(ids) => {
                backoff = options.min_backoff;
                shared.in_flight.store(0, Ordering::Relaxed);
                if let Some(max) = ids.iter().max() {
                    shared.stored.send_if_modified(|cur| {
                        let changed = *max > *cur;
                        *cur = (*cur).max(*max);
                        changed
                    });
                }
                let mut ids = ids.into_iter();
                for s in batch {
                    let mine: Vec<i64> = ids.by_ref().take(s.observations.len()).collect();
                    let _ = s.reply.send(mine);
                }
            }
            Err(e) => {
                shared.failed_writes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "write-behind: storing observations failed");
                {
                    let Ok(mut q) = shared.queue.lock() else {
                        return;
                    };
                    for s in batch.into_iter().rev() {
                        q.len += s.observations.len();
                        q.waiting.push_front(s);
                    }
                    shared.in_flight.store(0, Ordering::Relaxed);
                    shared.enforce(&mut q);
                }
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.max_backoff);
            }
        }
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
