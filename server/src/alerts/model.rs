//! Which alerts the report calls for: a pure function of the report, the server's base URL and
//! the deployment's name. Dismissed sections (a timed dismissal is a maintenance window) fire
//! nothing, nor do the DERP region and proxy alerts under them.

use std::collections::BTreeMap;

use vantage_proto::report::{Base, DerpRegionReport, HealthReport, Message, VantageState};
use vantage_proto::{Section, Severity, codes};

/// One alert as vantage wants it to be: its identity (labels) and what describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub generator_url: String,
}

impl Alert {
    fn new(name: &str, deployment: &str, severity: Severity) -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_owned(), name.to_owned());
        labels.insert("deployment".to_owned(), deployment.to_owned());
        labels.insert("severity".to_owned(), severity.as_str().to_owned());
        Alert {
            labels,
            annotations: BTreeMap::new(),
            generator_url: String::new(),
        }
    }

    fn label(mut self, name: &str, value: impl Into<String>) -> Alert {
        self.labels.insert(name.to_owned(), value.into());
        self
    }

    fn annotate(mut self, name: &str, value: impl Into<String>) -> Alert {
        self.annotations.insert(name.to_owned(), value.into());
        self
    }

    /// `summary`, `description` (the messages), `runbook_url` (the first code's entry on
    /// `/health/codes`, whose element ids are the lower-case codes; `fallback` when no message
    /// carries a code) and the link back to the section.
    fn describe(
        self,
        base: &str,
        section: Section,
        summary: String,
        msgs: &[Message],
        fallback: &str,
    ) -> Alert {
        let code = msgs
            .iter()
            .map(|m| m.code.as_str())
            .find(|c| !c.is_empty())
            .unwrap_or(fallback);
        let description: Vec<String> = msgs.iter().map(ToString::to_string).collect();
        let mut a = self
            .annotate("summary", summary)
            .annotate("description", description.join("\n"))
            .annotate("runbook_url", runbook_url(base, code));
        a.generator_url = format!("{base}/health#{}", section.json_key());
        a
    }
}

/// `<base>/health/codes#<lower-case code>`: the code's element on the codes page.
pub fn runbook_url(base: &str, code: &str) -> String {
    format!("{base}{}", codes::docs_path(code))
}

/// The code an alert of `section` links to when none of its messages carries one: the
/// section's per-item code (a DERP region's nodes that fail, a proxy that does), otherwise
/// EUNKNOWN (a section is never at warning or error without a code unless something
/// unexpected happened).
fn fallback_code(section: Section) -> &'static str {
    match section {
        Section::Derp => codes::EDERP04,
        Section::WorkspaceProxy => codes::EWP04,
        _ => codes::EUNKNOWN,
    }
}

/// Where the links point and what the `deployment` label says.
#[derive(Debug, Clone)]
pub struct Context {
    /// The server's base URL (it serves `/health`), without a trailing slash.
    pub base: String,
    pub deployment: String,
}

/// Every alert the report calls for, in a stable order. `held` is each section's severity
/// after hysteresis; a section missing there counts at the report's severity.
pub fn desired(report: &HealthReport, held: &[(Section, Severity)], ctx: &Context) -> Vec<Alert> {
    let mut out = Vec::new();
    for s in Section::ALL {
        let mut b = report.base(s).clone();
        if let Some((_, h)) = held.iter().find(|(hs, _)| *hs == s) {
            b.severity = *h;
        }
        if b.dismissed || b.severity == Severity::Ok {
            continue;
        }
        out.push(section_alert(s, &b, report, ctx));
    }
    out.extend(stale_alerts(report, ctx));
    if !report.derp.report.base.dismissed {
        out.extend(derp_alerts(report, ctx));
    }
    if !report.workspace_proxy.report.base.dismissed {
        out.extend(proxy_alerts(report, ctx));
    }
    out
}

/// The messages of a section: its warnings, and its error as an uncoded message if it has one.
fn messages(b: &Base) -> Vec<Message> {
    let mut msgs = b.warnings.clone();
    if let Some(e) = &b.error {
        let code = e.split_once(':').map(|(c, _)| c.trim()).unwrap_or("");
        // `<CODE>: <text>` only when CODE is a known code (a proxy named "Europe" is not).
        let known = codes::lookup(code).is_some();
        if known && !msgs.iter().any(|m| m.code == code) {
            let text = e.split_once(':').map_or(e.as_str(), |(_, t)| t.trim());
            msgs.insert(0, Message::new(code, text));
        } else if !msgs.iter().any(|m| e.contains(&m.message)) {
            msgs.insert(0, Message::new("", e.clone()));
        }
    }
    msgs
}

fn section_alert(s: Section, b: &Base, report: &HealthReport, ctx: &Context) -> Alert {
    let mut msgs = messages(b);
    if s == Section::Derp {
        for (_, id, code, region_msgs) in report
            .derp
            .report
            .regions
            .values()
            .filter_map(region_facts)
            .filter(|(sev, ..)| *sev != Severity::Ok)
        {
            msgs.extend(region_msgs.into_iter().map(|m| Message {
                message: format!("region {id} ({code}): {}", m.message),
                ..m
            }));
        }
    }
    let mut codes: Vec<&str> = msgs
        .iter()
        .map(|m| m.code.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    codes.sort_unstable();
    codes.dedup();
    let fallback = fallback_code(s);
    if codes.is_empty() {
        codes.push(fallback);
    }
    Alert::new("VantageSectionUnhealthy", &ctx.deployment, b.severity)
        .label("section", s.settings_name())
        .label("codes", codes.join(","))
        .describe(
            &ctx.base,
            s,
            format!("{} is at {}", s.title(), b.severity.as_str()),
            &msgs,
            fallback,
        )
}

fn stale_alerts(report: &HealthReport, ctx: &Context) -> Vec<Alert> {
    let msgs = report.vantages.warnings.clone();
    report
        .vantages
        .items
        .iter()
        .filter(|v| v.state == VantageState::Stale)
        .map(|v| {
            let since = v
                .stale_since
                .map(|t| format!(" since {}", t.to_rfc3339()))
                .unwrap_or_default();
            let mut a = Alert::new("VantageVantageStale", &ctx.deployment, Severity::Warning)
                .label("vantage", v.name.clone())
                .label("region", v.region.clone())
                .annotate("summary", format!("Vantage {} is stale{since}", v.name))
                .annotate("runbook_url", runbook_url(&ctx.base, codes::EVNT01));
            let own: Vec<String> = msgs
                .iter()
                .filter(|m| m.message.contains(&v.name))
                .map(ToString::to_string)
                .collect();
            a = a.annotate("description", own.join("\n"));
            a.generator_url = format!("{}/health#vantages", ctx.base);
            a
        })
        .collect()
}

/// A DERP region report's severity, id, code and messages (Coder's JSON).
fn region_facts(v: &DerpRegionReport) -> Option<(Severity, i64, String, Vec<Message>)> {
    let severity = v.severity;
    let region = v.region.get()?;
    let id = region.region_id;
    let code = region.region_code.clone();
    let base = Base {
        severity,
        warnings: v.warnings.clone(),
        error: v.error_text().map(str::to_owned),
        ..Base::default()
    };
    let mut msgs = messages(&base);
    // The nodes' own errors say why (a node that cannot connect has no code).
    for n in v.nodes() {
        if let Some(e) = n.error.get() {
            let name = n.node.get().map_or("?", |n| n.name.as_str());
            msgs.push(Message::new("", format!("node {name}: {e}")));
        }
    }
    // A region that fails without a coded message is EDERP04's (alerts only).
    if severity != Severity::Ok && msgs.iter().all(|m| m.code.is_empty()) {
        for m in &mut msgs {
            m.code = codes::EDERP04.to_owned();
        }
        if msgs.is_empty() {
            msgs.push(Message::new(
                codes::EDERP04,
                format!("region is at {}", severity.as_str()),
            ));
        }
    }
    Some((severity, id, code, msgs))
}

fn derp_alerts(report: &HealthReport, ctx: &Context) -> Vec<Alert> {
    let mut out = Vec::new();
    for (key, region) in &report.derp.report.regions {
        let Some((severity, id, code, msgs)) = region_facts(region) else {
            continue;
        };
        if severity == Severity::Ok {
            continue;
        }
        let seen_by: Vec<&str> = report
            .derp
            .vantage_reports
            .iter()
            .filter(|(_, r)| {
                r.regions
                    .get(key)
                    .and_then(region_facts)
                    .is_some_and(|(s, ..)| s != Severity::Ok)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        out.push(
            Alert::new("VantageDerpRegionUnhealthy", &ctx.deployment, severity)
                .label("region_id", id.to_string())
                .label("region_code", code.clone())
                .annotate("vantages", seen_by.join(","))
                .describe(
                    &ctx.base,
                    Section::Derp,
                    format!(
                        "DERP region {id} ({code}) is at {}, seen by {}",
                        severity.as_str(),
                        seen_by.join(", ")
                    ),
                    &msgs,
                    codes::EDERP04,
                ),
        );
    }
    out
}

fn proxy_alerts(report: &HealthReport, ctx: &Context) -> Vec<Alert> {
    let mut out = Vec::new();
    for p in &report.workspace_proxy.report.workspace_proxies.regions {
        let r = &p.status.report;
        let severity = if !p.healthy || !r.errors.is_empty() {
            Severity::Error
        } else if !r.warnings.is_empty() {
            Severity::Warning
        } else {
            continue;
        };
        // Each of the proxy's own errors and warnings is an EWP04 message of the section; a
        // proxy that is unhealthy without one says its poll status.
        let mut msgs: Vec<Message> = r
            .errors
            .iter()
            .chain(&r.warnings)
            .map(|m| Message::new(codes::EWP04, format!("{}: {m}", p.name)))
            .collect();
        if msgs.is_empty() {
            msgs.push(Message::new(
                codes::EWP04,
                format!("{}: status {}", p.name, p.status.status),
            ));
        }
        out.push(
            Alert::new("VantageWorkspaceProxyUnhealthy", &ctx.deployment, severity)
                .label("proxy", p.name.clone())
                .describe(
                    &ctx.base,
                    Section::WorkspaceProxy,
                    format!("Workspace proxy {} is at {}", p.name, severity.as_str()),
                    &msgs,
                    codes::EWP04,
                ),
        );
    }
    out
}

#[cfg(test)]
#[path = "model_tests.rs"]
pub(crate) mod tests;
