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

use crate::aggregator::{Aggregator, ClusterCommand};
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

pub async fn follow_store(f: Follower) {
    let Follower {
        store,
        registry,
        retention,
        agg,
        mut last_id,
        mut last_revision,
        cancel,
    } = f;
    let mut notices = store.listen();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publish = tokio::time::interval(PUBLISH);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut reload_settings = false;
        tokio::select! {
            () = cancel.cancelled() => return,
            n = notices.recv() => match n {
                Ok(Notice::Observations(id)) if id <= last_id => continue,
                Ok(Notice::Events(rev)) if rev <= last_revision => continue,
                Ok(Notice::Observations(_) | Notice::Events(_)) => {}
                Ok(Notice::Settings) => reload_settings = true,
                Ok(Notice::Reconnected) | Err(RecvError::Lagged(_)) => reload_settings = true,
                Err(RecvError::Closed) => notices = store.listen(),
            },
            _ = poll.tick() => {
                match store.load_vantages().await {
                    Ok(vantages) => {
                        if !agg.database_ok() && agg.send(ClusterCommand::DatabaseState { ok: true }).await.is_err() {
                            return;
                        }
                        if agg.send(ClusterCommand::RemoteVantages { vantages }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reading vantages");
                        if agg.send(ClusterCommand::DatabaseState { ok: false }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ = publish.tick() => {
                publish_vantages(store.as_ref(), &agg).await;
                if let Err(e) = registry.reload().await {
                    tracing::debug!(error = %e, "reloading the registry");
                }
                continue;
            }
            _ = prune.tick() => {
                // Retention: the log and the event history are bounded in the database too.
                if let Err(e) = store.prune_observation_log(retention.observations).await {
                    tracing::debug!(error = %e, "pruning the observation log");
                }
                if let Err(e) = store.prune_events(retention.events).await {
                    tracing::debug!(error = %e, "pruning events");
                }
                continue;
            }
        }
        if reload_settings {
            match store.load_dismissed().await {
                Ok(dismissed) => {
                    if agg.settings(Some(dismissed)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reloading settings"),
            }
        }
        // Catch up on the events (the watchers' feed), then on the observation log.
        loop {
            match store.events_after(last_revision, PAGE).await {
                Ok(rows) if rows.is_empty() => break,
                Ok(rows) => {
                    let n = rows.len();
                    last_revision = rows.last().map_or(last_revision, |r| r.0);
                    if agg
                        .send(ClusterCommand::StoredEvents { events: rows })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if n < PAGE {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading events");
                    break;
                }
            }
        }
        loop {
            match store.observations_after(last_id, PAGE).await {
                Ok(rows) if rows.is_empty() => break,
                Ok(rows) => {
                    let n = rows.len();
                    last_id = rows.last().map_or(last_id, |r| r.id);
                    if agg
                        .send(ClusterCommand::Remote { observations: rows })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if n < PAGE {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading the observation log");
                    break;
                }
            }
        }
    }
}

/// Store the vantages attached to this replica (region, version, last seen), so other
/// replicas list them as fresh.
async fn publish_vantages(store: &dyn Store, agg: &Aggregator) {
    let Ok(list) = agg.vantages().await else {
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
