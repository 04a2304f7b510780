//! The aggregator's state and its loop: one command at a time, plus a staleness tick.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use vantage_probe::rules::{self, SectionReport};
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, pb};

use super::alert::Alert;
use super::command::{AdminCommand, Command, ProbeCommand, Query, SettingsUpdate};
use super::durable::Durable;
use super::events::SharedEvent;
use super::vantage::Vantage;
use super::{AggregatorConfig, Stats};
use crate::aggregate::aggregate;
use vantage_proto::report::VantageChange;

pub(super) struct ForceRun {
    pub(super) pending: watch::Sender<BTreeSet<String>>,
    pub(super) silent: Vec<String>,
    pub(super) started: Instant,
    /// Pending vantages heard from (a heartbeat, observations) since they were asked.
    pub(super) heard: BTreeSet<String>,
}

/// Where a change was caused. In a cluster each event is stored once, by the replica that
/// caused it ([`Cause::Here`]: a local probe or session, this replica's clock or an operator
/// here); what the store told of other replicas ([`Cause::Elsewhere`]) is not stored again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    Here,
    Elsewhere,
}

pub(super) struct State {
    pub(super) durable: Option<Durable>,
    /// While the database is away: the provisional epoch of events delivered from memory.
    pub(super) degraded: Option<String>,
    /// The last revision received from the database.
    pub(super) db_revision: u64,
    /// Encoded events this replica caused and queued for storage that the database has not
    /// fed back yet, oldest first (bounded): delivered from memory if it goes away first.
    pub(super) unconfirmed: VecDeque<Vec<u8>>,
    pub(super) config: AggregatorConfig,
    pub(super) rules: rules::RulesContext,
    /// Random per aggregator start: revisions compare only within one epoch.
    pub(super) epoch: String,
    pub(super) vantages: BTreeMap<String, Vantage>,
    pub(super) aggregates: HashMap<Section, (SectionReport, Alert)>,
    pub(super) server_sections: HashMap<Section, SectionReport>,
    /// Why the configured DERP map could not be read last time (EDERP05 in the DERP section).
    pub(super) derp_map_warning: Option<String>,
    /// What the Coder importer last found (attach mode only).
    pub(super) coder: Option<vantage_proto::report::CoderReport>,
    pub(super) revision: u64,
    pub(super) changed_at: DateTime<Utc>,
    pub(super) events: broadcast::Sender<super::events::EventGroup>,
    /// Events held back from the watchers while a batch is applied, so that the probe's ack
    /// is queued before a thousand watcher wake-ups (see [`State::release_events`]).
    pub(super) held: Option<Vec<Arc<SharedEvent>>>,
    pub(super) history: VecDeque<Arc<SharedEvent>>,
    /// Section transitions and check outcomes over time (bounded), for `GetHistory`.
    pub(super) timeline: super::history::History,
    pub(super) dismissed: Vec<Section>,
    /// When timed dismissals end, by this aggregator's clock.
    pub(super) dismiss_until: Vec<(Section, Instant)>,
    pub(super) cached: Option<(Arc<HealthReport>, Arc<pb::Report>)>,
    pub(super) next_session: u64,
    pub(super) next_request: u64,
    pub(super) force: Option<ForceRun>,
    pub(super) stats: Stats,
    pub(super) stats_tx: watch::Sender<Stats>,
    /// Refusals are logged at most once a minute per name.
    pub(super) refusal_log: super::guard::LogLimit,
}

/// How long taking over the clock lease may take (the lease is tried for every second).
const LEASE_TAKEOVER: Duration = Duration::from_secs(3);

/// How many times the aggregator's own thread yields, waiting for the next command, before
/// it lets its runtime park: a parked thread costs every sender a futex wake and itself a
/// context switch, and under load the next batch is a few microseconds away.
const LINGER_YIELDS: usize = 8;

/// Yield the thread (to the workers, which make the commands) while the queue is empty, a few
/// times at most.
fn linger(rx: &mpsc::Receiver<Command>) {
    for _ in 0..LINGER_YIELDS {
        if !rx.is_empty() {
            return;
        }
        std::thread::yield_now();
    }
}

impl State {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let tick_every =
            (self.config.stale_after / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                _ = tick.tick() => {
                    self.resend_acks();
                    self.check_staleness();
                    self.expire_dismissals();
                }
            }
            if self.config.dedicated_thread {
                linger(&rx);
            }
            self.stats.revision = self.revision;
            self.stats_tx.send_if_modified(|s| {
                let changed = s.revision != self.stats.revision
                    || s.applied != self.stats.applied
                    || s.guard != self.stats.guard;
                if changed {
                    *s = self.stats.clone();
                }
                changed
            });
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Probe(c) => self.handle_probe(c),
            Command::Query(q) => self.handle_query(q),
            Command::Admin(c) => self.handle_admin(c),
            Command::Cluster(c) => self.handle_cluster(c),
        }
    }

    fn handle_probe(&mut self, cmd: ProbeCommand) {
        match cmd {
            ProbeCommand::Attach {
                hello,
                session,
                peer,
                reply,
            } => {
                let attached = self.attach(hello, session, peer);
                let _ = reply.send(attached);
            }
            ProbeCommand::Detach { name, session_id } => self.detach(&name, session_id),
            ProbeCommand::Ingest {
                name,
                session_id,
                batch,
                then,
            } => {
                let last = then.len();
                for (i, batch) in std::iter::once(batch).chain(then).enumerate() {
                    let held = self.hold_events();
                    self.ingest(&name, session_id, batch, i == last);
                    if held {
                        self.release_events();
                    }
                }
            }
            ProbeCommand::Heartbeat {
                name,
                session_id,
                replay_dropped,
            } => self.heartbeat(&name, session_id, replay_dropped),
            ProbeCommand::Assigned { name, check_ids } => self.assigned(&name, check_ids),
            ProbeCommand::Source { name, address } => self.source(&name, address),
            ProbeCommand::RunComplete {
                name,
                request_id: _,
            } => self.run_complete(&name),
        }
    }

    fn handle_query(&mut self, query: Query) {
        match query {
            Query::Report { reply } => {
                let report = self.report();
                let _ = reply.send(report);
            }
            Query::Subscribe {
                since,
                epoch,
                reply,
            } => {
                let since = if epoch.is_empty() || epoch == self.current_epoch() {
                    since
                } else {
                    u64::MAX
                };
                let sub = self.subscribe(since);
                let _ = reply.send(sub);
            }
            Query::Settings { reply } => {
                let _ = reply.send(SettingsUpdate {
                    changed: false,
                    dismissed: self.dismissed.clone(),
                });
            }
            Query::Vantages { internal, reply } => {
                let list = self
                    .vantages
                    .values()
                    .map(|v| {
                        let mut pb = self.vantage_pb(v);
                        if !internal {
                            pb.instance_id.clear();
                        }
                        pb
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Query::Held { reply } => {
                let held = self
                    .aggregates
                    .iter()
                    .filter_map(|(s, (_, alert))| Some((*s, alert.state?)))
                    .collect();
                let _ = reply.send(held);
            }
            Query::History { filter, reply } => {
                let _ = reply.send(self.timeline.read(filter));
            }
            Query::Targets { reply } => {
                let _ = reply.send(self.target_figures());
            }
        }
    }

    fn handle_admin(&mut self, cmd: AdminCommand) {
        match cmd {
            AdminCommand::Force { reply } => {
                let rx = self.force();
                let _ = reply.send(rx);
            }
            AdminCommand::ForceUnheard { reply } => {
                let _ = reply.send(self.force_unheard());
            }
            AdminCommand::Dismiss {
                dismissed,
                until,
                reply,
            } => {
                let changed = self.dismiss(dismissed, &until);
                let _ = reply.send(SettingsUpdate {
                    changed,
                    dismissed: self.dismissed.clone(),
                });
            }
            AdminCommand::Forget { name, force, reply } => {
                let outcome = self.forget(&name, force);
                if !self.vantages.contains_key(&name) {
                    self.timeline.forget(&name);
                }
                let _ = reply.send(outcome);
            }
            AdminCommand::Proxies { proxies } => {
                self.rules.proxies = proxies;
                let names: Vec<String> = self.vantages.keys().cloned().collect();
                for name in names {
                    self.recompute(&name, Section::WorkspaceProxy, Cause::Here);
                }
                self.reaggregate(Section::WorkspaceProxy, Cause::Here);
                self.bump();
            }
            AdminCommand::DerpRegions {
                regions,
                has_nodes,
                map_warning,
            } => {
                if self.config.derp_regions != regions
                    || self.config.derp_has_nodes != has_nodes
                    || self.derp_map_warning != map_warning
                {
                    self.config.derp_regions = regions;
                    self.config.derp_has_nodes = has_nodes;
                    self.derp_map_warning = map_warning;
                    self.reaggregate(Section::Derp, Cause::Here);
                    self.bump();
                }
            }
            AdminCommand::ExternalVantage {
                name,
                version,
                sections,
            } => self.external_vantage(&name, version, sections),
            AdminCommand::Coder { report } => {
                if self.coder.as_ref() != Some(&report) {
                    self.coder = Some(report);
                    self.bump();
                }
            }
            AdminCommand::ServerSection { report } => {
                let section = report.section();
                if self.server_sections.get(&section) != Some(&report) {
                    self.server_sections.insert(section, report);
                    self.reaggregate(section, Cause::Here);
                    self.bump();
                }
            }
        }
    }

    /// Something changed. In memory every change is a revision; in a cluster revisions come
    /// only from the database's event log (unless it is away and events come from memory).
    pub(super) fn bump(&mut self) {
        if self.durable.is_none() || self.degraded.is_some() {
            self.revision += 1;
        }
        self.changed_at = Utc::now();
        self.cached = None;
    }

    /// Recompute one vantage's report of `section` from its observations, then the aggregate.
    pub(super) fn recompute(&mut self, name: &str, section: Section, cause: Cause) {
        let Some(v) = self.vantages.get(name) else {
            return;
        };
        // An external vantage's sections come whole from outside, never from observations.
        if v.external {
            return;
        }
        let report = rules::section_report(
            section,
            v.observations
                .values()
                .filter(|o| Section::from_pb(o.section) == Some(section)),
            &self.rules,
        );
        self.put_section(name, section, report, cause);
    }

    /// Keep `report` as the vantage's `section` (alerts, events, the aggregate).
    pub(super) fn put_section(
        &mut self,
        name: &str,
        section: Section,
        report: Option<SectionReport>,
        cause: Cause,
    ) {
        let Some(v) = self.vantages.get_mut(name) else {
            return;
        };
        // The common case on the ingest path: the same result again. Nothing to re-aggregate
        // and no alert to advance (unless one is waiting for consecutive evaluations).
        let pending = v.alerts.get(&section).is_some_and(|a| a.count > 0)
            || self.aggregates.get(&section).is_some_and(|a| a.1.count > 0);
        if !pending && report.is_some() && report.as_ref() == v.sections.get(&section) {
            return;
        }
        let (raise, clear) = (self.config.raise_after, self.config.clear_after);
        let change = report.as_ref().and_then(|r| {
            v.alerts
                .entry(section)
                .or_default()
                .evaluate(r.severity(), raise, clear)
                .map(|c| (c, r.base().clone()))
        });
        match report {
            Some(r) => v.sections.insert(section, r),
            None => v.sections.remove(&section),
        };
        let fresh = v.is_fresh();
        if let Some(((from, to), base)) = change {
            self.section_event(section, name, from, to, &base, cause);
        }
        if fresh {
            self.reaggregate(section, cause);
        }
    }

    /// Keep an external vantage's sections, as a probe's would be after its observations.
    fn external_vantage(&mut self, name: &str, version: String, sections: Vec<SectionReport>) {
        let v = self.vantage_entry(name);
        v.external = true;
        v.home = true;
        v.version = version;
        v.last_seen = tokio::time::Instant::now();
        v.last_seen_at = Some(Utc::now());
        let was_stale = v.stale_since.take().is_some();
        if was_stale {
            self.vantage_event(name, VantageChange::Fresh, Cause::Here);
        }
        for report in sections {
            let section = report.section();
            self.put_section(name, section, Some(report), Cause::Here);
        }
        if was_stale {
            self.reaggregate_all(Cause::Here);
        }
        self.bump();
    }

    pub(super) fn reaggregate_all(&mut self, cause: Cause) {
        for s in Section::ALL {
            self.reaggregate(s, cause);
        }
    }

    /// Each fresh vantage's report of `section`, as the variant `pick` takes out.
    fn fresh_reports<'a, T>(
        &'a self,
        section: Section,
        pick: impl Fn(&'a SectionReport) -> Option<&'a T>,
    ) -> Vec<(&'a str, &'a T)> {
        self.vantages
            .values()
            .filter(|v| v.is_fresh())
            .filter_map(|v| {
                v.sections
                    .get(&section)
                    .and_then(&pick)
                    .map(|r| (v.name.as_str(), r))
            })
            .collect()
    }

    /// Recompute the aggregate of `section` over fresh vantages.
    pub(super) fn reaggregate(&mut self, section: Section, cause: Cause) {
        let report = if let Some(r) = self.server_sections.get(&section) {
            r.clone()
        } else if section == Section::Derp {
            let reports = self.fresh_reports(section, |r| match r {
                SectionReport::Derp(r) => Some(r),
                _ => None,
            });
            let mut derp = crate::aggregate::aggregate_derp(
                &reports,
                self.config.quorum,
                &self.config.derp_regions,
                self.config.derp_has_nodes,
            );
            if let Some(w) = &self.derp_map_warning {
                derp.base.warnings.push(vantage_proto::report::Message::new(
                    vantage_proto::codes::EDERP05,
                    w.clone(),
                ));
                derp.base.raise(vantage_proto::Severity::Warning);
            }
            SectionReport::Derp(derp)
        } else if section == Section::WorkspaceProxy {
            let reports = self.fresh_reports(section, |r| match r {
                SectionReport::WorkspaceProxy(r) => Some(r),
                _ => None,
            });
            SectionReport::WorkspaceProxy(crate::aggregate::aggregate_proxies(
                &reports,
                &self.rules.proxies,
                self.config.quorum,
            ))
        } else {
            let reports = self.fresh_reports(section, Some);
            aggregate(
                section,
                &reports,
                self.config.quorum,
                self.config.expected.contains(&section),
            )
        };
        let (raise, clear) = (self.config.raise_after, self.config.clear_after);
        let entry = self
            .aggregates
            .entry(section)
            .or_insert_with(|| (report.clone(), Alert::default()));
        entry.0 = report;
        let sev = entry.0.severity();
        if let Some((from, to)) = entry.1.evaluate(sev, raise, clear) {
            let base = entry.0.base().clone();
            self.section_event(section, "", from, to, &base, cause);
        }
    }

    /// Mark vantages silent too long stale, and forget long-stale ones. Each event is stored
    /// once: by the replica that holds the clock lease.
    fn check_staleness(&mut self) {
        let now = Instant::now();
        let mut newly_stale = Vec::new();
        let mut forget = Vec::new();
        // In a cluster the replica holding the clock lease stores what time causes, whether or
        // not the vantage's own replica still lives; alone, this replica does.
        let cause = match &self.durable {
            Some(d) if !d.store.clock_leader() => Cause::Elsewhere,
            _ => Cause::Here,
        };
        // A replica without the lease waits a little longer, so that when the lease holder
        // has just died, the replica taking the lease over is the one that sees the vantage
        // go stale (and stores it), not one that is still waiting for it.
        let stale_after = match cause {
            Cause::Here => self.config.stale_after,
            Cause::Elsewhere => self.config.stale_after + LEASE_TAKEOVER,
        };
        for v in self.vantages.values_mut() {
            let silent = now.saturating_duration_since(v.last_seen);
            if v.is_fresh() && silent > stale_after {
                v.stale_since = Some(Utc::now());
                newly_stale.push((v.name.clone(), cause));
            } else if !v.is_fresh() && silent > self.config.forget_after {
                forget.push((v.name.clone(), cause));
            }
        }
        if newly_stale.is_empty() && forget.is_empty() {
            return;
        }
        for (name, cause) in &newly_stale {
            tracing::warn!(vantage = %name, "vantage is stale");
            self.vantage_event(name, VantageChange::Stale, *cause);
        }
        for (name, cause) in &forget {
            tracing::info!(vantage = %name, "forgetting a long-stale vantage");
            self.vantages.remove(name);
            self.timeline.forget(name);
            self.vantage_event(name, VantageChange::Forgotten, *cause);
        }
        let cause = if newly_stale.iter().any(|(_, c)| *c == Cause::Here) {
            Cause::Here
        } else {
            Cause::Elsewhere
        };
        self.reaggregate_all(cause);
        self.bump();
    }
}

impl State {
    /// Dismiss exactly `dismissed`, those in `until` only until then (turned into deadlines
    /// of this aggregator's clock; one already past is left out). Whether the set changed.
    fn dismiss(&mut self, mut dismissed: Vec<Section>, until: &[(Section, DateTime<Utc>)]) -> bool {
        let now = Utc::now();
        self.dismiss_until.clear();
        for (section, end) in until {
            match (*end - now).to_std() {
                Ok(left) if !left.is_zero() => {
                    self.dismiss_until.push((*section, Instant::now() + left));
                }
                _ => dismissed.retain(|s| s != section),
            }
        }
        dismissed.sort();
        dismissed.dedup();
        let changed = dismissed != self.dismissed;
        if changed {
            self.dismissed = dismissed;
            self.bump();
        }
        changed
    }

    /// End the timed dismissals whose time has come.
    pub(super) fn expire_dismissals(&mut self) {
        let now = Instant::now();
        let before = self.dismissed.len();
        let ended: Vec<Section> = self
            .dismiss_until
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(s, _)| *s)
            .collect();
        if ended.is_empty() {
            return;
        }
        self.dismiss_until.retain(|(_, at)| *at > now);
        self.dismissed.retain(|s| !ended.contains(s));
        if self.dismissed.len() != before {
            tracing::info!(sections = ?ended, "timed dismissals ended");
            self.bump();
        }
    }
}
