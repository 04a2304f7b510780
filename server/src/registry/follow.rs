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

/// The least time between two rebuilds. Each rebuild copies every daemon and proxy and makes the
/// aggregator recompute both sections, so a burst of registrations (thousands of daemons
/// starting at once) costs one rebuild per gap instead of one per change, and no backlog of
/// copies builds up behind it.
pub const REBUILD_GAP: Duration = Duration::from_millis(500);

/// Keep assignments, the WorkspaceProxy rules' inputs and the ProvisionerDaemons section in
/// step with the registry: on a change (at most once per [`REBUILD_GAP`]), and every few
/// seconds (daemons go stale by time).
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
    let mut last_inputs = None;
    // Without Coder the importer's sender is gone at once: stop listening to it, go on.
    let mut coder_live = true;
    let mut last_rebuild: Option<tokio::time::Instant> = None;
    loop {
        if let Some(last) = last_rebuild {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(last + REBUILD_GAP) => {}
            }
        }
        last_rebuild = Some(tokio::time::Instant::now());
        let records = registry.proxies(None).await;
        // Assignments change only when what they read changes: a proxy's name, URL or region.
        let same_targets = {
            let sent = proxies.borrow();
            sent.len() == records.len()
                && sent
                    .iter()
                    .zip(&records)
                    .all(|(a, b)| a.name == b.name && a.url == b.url && a.region == b.region)
        };
        if !same_targets {
            proxies.send_replace(Arc::new(records));
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
