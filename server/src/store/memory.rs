//! The in-memory store: the embedded default. Bounded; state is lost on restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use vantage_proto::{Section, pb};

use super::*;

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
    notes: Vec<DismissalNote>,
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
            .map_err(|_| StoreError::Poisoned("memory store: poisoned"))
            .and_then(|mut g| f(&mut g));
        Box::pin(async move { r })
    }
}

fn full(what: &'static str, max: usize) -> StoreError {
    StoreError::Full { what, max }
}

impl Store for MemoryStore {
    fn load_dismissed(&self) -> BoxFuture<'_, Result<Vec<Section>, StoreError>> {
        self.with(|s| Ok(s.dismissed.clone()))
    }

    fn load_dismissal_notes(&self) -> BoxFuture<'_, Result<Vec<DismissalNote>, StoreError>> {
        self.with(|s| Ok(s.notes.clone()))
    }

    fn save_dismissal_notes(
        &self,
        dismissed: Vec<Section>,
        notes: Vec<DismissalNote>,
        actor: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |s| {
            s.dismissed = dismissed.clone();
            s.notes = notes.clone();
            if s.audit.len() >= MEMORY_AUDIT {
                s.audit.pop_front();
            }
            s.audit.push_back(AuditEntry {
                at: Utc::now(),
                actor,
                dismissed,
                notes,
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

    /// The memory store logs no history: the aggregator's bounded ring answers.
    fn history(
        &self,
        _filter: crate::aggregator::HistoryFilter,
    ) -> BoxFuture<'_, Result<Option<pb::History>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    fn listen(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}
