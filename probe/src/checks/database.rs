//! The Database check (`docs/coder-health.md#database`): five sequential pings within 5 s; the first failure stops
//! the series (EDB01). With no database configured the result says EDB03 (`docs/behaviour.md#difference-6`).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use vantage_proto::{codes, convert, pb};

pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const PINGS: usize = 5;
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(15);

/// Something that can be pinged: "take a pooled connection and do a trivial round trip".
pub trait Pinger: Send + Sync {
    fn ping(&self) -> BoxFuture<'_, Result<(), String>>;
}

pub async fn check(
    pinger: Option<&dyn Pinger>,
    threshold: Duration,
    timeout: Duration,
) -> pb::DatabaseResult {
    let mut result = pb::DatabaseResult {
        threshold: Some(convert::duration(threshold)),
        ..Default::default()
    };
    let Some(pinger) = pinger else {
        result.failure = Some(pb::Message {
            code: codes::EDB03.into(),
            message: "no database is configured: state lives in memory and is lost on restart"
                .into(),
        });
        return result;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    for _ in 0..PINGS {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, pinger.ping()).await {
            Ok(Ok(())) => result.pings.push(convert::duration(started.elapsed())),
            Ok(Err(e)) => {
                result.failure = Some(pb::Message {
                    code: codes::EDB01.into(),
                    message: format!("ping database: {e}"),
                });
                return result;
            }
            Err(_) => {
                result.failure = Some(pb::Message {
                    code: codes::EDB01.into(),
                    message: format!(
                        "ping database: context deadline exceeded (the {} budget ran out)",
                        vantage_proto::report::go_duration(timeout)
                    ),
                });
                return result;
            }
        }
    }
    result.reachable = true;
    result
}
