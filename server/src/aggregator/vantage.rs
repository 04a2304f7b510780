//! What the aggregator keeps of one vantage: its session, its latest observations, its
//! section reports and alerts, and the bookkeeping of its sequence numbers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use tokio::time::Instant;
use vantage_probe::rules::SectionReport;
use vantage_proto::{Section, pb};

use super::SessionTx;
use super::alert::Alert;

/// Per-sequence bookkeeping of one probe instance: `applied == last - first + 1` means nothing
/// was lost in between and nothing was applied twice.
#[derive(Debug, Default, Clone)]
pub(super) struct SeqStats {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) applied: u64,
    pub(super) duplicates: u64,
    pub(super) gaps: u64,
    pub(super) replay_dropped: u64,
    pub(super) resumed_from: u64,
}

impl SeqStats {
    /// `seq` (above `last`) is applied: the sequences skipped to it are gaps.
    pub(super) fn take(&mut self, seq: u64) {
        if self.applied > 0 && seq > self.last + 1 {
            self.gaps += seq - self.last - 1;
        }
        if self.first == 0 {
            self.first = seq;
        }
        self.last = seq;
        self.applied += 1;
    }
}

/// The latest observation of each check and target of one vantage. Keyed check → target so
/// that replacing an observation (the ingest path's common case) allocates no key.
#[derive(Default)]
pub(super) struct Latest {
    pub(super) by_check: FxHashMap<String, FxHashMap<String, pb::Observation>>,
    pub(super) len: usize,
}

impl Latest {
    /// Keep `obs` as the latest of its check and target; `false` when that would exceed
    /// `limit` in all or `per_check` targets of its check (see [`Latest::admits`]).
    pub(super) fn put(&mut self, obs: pb::Observation, limit: usize, per_check: usize) -> bool {
        if !self.admits(&obs.check_id, &obs.target, limit, per_check) {
            return false;
        }
        let Some(targets) = self.by_check.get_mut(obs.check_id.as_str()) else {
            let mut targets = FxHashMap::default();
            let check = obs.check_id.clone();
            targets.insert(obs.target.clone(), obs);
            self.by_check.insert(check, targets);
            self.len += 1;
            return true;
        };
        if let Some(slot) = targets.get_mut(obs.target.as_str()) {
            *slot = obs;
        } else if per_check == 1 && targets.len() == 1 {
            // A check of one target (all but DERP regions): its latest target replaces the
            // previous one, so a probe cannot grow it by naming new targets.
            targets.clear();
            targets.insert(obs.target.clone(), obs);
        } else {
            targets.insert(obs.target.clone(), obs);
            self.len += 1;
        }
        true
    }

    /// Whether an observation of `check` and `target` may be kept: its slot exists, or it
    /// replaces the one target of a single-target check, or there is room (`per_check`
    /// targets of its check, `limit` in all). [`Latest::put`] keeps by this rule.
    pub(super) fn admits(&self, check: &str, target: &str, limit: usize, per_check: usize) -> bool {
        match self.by_check.get(check) {
            Some(targets) => {
                targets.contains_key(target)
                    || (per_check == 1 && targets.len() == 1)
                    || (targets.len() < per_check && self.len < limit)
            }
            None => self.len < limit,
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &pb::Observation> {
        self.by_check.values().flat_map(FxHashMap::values)
    }

    /// Keep only the observations of the checks and targets `keep` accepts.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.by_check.retain(|check, targets| {
            targets.retain(|target, _| keep(check, target));
            !targets.is_empty()
        });
        self.len = self.by_check.values().map(FxHashMap::len).sum();
    }
}

pub(super) struct Vantage {
    pub(super) name: String,
    pub(super) region: String,
    pub(super) version: String,
    pub(super) labels: BTreeMap<String, String>,
    /// The address its last session came from, as this replica saw it (empty: unknown).
    pub(super) address: String,
    pub(super) instance_id: String,
    pub(super) session: Option<(u64, SessionTx)>,
    /// An acknowledgement its session's full queue did not take (0: none): sent again on the
    /// aggregator's tick, since a later one may never come.
    pub(super) unsent_ack: u64,
    /// The peer address of its current session (empty for the own vantage and remote ones).
    pub(super) peer: String,
    /// When it last ran a forced run (force is coalesced per vantage).
    pub(super) forced_at: Option<Instant>,
    pub(super) last_seen: Instant,
    pub(super) last_seen_at: Option<DateTime<Utc>>,
    pub(super) stale_since: Option<DateTime<Utc>>,
    /// Latest observation per assigned check and target.
    pub(super) observations: Latest,
    pub(super) assigned: FxHashMap<String, super::AssignedCheck>,
    pub(super) sections: HashMap<Section, SectionReport>,
    pub(super) alerts: HashMap<Section, Alert>,
    pub(super) seq: SeqStats,
    /// With a database: the highest sequence of the current instance known stored (what a
    /// `Welcome` reports and what acks may cover). Raised by the ack writer once a write is
    /// stored; a new instance gets a new one, so a late ack of the old one cannot raise it.
    pub(super) stored: Arc<AtomicU64>,
    /// Its latest session was on this replica.
    pub(super) home: bool,
    /// Its sections come whole from outside (Coder's own report as `coderd`), not from
    /// observations.
    pub(super) external: bool,
}

impl Vantage {
    /// A vantage this replica has not heard of: created without a session.
    pub(super) fn new(name: &str) -> Vantage {
        Vantage {
            name: name.to_owned(),
            region: String::new(),
            version: String::new(),
            labels: BTreeMap::new(),
            address: String::new(),
            instance_id: String::new(),
            session: None,
            unsent_ack: 0,
            peer: String::new(),
            forced_at: None,
            last_seen: Instant::now(),
            last_seen_at: None,
            stale_since: None,
            observations: Latest::default(),
            assigned: FxHashMap::default(),
            sections: HashMap::new(),
            alerts: HashMap::new(),
            seq: SeqStats::default(),
            stored: Arc::new(AtomicU64::new(0)),
            home: false,
            external: false,
        }
    }

    /// A new process of this vantage: its sequence numbers start afresh.
    pub(super) fn new_instance(&mut self, instance_id: String, seq: SeqStats) {
        self.instance_id = instance_id;
        self.seq = seq;
        self.stored = Arc::new(AtomicU64::new(0));
    }

    /// The highest sequence of the current instance known stored.
    pub(super) fn stored_seq(&self) -> u64 {
        self.stored.load(Ordering::Acquire)
    }

    pub(super) fn is_fresh(&self) -> bool {
        self.stale_since.is_none()
    }
}
