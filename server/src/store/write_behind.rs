//! [`WriteBehind`]: a bounded queue and one writer task in front of a store, for the ingest
//! path, so a slow database never stalls a probe stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use vantage_proto::backoff::Backoff;

use super::*;

/// Default capacity of a [`WriteBehind`] queue, in observations.
pub const WRITE_BEHIND_CAPACITY: usize = 10_000;
/// Most observations one [`WriteBehind`] transaction carries.
pub const WRITE_BEHIND_BATCH: usize = 500;

/// How a [`WriteBehind`] queue behaves.
#[derive(Debug, Clone)]
pub struct WriteBehindOptions {
    /// Most observations waiting (the batch being written is not counted).
    pub capacity: usize,
    /// Most observations per transaction (a larger submission is written whole).
    pub batch: usize,
    /// First retry delay after a failed write; doubles up to `max_backoff` (a
    /// `max_backoff` below it is raised to it).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WriteBehindOptions {
    fn default() -> Self {
        WriteBehindOptions {
            capacity: WRITE_BEHIND_CAPACITY,
            batch: WRITE_BEHIND_BATCH,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A submission was dropped before it was stored: the queue overflowed (it was among the
/// oldest), or the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the observations were dropped before they were stored")]
pub struct NotStored;

/// Resolves to the log ids of a submission once it is stored.
pub struct Receipt(oneshot::Receiver<Vec<i64>>);

impl Receipt {
    /// Wait until the submission is stored (its ids, in order) or dropped.
    pub async fn stored(self) -> Result<Vec<i64>, NotStored> {
        self.0.await.map_err(|_| NotStored)
    }
}

struct Submission {
    observations: Vec<NewObservation>,
    reply: oneshot::Sender<Vec<i64>>,
}

struct Queue {
    waiting: VecDeque<Submission>,
    /// Observations in `waiting`.
    len: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    capacity: usize,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
    /// Observations in the batch being written.
    in_flight: AtomicU64,
    stored: watch::Sender<i64>,
    closed: AtomicBool,
}

impl Shared {
    /// Drop the oldest waiting submissions until the queue fits; count what was dropped.
    fn enforce(&self, q: &mut Queue) {
        while q.len > self.capacity {
            let Some(old) = q.waiting.pop_front() else {
                break;
            };
            q.len -= old.observations.len();
            self.dropped
                .fetch_add(old.observations.len() as u64, Ordering::Relaxed);
            // Dropping `old.reply` tells the submitter.
        }
    }
}

/// The write queue has no room: `queued` observations wait, at most `capacity` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store is behind: {queued} observations waiting to be written (at most {capacity})")]
pub struct QueueFull {
    pub queued: usize,
    pub capacity: usize,
}

/// Closes the writer when the last [`WriteBehind`] handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// A bounded write-behind queue in front of [`Store::append_observations`], drained by one
/// task in batches. Writes that fail (the database is down) stay queued and are retried
/// with backoff; when the queue is full the oldest submissions are dropped and counted
/// ([`WriteBehind::dropped`]), and their [`Receipt`]s say so. A retried batch may be stored
/// twice if the database committed it but the answer was lost: observations carry per-instance
/// sequence numbers, so readers apply them once.
#[derive(Clone)]
pub struct WriteBehind {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl WriteBehind {
    /// Start the writer task over `store`. It runs until every handle is dropped (and then
    /// writes what is queued, unless the store keeps failing).
    pub fn spawn(store: Arc<dyn Store>, options: WriteBehindOptions) -> WriteBehind {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                len: 0,
            }),
            wake: Notify::new(),
            capacity: options.capacity.max(1),
            dropped: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stored: watch::channel(0).0,
            closed: AtomicBool::new(false),
        });
        tokio::spawn(write_behind(shared.clone(), store, options));
        WriteBehind {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        }
    }

    /// Queue observations for storing, in order; never waits. A submission larger than the
    /// whole queue is dropped (and counted) at once.
    pub fn submit(&self, observations: Vec<NewObservation>) -> Receipt {
        let (reply, rx) = oneshot::channel();
        if observations.is_empty() {
            let _ = reply.send(Vec::new());
            return Receipt(rx);
        }
        let n = observations.len();
        let Ok(mut q) = self.shared.queue.lock() else {
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return Receipt(rx);
        };
        if n > self.shared.capacity {
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return Receipt(rx);
        }
        q.len += n;
        q.waiting.push_back(Submission {
            observations,
            reply,
        });
        self.shared.enforce(&mut q);
        drop(q);
        self.shared.wake.notify_one();
        Receipt(rx)
    }

    /// Like [`WriteBehind::submit`], but never drops: when the queue cannot take all of
    /// `observations` now, nothing is queued and the error says how full it is.
    /// A submission larger than the whole queue is taken when the queue is empty (so a
    /// probe's resend of a large backlog always makes progress).
    pub fn try_submit(&self, observations: Vec<NewObservation>) -> Result<Receipt, QueueFull> {
        let n = observations.len();
        let capacity = self.shared.capacity;
        let (reply, rx) = oneshot::channel();
        {
            let mut q = self.shared.queue.lock().map_err(|_| QueueFull {
                queued: 0,
                capacity,
            })?;
            if q.len > 0 && q.len + n > capacity {
                let queued = q.len + self.shared.in_flight.load(Ordering::Relaxed) as usize;
                return Err(QueueFull { queued, capacity });
            }
            if n > 0 {
                q.len += n;
                q.waiting.push_back(Submission {
                    observations,
                    reply,
                });
            } else {
                let _ = reply.send(Vec::new());
            }
        }
        self.shared.wake.notify_one();
        Ok(Receipt(rx))
    }

    /// Observations waiting or being written.
    pub fn queued(&self) -> u64 {
        let waiting = self.shared.queue.lock().map(|q| q.len).unwrap_or_default() as u64;
        waiting + self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Observations dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed (and were retried), since the start.
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }

    /// The highest log id stored so far (0: none yet).
    pub fn stored(&self) -> watch::Receiver<i64> {
        self.shared.stored.subscribe()
    }
}

async fn write_behind(shared: Arc<Shared>, store: Arc<dyn Store>, options: WriteBehindOptions) {
    let mut backoff = Backoff::new(options.min_backoff, options.max_backoff);
    loop {
        // Take the next batch: whole submissions, up to `options.batch` observations.
        let batch = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            let mut batch: Vec<Submission> = Vec::new();
            let mut n = 0;
            while let Some(front) = q.waiting.front() {
                let len = front.observations.len();
                if !batch.is_empty() && n + len > options.batch {
                    break;
                }
                n += len;
                q.len -= len;
                if let Some(s) = q.waiting.pop_front() {
                    batch.push(s);
                }
            }
            shared.in_flight.store(n as u64, Ordering::Relaxed);
            batch
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let observations: Vec<NewObservation> = batch
            .iter()
            .flat_map(|s| s.observations.iter().cloned())
            .collect();
        match store.append_observations(observations).await {
            Ok(ids) => {
                backoff.reset();
                shared.in_flight.store(0, Ordering::Relaxed);
                if let Some(max) = ids.iter().max() {
                    shared.stored.send_if_modified(|cur| {
                        let changed = *max > *cur;
                        *cur = (*cur).max(*max);
                        changed
                    });
                }
                let mut ids = ids.into_iter();
                for s in batch {
                    let mine: Vec<i64> = ids.by_ref().take(s.observations.len()).collect();
                    let _ = s.reply.send(mine);
                }
            }
            Err(e) => {
                shared.failed_writes.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "write-behind: storing observations failed");
                {
                    let Ok(mut q) = shared.queue.lock() else {
                        return;
                    };
                    for s in batch.into_iter().rev() {
                        q.len += s.observations.len();
                        q.waiting.push_front(s);
                    }
                    shared.in_flight.store(0, Ordering::Relaxed);
                    shared.enforce(&mut q);
                }
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
