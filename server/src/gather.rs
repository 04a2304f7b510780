//! Wake-ups gathered per connection.
//!
//! The streams of one HTTP/2 connection that wait on the same source (the aggregator's event
//! broadcast, for `Watch`) park their wakers in the connection's [`Gather`] instead of each
//! registering with the source. One pump per connection waits on the source, and the
//! connection's task, which polls the pump, wakes every parked stream itself, polls them all,
//! then writes what they sent in one go.
//!
//! Without it, the aggregator's thread woke every watcher of every connection itself for
//! each change (1 000 wakers at W = 1 000, in batches), while the connections' tasks already
//! ran on the workers and took the watchers woken so far. With it, a change wakes one task
//! per connection (BENCHMARKS.md has the figures).

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use futures::{Stream, StreamExt as _};

/// What waits on the source for a connection: it yields once for every item the source sends
/// (or for a gap), and ends with the source.
pub type Pump = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Most items a pump is asked for in one poll of the connection's task, so that a flooding
/// source cannot hold the task: past it the task wakes itself and goes on later.
const PUMP_BUDGET: usize = 64;

/// One connection's gathering point: shared by its streams through each request's extensions
/// (as `Arc<Gather>`), released by the connection's task ([`Gather::poll_release`]).
#[derive(Default)]
pub struct Gather {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Waits on the source while some stream is parked.
    pump: Option<Pump>,
    /// The wakers of the streams parked since the last release; each stream once.
    parked: Vec<Waker>,
    /// Counts releases: a stream that parked in this generation does not park again.
    generation: u64,
}

/// Where a stream stands with its connection's [`Gather`]: the generation it last parked in.
#[derive(Debug, Default, Clone, Copy)]
pub struct Parking(Option<u64>);

impl Gather {
    /// The state, also after a panic while it was held: every change to it is one push, one
    /// drain or one replacement, so it is whole, and refusing it would leave the parked
    /// streams asleep for good.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Park `waker` until the source next sends; `pump` makes the connection's pump when none
    /// waits yet (it must see everything the source sends from the moment it is made).
    ///
    /// A stream parks after it found its own receiver empty, and must look at that receiver
    /// once more after parking: what was sent in between is the pump's to see only if the pump
    /// was already waiting.
    pub fn park(&self, parking: &mut Parking, waker: &Waker, pump: impl FnOnce() -> Pump) {
        let mut inner = self.lock();
        if inner.pump.is_none() {
            inner.pump = Some(pump());
        }
        if parking.0 != Some(inner.generation) {
            parking.0 = Some(inner.generation);
            inner.parked.push(waker.clone());
        }
    }

    /// In the connection's task: poll the pump with the task's context and, when the source
    /// sent something (or ended), wake every parked stream. Called before the connection's
    /// streams are polled, so the woken ones run in the same poll, and after, for a pump made
    /// while they ran. A pump nobody is parked on any more is dropped.
    pub fn poll_release(&self, cx: &mut Context<'_>) {
        let mut inner = self.lock();
        let Some(pump) = inner.pump.as_mut() else {
            return;
        };
        let mut sent = false;
        let mut ended = false;
        let mut budget = PUMP_BUDGET;
        loop {
            match pump.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {
                    sent = true;
                    budget -= 1;
                    if budget == 0 {
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !(sent || ended) {
            return;
        }
        inner.generation = inner.generation.wrapping_add(1);
        if ended || inner.parked.is_empty() {
            inner.pump = None;
        }
        for waker in inner.parked.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::sync::broadcast;
    use tokio_stream::wrappers::BroadcastStream;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (c.clone(), Waker::from(c))
    }

    fn pump_of(rx: &broadcast::Receiver<u32>) -> impl FnOnce() -> Pump + '_ {
        || Box::pin(BroadcastStream::new(rx.resubscribe()).map(drop))
    }

    /// Parked streams are woken once per send, all together, by the connection's task and
    /// not by the sender; a stream parks once per generation; the pump goes when nobody is
    /// parked and wakes everybody when the source ends.
    #[test]
    fn parked_streams_wake_together_when_the_connection_polls_its_pump() {
        let (tx, rx) = broadcast::channel::<u32>(16);
        let gather = Gather::default();
        let (conn, conn_waker) = counter();
        let mut conn_cx = Context::from_waker(&conn_waker);
        let streams: Vec<_> = (0..3).map(|_| counter()).collect();
        let mut parking = [Parking::default(); 3];

        for (i, (_, w)) in streams.iter().enumerate() {
            gather.park(&mut parking[i], w, pump_of(&rx));
            // Parking twice in one generation leaves one waker.
            gather.park(&mut parking[i], w, pump_of(&rx));
        }
        gather.poll_release(&mut conn_cx);
        assert!(streams.iter().all(|(c, _)| c.0.load(Ordering::SeqCst) == 0));

        tx.send(1).unwrap();
        assert_eq!(
            conn.0.load(Ordering::SeqCst),
            1,
            "the send woke the connection"
        );
        assert!(
            streams.iter().all(|(c, _)| c.0.load(Ordering::SeqCst) == 0),
            "and none of its streams"
        );
        gather.poll_release(&mut conn_cx);
        for (c, _) in &streams {
            assert_eq!(c.0.load(Ordering::SeqCst), 1, "each stream woken once");
        }

        // Only the first stream parks again; the next send wakes only it.
        gather.park(&mut parking[0], &streams[0].1, pump_of(&rx));
        tx.send(2).unwrap();
        gather.poll_release(&mut conn_cx);
        let woken: Vec<usize> = streams
            .iter()
            .map(|(c, _)| c.0.load(Ordering::SeqCst))
            .collect();
        assert_eq!(woken, vec![2, 1, 1]);

        // A send with nobody parked still wakes the connection once; that release finds
        // nobody and drops the pump, and the source no longer wakes the connection.
        tx.send(3).unwrap();
        gather.poll_release(&mut conn_cx);
        let before = conn.0.load(Ordering::SeqCst);
        tx.send(4).unwrap();
        assert_eq!(conn.0.load(Ordering::SeqCst), before);
        assert_eq!(streams[0].0.0.load(Ordering::SeqCst), 2);

        // The source ends: a parked stream is woken to see it.
        gather.park(&mut parking[1], &streams[1].1, pump_of(&rx));
        gather.poll_release(&mut conn_cx);
        drop(tx);
        drop(rx);
        gather.poll_release(&mut conn_cx);
        assert_eq!(streams[1].0.0.load(Ordering::SeqCst), 2);
    }

    /// A source that sends faster than the connection polls cannot hold its task: the pump is
    /// drained at most `PUMP_BUDGET` items per poll, and the task is woken to go on.
    #[test]
    fn a_flooding_source_is_drained_in_bounded_steps() {
        let (tx, rx) = broadcast::channel::<u32>(4 * PUMP_BUDGET);
        let gather = Gather::default();
        let (conn, conn_waker) = counter();
        let mut conn_cx = Context::from_waker(&conn_waker);
        let (_, w) = counter();
        gather.park(&mut Parking::default(), &w, pump_of(&rx));
        gather.poll_release(&mut conn_cx);
        for i in 0..(3 * PUMP_BUDGET as u32) {
            tx.send(i).unwrap();
        }
        let woke = conn.0.load(Ordering::SeqCst);
        gather.poll_release(&mut conn_cx);
        assert_eq!(
            conn.0.load(Ordering::SeqCst),
            woke + 1,
            "the task woke itself to drain the rest"
        );
    }
}
