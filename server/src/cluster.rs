//! Several `vantaged` replicas on one PostgreSQL act as one: each replica stores what its
//! probes send (write-behind, acks after storing), follows the cluster-wide observation log
//! (NOTIFY, plus a periodic re-read that survives missed notifications) and applies every
//! other replica's observations once by per-instance sequence; it publishes its attached
//! vantages (last seen, applied sequence) and picks up the others'; a settings change on one
//! replica is reloaded by the others at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::aggregator::{Aggregator, ClusterCommand, Stopped};
use crate::store::{Notice, Store, VantageRecord};

/// How often the log and the vantages are re-read even without a notification.
const POLL: Duration = Duration::from_secs(1);
/// How often this replica publishes its attached vantages.
const PUBLISH: Duration = Duration::from_secs(2);
/// How often the log and the events are pruned to their retention.
const PRUNE: Duration = Duration::from_secs(60);

/// How much of the observation log and of the event history the database keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub observations: usize,
    pub events: usize,
}

/// Log rows read per round.
const PAGE: usize = 2000;

/// What a replica follows, and where it starts.
pub struct Follower {
    pub store: Arc<dyn Store>,
    pub registry: Arc<crate::registry::Registry>,
    pub retention: Retention,
    pub agg: Aggregator,
    /// The last observation-log id already applied.
    pub last_id: i64,
    /// The last event revision already delivered.
    pub last_revision: u64,
    pub cancel: CancellationToken,
}

/// Follow the cluster until `cancel`: notifications and the periodic re-read catch up on the
/// events and the observation log; vantages are published and pruning runs on their own
/// timers.
pub async fn follow_store(mut f: Follower) {
    let mut notices = f.store.listen();
    let mut poll = ticker(POLL);
    let mut prune = ticker(PRUNE);
    let mut publish = ticker(PUBLISH);
    loop {
        let mut reload_settings = false;
        tokio::select! {
            () = f.cancel.cancelled() => return,
            n = notices.recv() => match n {
                Ok(Notice::Observations(id)) if id <= f.last_id => continue,
                Ok(Notice::Events(rev)) if rev <= f.last_revision => continue,
                Ok(Notice::Observations(_) | Notice::Events(_)) => {}
                Ok(Notice::Settings) => reload_settings = true,
                Ok(Notice::Reconnected) | Err(RecvError::Lagged(_)) => reload_settings = true,
                Err(RecvError::Closed) => notices = f.store.listen(),
            },
            _ = poll.tick() => {
                if f.poll_vantages().await.is_err() {
                    return;
                }
            }
            _ = publish.tick() => {
                f.publish().await;
                continue;
            }
            _ = prune.tick() => {
                f.prune().await;
                continue;
            }
        }
        if f.catch_up(reload_settings).await.is_err() {
            return;
        }
    }
}

/// An interval that delays (rather than bursts) after missed ticks.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

impl Follower {
    /// Re-read the stored vantages and hand them to the aggregator, reporting whether the
    /// database answered.
    async fn poll_vantages(&self) -> Result<(), Stopped> {
        match self.store.load_vantages().await {
            Ok(vantages) => {
                if !self.agg.database_ok() {
                    self.agg
                        .send(ClusterCommand::DatabaseState { ok: true })
                        .await?;
                }
                self.agg
                    .send(ClusterCommand::RemoteVantages {
                        vantages,
                        initial: false,
                    })
                    .await
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading vantages");
                self.agg
                    .send(ClusterCommand::DatabaseState { ok: false })
                    .await
            }
        }
    }

    /// Publish this replica's attached vantages and reload the registry.
    async fn publish(&self) {
        publish_vantages(self.store.as_ref(), &self.agg).await;
        if let Err(e) = self.registry.reload().await {
            tracing::debug!(error = %e, "reloading the registry");
        }
    }

    /// Retention: the log and the event history are bounded in the database too.
    async fn prune(&self) {
        if let Err(e) = self
            .store
            .prune_observation_log(self.retention.observations)
            .await
        {
            tracing::debug!(error = %e, "pruning the observation log");
        }
        if let Err(e) = self.store.prune_events(self.retention.events).await {
            tracing::debug!(error = %e, "pruning events");
        }
    }

    /// Reload the settings if asked to, then catch up on the events (the watchers' feed),
    /// then on the observation log.
    async fn catch_up(&mut self, reload_settings: bool) -> Result<(), Stopped> {
        if reload_settings {
            self.reload_settings().await?;
        }
        self.read_events().await?;
        self.read_observations().await
    }

    /// Hand the stored dismissed sections to the aggregator (a failed read is logged).
    async fn reload_settings(&self) -> Result<(), Stopped> {
        match crate::store::load_settings(&*self.store).await {
            Ok((dismissed, until)) => self.agg.dismiss(dismissed, until).await.map(drop),
            Err(e) => {
                tracing::warn!(error = %e, "reloading settings");
                Ok(())
            }
        }
    }

    /// Deliver the stored events after `last_revision`, page by page, until caught up (or
    /// the read fails, logged).
    async fn read_events(&mut self) -> Result<(), Stopped> {
        loop {
            match self.store.events_after(self.last_revision, PAGE).await {
                Ok(rows) if rows.is_empty() => return Ok(()),
                Ok(rows) => {
                    let n = rows.len();
                    self.last_revision = rows.last().map_or(self.last_revision, |r| r.0);
                    self.agg
                        .send(ClusterCommand::StoredEvents { events: rows })
                        .await?;
                    if n < PAGE {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading events");
                    return Ok(());
                }
            }
        }
    }

    /// Apply the observation log after `last_id`, page by page, until caught up (or the read
    /// fails, logged).
    async fn read_observations(&mut self) -> Result<(), Stopped> {
        loop {
            match self.store.observations_after(self.last_id, PAGE).await {
                Ok(rows) if rows.is_empty() => return Ok(()),
                Ok(rows) => {
                    let n = rows.len();
                    self.last_id = rows.last().map_or(self.last_id, |r| r.id);
                    self.agg
                        .send(ClusterCommand::Remote { observations: rows })
                        .await?;
                    if n < PAGE {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading the observation log");
                    return Ok(());
                }
            }
        }
    }
}

/// Store the vantages attached to this replica (region, version, last seen), so other
/// replicas list them as fresh.
async fn publish_vantages(store: &dyn Store, agg: &Aggregator) {
    let Ok(list) = agg.vantages_internal().await else {
        return;
    };
    let records: Vec<VantageRecord> = list
        .into_iter()
        .filter(|v| v.connected)
        .map(|v| VantageRecord {
            name: v.name,
            region: v.region,
            version: v.version,
            labels: v.labels.into_iter().collect(),
            instance_id: v.instance_id,
            last_seen_at: vantage_proto::convert::from_timestamp(v.last_seen.as_ref()),
            // What is *stored* advances with each append (in the same transaction); what is
            // only applied here must not be announced as safe.
            applied_seq: 0,
        })
        .collect();
    if records.is_empty() {
        return;
    }
    if let Err(e) = store.upsert_vantages(records).await {
        tracing::debug!(error = %e, "publishing vantages");
    }
}
