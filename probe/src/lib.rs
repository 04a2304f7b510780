//! The vantage probe worker: the checks ([`checks`]), the pure rules that turn observations into
//! section reports ([`rules`], shared with the server), the scheduler that runs an assignment
//! continuously ([`scheduler`]) and the session with the server ([`session`]).

pub mod checks;
pub mod logging;
pub mod once;
pub mod rules;
pub mod scheduler;
pub mod session;
pub mod signal;
pub mod tls;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testutil;

/// This build's version, as vantage reports it (`v<semver>`).
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
