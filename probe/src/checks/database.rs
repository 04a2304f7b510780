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
    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>>;
}

/// Why one ping failed. The EDB01 message is `ping database: ` and this text, so it never
/// carries a connection URL (or its password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// No connection could be had: connecting failed, or none was free in the pool in time.
    #[error("{0}")]
    Unavailable(String),
    /// The round trip itself failed.
    #[error("{0}")]
    Query(String),
    /// The pinger's own bound on one ping ran out.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Succeeds `ok` times, then fails with `error`.
    struct Flaky {
        ok: usize,
        calls: AtomicUsize,
        error: PingError,
    }

    impl Pinger for Flaky {
        fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let r = if n < self.ok {
                Ok(())
            } else {
                Err(self.error.clone())
            };
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn a_ping_error_becomes_edb01_with_its_text() {
        let cases = [
            (
                PingError::Unavailable("connecting: connection refused".into()),
                "ping database: connecting: connection refused",
            ),
            (
                PingError::Query("ERROR: boom (XX000)".into()),
                "ping database: ERROR: boom (XX000)",
            ),
            (
                PingError::Timeout(Duration::from_millis(1500)),
                "ping database: timed out after 1s 500ms",
            ),
        ];
        for (error, want) in cases {
            let pinger = Flaky {
                ok: 2,
                calls: AtomicUsize::new(0),
                error,
            };
            let r = check(Some(&pinger), DEFAULT_THRESHOLD, TIMEOUT).await;
            let f = r.failure.expect("a failure");
            assert_eq!(f.code, codes::EDB01);
            assert_eq!(f.message, want);
            assert_eq!(r.pings.len(), 2, "the first failure stops the series");
            assert!(!r.reachable);
        }
    }

    #[tokio::test]
    async fn five_good_pings_are_reachable() {
        let pinger = Flaky {
            ok: usize::MAX,
            calls: AtomicUsize::new(0),
            error: PingError::Query(String::new()),
        };
        let r = check(Some(&pinger), DEFAULT_THRESHOLD, TIMEOUT).await;
        assert_eq!(r.failure, None);
        assert_eq!(r.pings.len(), PINGS);
        assert!(r.reachable);
    }
}
