//! Events: what changed, numbered by revision, kept in a bounded history for resuming and
//! fanned out on a broadcast channel that never waits for a subscriber. In a cluster the
//! database numbers them.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::broadcast;
use vantage_proto::{Section, Severity, convert, pb};

use super::state::{Cause, State};
use vantage_proto::report::VantageChange;

/// An event as the fan-out carries it: the message, and its protobuf encoding made once for
/// every subscriber (each watch stream copies these bytes instead of encoding again).
#[derive(Debug)]
pub struct SharedEvent {
    pub event: pb::WatchEvent,
    pub encoded: bytes::Bytes,
}

impl SharedEvent {
    pub fn new(event: pb::WatchEvent) -> Arc<SharedEvent> {
        let encoded = bytes::Bytes::from(prost::Message::encode_to_vec(&event));
        Arc::new(SharedEvent { event, encoded })
    }
}

impl std::ops::Deref for SharedEvent {
    type Target = pb::WatchEvent;
    fn deref(&self) -> &pb::WatchEvent {
        &self.event
    }
}

/// What one broadcast carries: the events of one applied command (of each batch, for a
/// command carrying several), in revision order. A
/// watcher wakes once for all of them and writes them into its response together (a batch
/// that changes a section and a vantage makes two events, one wake-up per watcher).
pub type EventGroup = Arc<[Arc<SharedEvent>]>;

/// Most events this replica caused that it remembers until the database feeds them back.
pub(super) const UNCONFIRMED_CAPACITY: usize = 16_384;

/// The prefix of a provisional epoch (events delivered from memory while the database is away).
pub const PROVISIONAL_EPOCH_PREFIX: &str = "degraded-";

/// Whether `epoch` is a provisional one.
pub fn is_provisional(epoch: &str) -> bool {
    epoch.starts_with(PROVISIONAL_EPOCH_PREFIX)
}

/// A new subscription: the receiver is subscribed before the snapshot or backlog is taken,
/// so nothing falls between them.
pub struct Subscription {
    pub events: broadcast::Receiver<EventGroup>,
    /// Set when the subscriber starts from scratch or its revision is out of the history.
    pub snapshot: Option<(bool, Arc<pb::Report>)>,
    pub backlog: Vec<Arc<SharedEvent>>,
}

impl State {
    pub(super) fn subscribe(&mut self, since: u64) -> Subscription {
        let events = self.events.subscribe();
        let oldest = self.history.front().map(|e| e.revision);
        // Resume only from a revision this server has passed, whose successors are all still
        // in the history; anything else (a revision from before a restart, or too old) resyncs.
        let reaches_back = since > 0
            && since <= self.revision
            && (since == self.revision || oldest.is_some_and(|o| o <= since + 1));
        if reaches_back {
            let backlog = self
                .history
                .iter()
                .filter(|e| e.revision > since)
                .cloned()
                .collect();
            Subscription {
                events,
                snapshot: None,
                backlog,
            }
        } else {
            let (_, pb_report) = self.report();
            Subscription {
                events,
                snapshot: Some((since > 0, pb_report)),
                backlog: Vec::new(),
            }
        }
    }

    /// Record an event. In a cluster the database numbers events: what this replica caused
    /// is stored, and every replica's watchers get it back from there ([`Self::stored_events`]);
    /// while the database is away, events are numbered here under a provisional epoch.
    fn push_event(&mut self, event: pb::watch_event::Event, cause: Cause) {
        self.cached = None;
        if let Some(d) = &self.durable {
            if cause == Cause::Here {
                let draft = pb::WatchEvent {
                    revision: 0,
                    epoch: String::new(),
                    time: Some(convert::timestamp(Utc::now())),
                    event: Some(event.clone()),
                };
                let payload = prost::Message::encode_to_vec(&draft);
                if d.events.try_send(payload.clone()).is_err() {
                    self.stats.events_dropped += 1;
                } else {
                    if self.unconfirmed.len() == UNCONFIRMED_CAPACITY {
                        self.unconfirmed.pop_front();
                    }
                    self.unconfirmed.push_back(payload);
                }
            }
            if d.database_ok() {
                return;
            }
            // The database is away: watchers keep getting changes from memory (they resync
            // when the database's feed resumes).
            self.enter_degraded();
        }
        self.revision += 1;
        let ev = SharedEvent::new(pb::WatchEvent {
            revision: self.revision,
            epoch: self.current_epoch().to_owned(),
            time: Some(convert::timestamp(Utc::now())),
            event: Some(event),
        });
        self.publish(ev);
    }

    /// Enter a provisional epoch for events delivered from memory; `false` if already in one.
    pub(super) fn enter_degraded(&mut self) -> bool {
        if self.degraded.is_some() {
            return false;
        }
        tracing::warn!("the database is unreachable: delivering events from memory");
        self.degraded = Some(format!(
            "{PROVISIONAL_EPOCH_PREFIX}{}",
            uuid::Uuid::new_v4()
        ));
        // What this replica caused but the database has not fed back yet reaches the watchers
        // first, from memory, so one that follows into the provisional epoch misses nothing.
        let pending: Vec<Vec<u8>> = self.unconfirmed.iter().cloned().collect();
        for payload in pending {
            let Ok(mut ev) = <pb::WatchEvent as prost::Message>::decode(payload.as_slice()) else {
                continue;
            };
            self.revision += 1;
            ev.revision = self.revision;
            ev.epoch = self.current_epoch().to_owned();
            self.publish(SharedEvent::new(ev));
        }
        true
    }

    /// Into the bounded history and to the watchers. Never waits: a lagging subscriber finds
    /// out on its next receive.
    fn publish(&mut self, ev: Arc<SharedEvent>) {
        if self.history.len() == self.config.history {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        if let Some(pb::watch_event::Event::SectionChange(c)) = &ev.event.event {
            self.timeline.transition(ev.event.time, c);
        }
        self.stats.events += 1;
        match &mut self.held {
            Some(held) => held.push(ev),
            None => {
                let _ = self.events.send(Arc::new([ev]));
            }
        }
    }

    /// Hold events back from the watchers until [`Self::release_events`]; `false` if they
    /// already are (the caller then leaves the release to whoever held them).
    pub(super) fn hold_events(&mut self) -> bool {
        if self.held.is_some() {
            return false;
        }
        self.held = Some(Vec::new());
        true
    }

    /// Send the events held back while a command was applied, as one group (in order).
    pub(super) fn release_events(&mut self) {
        if let Some(held) = self.held.take()
            && !held.is_empty()
        {
            let _ = self.events.send(EventGroup::from(held));
        }
    }

    /// Events from the database, in revision order: into the history and to the watchers.
    pub(super) fn stored_events(&mut self, events: Vec<crate::store::StoredEvent>) {
        let held = self.hold_events();
        if !events.is_empty() {
            // The database answered. Say so before anything else happens here: an event this
            // replica causes next would otherwise find it still marked away and open a second
            // provisional epoch (a second resync for every watcher) until the next poll.
            if let Some(d) = &self.durable {
                d.db_ok.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if self.degraded.take().is_some() {
                tracing::info!("the database is back: events come from it again");
                self.revision = self.db_revision;
            }
        }
        for (revision, payload) in events {
            if self.unconfirmed.front() == Some(&payload) {
                // This replica's own event, stored: no longer pending.
                self.unconfirmed.pop_front();
            }
            if revision <= self.db_revision {
                continue;
            }
            self.db_revision = revision;
            let Ok(mut ev) = <pb::WatchEvent as prost::Message>::decode(payload.as_slice()) else {
                tracing::warn!(revision, "skipping an undecodable stored event");
                continue;
            };
            ev.revision = revision;
            ev.epoch.clone_from(&self.epoch);
            self.revision = revision;
            self.publish(SharedEvent::new(ev));
        }
        self.cached = None;
        if held {
            self.release_events();
        }
    }

    /// The epoch revisions currently belong to.
    pub(super) fn current_epoch(&self) -> &str {
        self.degraded.as_deref().unwrap_or(&self.epoch)
    }

    pub(super) fn section_event(
        &mut self,
        section: Section,
        vantage: &str,
        from: Option<Severity>,
        to: Severity,
        base: &vantage_proto::report::Base,
        cause: Cause,
    ) {
        let change = pb::SectionChange {
            section: pb::Section::from(section) as i32,
            vantage: vantage.to_owned(),
            from: from.map_or(pb::Severity::Unspecified, pb::Severity::from) as i32,
            to: pb::Severity::from(to) as i32,
            error: base.error.clone().unwrap_or_default(),
            warnings: base.warnings.iter().map(pb::Message::from).collect(),
        };
        self.push_event(pb::watch_event::Event::SectionChange(change), cause);
    }

    pub(super) fn vantage_event(&mut self, name: &str, change: VantageChange, cause: Cause) {
        let event = pb::VantageChange {
            vantage: name.to_owned(),
            change: change.as_str().to_owned(),
            kind: pb::VantageChangeKind::from(change) as i32,
        };
        self.push_event(pb::watch_event::Event::VantageChange(event), cause);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vantage_proto::pb;

    use crate::aggregator::{
        AdminCommand, Aggregator, AggregatorConfig, ClusterCommand, DurableParts, is_provisional,
    };
    use crate::store::{MemoryStore, Store, WriteBehind, WriteBehindOptions};

    fn stored(vantage: &str) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::WatchEvent {
            revision: 0,
            epoch: String::new(),
            time: None,
            event: Some(pb::watch_event::Event::VantageChange(pb::VantageChange {
                vantage: vantage.into(),
                change: "attached".into(),
                kind: pb::VantageChangeKind::Attached.into(),
            })),
        })
    }

    /// The database's event feed resuming is the database answering: what this replica causes
    /// next goes to the database, not out under a second provisional epoch (a second resync of
    /// every watcher for one outage) while the next poll has yet to say the database is back.
    #[tokio::test]
    async fn events_from_the_database_end_the_outage_at_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let writer = WriteBehind::spawn(store.clone(), WriteBehindOptions::default());
        let durable = DurableParts { writer, store };
        let agg = Aggregator::spawn_with(AggregatorConfig::for_tests(), vec![], Some(durable))
            .expect("aggregator");
        // The first report's section changes are out of the way before the outage.
        agg.report().await.expect("a round trip");
        agg.send(ClusterCommand::DatabaseState { ok: false })
            .await
            .expect("sent");
        let mut sub = agg.subscribe(0, "").await.expect("subscribed");
        assert!(!agg.database_ok());

        agg.send(ClusterCommand::StoredEvents {
            events: vec![(7, stored("fra-1"))],
        })
        .await
        .expect("sent");
        // A change caused here: no daemon where one is required turns the section red.
        let none_required = vantage_probe::rules::provisioners::section(
            &[],
            chrono::Utc::now(),
            "v2.26.0",
            vantage_probe::rules::provisioners::CURRENT_API_MAJOR,
            true,
            std::time::Duration::from_secs(90),
        );
        agg.send(AdminCommand::ServerSection {
            report: vantage_probe::rules::SectionReport::ProvisionerDaemons(none_required),
        })
        .await
        .expect("sent");
        agg.report().await.expect("a round trip");

        assert!(
            agg.database_ok(),
            "the feed's events say the database answers"
        );
        let mut delivered = Vec::new();
        while let Ok(group) = sub.events.try_recv() {
            delivered.extend(group.iter().map(|e| (e.revision, e.epoch.clone())));
        }
        assert_eq!(delivered.len(), 1, "{delivered:?}");
        assert_eq!(delivered[0].0, 7);
        assert!(!is_provisional(&delivered[0].1), "{delivered:?}");
    }
}
