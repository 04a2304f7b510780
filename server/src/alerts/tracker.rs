//! What has been firing and what resolved, with the times Alertmanager needs: a firing alert is
//! re-sent with `endsAt` four re-send periods ahead, a resolved one with the time it resolved,
//! for [`RESOLVED_RETENTION`] (as Prometheus does). Pure: the caller passes the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::Alert;

/// How long a resolved alert keeps being sent (so a restarted Alertmanager learns it too).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);
/// `endsAt` of a firing alert is this many re-send periods after the send.
pub const ENDS_AT_PERIODS: u32 = 4;

/// Alertmanager's `postableAlert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Postable {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "endsAt")]
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

#[derive(Debug, Clone)]
struct Tracked {
    alert: Alert,
    starts_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

/// Every alert of the last [`RESOLVED_RETENTION`], by label set (Alertmanager's identity).
#[derive(Debug, Default)]
pub struct Tracker {
    alerts: BTreeMap<BTreeMap<String, String>, Tracked>,
}

impl Tracker {
    /// Take the alerts the report now calls for. `true` when one started or resolved (it is
    /// then sent at once rather than at the next re-send).
    pub fn update(&mut self, desired: Vec<Alert>, now: DateTime<Utc>) -> bool {
        let mut changed = false;
        let wanted: BTreeMap<_, _> = desired.into_iter().map(|a| (a.labels.clone(), a)).collect();
        for (labels, t) in &mut self.alerts {
            if t.resolved_at.is_none() && !wanted.contains_key(labels) {
                t.resolved_at = Some(now);
                changed = true;
            }
        }
        for (labels, alert) in wanted {
            match self.alerts.get_mut(&labels) {
                Some(t) if t.resolved_at.is_none() => t.alert = alert,
                _ => {
                    changed = true;
                    self.alerts.insert(
                        labels,
                        Tracked {
                            alert,
                            starts_at: now,
                            resolved_at: None,
                        },
                    );
                }
            }
        }
        let keep = chrono::Duration::from_std(RESOLVED_RETENTION).unwrap_or(chrono::Duration::MAX);
        self.alerts
            .retain(|_, t| t.resolved_at.is_none_or(|r| now - r < keep));
        changed
    }

    /// What to post now: every firing alert (`endsAt` = now + 4 × `resend`) and every
    /// recently resolved one (`endsAt` = when it resolved).
    pub fn postable(&self, now: DateTime<Utc>, resend: Duration) -> Vec<Postable> {
        let ahead =
            chrono::Duration::from_std(resend * ENDS_AT_PERIODS).unwrap_or(chrono::Duration::MAX);
        self.alerts
            .values()
            .map(|t| Postable {
                labels: t.alert.labels.clone(),
                annotations: t.alert.annotations.clone(),
                starts_at: t.starts_at,
                ends_at: t.resolved_at.unwrap_or(now + ahead),
                generator_url: t.alert.generator_url.clone(),
            })
            .collect()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> usize {
        self.alerts
            .values()
            .filter(|t| t.resolved_at.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str) -> Alert {
        Alert {
            labels: BTreeMap::from([("alertname".to_owned(), name.to_owned())]),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    #[test]
    fn firing_is_resent_ahead_and_resolved_is_kept_for_fifteen_minutes() {
        let resend = Duration::from_secs(60);
        let mut t = Tracker::default();
        assert!(t.update(vec![alert("A")], at(0)));
        assert!(
            !t.update(vec![alert("A")], at(30)),
            "still firing: no change"
        );
        let p = t.postable(at(30), resend);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].starts_at, at(0), "startsAt is stable across re-sends");
        assert_eq!(p[0].ends_at, at(30 + 240), "endsAt = now + 4 x resend");

        assert!(t.update(vec![], at(100)), "resolving is a change");
        assert_eq!(t.firing(), 0);
        let p = t.postable(at(160), resend);
        assert_eq!(
            p[0].ends_at,
            at(100),
            "resolved: endsAt is the resolve time"
        );
        assert_eq!(t.postable(at(100 + 899), resend).len(), 1);
        t.update(vec![], at(100 + 900));
        assert!(
            t.postable(at(100 + 900), resend).is_empty(),
            "gone after 15 min"
        );
    }

    #[test]
    fn refiring_after_resolve_is_a_new_episode() {
        let mut t = Tracker::default();
        t.update(vec![alert("A")], at(0));
        t.update(vec![], at(10));
        assert!(t.update(vec![alert("A")], at(20)));
        let p = t.postable(at(20), Duration::from_secs(1));
        assert_eq!((p[0].starts_at, p[0].ends_at), (at(20), at(24)));
    }

    #[test]
    fn annotations_follow_the_latest_report_without_a_change() {
        let mut t = Tracker::default();
        t.update(vec![alert("A")], at(0));
        let mut a = alert("A");
        a.annotations.insert("summary".into(), "new".into());
        assert!(!t.update(vec![a], at(1)));
        assert_eq!(
            t.postable(at(1), Duration::from_secs(1))[0].annotations["summary"],
            "new"
        );
    }
}
