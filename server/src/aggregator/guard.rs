//! What the aggregator refuses, and counts: a second session for a name a live session holds,
//! a vantage beyond `max_vantages`, a hello resuming an instance past what was applied for
//! it, sequence numbers that jump past the window, and
//! observations it will not apply (wrong section, unassigned check or target, insane
//! timestamps, oversized bodies). Every refusal says what was wrong and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use vantage_proto::pb;
use vantage_proto::pb::observation::Result as ObsResult;

/// How far past the last applied sequence number one observation may jump. A probe numbers
/// its observations without gaps, and its replay buffer is far smaller than this, so only a
/// forged number jumps further (`u64::MAX` would freeze the vantage at the forger's value).
pub const SEQ_WINDOW: u64 = 1 << 20;
/// Most bytes of a body (a `/healthz` or echo answer, an error text) applied: the probe's cap
/// of 64 KiB plus its cut marker.
pub const MAX_BODY: usize = 64 * 1024 + 64;
/// Most bytes of one encoded observation (a body and everything around it).
pub const MAX_OBSERVATION: usize = 128 * 1024;
/// How far in the future an observation's timestamp may be (clock skew between machines).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);
/// Longest elapsed time an observation may claim (checks time out long before).
pub const MAX_ELAPSED: Duration = Duration::from_secs(600);
/// A refusal of the same name is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Names whose last refusal log time is kept (a bound on the map itself).
const LOG_NAMES: usize = 4096;

/// Why an attach was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "hello.name: {name:?} is held by a live session (region {region:?}, peer {peer}); a second session for it is refused until that one disconnects or stays silent for {silence:?}"
    )]
    Held {
        name: String,
        region: String,
        peer: String,
        silence: Duration,
    },
    #[error(
        "hello.name: {name:?} would be vantage number {} and max_vantages is {max}; forget stale vantages or raise max_vantages",
        max + 1
    )]
    Full { name: String, max: usize },
    #[error(
        "hello.last_acked_seq: {claimed} is past the sequence window for {name:?}: at most {bound} (the {last} this server last applied for instance {instance:?} + {SEQ_WINDOW})"
    )]
    SeqWindow {
        name: String,
        instance: String,
        claimed: u64,
        last: u64,
        bound: u64,
    },
    #[error(
        "hello.last_acked_seq: {claimed} is more than the {applied} this server applied for {name:?}'s instance {instance:?}; a session may resume only its own instance (a new process uses a new instance_id)"
    )]
    NotResumable {
        name: String,
        instance: String,
        claimed: u64,
        applied: u64,
    },
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match &r {
            Refusal::Held { .. } => Status::already_exists(r.to_string()),
            Refusal::Full { .. } => Status::resource_exhausted(r.to_string()),
            Refusal::SeqWindow { .. } | Refusal::NotResumable { .. } => {
                Status::invalid_argument(r.to_string())
            }
        }
    }
}

/// Counters of refusals and rejections, for `/metrics` (a small struct the metrics layer can
/// take as it is).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuardStats {
    /// Attaches refused because a live session holds the name.
    pub refused_held: u64,
    /// Attaches refused because `max_vantages` was reached.
    pub refused_full: u64,
    /// Attaches refused because the hello's `last_acked_seq` was past the window or past what
    /// this server applied for the instance it names.
    pub refused_seq: u64,
    /// Observations not applied, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Forced runs a vantage was spared because it ran one a moment ago.
    pub force_coalesced: u64,
}

impl GuardStats {
    pub(super) fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_default() += 1;
    }
}

/// Rate limit of refusal logs, per name.
#[derive(Default)]
pub(super) struct LogLimit {
    last: HashMap<String, Instant>,
}

impl LogLimit {
    /// Whether a refusal of `name` should be logged now.
    pub(super) fn allow(&mut self, name: &str) -> bool {
        let now = Instant::now();
        if let Some(t) = self.last.get(name)
            && now.saturating_duration_since(*t) < LOG_EVERY
        {
            return false;
        }
        if self.last.len() >= LOG_NAMES {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < LOG_EVERY);
        }
        if self.last.len() < LOG_NAMES {
            self.last.insert(name.to_owned(), now);
        }
        true
    }
}

/// Whether a hello's `last_acked_seq` may be taken: for the instance this server knows
/// (`known`: the same instance id, `last`: the highest sequence applied for it) at most `last`
/// (a session resumes only what was acknowledged to that instance); for a fresh instance at
/// most [`SEQ_WINDOW`] past 0, the window an observation may jump.
pub(super) fn resume_fault(
    name: &str,
    hello: &pb::Hello,
    known: bool,
    last: u64,
) -> Result<(), Refusal> {
    let claimed = hello.last_acked_seq;
    let instance = hello.instance_id.clone();
    if known && claimed > last {
        return Err(Refusal::NotResumable {
            name: name.to_owned(),
            instance,
            claimed,
            applied: last,
        });
    }
    let base = if known { last } else { 0 };
    let bound = base.saturating_add(SEQ_WINDOW);
    if claimed > bound {
        return Err(Refusal::SeqWindow {
            name: name.to_owned(),
            instance,
            claimed,
            last: base,
            bound,
        });
    }
    Ok(())
}

/// Why an observation of a probe is not applied (its reason label in `/metrics`), or `None`:
/// what can be told without the aggregator's state, as of `now_secs` (Unix seconds). The
/// sequence window is the aggregator's to check.
pub(super) fn observation_fault(obs: &pb::Observation, now_secs: i64) -> Option<&'static str> {
    if let Some(t) = &obs.observed_at {
        let latest = now_secs.saturating_add(MAX_FUTURE_SKEW.as_secs() as i64);
        if t.seconds < 0 || t.seconds > latest {
            return Some("observed_at");
        }
    }
    if let Some(e) = &obs.elapsed
        && (e.seconds < 0 || e.nanos < 0 || e.seconds as u64 > MAX_ELAPSED.as_secs())
    {
        return Some("elapsed");
    }
    if body_len(obs) > MAX_BODY {
        return Some("body_size");
    }
    if !section_matches(obs) {
        return Some("section_mismatch");
    }
    None
}

/// The longest body an observation carries (a `/healthz` or echo answer, an error text), and
/// its whole encoded size.
fn body_len(obs: &pb::Observation) -> usize {
    let body = match &obs.result {
        Some(ObsResult::AccessUrl(r)) => r.healthz_response.len(),
        Some(ObsResult::Websocket(r)) => r.body.len(),
        Some(ObsResult::UnknownError(e)) => e.len(),
        _ => 0,
    };
    if prost::Message::encoded_len(obs) > MAX_OBSERVATION {
        return usize::MAX;
    }
    body
}

/// Whether the result is of the kind its section takes (an unknown error fits any).
fn section_matches(obs: &pb::Observation) -> bool {
    use pb::Section as S;
    let Ok(section) = S::try_from(obs.section) else {
        return false;
    };
    match &obs.result {
        Some(ObsResult::AccessUrl(_)) => section == S::AccessUrl,
        Some(ObsResult::Websocket(_)) => section == S::Websocket,
        Some(ObsResult::Database(_)) => section == S::Database,
        Some(ObsResult::DerpNode(_)) => section == S::Derp,
        Some(ObsResult::WorkspaceProxy(_)) => section == S::WorkspaceProxy,
        Some(ObsResult::UnknownError(_)) | None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_logged_once_a_minute_per_name_and_the_names_are_bounded() {
        let mut limit = LogLimit::default();
        assert!(limit.allow("fra-1"));
        assert!(
            !limit.allow("fra-1"),
            "the second within a minute is not logged"
        );
        assert!(limit.allow("iad-1"), "another name has its own minute");
        tokio::time::advance(LOG_EVERY - Duration::from_millis(1)).await;
        assert!(!limit.allow("fra-1"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limit.allow("fra-1"), "a minute later it is logged again");
        // However many names are refused, at most LOG_NAMES are remembered.
        for i in 0..LOG_NAMES * 2 {
            assert!(limit.allow(&format!("flood-{i}")));
        }
        assert!(limit.last.len() <= LOG_NAMES);
    }
}
