//! Keeps the rest of the server in step with the registry: the probes' proxy targets, the
//! WorkspaceProxy rules' inputs and the ProvisionerDaemons section (judged against the attached
//! Coder deployment's version and with its daemons, when there is one).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vantage_probe::rules::{SectionReport, provisioners};

use super::{Registry, WorkspaceProxy};
use crate::aggregator::{AdminCommand, Aggregator};
use crate::ingest::coder::CoderDaemons;

/// What the ProvisionerDaemons section requires.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionerPolicy {
    pub required: bool,
    pub stale_after: Duration,
}

/// Keep assignments, the WorkspaceProxy rules' inputs and the ProvisionerDaemons section in
/// step with the registry: on every change, and every few seconds (daemons go stale by time).
pub async fn follow(
    registry: Arc<Registry>,
    agg: Aggregator,
    proxies: tokio::sync::watch::Sender<Arc<Vec<WorkspaceProxy>>>,
    policy: ProvisionerPolicy,
    mut coder: tokio::sync::watch::Receiver<Option<Arc<CoderDaemons>>>,
    cancel: CancellationToken,
) {
    let mut changes = registry.subscribe();
    let tick_every =
        (policy.stale_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Assignments change only when what they read changes: a proxy's name, URL or region.
    let mut last_targets: Option<Vec<(String, String, String)>> = None;
    let mut last_inputs = None;
    // Without Coder the importer's sender is gone at once: stop listening to it, go on.
    let mut coder_live = true;
    loop {
        let records = registry.proxies(None).await;
        let targets: Vec<(String, String, String)> = records
            .iter()
            .map(|p| (p.name.clone(), p.url.clone(), p.region.clone()))
            .collect();
        if last_targets.as_ref() != Some(&targets) {
            proxies.send_replace(Arc::new(records));
            last_targets = Some(targets);
        }
        let inputs = registry.proxy_inputs().await;
        if last_inputs.as_ref() != Some(&inputs) {
            if agg
                .send(AdminCommand::Proxies {
                    proxies: inputs.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
            last_inputs = Some(inputs);
        }
        // Heartbeats still count beside Coder's own daemons.
        let mut daemons = registry.daemons().await;
        let attached = coder.borrow_and_update().clone();
        let version = match &attached {
            Some(c) => {
                daemons.extend(c.daemons.iter().cloned());
                c.version.as_str()
            }
            None => vantage_probe::VERSION,
        };
        let section = provisioners::section(
            &daemons,
            registry.now(),
            version,
            provisioners::CURRENT_API_MAJOR,
            policy.required,
            policy.stale_after,
        );
        let report = SectionReport::ProvisionerDaemons(section);
        if agg
            .send(AdminCommand::ServerSection { report })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            r = coder.changed(), if coder_live => coder_live = r.is_ok(),
            _ = tick.tick() => {}
        }
    }
}
