//! Prometheus text exposition of the report, the vantages and the server's own figures.

use std::fmt::Write as _;

use vantage_proto::pb;
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, Severity};

use crate::aggregator::Stats;

fn sev(s: Severity) -> u8 {
    match s {
        Severity::Ok => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
    }
}

/// Escape a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition: report and section severities, the vantages, the aggregator's
/// counters and the open watchers.
pub fn render(
    report: &HealthReport,
    vantages: &[pb::Vantage],
    stats: &Stats,
    watchers: usize,
) -> String {
    let mut o = String::with_capacity(4096);
    let _ = writeln!(
        o,
        "# HELP vantage_build_info The running vantaged's version (always 1)."
    );
    let _ = writeln!(o, "# TYPE vantage_build_info gauge");
    let _ = writeln!(
        o,
        "vantage_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    render_report(&mut o, report);
    render_section_severities(&mut o, report);
    render_vantages(&mut o, vantages);
    render_ingest(&mut o, stats);
    render_events(&mut o, stats, watchers);
    o
}

/// The whole report's severity and Coder's deprecated healthy flag.
fn render_report(o: &mut String, report: &HealthReport) {
    let _ = writeln!(
        o,
        "# HELP vantage_report_severity Severity of the whole report (0 ok, 1 warning, 2 error)."
    );
    let _ = writeln!(o, "# TYPE vantage_report_severity gauge");
    let _ = writeln!(o, "vantage_report_severity {}", sev(report.severity));
    let _ = writeln!(
        o,
        "# HELP vantage_report_healthy Coder's deprecated healthy flag (1 healthy)."
    );
    let _ = writeln!(o, "# TYPE vantage_report_healthy gauge");
    let _ = writeln!(o, "vantage_report_healthy {}", u8::from(report.healthy));
}

/// Severity per section: aggregated, and as each vantage sees it.
fn render_section_severities(o: &mut String, report: &HealthReport) {
    let _ = writeln!(
        o,
        "# HELP vantage_section_severity Aggregated severity per section (0 ok, 1 warning, 2 error)."
    );
    let _ = writeln!(o, "# TYPE vantage_section_severity gauge");
    for s in Section::ALL {
        let _ = writeln!(
            o,
            "vantage_section_severity{{section=\"{}\"}} {}",
            s.settings_name(),
            sev(report.base(s).severity)
        );
    }
    let _ = writeln!(
        o,
        "# HELP vantage_section_dismissed Whether a section is dismissed (1), e.g. in a maintenance window."
    );
    let _ = writeln!(o, "# TYPE vantage_section_dismissed gauge");
    for s in Section::ALL {
        let _ = writeln!(
            o,
            "vantage_section_dismissed{{section=\"{}\"}} {}",
            s.settings_name(),
            u8::from(report.base(s).dismissed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP vantage_vantage_section_severity Severity per section as one vantage sees it."
    );
    let _ = writeln!(o, "# TYPE vantage_vantage_section_severity gauge");
    for s in Section::ALL {
        for (name, b) in report.vantage_bases(s) {
            let _ = writeln!(
                o,
                "vantage_vantage_section_severity{{section=\"{}\",vantage=\"{}\"}} {}",
                s.settings_name(),
                esc(name),
                sev(b.severity)
            );
        }
    }
}

/// Per vantage: up, connected, applied and replay-dropped (all headers first, then the
/// samples vantage by vantage), then the count of connected probes.
fn render_vantages(o: &mut String, vantages: &[pb::Vantage]) {
    let _ = writeln!(
        o,
        "# HELP vantage_up Whether a vantage is fresh (1) or stale (0)."
    );
    let _ = writeln!(o, "# TYPE vantage_up gauge");
    let _ = writeln!(
        o,
        "# HELP vantage_vantage_connected Whether a vantage has a live session."
    );
    let _ = writeln!(o, "# TYPE vantage_vantage_connected gauge");
    let _ = writeln!(
        o,
        "# HELP vantage_vantage_observations_applied_total Observations applied from the vantage's current instance."
    );
    let _ = writeln!(
        o,
        "# TYPE vantage_vantage_observations_applied_total counter"
    );
    let _ = writeln!(
        o,
        "# HELP vantage_vantage_replay_dropped_total Observations the probe's full replay buffer dropped."
    );
    let _ = writeln!(o, "# TYPE vantage_vantage_replay_dropped_total counter");
    let _ = writeln!(
        o,
        "# HELP vantage_last_seen_timestamp_seconds When a vantage was last heard from (Unix time)."
    );
    let _ = writeln!(o, "# TYPE vantage_last_seen_timestamp_seconds gauge");
    for v in vantages {
        render_vantage(o, v);
    }
    let _ = writeln!(
        o,
        "# HELP vantage_connected_probes Vantages with a live session."
    );
    let _ = writeln!(o, "# TYPE vantage_connected_probes gauge");
    let _ = writeln!(
        o,
        "vantage_connected_probes {}",
        vantages.iter().filter(|v| v.connected).count()
    );
}

/// One vantage's samples of the per-vantage families.
fn render_vantage(o: &mut String, v: &pb::Vantage) {
    let l = format!("vantage=\"{}\",region=\"{}\"", esc(&v.name), esc(&v.region));
    let _ = writeln!(o, "vantage_up{{{l}}} {}", u8::from(!v.stale));
    let _ = writeln!(
        o,
        "vantage_vantage_connected{{{l}}} {}",
        u8::from(v.connected)
    );
    let _ = writeln!(
        o,
        "vantage_vantage_observations_applied_total{{{l}}} {}",
        v.applied
    );
    let _ = writeln!(
        o,
        "vantage_vantage_replay_dropped_total{{{l}}} {}",
        v.replay_dropped
    );
    if let Some(t) = &v.last_seen {
        let secs = t.seconds as f64 + f64::from(t.nanos) / 1e9;
        let _ = writeln!(o, "vantage_last_seen_timestamp_seconds{{{l}}} {secs}");
    }
}

/// Where a target's labels come from: each vantage's region, and the DERP regions' codes
/// and nodes' host names (from the report's DERP map objects).
pub struct TargetContext<'a> {
    pub vantages: &'a [pb::Vantage],
    pub report: &'a HealthReport,
}

impl TargetContext<'_> {
    /// `region` of the vantage, then for a DERP target (`derp/<region id>/<node>`)
    /// `region_id`, `region_code`, `node` and `host`.
    fn labels(&self, t: &crate::aggregator::TargetFigure) -> String {
        let region = self
            .vantages
            .iter()
            .find(|v| v.name == t.vantage)
            .map_or("", |v| v.region.as_str());
        let mut l = format!(",region=\"{}\"", esc(region));
        let mut parts = t.target.splitn(3, '/');
        if let (Some("derp"), Some(id), Some(node)) = (parts.next(), parts.next(), parts.next()) {
            let r = self.report.derp.report.regions.get(id);
            let code = r
                .and_then(|r| r.pointer("/region/RegionCode"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let host = r
                .and_then(|r| r.pointer("/region/Nodes"))
                .and_then(serde_json::Value::as_array)
                .and_then(|nodes| nodes.iter().find(|n| n["Name"] == node))
                .and_then(|n| n["HostName"].as_str())
                .unwrap_or("");
            l.push_str(&format!(
                ",region_id=\"{}\",region_code=\"{}\",node=\"{}\",host=\"{}\"",
                esc(id),
                esc(code),
                esc(node),
                esc(host)
            ));
        }
        l
    }
}

/// The aggregator's ingest counters: observations applied and duplicates dropped.
fn render_ingest(o: &mut String, stats: &Stats) {
    let _ = writeln!(
        o,
        "# HELP vantage_observations_applied_total Observations applied by the aggregator."
    );
    let _ = writeln!(o, "# TYPE vantage_observations_applied_total counter");
    let _ = writeln!(o, "vantage_observations_applied_total {}", stats.applied);
    let _ = writeln!(
        o,
        "# HELP vantage_observations_duplicate_total Resent observations dropped as already applied."
    );
    let _ = writeln!(o, "# TYPE vantage_observations_duplicate_total counter");
    let _ = writeln!(
        o,
        "vantage_observations_duplicate_total {}",
        stats.duplicates
    );
}

/// Events emitted, open watchers, events dropped before storage and the revision.
fn render_events(o: &mut String, stats: &Stats, watchers: usize) {
    let _ = writeln!(o, "# HELP vantage_events_total Watch events emitted.");
    let _ = writeln!(o, "# TYPE vantage_events_total counter");
    let _ = writeln!(o, "vantage_events_total {}", stats.events);
    let _ = writeln!(o, "# HELP vantage_watchers Open Watch subscriptions.");
    let _ = writeln!(o, "# TYPE vantage_watchers gauge");
    let _ = writeln!(o, "vantage_watchers {watchers}");
    let _ = writeln!(
        o,
        "# HELP vantage_events_dropped_total Events that could not be queued for storage."
    );
    let _ = writeln!(o, "# TYPE vantage_events_dropped_total counter");
    let _ = writeln!(o, "vantage_events_dropped_total {}", stats.events_dropped);
    let _ = writeln!(o, "# HELP vantage_revision Current aggregator revision.");
    let _ = writeln!(o, "# TYPE vantage_revision gauge");
    let _ = writeln!(o, "vantage_revision {}", stats.revision);
}

/// The write-behind queue's figures (with a database).
pub fn render_writer(o: &mut String, w: &crate::store::WriteBehind) {
    let _ = writeln!(
        o,
        "# HELP vantage_store_writes_queued Observations waiting to be stored."
    );
    let _ = writeln!(o, "# TYPE vantage_store_writes_queued gauge");
    let _ = writeln!(o, "vantage_store_writes_queued {}", w.queued());
    let _ = writeln!(
        o,
        "# HELP vantage_store_writes_dropped_total Observations the full queue dropped before they were stored."
    );
    let _ = writeln!(o, "# TYPE vantage_store_writes_dropped_total counter");
    let _ = writeln!(o, "vantage_store_writes_dropped_total {}", w.dropped());
    let _ = writeln!(
        o,
        "# HELP vantage_store_write_failures_total Failed attempts to store a batch (retried)."
    );
    let _ = writeln!(o, "# TYPE vantage_store_write_failures_total counter");
    let _ = writeln!(
        o,
        "vantage_store_write_failures_total {}",
        w.failed_writes()
    );
}

/// Per vantage and target: the latest check's duration and outcome.
pub fn render_targets(
    o: &mut String,
    targets: &[crate::aggregator::TargetFigure],
    ctx: &TargetContext<'_>,
) {
    let _ = writeln!(
        o,
        "# HELP vantage_check_duration_seconds How long the latest check of a target took, per vantage."
    );
    let _ = writeln!(o, "# TYPE vantage_check_duration_seconds gauge");
    for t in targets {
        let _ = writeln!(
            o,
            "vantage_check_duration_seconds{{vantage=\"{}\",section=\"{}\",target=\"{}\"{}}} {}",
            esc(&t.vantage),
            t.section.settings_name(),
            esc(&t.target),
            ctx.labels(t),
            t.seconds
        );
    }
    let _ = writeln!(
        o,
        "# HELP vantage_check_success Whether the latest check of a target succeeded (1) or not (0), per vantage."
    );
    let _ = writeln!(o, "# TYPE vantage_check_success gauge");
    for t in targets {
        let _ = writeln!(
            o,
            "vantage_check_success{{vantage=\"{}\",section=\"{}\",target=\"{}\"{}}} {}",
            esc(&t.vantage),
            t.section.settings_name(),
            esc(&t.target),
            ctx.labels(t),
            u8::from(t.ok)
        );
    }
}

/// The Alertmanager sender's figures: alerts firing, and per Alertmanager the alerts sent,
/// failed (per failed attempt) and dropped (queue full, or every retry failed).
pub fn render_alerts(o: &mut String, a: &crate::alerts::AlertStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        o,
        "# HELP vantage_alerts_firing Alerts vantage is sending as firing."
    );
    let _ = writeln!(o, "# TYPE vantage_alerts_firing gauge");
    let _ = writeln!(o, "vantage_alerts_firing {}", a.firing.load(Relaxed));
    for (name, help) in [
        ("sent", "Alerts an Alertmanager accepted."),
        (
            "failed",
            "Alerts in requests an Alertmanager refused or did not answer (retried).",
        ),
        (
            "dropped",
            "Alerts given up: the queue was full or every retry failed.",
        ),
    ] {
        let _ = writeln!(o, "# HELP vantage_alerts_{name}_total {help}");
        let _ = writeln!(o, "# TYPE vantage_alerts_{name}_total counter");
        for (url, c) in a.targets.iter() {
            let v = match name {
                "sent" => c.sent.load(Relaxed),
                "failed" => c.failed.load(Relaxed),
                _ => c.dropped.load(Relaxed),
            };
            let _ = writeln!(
                o,
                "vantage_alerts_{name}_total{{alertmanager=\"{}\"}} {v}",
                esc(url)
            );
        }
    }
}
