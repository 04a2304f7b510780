//! The `Watch` stream: a snapshot or backlog, then the events that pass a watcher's
//! [`Filter`]; a watcher that falls behind is resynced, never waited for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt as _};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;
use vantage_proto::pb;
use vantage_proto::report::VantageChange;
use vantage_proto::{Section, Severity};

use crate::aggregator::{Aggregator, EventGroup, SharedEvent, Subscription, is_provisional};
use crate::api::App;
use crate::gather::{Gather, Parking};

/// Which events a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub sections: Vec<Section>,
    pub min_severity: Option<Severity>,
    pub vantages: Vec<String>,
    /// Snapshots carry the report's whole JSON.
    pub include_json: bool,
    /// Snapshots carry every vantage's reports and the vantage list.
    pub include_vantages: bool,
}

impl Filter {
    pub fn from_request(r: &pb::WatchRequest) -> Result<Filter, Status> {
        let mut sections = Vec::new();
        for s in &r.sections {
            sections.push(Section::from_pb(*s).ok_or_else(|| {
                Status::invalid_argument(format!("sections: {s} is not a section (expected 1..6)"))
            })?);
        }
        let min_severity = match r.min_severity {
            0 => None,
            n => Some(Severity::from_pb(n).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "min_severity: {n} is not a severity (expected 1..3)"
                ))
            })?),
        };
        Ok(Filter {
            sections,
            min_severity,
            vantages: r.vantages.clone(),
            include_json: r.include_json,
            include_vantages: r.include_vantages,
        })
    }

    pub fn passes(&self, ev: &pb::WatchEvent) -> bool {
        match &ev.event {
            Some(pb::watch_event::Event::SectionChange(c)) => {
                let section_ok = self.sections.is_empty()
                    || Section::from_pb(c.section).is_some_and(|s| self.sections.contains(&s));
                let vantage_ok = self.vantages.is_empty() || self.vantages.contains(&c.vantage);
                let sev = Severity::from_pb(c.from)
                    .unwrap_or_default()
                    .max(Severity::from_pb(c.to).unwrap_or_default());
                let severity_ok = self.min_severity.is_none_or(|m| sev >= m);
                section_ok && vantage_ok && severity_ok
            }
            Some(pb::watch_event::Event::VantageChange(c)) => {
                let vantage_ok = self.vantages.is_empty() || self.vantages.contains(&c.vantage);
                let sev = if VantageChange::of(c) == Some(VantageChange::Stale) {
                    Severity::Warning
                } else {
                    Severity::Ok
                };
                vantage_ok && self.min_severity.is_none_or(|m| sev >= m)
            }
            Some(pb::watch_event::Event::Snapshot(_)) | None => true,
        }
    }
}

/// A snapshot event; the report's whole JSON only when asked for (it is most of its size).
fn snapshot_event(resync: bool, report: Arc<pb::Report>, filter: &Filter) -> pb::WatchEvent {
    let r = &*report;
    let include_json = filter.include_json;
    let sections = if filter.include_vantages {
        r.sections.clone()
    } else {
        r.sections
            .iter()
            .map(|s| pb::SectionReport {
                section: s.section,
                severity: s.severity,
                error: s.error.clone(),
                warnings: s.warnings.clone(),
                dismissed: s.dismissed,
                vantage_reports: Vec::new(),
            })
            .collect()
    };
    let copy = pb::Report {
        revision: r.revision,
        time: r.time,
        healthy: r.healthy,
        severity: r.severity,
        sections,
        vantages: if filter.include_vantages {
            r.vantages.clone()
        } else {
            Vec::new()
        },
        vantages_severity: r.vantages_severity,
        vantages_warnings: r.vantages_warnings.clone(),
        json: if include_json {
            r.json.clone()
        } else {
            String::new()
        },
        epoch: r.epoch.clone(),
    };
    pb::WatchEvent {
        revision: r.revision,
        epoch: r.epoch.clone(),
        time: r.time,
        event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
            resync,
            report: Some(copy),
        })),
    }
}

/// Decrements the watcher count when the stream is dropped.
struct WatcherGuard(Arc<AtomicUsize>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watcher: the stream [`watch_outs`] returns. A hand-written stream, so that an event
/// costs a poll of the broadcast and no move of this state (an `unfold` moves it in and out
/// of a new future per event, and a thousand watchers take every event).
pub struct WatchState {
    agg: Aggregator,
    events: Events,
    /// Where this watcher stands with its connection's gathering point.
    parking: Parking,
    /// A fresh subscription on its way (the watcher fell behind, or the epoch changed).
    resyncing: Option<BoxFuture<'static, Option<Subscription>>>,
    queue: VecDeque<Out>,
    last: u64,
    /// The epoch `last` belongs to; an event of another epoch means a resync.
    epoch: String,
    filter: Filter,
    /// The server's shutdown, registered once: a future made per event would take the
    /// token's lock twice per event and watcher.
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _guard: WatcherGuard,
}

/// How a watcher learns of new events.
enum Events {
    /// Its own registration with the broadcast.
    Alone(BroadcastStream<EventGroup>),
    /// Its connection's task wakes it, with every other watcher of the connection
    /// ([`crate::gather`]).
    Gathered(broadcast::Receiver<EventGroup>, Arc<Gather>),
}

impl Events {
    fn new(rx: broadcast::Receiver<EventGroup>, gather: Option<Arc<Gather>>) -> Events {
        match gather {
            Some(g) => Events::Gathered(rx, g),
            None => Events::Alone(BroadcastStream::new(rx)),
        }
    }

    fn gather(&self) -> Option<Arc<Gather>> {
        match self {
            Events::Alone(_) => None,
            Events::Gathered(_, g) => Some(g.clone()),
        }
    }

    /// The next group, the end of the broadcast (`None`), or a gap; `Pending` with a wake-up
    /// arranged.
    fn poll_next(
        &mut self,
        parking: &mut Parking,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<EventGroup, BroadcastStreamRecvError>>> {
        let (rx, gather) = match self {
            Events::Alone(events) => return events.poll_next_unpin(cx),
            Events::Gathered(rx, gather) => (rx, gather),
        };
        if let Some(received) = received(rx.try_recv()) {
            return Poll::Ready(received);
        }
        gather.park(parking, cx.waker(), || {
            Box::pin(BroadcastStream::new(rx.resubscribe()).map(drop))
        });
        // What was sent before the connection's pump started waiting is only here.
        match received(rx.try_recv()) {
            Some(received) => Poll::Ready(received),
            None => Poll::Pending,
        }
    }
}

/// A receive's outcome as the broadcast's stream gives it; `None` when nothing is there yet.
fn received(
    r: Result<EventGroup, TryRecvError>,
) -> Option<Option<Result<EventGroup, BroadcastStreamRecvError>>> {
    match r {
        Ok(group) => Some(Some(Ok(group))),
        Err(TryRecvError::Lagged(n)) => Some(Some(Err(BroadcastStreamRecvError::Lagged(n)))),
        Err(TryRecvError::Closed) => Some(None),
        Err(TryRecvError::Empty) => None,
    }
}

/// What a watch stream yields before it is encoded: a snapshot built for this watcher, or an
/// event shared by every watcher (with its encoding made once).
pub enum Out {
    Own(Box<pb::WatchEvent>),
    Shared(Arc<SharedEvent>),
}

impl Out {
    fn into_event(self) -> pb::WatchEvent {
        match self {
            Out::Own(ev) => *ev,
            Out::Shared(ev) => ev.event.clone(),
        }
    }

    /// Write the encoded event into `dst`: a snapshot is encoded there, a shared event's
    /// encoding copied (no clone of it, no count of its references).
    pub fn encode_into(&self, dst: &mut impl bytes::BufMut) -> Result<(), prost::EncodeError> {
        match self {
            Out::Own(ev) => prost::Message::encode(&**ev, dst),
            Out::Shared(ev) => {
                dst.put_slice(&ev.encoded);
                Ok(())
            }
        }
    }
}

/// The stream of one watcher as messages.
pub fn watch_stream(
    app: &App,
    sub: Subscription,
    filter: Filter,
    since: u64,
) -> impl Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static {
    watch_outs(app, sub, filter, since, None).map(|o| o.map(Out::into_event))
}

impl WatchState {
    /// Start over from a fresh snapshot (the watcher fell behind, or the epoch changed).
    fn start_resync(&mut self) {
        let agg = self.agg.clone();
        self.resyncing = Some(Box::pin(async move { agg.subscribe(0, "").await.ok() }));
    }

    /// The fresh subscription of a resync: its events from now on, its snapshot next.
    fn resynced(&mut self, sub: Subscription) {
        self.events = Events::new(sub.events, self.events.gather());
        if let Some((_, report)) = sub.snapshot {
            self.last = report.revision;
            self.epoch.clone_from(&report.epoch);
            self.queue.push_back(Out::Own(Box::new(snapshot_event(
                true,
                report,
                &self.filter,
            ))));
        }
    }

    /// Queue what a broadcast group holds for this watcher, in order; an event of another
    /// epoch starts a resync (the rest of the group is in its snapshot).
    fn take_group(&mut self, group: &EventGroup) {
        for ev in group.iter() {
            match take(self, ev) {
                Take::Deliver => self.queue.push_back(Out::Shared(ev.clone())),
                Take::Skip => {}
                Take::Resync => {
                    self.start_resync();
                    return;
                }
            }
        }
    }
}

impl Stream for WatchState {
    type Item = Result<Out, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(resyncing) = this.resyncing.as_mut() {
                let sub = ready!(resyncing.as_mut().poll(cx));
                this.resyncing = None;
                match sub {
                    Some(sub) => this.resynced(sub),
                    None => return Poll::Ready(None),
                }
            }
            if let Some(out) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(out)));
            }
            // The shutdown is looked at only while no event is ready (it takes a lock): a
            // watcher that always has an event ready sees it once the events pause (on
            // shutdown the probes' sessions end, and with them the events).
            let received = match this.events.poll_next(&mut this.parking, cx) {
                Poll::Ready(received) => received,
                Poll::Pending => {
                    if this.cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            };
            match received {
                Some(Ok(group)) => this.take_group(&group),
                // Fell behind: start over from a fresh snapshot.
                Some(Err(BroadcastStreamRecvError::Lagged(_))) => this.start_resync(),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// Whether `ev` opens a provisional epoch right after the last revision this watcher has.
fn continues_into_provisional(st: &WatchState, ev: &SharedEvent) -> bool {
    !st.epoch.is_empty()
        && ev.epoch != st.epoch
        && !is_provisional(&st.epoch)
        && is_provisional(&ev.epoch)
        && ev.revision == st.last + 1
}

/// What a watcher does with one live event.
enum Take {
    Deliver,
    Skip,
    Resync,
}

/// Follow one live event: its revision becomes the watcher's last, and it is delivered when
/// it passes the filter; an event of another epoch means a resync.
fn take(st: &mut WatchState, ev: &SharedEvent) -> Take {
    if continues_into_provisional(st, ev) {
        // The database went away: the provisional epoch goes on from the last revision this
        // watcher has, so it simply follows (one resync per outage: when the database's feed
        // takes over again).
        st.epoch.clone_from(&ev.epoch);
    } else if !st.epoch.is_empty() && ev.epoch != st.epoch {
        // The revision sequence changed under us (the database came back, or a provisional
        // epoch this watcher cannot follow without a gap): start over from a fresh snapshot.
        return Take::Resync;
    } else {
        if st.epoch.is_empty() {
            st.epoch.clone_from(&ev.epoch);
        }
        if ev.revision <= st.last {
            return Take::Skip;
        }
    }
    st.last = ev.revision;
    if st.filter.passes(ev) {
        Take::Deliver
    } else {
        Take::Skip
    }
}

/// The stream of one watcher: snapshot or backlog first, then live events; when it falls
/// behind the broadcast it is sent a fresh snapshot marked `resync`. Live events are shared,
/// and their encoding is copied into the response, never made per watcher (`watch_codec`).
/// It starts counted, with its snapshot or backlog queued. With its connection's `gather`, the
/// connection's task wakes it.
pub fn watch_outs(
    app: &App,
    sub: Subscription,
    filter: Filter,
    since: u64,
    gather: Option<Arc<Gather>>,
) -> WatchState {
    app.watchers.fetch_add(1, Ordering::Relaxed);
    let mut state = WatchState {
        agg: app.agg.clone(),
        queue: VecDeque::new(),
        last: since,
        epoch: String::new(),
        filter,
        cancelled: Box::pin(app.cancel.clone().cancelled_owned()),
        _guard: WatcherGuard(app.watchers.clone()),
        events: Events::new(sub.events, gather),
        parking: Parking::default(),
        resyncing: None,
    };
    if let Some((resync, report)) = sub.snapshot {
        state.last = report.revision;
        state.epoch.clone_from(&report.epoch);
        let snapshot = snapshot_event(resync, report, &state.filter);
        state.queue.push_back(Out::Own(Box::new(snapshot)));
    }
    if let Some(first) = sub.backlog.first() {
        state.epoch.clone_from(&first.epoch);
    }
    for ev in sub.backlog {
        if ev.revision > state.last {
            state.last = ev.revision;
            if state.filter.passes(&ev) {
                state.queue.push_back(Out::Shared(ev));
            }
        }
    }
    state
}
