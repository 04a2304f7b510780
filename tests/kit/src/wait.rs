//! Polling with a deadline: tests wait for a condition, never sleep for readiness.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(50);

/// Poll `f` every 50 ms until it returns `Some`, or fail after `within` saying `what` (and where
/// the test called this). For a plain condition: `|| async { cond.then_some(()) }`.
#[track_caller]
pub fn eventually<T, F, Fut>(
    within: Duration,
    what: &'static str,
    mut f: F,
) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{caller}: timed out after {within:?} waiting for {what}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}
