//! What probe sessions (and the server's own vantage) cause: attach, detach, observations
//! applied exactly once by per-instance sequence number, forced runs.

use std::collections::{BTreeSet, VecDeque};

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_proto::report::VantageChange;
use vantage_proto::{Section, pb};

use super::batch::{Batch, Group};
use super::guard::{Refusal, SEQ_WINDOW, resume_fault};
use super::history::push_sample;
use super::state::{Cause, ForceRun, State};
use super::vantage::{SeqStats, Vantage};
use super::{
    AssignedCheck, Attached, FORCE_COALESCE, ForceStarted, ForgetOutcome, MAX_REMOTE_OBSERVATIONS,
    MAX_TARGETS_PER_CHECK, SessionTx, try_ack,
};
use crate::store::NewObservation;

/// How long a refusal may wait for room on a full session queue.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl State {
    /// Whether a hello for `name` may attach: not while a live session holds the name (its
    /// stream open and heard from within `holder_silence`), and not as a new vantage beyond
    /// `max_vantages`. Refusals are counted, and logged at most once a minute per name.
    fn admit(&mut self, name: &str) -> Result<(), Refusal> {
        let refusal = match self.vantages.get(name) {
            Some(v) => {
                let silent = Instant::now().saturating_duration_since(v.last_seen);
                match &v.session {
                    Some((_, tx)) if !tx.is_closed() && silent <= self.config.holder_silence => {
                        self.stats.guard.refused_held += 1;
                        Refusal::Held {
                            name: name.to_owned(),
                            region: v.region.clone(),
                            peer: if v.peer.is_empty() {
                                "in-process".to_owned()
                            } else {
                                v.peer.clone()
                            },
                            silence: self.config.holder_silence,
                        }
                    }
                    _ => return Ok(()),
                }
            }
            None if self.vantages.len() >= self.config.max_vantages => {
                self.stats.guard.refused_full += 1;
                Refusal::Full {
                    name: name.to_owned(),
                    max: self.config.max_vantages,
                }
            }
            None => return Ok(()),
        };
        let key = match refusal {
            Refusal::Full { .. } => "",
            _ => name,
        };
        if self.refusal_log.allow(key) {
            tracing::warn!(vantage = %name, error = %refusal, "attach refused (logged once a minute per name)");
        }
        Err(refusal)
    }

    pub(super) fn attach(
        &mut self,
        hello: pb::Hello,
        session: SessionTx,
        peer: String,
    ) -> Result<Attached, Refusal> {
        self.admit(&hello.name)?;
        let (known, last) = self
            .vantages
            .get(&hello.name)
            .filter(|v| !v.instance_id.is_empty() && v.instance_id == hello.instance_id)
            // What this replica applied, or knows stored by any replica (acks mean stored).
            .map_or((false, 0), |v| (true, v.seq.last.max(v.stored_seq())));
        if let Err(refusal) = resume_fault(&hello.name, &hello, known, last) {
            self.stats.guard.refused_seq += 1;
            if self.refusal_log.allow(&hello.name) {
                tracing::warn!(vantage = %hello.name, error = %refusal, "attach refused (logged once a minute per name)");
            }
            return Err(refusal);
        }
        let session_id = self.next_session;
        self.next_session += 1;
        let name = hello.name.clone();
        let durable = self.durable.is_some();
        let v = self.vantage_entry(&name);
        v.home = true;
        if v.instance_id != hello.instance_id {
            // A new process: its sequence numbers start afresh.
            let seq = SeqStats {
                resumed_from: hello.last_acked_seq,
                ..SeqStats::default()
            };
            v.new_instance(hello.instance_id.clone(), seq);
        } else {
            v.seq.resumed_from = hello.last_acked_seq;
        }
        v.seq.replay_dropped = hello.replay_dropped;
        v.region = hello.region;
        v.version = hello.version;
        v.labels = hello.labels.into_iter().collect();
        v.peer = peer;
        if let Some((_, old)) = v.session.replace((session_id, session)) {
            tracing::warn!(vantage = %name, "a new session replaces the previous one");
            let _ = old.try_send(Box::new(Err(Status::aborted(
                "replaced by a newer session of the same vantage",
            ))));
        }
        if v.seq.applied == 0 {
            // Nothing applied from this instance yet: continue after what it says was acked.
            v.seq.last = v.seq.last.max(hello.last_acked_seq);
        }
        if durable {
            // The welcome promises only what is stored: the probe resends the rest, which is
            // applied and stored again (what was still queued may be stored twice; the log
            // keeps both, every reader applies it once).
            let stored = v.stored_seq();
            if v.seq.last > stored {
                v.seq.applied = v.seq.applied.saturating_sub(v.seq.last - stored);
                v.seq.last = stored;
            }
        }
        let applied_seq = v.seq.last;
        self.vantage_event(&name, VantageChange::Attached, Cause::Here);
        self.seen(&name, Cause::Here);
        self.bump();
        Ok(Attached {
            session_id,
            applied_seq,
        })
    }

    /// Forget `name`: only a stale, disconnected vantage unless `force`, which also closes
    /// its stream.
    pub(super) fn forget(&mut self, name: &str, force: bool) -> ForgetOutcome {
        let Some(v) = self.vantages.get(name) else {
            return ForgetOutcome::NotFound;
        };
        let connected = v.session.is_some();
        if !force && (connected || v.is_fresh()) {
            return ForgetOutcome::Live { connected };
        }
        if let Some(v) = self.vantages.remove(name)
            && let Some((_, tx)) = v.session
        {
            let _ = tx.try_send(Box::new(Err(Status::aborted(format!(
                "vantage {name:?} was forgotten by an operator"
            )))));
        }
        self.run_complete(name);
        self.vantage_event(name, VantageChange::Forgotten, Cause::Here);
        self.reaggregate_all(Cause::Here);
        self.bump();
        ForgetOutcome::Forgotten
    }

    /// Where vantage `name`'s session comes from (kept after it detaches).
    pub(super) fn source(&mut self, name: &str, address: String) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        if v.address != address {
            v.address = address;
            // Shown in the report, but not a change of health: no revision.
            self.cached = None;
        }
    }

    pub(super) fn detach(&mut self, name: &str, session_id: u64) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        if v.session.as_ref().is_none_or(|s| s.0 != session_id) {
            return;
        }
        v.session = None;
        self.run_complete(name);
        self.vantage_event(name, VantageChange::Detached, Cause::Here);
        self.bump();
    }

    /// A heartbeat of the vantage's current session.
    pub(super) fn heartbeat(&mut self, name: &str, session_id: u64, replay_dropped: u64) {
        if let Some(v) = self
            .vantages
            .get_mut(name)
            .filter(|v| v.session.as_ref().is_some_and(|s| s.0 == session_id))
        {
            v.seq.replay_dropped = replay_dropped;
            self.seen(name, Cause::Here);
        }
    }

    /// The checks of the vantage's new assignment: observations of other checks and targets
    /// are dropped.
    pub(super) fn assigned(&mut self, name: &str, checks: Vec<AssignedCheck>) {
        if let Some(v) = self.vantages.get_mut(name) {
            v.assigned = checks.into_iter().map(|c| (c.id.clone(), c)).collect();
            let assigned = &v.assigned;
            v.observations
                .retain(|id, target| assigned.get(id).is_some_and(|c| c.targets.contains(target)));
            for s in Section::ALL {
                self.recompute(name, s, Cause::Here);
            }
            self.bump();
        }
    }

    /// The vantage was heard from: fresh again if it was stale.
    fn seen(&mut self, name: &str, cause: Cause) {
        if let Some(run) = &mut self.force
            && run.pending.borrow().contains(name)
        {
            // Acknowledged the forced run (probes send a heartbeat on RunNow).
            run.heard.insert(name.to_owned());
        }
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        v.last_seen = Instant::now();
        v.last_seen_at = Some(Utc::now());
        if v.stale_since.take().is_some() {
            self.vantage_event(name, VantageChange::Fresh, cause);
            self.reaggregate_all(cause);
        }
    }

    /// Apply one batch of `name`'s session; without a durable store, acknowledge it only
    /// when `ack` (the last batch of a command: acks are cumulative).
    pub(super) fn ingest(&mut self, name: &str, session_id: u64, batch: Batch, ack: bool) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        let Some((sid, tx)) = v.session.as_ref() else {
            return;
        };
        if *sid != session_id {
            return;
        }
        let tx = tx.clone();
        let Some(d) = &self.durable else {
            let acked = self.apply(name, batch, Cause::Here);
            if ack {
                self.send_ack(name, &tx, acked);
            }
            return;
        };
        // With a durable store every observation of the batch is whole (`keep_all`).
        let to_store: Vec<NewObservation> = batch
            .entries
            .iter()
            .filter(|e| e.seq > v.seq.last)
            .filter_map(|e| e.whole.map(|i| batch.whole[i].clone()))
            .map(|observation| NewObservation {
                vantage: name.to_owned(),
                instance_id: v.instance_id.clone(),
                observation,
            })
            .collect();
        let stored = v.stored.clone();
        if to_store.is_empty() {
            // Nothing new: acknowledge only what is known stored.
            let seq = stored.load(std::sync::atomic::Ordering::Acquire);
            self.send_ack(name, &tx, seq);
            return;
        }
        // An acknowledgement means stored, so a full write queue is backpressure: nothing of
        // this batch is applied or acknowledged, the session ends, and the probe resends
        // from what is stored once it reconnects (keeping the rest in its replay buffer).
        let receipt = match d.writer.try_submit(to_store) {
            Ok(r) => r,
            Err(full) => {
                self.stats.backpressure += 1;
                tracing::warn!(vantage = %name, error = %full, "not acknowledging: the write queue is full");
                // The session ends here: a later batch of it must not be applied past the
                // refused one (that would acknowledge over a hole).
                if let Some(v) = self.vantages.get_mut(name) {
                    v.session = None;
                }
                let refusal = Box::new(Err(Status::unavailable(format!(
                    "{full}: these observations are not acknowledged; resend them after reconnecting"
                ))));
                if let Err(mpsc::error::TrySendError::Full(refusal)) = tx.try_send(refusal) {
                    // Never wait here: the refusal waits for room on a task of its own.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REFUSAL_WAIT, tx.send(refusal)).await;
                    });
                }
                return;
            }
        };
        let acked = self.apply(name, batch, Cause::Here);
        let durable = self.durable.as_ref().map(|d| d.acks.clone());
        if let Some(acks) = durable {
            // If the ack queue is full, a later cumulative ack covers this one.
            let _ = acks.try_send((tx, acked, receipt, stored));
        }
    }

    /// Acknowledge `seq` to `name`'s session. Acks are cumulative, so a full queue only
    /// postpones this one: it is kept and sent again on the tick, unless a later one gets
    /// through first.
    pub(super) fn send_ack(&mut self, name: &str, tx: &SessionTx, seq: u64) {
        let unsent = if try_ack(tx, seq) { seq } else { 0 };
        if let Some(v) = self.vantages.get_mut(name) {
            v.unsent_ack = unsent;
        }
    }

    /// Send again the acks that found their session's queue full.
    pub(super) fn resend_acks(&mut self) {
        for v in self.vantages.values_mut().filter(|v| v.unsent_ack != 0) {
            let Some((_, tx)) = &v.session else {
                v.unsent_ack = 0;
                continue;
            };
            if !try_ack(tx, v.unsent_ack) {
                v.unsent_ack = 0;
            }
        }
    }

    /// Apply observations of `name` in sequence order, once each; returns the highest
    /// sequence applied. From [`Cause::Elsewhere`] (heard through the store) the check need not
    /// be in this replica's assignment of the vantage.
    pub(super) fn apply(&mut self, name: &str, mut batch: Batch, cause: Cause) -> u64 {
        let remote = cause == Cause::Elsewhere;
        let Some(v) = self.vantages.get_mut(name) else {
            return 0;
        };
        let mut dirty: u8 = 0;
        // Per run of one check and target: its section in the assignment (or why none), and
        // its history series (looked up once a run, not once an observation).
        let mut run: Option<(usize, Result<Section, &'static str>)> = None;
        let mut series: Option<(usize, Option<&mut VecDeque<pb::CheckSample>>)> = None;
        // Whether the latest observations admit the run's check and target: the same for
        // every observation of a run until one is put (only a put changes them).
        let mut admitted: Option<(usize, bool)> = None;
        for e in &mut batch.entries {
            if e.seq <= v.seq.last {
                v.seq.duplicates += 1;
                self.stats.duplicates += 1;
                continue;
            }
            if !remote && e.seq > v.seq.last.saturating_add(SEQ_WINDOW) {
                // Refused, not applied: the sequence stays where it was.
                self.stats.guard.reject("seq_window");
                self.stats.rejected += 1;
                continue;
            }
            v.seq.take(e.seq);
            self.stats.applied += 1;
            if let Some(reason) = e.fault {
                // Consumed (its number is taken), kept nowhere.
                self.stats.guard.reject(reason);
                self.stats.rejected += 1;
                continue;
            }
            let g = &batch.groups[e.group];
            let section = match run {
                Some((i, section)) if i == e.group => section,
                _ => {
                    let section = if remote {
                        Section::from_pb(g.section).ok_or("unassigned")
                    } else {
                        assigned_section(&v.assigned, g)
                    };
                    run = Some((e.group, section));
                    section
                }
            };
            let section = match section {
                Ok(section) => section,
                Err(reason) => {
                    // Not (or no longer) assigned: counted as applied, kept nowhere.
                    self.stats.guard.reject(reason);
                    self.stats.rejected += 1;
                    continue;
                }
            };
            let (limit, per_check) = observation_limits(remote, section);
            if series.as_ref().is_none_or(|(i, _)| *i != e.group) {
                series = Some((e.group, self.timeline.series(name, section, &g.target)));
            }
            if let Some((_, Some(samples))) = series.as_mut() {
                push_sample(samples, std::mem::take(&mut e.sample));
            }
            let kept = match (e.whole, admitted) {
                (Some(i), _) => {
                    admitted = None;
                    v.observations
                        .put(std::mem::take(&mut batch.whole[i]), limit, per_check)
                }
                (None, Some((group, admits))) if group == e.group => admits,
                (None, _) => {
                    let admits = v
                        .observations
                        .admits(&g.check_id, &g.target, limit, per_check);
                    admitted = Some((e.group, admits));
                    admits
                }
            };
            if !kept {
                // A check has at most so many targets (DERP nodes of a region).
                self.stats.guard.reject("too_many_targets");
                self.stats.rejected += 1;
                continue;
            }
            dirty |= 1 << (section as u8);
        }
        let applied = v.seq.last;
        self.seen(name, cause);
        for s in Section::ALL {
            if dirty & (1 << (s as u8)) != 0 {
                self.recompute(name, s, cause);
            }
        }
        self.bump();
        applied
    }

    /// A vantage this replica has not heard of: created without a session.
    pub(super) fn vantage_entry(&mut self, name: &str) -> &mut Vantage {
        self.vantages
            .entry(name.to_owned())
            .or_insert_with(|| Vantage::new(name))
    }

    /// Ask every attached vantage to run now; joins a run in flight (younger than
    /// `force_join`). A vantage that ran a forced run in the last [`FORCE_COALESCE`] is not
    /// asked again; one that did not answer the previous run is asked but not waited for.
    pub(super) fn force(&mut self) -> ForceStarted {
        let join = self.config.force_join;
        if let Some(run) = self
            .force
            .as_ref()
            .filter(|r| !r.pending.borrow().is_empty() && r.started.elapsed() < join)
        {
            // Join the run in flight (single flight).
            return ForceStarted {
                pending: run.pending.subscribe(),
                silent: run.silent.clone(),
            };
        }
        // Who did not answer the previous run is not waited for this time.
        let unanswered: BTreeSet<String> = self
            .force
            .take()
            .map(|r| {
                let mut left = r.pending.borrow().clone();
                left.extend(r.silent);
                left
            })
            .unwrap_or_default();
        let request_id = self.next_request;
        self.next_request += 1;
        let now = Instant::now();
        let mut pending = BTreeSet::new();
        let mut silent = Vec::new();
        for v in self.vantages.values_mut() {
            let Some((_, tx)) = &v.session else { continue };
            if v.forced_at
                .is_some_and(|t| now.saturating_duration_since(t) < FORCE_COALESCE)
            {
                // Ran one moments ago: not asked again (still silent if it did not answer).
                self.stats.guard.force_coalesced += 1;
                if unanswered.contains(&v.name) {
                    silent.push(v.name.clone());
                }
                continue;
            }
            let msg = pb::ServerMessage {
                msg: Some(Down::RunNow(pb::RunNow { request_id })),
            };
            if tx.try_send(Box::new(Ok(msg))).is_ok() {
                v.forced_at = Some(now);
                if unanswered.contains(&v.name) {
                    silent.push(v.name.clone());
                } else {
                    pending.insert(v.name.clone());
                }
            }
        }
        tracing::debug!(request_id, ?pending, ?silent, "forced run");
        let (tx, rx) = watch::channel(pending);
        self.force = Some(ForceRun {
            pending: tx,
            silent: silent.clone(),
            started: now,
            heard: BTreeSet::new(),
        });
        ForceStarted {
            pending: rx,
            silent,
        }
    }

    /// The pending vantages of the run in flight not heard from since they were asked are no
    /// longer waited for: they join the silent ones. Their names.
    pub(super) fn force_unheard(&mut self) -> Vec<String> {
        let Some(run) = &mut self.force else {
            return Vec::new();
        };
        let unheard: Vec<String> = run
            .pending
            .borrow()
            .iter()
            .filter(|n| !run.heard.contains(*n))
            .cloned()
            .collect();
        run.pending.send_if_modified(|p| {
            let before = p.len();
            p.retain(|n| !unheard.contains(n));
            p.len() != before
        });
        run.silent.extend(unheard.iter().cloned());
        unheard
    }

    pub(super) fn run_complete(&mut self, name: &str) {
        if let Some(run) = &mut self.force {
            run.pending.send_if_modified(|p| p.remove(name));
            run.silent.retain(|n| n != name);
        }
    }
}

/// The section of an observation of an assigned check and target, or why it is not applied:
/// `unassigned` (no such check, or another section), `unassigned_target` (a target the
/// assignment does not name).
fn assigned_section(
    assigned: &rustc_hash::FxHashMap<String, AssignedCheck>,
    run: &Group,
) -> Result<Section, &'static str> {
    let check = assigned
        .get(&run.check_id)
        .filter(|c| Section::from_pb(run.section) == Some(c.section))
        .ok_or("unassigned")?;
    if !check.targets.contains(&run.target) {
        return Err("unassigned_target");
    }
    Ok(check.section)
}

/// How many latest observations a vantage keeps, in all and per check: from the store as many
/// as a replica may send; from a session one target per check, or a region's nodes for DERP.
fn observation_limits(remote: bool, section: Section) -> (usize, usize) {
    if remote {
        (MAX_REMOTE_OBSERVATIONS, MAX_REMOTE_OBSERVATIONS)
    } else if section == Section::Derp {
        (MAX_REMOTE_OBSERVATIONS, MAX_TARGETS_PER_CHECK)
    } else {
        // One target per check (its URL, the database, the proxy).
        (MAX_REMOTE_OBSERVATIONS, 1)
    }
}
