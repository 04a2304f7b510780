//! What the store tells: observations and vantages other replicas stored, and what this
//! replica stored before a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use vantage_proto::{Section, pb};

use super::MAX_REMOTE_OBSERVATIONS;
use super::batch::Batch;
use super::command::ClusterCommand;
use super::state::{Cause, State};
use super::vantage::SeqStats;
use crate::store::{StoredObservation, VantageRecord};
use vantage_proto::report::VantageChange;

impl State {
    pub(super) fn handle_cluster(&mut self, cmd: ClusterCommand) {
        match cmd {
            ClusterCommand::Remote { observations } => self.remote(observations),
            ClusterCommand::Restore { observations } => self.restore(observations),
            ClusterCommand::RemoteVantages { vantages, initial } => {
                self.remote_vantages(vantages, initial)
            }
            ClusterCommand::StoredEvents { events } => self.stored_events(events),
            ClusterCommand::DatabaseState { ok } => self.database_state(ok),
        }
    }

    /// The database stopped (or resumed) answering.
    fn database_state(&mut self, ok: bool) {
        let Some(d) = &self.durable else {
            return;
        };
        d.db_ok.store(ok, std::sync::atomic::Ordering::Relaxed);
        if !ok && self.enter_degraded() {
            // A marker in the new epoch: every watcher resyncs to the current state (which may
            // already hold changes the database never got).
            self.vantage_event("", VantageChange::DatabaseUnreachable, Cause::Elsewhere);
        }
    }

    fn remote(&mut self, observations: Vec<StoredObservation>) {
        // Group per vantage, keeping the log order.
        let mut by_vantage: Vec<(String, String, Vec<pb::Observation>)> = Vec::new();
        for o in observations {
            match by_vantage.last_mut() {
                Some((v, i, list)) if *v == o.vantage && *i == o.instance_id => {
                    list.push(o.observation)
                }
                _ => by_vantage.push((o.vantage, o.instance_id, vec![o.observation])),
            }
        }
        for (name, instance, list) in by_vantage {
            let v = self.vantage_entry(&name);
            if v.session.is_some() && v.instance_id == instance {
                // Our own probe's observations, echoed back by the log: already applied.
                continue;
            }
            if v.instance_id != instance {
                if v.session.is_some() {
                    // Attached here with another instance: this replica's session is the truth.
                    continue;
                }
                v.new_instance(instance, SeqStats::default());
                // Its probe now reports through another replica.
                v.home = false;
            }
            self.apply(&name, Batch::from_store(list), Cause::Elsewhere);
        }
    }

    /// Put back what was stored, whatever its sequence (it was applied before the restart).
    fn restore(&mut self, observations: Vec<StoredObservation>) {
        let mut touched = BTreeSet::new();
        for o in observations {
            let v = self.vantage_entry(&o.vantage);
            if v.instance_id.is_empty() {
                v.instance_id = o.instance_id.clone();
            }
            if v.observations.put(
                o.observation,
                MAX_REMOTE_OBSERVATIONS,
                MAX_REMOTE_OBSERVATIONS,
            ) {
                touched.insert(o.vantage);
            }
        }
        for name in touched {
            for s in Section::ALL {
                self.recompute(&name, s, Cause::Elsewhere);
            }
        }
        self.reaggregate_all(Cause::Elsewhere);
        self.bump();
    }

    fn remote_vantages(&mut self, records: Vec<VantageRecord>, initial: bool) {
        let mut changed = false;
        let stale_after = self.config.stale_after;
        for r in records {
            let known = self.vantages.contains_key(&r.name);
            let v = self.vantage_entry(&r.name);
            if v.session.is_some() {
                continue;
            }
            v.region = r.region;
            v.version = r.version;
            v.labels = r.labels;
            if v.instance_id != r.instance_id {
                v.new_instance(r.instance_id, SeqStats::default());
            }
            if initial && r.applied_seq > v.seq.last {
                v.seq.last = r.applied_seq;
            }
            // What the store holds is stored, whichever replica wrote it.
            v.stored
                .fetch_max(r.applied_seq, std::sync::atomic::Ordering::AcqRel);
            let newer = r
                .last_seen_at
                .is_some_and(|t| v.last_seen_at.is_none_or(|mine| t > mine));
            if newer {
                v.last_seen_at = r.last_seen_at;
                // Heard of recently elsewhere: as fresh as that.
                let age = r.last_seen_at.map_or(Duration::ZERO, |t| {
                    (Utc::now() - t).to_std().unwrap_or_default()
                });
                v.last_seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                if v.stale_since.is_some() && age < stale_after {
                    v.stale_since = None;
                    changed = true;
                }
            } else if !known {
                // Known only from an old record: it starts out stale until it reports.
                let age = r.last_seen_at.map_or(stale_after * 2, |t| {
                    (Utc::now() - t).to_std().unwrap_or_default()
                });
                v.last_seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            }
            changed |= !known;
        }
        if changed {
            self.reaggregate_all(Cause::Elsewhere);
            self.bump();
        }
    }
}
