//! `vantage-probe --once`: fetch the assignment, run it once, and describe this vantage's view
//! as JSON (the section reports computed with the shared rules).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use vantage_proto::pb;
use vantage_proto::pb::probe_service_client::ProbeServiceClient;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_proto::transport::{self, Bearer, KeepAlive};
use vantage_proto::{Section, Severity};

use crate::checks::CheckContext;
use crate::rules;
use crate::session::SessionConfig;

/// The vantage's own report.
#[derive(Debug, Serialize)]
pub struct VantageView {
    pub vantage: String,
    pub region: String,
    pub severity: Severity,
    pub sections: BTreeMap<&'static str, serde_json::Value>,
}

/// Ask the server for this vantage's assignment without registering as a vantage.
pub async fn fetch_assignment(cfg: &SessionConfig) -> anyhow::Result<pb::Assignment> {
    use anyhow::Context as _;
    // The first server that answers, in the order given.
    let mut last = None;
    let mut channel = None;
    for server in &cfg.servers {
        match transport::Target::new(server, &cfg.tls)?
            .connect(KeepAlive::Off)
            .await
            .with_context(|| format!("connecting to {server}"))
        {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let channel = match (channel, last) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(e),
        (None, None) => anyhow::bail!("no server given"),
    };
    let mut client = ProbeServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(pb::ProbeMessage {
        msg: Some(pb::probe_message::Msg::Hello(pb::Hello {
            name: cfg.name.clone(),
            region: cfg.region.clone(),
            labels: cfg.labels.clone().into_iter().collect(),
            version: crate::VERSION.to_owned(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            once: true,
            ..Default::default()
        })),
    })
    .context("queueing hello")?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cfg.token {
        Bearer::new(token)
            .context("token is not a valid header value")?
            .authorize(&mut request);
    }
    let mut down = client.attach(request).await.context("attach")?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .context("the server sent no welcome within 10s")?
        .context("attach")?;
    match first {
        Some(pb::ServerMessage {
            msg: Some(Down::Welcome(w)),
        }) => w.assignment.context("the welcome carried no assignment"),
        _ => anyhow::bail!("the server did not answer the hello with a welcome"),
    }
}

/// Run `assignment` once and compute the vantage's section reports.
pub async fn run(
    ctx: &CheckContext,
    cfg: &SessionConfig,
    assignment: &pb::Assignment,
) -> VantageView {
    let observations = crate::scheduler::run_all(ctx, &assignment.checks).await;
    let mut view = VantageView {
        vantage: cfg.name.clone(),
        region: cfg.region.clone(),
        severity: Severity::Ok,
        sections: BTreeMap::new(),
    };
    // This vantage knows its proxies only by the assignment's targets.
    let now = chrono::Utc::now();
    let ctx = rules::RulesContext {
        proxies: assignment
            .checks
            .iter()
            .filter_map(|c| match &c.target {
                Some(pb::check::Target::WorkspaceProxy(t)) => Some(
                    rules::workspace_proxy::WorkspaceProxy {
                        id: t.name.clone(),
                        name: t.name.clone(),
                        display_name: t.name.clone(),
                        url: t.url.clone(),
                        created_at: now,
                        updated_at: now,
                        ..Default::default()
                    }
                    .unpolled(),
                ),
                _ => None,
            })
            .collect(),
    };
    for section in Section::ALL {
        let of_section = observations
            .iter()
            .filter(|o| Section::from_pb(o.section) == Some(section));
        if let Some(report) = rules::section_report(section, of_section, &ctx) {
            view.severity = view.severity.max(report.severity());
            view.sections.insert(section.json_key(), report.to_json());
        }
    }
    view
}
