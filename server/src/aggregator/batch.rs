//! A batch of one vantage's observations, prepared where it arrived (the probe's session task)
//! for the aggregator to apply. Everything that needs no aggregator state happens here, on the
//! worker thread that decoded the batch: the stateless checks (timestamps, sizes, section), the
//! history sample of each observation, and grouping into runs of one check and target. Of a
//! run only the last observation that passed those checks is kept whole (the only one of the
//! run that can become its check's latest); the others are dropped here, on the thread that
//! allocated them. With a durable store every observation is kept whole, since every one is
//! written.
//!
//! The aggregator then does per observation only what needs its state: the sequence number
//! (duplicates, the window, gaps), the assignment and the history push.

use vantage_proto::pb;

use super::guard::{SEQ_WINDOW, observation_fault};
use super::history::check_sample;

/// One observation of a batch, as the aggregator sees it.
pub(super) struct Entry {
    pub(super) seq: u64,
    /// Index into [`Batch::groups`].
    pub(super) group: usize,
    /// Why it is not applied, found without aggregator state (`None` from the store).
    pub(super) fault: Option<&'static str>,
    /// Its history sample.
    pub(super) sample: pb::CheckSample,
    /// Its whole observation, when kept: an index into [`Batch::whole`].
    pub(super) whole: Option<usize>,
}

/// The check and target a run of consecutive observations is about.
pub(super) struct Group {
    pub(super) check_id: String,
    pub(super) target: String,
    /// As the observation says (`pb::Section`).
    pub(super) section: i32,
}

/// Observations of one vantage, in the order they came.
pub struct Batch {
    pub(super) entries: Vec<Entry>,
    pub(super) groups: Vec<Group>,
    /// The observations kept whole (apart from the entries, which stay small).
    pub(super) whole: Vec<pb::Observation>,
}

impl Batch {
    /// Prepare a probe's observations: checked (as of `now_secs`, Unix seconds), sampled and
    /// grouped; every one kept whole when `keep_all`.
    pub fn from_probe(observations: Vec<pb::Observation>, keep_all: bool, now_secs: i64) -> Self {
        Self::prepare(observations, keep_all, Some(now_secs))
    }

    /// How many observations it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Prepare observations another replica applied and stored: not checked again.
    pub(super) fn from_store(observations: Vec<pb::Observation>) -> Self {
        Self::prepare(observations, false, None)
    }

    fn prepare(mut observations: Vec<pb::Observation>, keep_all: bool, now: Option<i64>) -> Self {
        let mut batch = Batch {
            entries: Vec::with_capacity(observations.len()),
            groups: Vec::new(),
            whole: Vec::new(),
        };
        // Which of a run is applied depends on the sequence numbers alone when they rise
        // without jumping past the window inside the batch: then the applied ones of a run
        // are a contiguous stretch ending at its last good one. Otherwise keep everything.
        let orderly = observations
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[1].seq - w[0].seq <= SEQ_WINDOW);
        let keep_all = keep_all || !orderly;
        // First by reference: faults, samples, runs, and which entries stay whole.
        let mut kept: Option<usize> = None;
        for (index, obs) in observations.iter().enumerate() {
            if !batch.continues_run(obs) {
                batch.groups.push(Group {
                    check_id: obs.check_id.clone(),
                    target: obs.target.clone(),
                    section: obs.section,
                });
                kept = None;
            }
            let fault = now.and_then(|now| observation_fault(obs, now));
            let whole = keep_all || fault.is_none();
            if whole && !keep_all {
                // Only the run's last good one can end up latest.
                if let Some(previous) = kept.replace(index) {
                    batch.entries[previous].whole = None;
                }
            }
            batch.entries.push(Entry {
                seq: obs.seq,
                group: batch.groups.len() - 1,
                fault,
                sample: check_sample(obs),
                whole: whole.then_some(index),
            });
        }
        // Then move the kept ones out; the rest are dropped here, on this thread, in place.
        for (entry, obs) in batch.entries.iter_mut().zip(observations.iter_mut()) {
            if let Some(slot) = entry.whole.as_mut() {
                *slot = batch.whole.len();
                batch.whole.push(std::mem::take(obs));
            }
        }
        drop(observations);
        batch
    }

    /// Whether `obs` is about the check, target and section of the run before it.
    fn continues_run(&self, obs: &pb::Observation) -> bool {
        self.groups.last().is_some_and(|g| {
            g.section == obs.section && g.check_id == obs.check_id && g.target == obs.target
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(seq: u64, target: &str, status: i32) -> pb::Observation {
        pb::Observation {
            seq,
            check_id: "access_url".into(),
            target: target.into(),
            section: pb::Section::AccessUrl as i32,
            elapsed: Some(prost_types::Duration {
                seconds: if status < 0 { -1 } else { 0 },
                nanos: 0,
            }),
            result: Some(pb::observation::Result::AccessUrl(pb::AccessUrlResult {
                status_code: status,
                failure: (status >= 500).then(|| pb::Message {
                    code: "EACS02".into(),
                    message: "503".into(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn whole(b: &Batch) -> Vec<Option<u64>> {
        b.entries
            .iter()
            .map(|e| e.whole.map(|i| b.whole[i].seq))
            .collect()
    }

    #[test]
    fn a_run_keeps_only_its_last_good_observation_whole() {
        // 1..3 about "a", then a faulty 4 (negative elapsed) and a good 5 about "b", then "a".
        let b = Batch::from_probe(
            vec![
                obs(1, "a", 200),
                obs(2, "a", 503),
                obs(3, "a", 200),
                obs(4, "b", -1),
                obs(5, "b", 200),
                obs(6, "a", 200),
            ],
            false,
            1_000,
        );
        assert_eq!(b.groups.len(), 3, "runs, not distinct keys");
        assert_eq!(whole(&b), vec![None, None, Some(3), None, Some(5), Some(6)]);
        assert_eq!(b.entries[3].fault, Some("elapsed"));
        assert!(
            !b.entries[1].sample.ok,
            "every observation keeps its sample"
        );
        assert_eq!(
            b.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn everything_stays_whole_for_a_durable_store_or_when_the_numbers_do_not_rise() {
        let all = |b: &Batch| {
            b.entries.iter().all(|e| e.whole.is_some()) && b.whole.len() == b.entries.len()
        };
        let rising = vec![obs(1, "a", 200), obs(2, "a", 200), obs(3, "a", -1)];
        assert!(all(&Batch::from_probe(rising, true, 1_000)));
        let falling = vec![obs(5, "a", 200), obs(4, "a", 200)];
        assert!(all(&Batch::from_probe(falling, false, 1_000)));
        let jumping = vec![obs(1, "a", 200), obs(2 + SEQ_WINDOW, "a", 200)];
        assert!(all(&Batch::from_probe(jumping, false, 1_000)));
    }

    #[test]
    fn observations_from_the_store_are_not_checked_again() {
        let b = Batch::from_store(vec![obs(1, "a", -1)]);
        assert_eq!(b.entries[0].fault, None);
        assert_eq!(whole(&b), vec![Some(1)]);
    }
}
