//! The one test kit for real peers, used by the tests of every crate (`vantage-derp`,
//! `vantaged`, `vantage-tests`, `vantage-bench`). It depends on no vantage crate, so any of them
//! can take it as a dev-dependency without a cycle.
//!
//! * Third-party daemons owned by a test, each from its own configuration in a temporary
//!   directory and killed on drop: [`Nginx`] (a reverse proxy refusing upgrades or answering
//!   502), [`Coturn`] (a STUN-only server), and in [`prom`] Alertmanager and Prometheus
//!   (and where promtool is).
//! * PostgreSQL: [`TestDb`], a fresh database per test dropped `WITH (FORCE)` (and the
//!   [`test_db!`] macro that skips when told to), and [`CutProxy`], a TCP proxy in front of it
//!   that can add latency, cut connections and refuse new ones.
//! * Ports: [`loopback_listener`] binds port 0 and keeps the socket (use it wherever the code
//!   can take a listener); [`closed_tcp_port`] / [`closed_udp_port`] name ports nothing listens
//!   on; [`random_port`] is only for child processes that must be told a port (retry when they
//!   fail to bind it); [`wait_tcp`] and [`stun_answers`] are readiness checks.
//! * Processes of the workspace: [`cargo_bin`] finds `target/<profile>/<name>`, [`ReadyChild`]
//!   starts a process and waits for the URL it prints as its first stdout line.
//! * [`eventually`]: poll with a deadline instead of sleeping for readiness.

mod coturn;
mod fuzz;
mod net;
mod nginx;
mod pg;
mod process;
pub mod prom;
mod wait;

pub use coturn::Coturn;
pub use fuzz::replay_corpus;
pub use net::{
    closed_tcp_port, closed_udp_port, loopback_listener, random_port, stun_answers, wait_tcp,
};
pub use nginx::{Nginx, NginxMode};
pub use pg::{CutProxy, DEFAULT_ADMIN_URL, TestDb};
pub use process::{ReadyChild, ReadyError, cargo_bin};
pub use prom::PromChild;
pub use wait::eventually;

/// A daemon's log, for the message when it did not start.
fn read_lossy(p: &std::path::Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
