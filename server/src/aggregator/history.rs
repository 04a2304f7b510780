//! History kept in memory: section severity transitions (the aggregate and each vantage's
//! view, after hysteresis) in one bounded ring, and each check's recent outcomes, bounded per
//! series (vantage, section, target). `HealthService.GetHistory` and
//! `GET /api/v2/debug/health/history` read it when the store keeps no history of its own (the
//! in-memory store); with PostgreSQL they read the stored logs ([`crate::store::Store::history`]),
//! within the same bounds.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use vantage_proto::{Section, convert, pb};

/// Most section transitions kept (across sections and vantages).
pub const MAX_TRANSITIONS: usize = 10_000;
/// Most samples kept per series (vantage, section, target).
pub const MAX_SAMPLES: usize = 120;
/// Most series kept; a new series beyond this is not recorded.
pub const MAX_SERIES: usize = 4096;
/// How many recent transitions are compared to drop a copy of one already recorded (an event
/// delivered from memory while the database was away, then fed back by it).
const DEDUPE_WINDOW: usize = 64;

/// One vantage's series: by section (in `Section::ALL` order), then by target. Looked up with
/// borrowed names, so recording a sample (once per applied observation) allocates no key.
type VantageSeries = [FxHashMap<String, VecDeque<pb::CheckSample>>; 6];

/// The history of one aggregator.
#[derive(Debug, Default)]
pub(super) struct History {
    transitions: VecDeque<pb::SectionTransition>,
    series: FxHashMap<String, VantageSeries>,
    /// How many series there are, across vantages and sections.
    series_count: usize,
}

/// Append a sample to a series, dropping its oldest beyond [`MAX_SAMPLES`].
pub(super) fn push_sample(samples: &mut VecDeque<pb::CheckSample>, sample: pb::CheckSample) {
    if samples.len() == MAX_SAMPLES {
        samples.pop_front();
    }
    samples.push_back(sample);
}

fn section_index(section: Section) -> usize {
    Section::ALL
        .iter()
        .position(|s| *s == section)
        .unwrap_or_default()
}

/// What a history read asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryFilter {
    pub section: Option<Section>,
    pub since: Option<DateTime<Utc>>,
}

impl History {
    /// Record a section change carried by an event published at `time`.
    pub(super) fn transition(
        &mut self,
        time: Option<prost_types::Timestamp>,
        change: &pb::SectionChange,
    ) {
        let t = pb::SectionTransition {
            time,
            section: change.section,
            vantage: change.vantage.clone(),
            from: change.from,
            to: change.to,
            error: change.error.clone(),
            warnings: change.warnings.clone(),
        };
        if self
            .transitions
            .iter()
            .rev()
            .take(DEDUPE_WINDOW)
            .any(|x| *x == t)
        {
            return;
        }
        if self.transitions.len() == MAX_TRANSITIONS {
            self.transitions.pop_front();
        }
        self.transitions.push_back(t);
    }

    /// Record the outcome of one applied observation (its [`check_sample`]) of `target`.
    #[cfg(test)]
    pub(super) fn sample(
        &mut self,
        vantage: &str,
        section: Section,
        target: &str,
        sample: pb::CheckSample,
    ) {
        if let Some(samples) = self.series(vantage, section, target) {
            push_sample(samples, sample);
        }
    }

    /// The samples of one series, made when new; `None` when there are already
    /// [`MAX_SERIES`] (the ingest path looks a run of one target up once).
    pub(super) fn series(
        &mut self,
        vantage: &str,
        section: Section,
        target: &str,
    ) -> Option<&mut VecDeque<pb::CheckSample>> {
        let i = section_index(section);
        let known = self
            .series
            .get(vantage)
            .is_some_and(|v| v[i].contains_key(target));
        if known {
            return self
                .series
                .get_mut(vantage)
                .and_then(|v| v[i].get_mut(target));
        }
        if self.series_count >= MAX_SERIES {
            return None;
        }
        self.series_count += 1;
        Some(
            self.series.entry(vantage.to_owned()).or_default()[i]
                .entry(target.to_owned())
                .or_default(),
        )
    }

    /// Forget a vantage's series (the vantage was forgotten); its transitions stay.
    pub(super) fn forget(&mut self, vantage: &str) {
        if let Some(v) = self.series.remove(vantage) {
            self.series_count -= v.iter().map(FxHashMap::len).sum::<usize>();
        }
    }

    /// What the filter selects, oldest first; series sorted by vantage, section and target.
    pub(super) fn read(&self, filter: HistoryFilter) -> pb::History {
        let section_ok = |s: i32| {
            filter
                .section
                .is_none_or(|want| pb::Section::from(want) as i32 == s)
        };
        let time_ok = |t: Option<&prost_types::Timestamp>| match filter.since {
            None => true,
            Some(since) => convert::from_timestamp(t).is_some_and(|t| t >= since),
        };
        let transitions = self
            .transitions
            .iter()
            .filter(|t| section_ok(t.section) && time_ok(t.time.as_ref()))
            .cloned()
            .collect();
        let mut keys: Vec<(&str, Section, &str, &VecDeque<pb::CheckSample>)> = Vec::new();
        for (vantage, by_section) in &self.series {
            for (section, by_target) in Section::ALL.iter().zip(by_section) {
                if filter.section.is_some_and(|want| want != *section) {
                    continue;
                }
                for (target, samples) in by_target {
                    keys.push((vantage, *section, target, samples));
                }
            }
        }
        keys.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let checks = keys
            .into_iter()
            .filter_map(|(vantage, section, target, samples)| {
                let samples: Vec<pb::CheckSample> = samples
                    .iter()
                    .filter(|s| time_ok(s.time.as_ref()))
                    .cloned()
                    .collect();
                (!samples.is_empty()).then(|| pb::CheckSeries {
                    vantage: vantage.to_owned(),
                    section: pb::Section::from(section) as i32,
                    target: target.to_owned(),
                    samples,
                })
            })
            .collect();
        pb::History {
            transitions,
            checks,
        }
    }
}

/// An observation as a history sample: its time, whether it succeeded, how long it took and
/// its failure's text. The in-memory ring and the PostgreSQL store both use it.
pub fn check_sample(obs: &pb::Observation) -> pb::CheckSample {
    let (ok, error) = outcome(obs);
    pb::CheckSample {
        time: obs.observed_at,
        ok,
        duration: obs.elapsed,
        error,
    }
}

/// Whether an observation is a success, and its failure's text when it is not.
fn outcome(obs: &pb::Observation) -> (bool, String) {
    use pb::observation::Result as R;
    let failure = |m: &Option<pb::Message>| match m {
        Some(m) if !m.code.is_empty() || !m.message.is_empty() => {
            (false, format!("{} {}", m.code, m.message).trim().to_owned())
        }
        _ => (true, String::new()),
    };
    match &obs.result {
        None => (false, "no result".to_owned()),
        Some(R::AccessUrl(r)) => failure(&r.failure),
        Some(R::Websocket(r)) => failure(&r.failure),
        Some(R::Database(r)) => failure(&r.failure),
        Some(R::DerpNode(r)) => {
            let errors: Vec<&str> = [r.error.as_str(), r.stun_error.as_str()]
                .into_iter()
                .filter(|e| !e.is_empty())
                .collect();
            (errors.is_empty(), errors.join("; "))
        }
        Some(R::WorkspaceProxy(r)) => (r.errors.is_empty(), r.errors.join("; ")),
        Some(R::UnknownError(e)) => (false, e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An observation's sample, as the ingest path records it.
    fn sample(h: &mut History, vantage: &str, section: Section, obs: &pb::Observation) {
        h.sample(vantage, section, &obs.target, check_sample(obs));
    }

    fn obs(target: &str, secs: i64, error: &str) -> pb::Observation {
        pb::Observation {
            target: target.to_owned(),
            observed_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            result: Some(pb::observation::Result::DerpNode(Box::new(
                pb::DerpNodeResult {
                    error: error.to_owned(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }
    }

    #[test]
    fn samples_are_bounded_per_series_and_filtered_by_time() {
        let mut h = History::default();
        for i in 0..(MAX_SAMPLES as i64 + 30) {
            sample(
                &mut h,
                "a",
                Section::Derp,
                &obs("derp/1/n", i, if i % 2 == 0 { "" } else { "down" }),
            );
        }
        sample(&mut h, "a", Section::AccessUrl, &obs("u", 5, ""));
        let all = h.read(HistoryFilter::default());
        assert_eq!(all.checks.len(), 2);
        let derp = &all.checks[1];
        assert_eq!(derp.target, "derp/1/n");
        assert_eq!(derp.samples.len(), MAX_SAMPLES);
        assert_eq!(derp.samples[0].time.map(|t| t.seconds), Some(30));
        assert!(derp.samples[0].ok);
        assert_eq!(derp.samples[1].error, "down");
        let since = DateTime::from_timestamp(140, 0);
        let recent = h.read(HistoryFilter {
            section: Some(Section::Derp),
            since,
        });
        assert_eq!(recent.checks.len(), 1);
        assert_eq!(recent.checks[0].samples.len(), 10);
        h.forget("a");
        assert!(h.read(HistoryFilter::default()).checks.is_empty());
    }

    #[test]
    fn transitions_are_a_bounded_ring_without_copies() {
        let mut h = History::default();
        let change = |to: pb::Severity| pb::SectionChange {
            section: pb::Section::Derp as i32,
            vantage: String::new(),
            from: pb::Severity::Ok as i32,
            to: to as i32,
            error: String::new(),
            warnings: Vec::new(),
        };
        for i in 0..(MAX_TRANSITIONS as i64 + 5) {
            let t = Some(prost_types::Timestamp {
                seconds: i,
                nanos: 0,
            });
            h.transition(t, &change(pb::Severity::Error));
        }
        let t = Some(prost_types::Timestamp {
            seconds: 3,
            nanos: 0,
        });
        let last = Some(prost_types::Timestamp {
            seconds: MAX_TRANSITIONS as i64 + 4,
            nanos: 0,
        });
        h.transition(last, &change(pb::Severity::Error));
        let all = h.read(HistoryFilter::default());
        assert_eq!(all.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(all.transitions[0].time.map(|t| t.seconds), Some(5));
        h.transition(t, &change(pb::Severity::Warning));
        let only = h.read(HistoryFilter {
            section: Some(Section::AccessUrl),
            since: None,
        });
        assert!(only.transitions.is_empty());
    }

    #[test]
    fn the_series_are_bounded_and_a_forgotten_vantage_frees_its_own() {
        let mut h = History::default();
        for i in 0..MAX_SERIES {
            sample(
                &mut h,
                &format!("v{}", i % 7),
                Section::Derp,
                &obs(&format!("t{i}"), 1, ""),
            );
        }
        // The same target in two sections is two series; beyond the bound none is added.
        sample(&mut h, "late", Section::AccessUrl, &obs("t0", 1, ""));
        assert_eq!(h.read(HistoryFilter::default()).checks.len(), MAX_SERIES);
        let forgotten = h
            .read(HistoryFilter::default())
            .checks
            .iter()
            .filter(|c| c.vantage == "v0")
            .count();
        h.forget("v0");
        sample(&mut h, "late", Section::AccessUrl, &obs("t0", 1, ""));
        sample(&mut h, "late", Section::Websocket, &obs("t0", 1, ""));
        let all = h.read(HistoryFilter::default()).checks;
        assert_eq!(all.len(), MAX_SERIES - forgotten + 2);
        let late: Vec<i32> = all
            .iter()
            .filter(|c| c.vantage == "late")
            .map(|c| c.section)
            .collect();
        assert_eq!(
            late,
            vec![pb::Section::AccessUrl as i32, pb::Section::Websocket as i32]
        );
    }
}
