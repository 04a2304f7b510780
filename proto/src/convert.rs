//! Conversions between wire types and the types the code works with.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::pb;
use crate::report::Message;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// `None` for a missing or out-of-range timestamp.
pub fn from_timestamp(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// `None` for a missing or negative duration.
pub fn from_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(secs, nanos))
}

impl From<&Message> for pb::Message {
    fn from(m: &Message) -> Self {
        pb::Message {
            code: m.code.clone(),
            message: m.message.clone(),
        }
    }
}

impl From<&pb::Message> for Message {
    fn from(m: &pb::Message) -> Self {
        Message {
            code: m.code.clone(),
            message: m.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_reject_negative() {
        let d = Duration::from_nanos(1_234_567_891);
        assert_eq!(from_duration(Some(&duration(d))), Some(d));
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_duration(Some(&neg)), None);
        assert_eq!(from_duration(None), None);
    }

    #[test]
    fn timestamps_round_trip() {
        let t = DateTime::from_timestamp(1_700_000_000, 123).expect("valid");
        assert_eq!(from_timestamp(Some(&timestamp(t))), Some(t));
    }
}
