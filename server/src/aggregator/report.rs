//! The report: built from the aggregates and the vantages only when something changed, and
//! the figures `/metrics` shows.

use std::sync::Arc;

use vantage_probe::rules::SectionReport;
use vantage_proto::pb;
use vantage_proto::report::{
    Aggregated, CoderReport, HealthReport, Message, VantageInfo, VantageState, VantagesReport,
};
use vantage_proto::{Section, Severity, codes, convert};

use super::report_pb::report_pb;
use super::state::{Cause, State};
use super::vantage::Vantage;

/// The latest check of one target as one vantage saw it.
#[derive(Debug, Clone)]
pub struct TargetFigure {
    pub vantage: String,
    pub section: Section,
    pub target: String,
    /// How long the check took.
    pub seconds: f64,
    /// Whether it succeeded (no failure code; 200; relayed; proxy `ok`).
    pub ok: bool,
}

/// Whether an observation is a success.
fn observation_ok(o: &pb::Observation) -> bool {
    use pb::observation::Result as R;
    match &o.result {
        Some(R::AccessUrl(r)) => r.failure.is_none() && r.status_code == 200,
        Some(R::Websocket(r)) => r.failure.is_none(),
        // No database configured (EDB03) is a warning of the section, not a failed check.
        Some(R::Database(r)) => r
            .failure
            .as_ref()
            .is_none_or(|f| f.code == vantage_proto::codes::EDB03),
        Some(R::DerpNode(r)) => {
            r.error.is_empty()
                && (r.can_exchange_messages || r.stun_only)
                && r.stun_error.is_empty()
        }
        Some(R::WorkspaceProxy(r)) => r.status == "ok",
        Some(R::UnknownError(_)) | None => false,
    }
}

/// How long an observation's check took. A DERP region's nodes are checked together, so
/// each node's own figure is its message round trip (or its STUN latency when it only does
/// STUN); the run's time is used when the node has neither.
fn observation_seconds(o: &pb::Observation) -> f64 {
    use pb::observation::Result as R;
    let node = match &o.result {
        Some(R::DerpNode(r)) if r.error.is_empty() => {
            if r.stun_only {
                r.stun_latency.as_ref()
            } else {
                r.round_trip_ping.as_ref()
            }
        }
        _ => None,
    };
    convert::from_duration(node.or(o.elapsed.as_ref())).map_or(0.0, |d| d.as_secs_f64())
}

impl State {
    /// The latest check of every target of every fresh vantage.
    pub(super) fn target_figures(&self) -> Vec<TargetFigure> {
        self.vantages
            .values()
            .filter(|v| v.is_fresh())
            .flat_map(|v| {
                v.observations.values().filter_map(move |o| {
                    Some(TargetFigure {
                        vantage: v.name.clone(),
                        section: Section::from_pb(o.section)?,
                        target: o.target.clone(),
                        seconds: observation_seconds(o),
                        ok: observation_ok(o),
                    })
                })
            })
            .collect()
    }

    pub(super) fn vantage_pb(&self, v: &Vantage) -> pb::Vantage {
        pb::Vantage {
            name: v.name.clone(),
            region: v.region.clone(),
            version: v.version.clone(),
            labels: v.labels.clone().into_iter().collect(),
            connected: v.session.is_some(),
            stale: !v.is_fresh(),
            last_seen: v.last_seen_at.map(convert::timestamp),
            stale_since: v.stale_since.map(convert::timestamp),
            instance_id: v.instance_id.clone(),
            first_applied_seq: v.seq.first,
            last_applied_seq: v.seq.last,
            applied: v.seq.applied,
            duplicates: v.seq.duplicates,
            gaps: v.seq.gaps,
            replay_dropped: v.seq.replay_dropped,
            resumed_from_seq: v.seq.resumed_from,
        }
    }

    /// The report, built only when something changed since the last one.
    pub(super) fn report(&mut self) -> (Arc<HealthReport>, Arc<pb::Report>) {
        if let Some(c) = &self.cached {
            return c.clone();
        }
        for s in Section::ALL {
            if !self.aggregates.contains_key(&s) {
                self.reaggregate(s, Cause::Here);
            }
        }
        let mut report = self.build_report();
        let mut pb_report = report_pb(&report);
        if pb_report.json.len() > self.config.max_report_bytes {
            cut_to_bound(
                &mut report,
                pb_report.json.len(),
                self.config.max_report_bytes,
            );
            pb_report = report_pb(&report);
        }
        pb_report.epoch = self.current_epoch().to_owned();
        let pair = (Arc::new(report), Arc::new(pb_report));
        self.cached = Some(pair.clone());
        pair
    }

    /// The `vantages` block: every vantage, and EVNT01/EVNT04 for the stale and the lossy.
    fn vantages_block(&self) -> VantagesReport {
        let mut vantages = VantagesReport::default();
        for v in self.vantages.values() {
            vantages.items.push(VantageInfo {
                name: v.name.clone(),
                region: v.region.clone(),
                version: v.version.clone(),
                labels: v.labels.clone(),
                address: v.address.clone(),
                connected: v.session.is_some(),
                state: if v.is_fresh() {
                    VantageState::Fresh
                } else {
                    VantageState::Stale
                },
                last_seen: v.last_seen_at,
                stale_since: v.stale_since,
            });
            if let Some(since) = v.stale_since {
                vantages.warnings.push(Message::new(
                    codes::EVNT01,
                    format!(
                        "vantage {} is stale since {} (last seen {}); its results left the aggregate",
                        v.name,
                        since.to_rfc3339(),
                        v.last_seen_at.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
                    ),
                ));
                vantages.severity = Severity::Warning;
            }
            if v.seq.replay_dropped > 0 {
                vantages.warnings.push(Message::new(
                    codes::EVNT04,
                    format!(
                        "vantage {} dropped {} observations from its replay buffer before the server acknowledged them",
                        v.name, v.seq.replay_dropped
                    ),
                ));
                vantages.severity = Severity::Warning;
            }
        }
        vantages
    }

    fn build_report(&self) -> HealthReport {
        let vantages = self.vantages_block();
        let fresh: Vec<&Vantage> = self.vantages.values().filter(|v| v.is_fresh()).collect();
        macro_rules! section {
            ($section:expr, $variant:ident) => {{
                let report = match self.aggregates.get(&$section).map(|a| &a.0) {
                    Some(SectionReport::$variant(r)) => r.clone(),
                    _ => Default::default(),
                };
                let vantage_reports = fresh
                    .iter()
                    .filter_map(|v| match v.sections.get(&$section) {
                        Some(SectionReport::$variant(r)) => Some((v.name.clone(), r.clone())),
                        _ => None,
                    })
                    .collect();
                Aggregated {
                    report,
                    vantage_reports,
                }
            }};
        }
        let mut report = HealthReport {
            time: self.changed_at,
            healthy: true,
            severity: Severity::Ok,
            derp: section!(Section::Derp, Derp),
            access_url: section!(Section::AccessUrl, AccessUrl),
            websocket: section!(Section::Websocket, Websocket),
            database: section!(Section::Database, Database),
            workspace_proxy: section!(Section::WorkspaceProxy, WorkspaceProxy),
            provisioner_daemons: section!(Section::ProvisionerDaemons, ProvisionerDaemons),
            coder_version: self
                .coder
                .as_ref()
                .filter(|c| !c.version.is_empty())
                .map_or_else(|| self.config.version.clone(), |c| c.version.clone()),
            vantages,
            revision: self.revision,
            coder: None,
        };
        report.coder = self.coder.as_ref().map(|c| coder_block(c, &report));
        report.apply_dismissed(&self.dismissed);
        overall(&mut report);
        report
    }
}

/// A report whose JSON would be `size` bytes, over `bound`: without its per-vantage section
/// reports, saying so (EVNT05, a warning of the vantages block).
fn cut_to_bound(report: &mut HealthReport, size: usize, bound: usize) {
    report.drop_vantage_reports();
    report.vantages.warnings.push(Message::new(
        codes::EVNT05,
        format!(
            "the report would be {} KiB, over its bound of {} KiB: the per-vantage section reports are left out",
            size >> 10,
            bound >> 10
        ),
    ));
    report.vantages.severity = report.vantages.severity.max(Severity::Warning);
    overall(report);
}

/// The report's severity (the worst of the sections, the vantages block and the coder block)
/// and `healthy` (no section failing).
fn overall(report: &mut HealthReport) {
    let mut severity = report.vantages.severity;
    if let Some(c) = &report.coder {
        severity = severity.max(c.severity);
    }
    let mut healthy = true;
    for s in Section::ALL {
        let sev = report.base(s).severity;
        severity = severity.max(sev);
        if s.is_failing(sev) {
            healthy = false;
        }
    }
    report.severity = severity;
    report.healthy = healthy;
}

/// The `coder` block as the importer found it, with what the probes saw of each proxy beside
/// Coder's status, and a warning (ECDR05) where the two disagree.
fn coder_block(found: &CoderReport, report: &HealthReport) -> CoderReport {
    let mut block = found.clone();
    let seen = &report.workspace_proxy.report.workspace_proxies.regions;
    for p in &mut block.proxies {
        let Some(probed) = seen.iter().find(|s| s.name == p.name) else {
            continue;
        };
        // A proxy no probe has polled yet is `unknown`: nothing to compare.
        if probed.status.status == "unknown" {
            continue;
        }
        p.probe_status = probed.status.status.clone();
        if !p.coder_status.is_empty() && (p.coder_status == "ok") != (p.probe_status == "ok") {
            block.warnings.push(Message::new(
                codes::ECDR05,
                format!(
                    "workspace proxy {}: Coder says {}, the probes of region {:?} saw {}",
                    p.name, p.coder_status, p.region, p.probe_status
                ),
            ));
        }
    }
    if !block.warnings.is_empty() {
        block.severity = block.severity.max(Severity::Warning);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::observation::Result as R;

    fn millis(ms: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    /// Node `name` of region 1, checked in the same run as its siblings (same `elapsed`).
    fn node(name: &str, rtt_ms: i32) -> pb::Observation {
        pb::Observation {
            section: pb::Section::Derp as i32,
            target: format!("derp/1/{name}"),
            elapsed: millis(900),
            result: Some(R::DerpNode(Box::new(pb::DerpNodeResult {
                region_id: 1,
                node_name: name.to_owned(),
                can_exchange_messages: true,
                round_trip_ping: millis(rtt_ms),
                ..Default::default()
            }))),
            ..Default::default()
        }
    }

    #[test]
    fn each_derp_node_has_its_own_duration_not_the_region_run() {
        let (a, b) = (node("1a", 3), node("1b", 40));
        assert!((observation_seconds(&a) - 0.003).abs() < 1e-9);
        assert!((observation_seconds(&b) - 0.040).abs() < 1e-9);
        assert!(observation_ok(&a) && observation_ok(&b));
        // A STUN-only node: its STUN latency.
        let mut stun = node("1c", 0);
        if let Some(R::DerpNode(r)) = &mut stun.result {
            r.stun_only = true;
            r.can_exchange_messages = false;
            r.round_trip_ping = None;
            r.stun_latency = millis(7);
        }
        assert!((observation_seconds(&stun) - 0.007).abs() < 1e-9);
        assert!(observation_ok(&stun));
        // A node that failed has no round trip of its own: the run's time, and a failure.
        let mut failed = node("1d", 0);
        if let Some(R::DerpNode(r)) = &mut failed.result {
            r.error = "dial tcp: connection refused".to_owned();
            r.can_exchange_messages = false;
        }
        assert!((observation_seconds(&failed) - 0.9).abs() < 1e-9);
        assert!(!observation_ok(&failed));
    }

    fn database(failure: Option<&str>) -> pb::Observation {
        pb::Observation {
            section: pb::Section::Database as i32,
            result: Some(R::Database(pb::DatabaseResult {
                reachable: failure.is_none(),
                failure: failure.map(|code| pb::Message {
                    code: code.to_owned(),
                    message: "x".to_owned(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn no_database_is_not_a_failed_check_but_a_failed_ping_is() {
        assert!(observation_ok(&database(None)));
        assert!(
            observation_ok(&database(Some(codes::EDB03))),
            "EDB03 is a warning of the section, not a failed check"
        );
        assert!(!observation_ok(&database(Some(codes::EDB01))));
    }
}
