//! `/metrics`: the report, the vantages, the targets and the server's own figures, built into a
//! `prometheus-client` registry per scrape and encoded in the Prometheus text format (clean
//! under `promtool check metrics`; counters end in `_total`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vantage_proto::pb;
use vantage_proto::report::HealthReport;
use vantage_proto::{Section, Severity};

use crate::aggregator::{Stats, TargetFigure};

/// A label set, in the order it is written.
type Labels = Vec<(&'static str, String)>;
/// A family of integer gauges (severities, 0/1 flags, counts).
type Gauges = Family<Labels, Gauge>;
/// A family of float gauges (durations, timestamps).
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;
/// A family of counters.
type Counters = Family<Labels, Counter<u64>>;

/// `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

fn sev(s: Severity) -> i64 {
    match s {
        Severity::Ok => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub report: &'a HealthReport,
    pub vantages: &'a [pb::Vantage],
    pub stats: &'a Stats,
    pub watchers: usize,
    pub targets: &'a [TargetFigure],
    pub writer: Option<&'a crate::store::WriteBehind>,
    pub alerts: Option<&'a crate::alerts::AlertStats>,
    /// The security layer's refusals, when it runs.
    pub refusals: Option<&'a crate::security::Counters>,
}

/// Registers families on one registry; each name is given without its `_total`.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn gauges(&mut self, name: &str, help: &str) -> Gauges {
        let f = Gauges::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn float_gauges(&mut self, name: &str, help: &str) -> FloatGauges {
        let f = FloatGauges::default();
        self.registry.register(name, help, f.clone());
        f
    }

    fn counters(&mut self, name: &str, help: &str) -> Counters {
        let f = Counters::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// One unlabelled gauge.
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        self.gauges(name, help).get_or_create(&Vec::new()).set(v);
    }

    /// One unlabelled counter.
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.counters(name, help)
            .get_or_create(&Vec::new())
            .inc_by(v);
    }
}

/// The whole exposition.
pub fn render(s: &Scrape<'_>) -> String {
    let mut b = Builder {
        registry: Registry::default(),
    };
    b.gauges(
        "vantage_build_info",
        "The running vantaged's version (always 1)",
    )
    .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
    .set(1);
    render_report(&mut b, s.report);
    render_vantages(&mut b, s.vantages);
    render_targets(&mut b, s);
    render_aggregator(&mut b, s.stats, s.watchers);
    render_guard(&mut b, s.stats);
    if let Some(c) = s.refusals {
        render_refusals(&mut b, c);
    }
    if let Some(w) = s.writer {
        render_writer(&mut b, w);
    }
    if let Some(a) = s.alerts {
        render_alerts(&mut b, a);
    }
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &b.registry);
    out
}

/// The report's and each section's severity, dismissal, and each vantage's view.
fn render_report(b: &mut Builder, report: &HealthReport) {
    b.gauge(
        "vantage_report_severity",
        "Severity of the whole report (0 ok, 1 warning, 2 error)",
        sev(report.severity),
    );
    b.gauge(
        "vantage_report_healthy",
        "Coder's deprecated healthy flag (1 healthy)",
        flag(report.healthy),
    );
    let severity = b.gauges(
        "vantage_section_severity",
        "Aggregated severity per section (0 ok, 1 warning, 2 error)",
    );
    let dismissed = b.gauges(
        "vantage_section_dismissed",
        "Whether a section is dismissed (1), e.g. in a maintenance window",
    );
    let per_vantage = b.gauges(
        "vantage_section_severity_by_vantage",
        "Severity per section as one vantage sees it (0 ok, 1 warning, 2 error)",
    );
    for s in Section::ALL {
        let section = vec![("section", s.settings_name().to_owned())];
        let base = report.base(s);
        severity.get_or_create(&section).set(sev(base.severity));
        dismissed.get_or_create(&section).set(flag(base.dismissed));
        for (name, vb) in report.vantage_bases(s) {
            per_vantage
                .get_or_create(&vec![
                    ("section", s.settings_name().to_owned()),
                    ("vantage", name.to_owned()),
                ])
                .set(sev(vb.severity));
        }
    }
}

/// Per vantage: up, connected, last seen, applied and replay-dropped; connected probes.
fn render_vantages(b: &mut Builder, vantages: &[pb::Vantage]) {
    let up = b.gauges("vantage_up", "Whether a vantage is fresh (1) or stale (0)");
    let connected = b.gauges(
        "vantage_probe_connected",
        "Whether a vantage has a live session",
    );
    let last_seen = b.float_gauges(
        "vantage_last_seen_timestamp_seconds",
        "When a vantage was last heard from (Unix time)",
    );
    let applied = b.counters(
        "vantage_probe_observations_applied",
        "Observations applied from the vantage's current instance",
    );
    let replay = b.counters(
        "vantage_probe_replay_dropped",
        "Observations the probe's full replay buffer dropped",
    );
    for v in vantages {
        let l = vec![("vantage", v.name.clone()), ("region", v.region.clone())];
        up.get_or_create(&l).set(flag(!v.stale));
        connected.get_or_create(&l).set(flag(v.connected));
        if let Some(t) = &v.last_seen {
            last_seen
                .get_or_create(&l)
                .set(t.seconds as f64 + f64::from(t.nanos) / 1e9);
        }
        applied.get_or_create(&l).inc_by(v.applied);
        replay.get_or_create(&l).inc_by(v.replay_dropped);
    }
    b.gauge(
        "vantage_connected_probes",
        "Vantages with a live session",
        count(vantages.iter().filter(|v| v.connected).count()),
    );
}

/// A target's labels: `vantage`, `section`, `target`, the vantage's `region`, and for a DERP
/// node (`derp/<region id>/<node>`) `region_id`, `region_code`, `node` and `host` (from the
/// report's DERP map objects).
fn target_labels(s: &Scrape<'_>, t: &TargetFigure) -> Labels {
    let region = s
        .vantages
        .iter()
        .find(|v| v.name == t.vantage)
        .map_or("", |v| v.region.as_str());
    let mut l = vec![
        ("vantage", t.vantage.clone()),
        ("section", t.section.settings_name().to_owned()),
        ("target", t.target.clone()),
        ("region", region.to_owned()),
    ];
    let mut parts = t.target.splitn(3, '/');
    if let (Some("derp"), Some(id), Some(node)) = (parts.next(), parts.next(), parts.next()) {
        let region = s
            .report
            .derp
            .report
            .regions
            .get(id)
            .and_then(|r| r.region.get());
        let code = region.map_or("", |r| r.region_code.as_str()).to_owned();
        let host = region
            .and_then(|r| r.node(node))
            .map_or("", |n| n.host_name.as_str())
            .to_owned();
        l.extend([
            ("region_id", id.to_owned()),
            ("region_code", code),
            ("node", node.to_owned()),
            ("host", host),
        ]);
    }
    l
}

/// Per vantage and target: the latest check's duration and outcome.
fn render_targets(b: &mut Builder, s: &Scrape<'_>) {
    let duration = b.float_gauges(
        "vantage_check_duration_seconds",
        "How long the latest check of a target took, per vantage",
    );
    let success = b.gauges(
        "vantage_check_success",
        "Whether the latest check of a target succeeded (1) or not (0), per vantage",
    );
    for t in s.targets {
        let l = target_labels(s, t);
        duration.get_or_create(&l).set(t.seconds);
        success.get_or_create(&l).set(flag(t.ok));
    }
}

/// The aggregator's counters, the open watchers and the revision.
fn render_aggregator(b: &mut Builder, stats: &Stats, watchers: usize) {
    b.counter(
        "vantage_observations_applied",
        "Observations applied by the aggregator",
        stats.applied,
    );
    b.counter(
        "vantage_observations_duplicate",
        "Resent observations dropped as already applied",
        stats.duplicates,
    );
    b.counter("vantage_events", "Watch events emitted", stats.events);
    b.gauge(
        "vantage_watchers",
        "Open Watch subscriptions",
        count(watchers),
    );
    b.counter(
        "vantage_events_dropped",
        "Events that could not be queued for storage",
        stats.events_dropped,
    );
    b.gauge(
        "vantage_revision",
        "Current aggregator revision",
        count(stats.revision),
    );
}

/// Refused attaches, rejected observations by reason, coalesced forced runs, and batches
/// refused because the write queue was full.
fn render_guard(b: &mut Builder, stats: &Stats) {
    let g = &stats.guard;
    let refused = b.counters(
        "vantage_attach_refused",
        "Probe attaches refused, by reason (held: a live session holds the name; max_vantages: the cap is reached; last_acked_seq: the hello claims more than was applied for its instance, or past the sequence window)",
    );
    refused
        .get_or_create(&vec![("reason", "held".to_owned())])
        .inc_by(g.refused_held);
    refused
        .get_or_create(&vec![("reason", "max_vantages".to_owned())])
        .inc_by(g.refused_full);
    refused
        .get_or_create(&vec![("reason", "last_acked_seq".to_owned())])
        .inc_by(g.refused_seq);
    let rejected = b.counters(
        "vantage_observations_rejected",
        "Observations not applied, by reason",
    );
    for (reason, n) in &g.rejected {
        rejected
            .get_or_create(&vec![("reason", (*reason).to_owned())])
            .inc_by(*n);
    }
    b.counter(
        "vantage_force_coalesced",
        "Forced runs a vantage was spared because it ran one moments before",
        g.force_coalesced,
    );
    b.counter(
        "vantage_ingest_backpressure",
        "Observation batches refused, not acknowledged, because the write queue was full",
        stats.backpressure,
    );
}

/// Refusals of the security layer, by reason (every reason, zeros included).
fn render_refusals(b: &mut Builder, counters: &crate::security::Counters) {
    use crate::security::Refusal;
    let family = b.counters(
        "vantage_auth_refusals",
        "Requests and connections refused by the security layer, by reason",
    );
    for r in Refusal::ALL {
        family
            .get_or_create(&vec![("reason", r.label().to_owned())])
            .inc_by(counters.get(r));
    }
}

/// The write-behind queue's figures (with a database).
fn render_writer(b: &mut Builder, w: &crate::store::WriteBehind) {
    b.gauge(
        "vantage_store_writes_queued",
        "Observations waiting to be stored",
        count(w.queued()),
    );
    b.counter(
        "vantage_store_writes_dropped",
        "Observations the full queue dropped before they were stored",
        w.dropped(),
    );
    b.counter(
        "vantage_store_write_failures",
        "Failed attempts to store a batch (retried)",
        w.failed_writes(),
    );
}

/// The Alertmanager sender's figures: alerts firing, and per Alertmanager the alerts sent,
/// failed (per failed attempt) and dropped (queue full, or every retry failed).
fn render_alerts(b: &mut Builder, a: &crate::alerts::AlertStats) {
    b.gauge(
        "vantage_alerts_firing",
        "Alerts vantage is sending as firing",
        count(a.firing.load(Relaxed)),
    );
    let sent = b.counters("vantage_alerts_sent", "Alerts an Alertmanager accepted");
    let failed = b.counters(
        "vantage_alerts_failed",
        "Alerts in requests an Alertmanager refused or did not answer (retried)",
    );
    let dropped = b.counters(
        "vantage_alerts_dropped",
        "Alerts given up: the queue was full or every retry failed",
    );
    for (url, c) in a.targets.iter() {
        let l = vec![("alertmanager", url.clone())];
        sent.get_or_create(&l).inc_by(c.sent.load(Relaxed));
        failed.get_or_create(&l).inc_by(c.failed.load(Relaxed));
        dropped.get_or_create(&l).inc_by(c.dropped.load(Relaxed));
    }
}
