//! The durable side of the aggregator, when a database is configured: acknowledgements that
//! wait for their observations to be stored, and the events this replica caused, stored in
//! batches (their revisions come from the database).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use vantage_proto::backoff::Backoff;

use super::command::{ClusterCommand, Command, SessionTx};
use super::try_ack;
use crate::store::{NewEvent, Receipt, Store, WriteBehind};

/// Acks waiting for storage; beyond this a later cumulative ack covers the skipped ones.
const ACK_QUEUE: usize = 4096;
/// Events waiting to be stored.
const EVENT_QUEUE: usize = 16_384;
/// Most events one transaction stores.
const EVENT_BATCH: usize = 500;

/// What a durable aggregator needs: the observation writer and the store (for events).
pub struct DurableParts {
    pub writer: WriteBehind,
    pub store: Arc<dyn Store>,
}

/// An ack that waits for its observations to be stored: the session, the sequence it
/// covers, the write's receipt, and the vantage's stored mark to raise.
pub(super) type PendingAck = (SessionTx, u64, Receipt, Arc<AtomicU64>);

pub(super) struct Durable {
    /// Whether the database is answering. Written only by the aggregator (on
    /// [`ClusterCommand::DatabaseState`], and set when events come from the database); while
    /// it is not, events are delivered from memory under a provisional epoch.
    pub(super) db_ok: Arc<AtomicBool>,
    pub(super) writer: WriteBehind,
    pub(super) acks: mpsc::Sender<PendingAck>,
    /// Events this replica caused, to store (their revisions come from the database; every
    /// replica's watchers are fed from there, in revision order).
    pub(super) events: mpsc::Sender<Vec<u8>>,
    /// The store, for its clock lease.
    pub(super) store: Arc<dyn Store>,
}

impl Durable {
    /// Start the ack and event writers. `agg` hears from the event writer when the database
    /// fails (weakly held: the aggregator still stops when its last handle goes).
    pub(super) fn start(parts: DurableParts, agg: mpsc::WeakSender<Command>) -> Durable {
        let (acks, pending) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(ack_when_stored(pending));
        let (events, drafts) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(store_events(parts.store.clone(), drafts, agg));
        Durable {
            store: parts.store,
            db_ok: Arc::new(AtomicBool::new(true)),
            writer: parts.writer,
            acks,
            events,
        }
    }

    pub(super) fn database_ok(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
    }
}

/// Store events in batches, retrying while the database is away (bounded by the queue).
async fn store_events(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    agg: mpsc::WeakSender<Command>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![NewEvent { payload: first }];
        while batch.len() < EVENT_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(NewEvent { payload: p }),
                Err(_) => break,
            }
        }
        loop {
            match store.append_events(batch.clone()).await {
                Ok(_) => {
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = batch.len(), "storing events; retrying");
                    let Some(agg) = agg.upgrade() else {
                        return;
                    };
                    let down = Command::Cluster(ClusterCommand::DatabaseState { ok: false });
                    if agg.send(down).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// Acks waiting for their observations to be stored, in order (the writer stores in order).
/// An acknowledgement means stored: a write that was not stored is never acknowledged, so
/// its observations stay in the probe's replay buffer and are resent after it reconnects.
/// An ack that finds its session's queue full is kept (the latest per session) and tried
/// again every [`ACK_RETRY`]: acks are cumulative, but a later one may never come.
async fn ack_when_stored(mut pending: mpsc::Receiver<PendingAck>) {
    let mut unsent: Vec<(SessionTx, u64)> = Vec::new();
    let mut retry = tokio::time::interval(ACK_RETRY);
    loop {
        tokio::select! {
            next = pending.recv() => {
                let Some((tx, seq, receipt, stored)) = next else { return };
                if receipt.stored().await.is_ok() {
                    stored.fetch_max(seq, Ordering::AcqRel);
                    unsent.retain(|(t, _)| !t.same_channel(&tx));
                    if try_ack(&tx, seq) {
                        unsent.push((tx, seq));
                    }
                }
            }
            _ = retry.tick(), if !unsent.is_empty() => {
                unsent.retain(|(tx, seq)| try_ack(tx, *seq));
            }
        }
    }
}

/// How often an ack that found its session's queue full is tried again.
const ACK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
