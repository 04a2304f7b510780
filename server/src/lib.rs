//! `vantaged`, the vantage server: probe hub, aggregator, report surfaces (gRPC, Coder JSON,
//! HTML, Prometheus) and the server's own vantage, on one listener.
//!
//! The data flow is the module tree: [`config`] → [`ingest`] (probe sessions, the server's
//! own vantage, the inventory) → [`aggregator`] (the one owner of health state, using the pure
//! rules of [`aggregate`]) → [`api`] (gRPC and HTTP) and [`alerts`] (pushes to Alertmanager).
//! [`store`] keeps state durable, [`registry`] knows the announced components, `cluster` follows
//! other replicas, [`security`] is TLS and tokens on the listener (and the accept loop), [`gather`]
//! wakes the watch streams of one connection together, `reload` applies a changed
//! configuration file on SIGHUP, `serving` runs the listeners and the drain at shutdown, and
//! `app` composes it all.
//!
//! Libraries take a bound listener and a shutdown future; only `main.rs` binds, reads the
//! environment and installs logging.

pub mod aggregate;
pub mod aggregator;
pub mod alerts;
pub mod api;
mod app;
mod cluster;
pub mod config;
pub mod gather;
pub mod ingest;
pub mod registry;
mod reload;
pub mod security;
mod serving;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Config, ConfigError};

pub use app::ProvisionerPolicy;

/// Longest a probe message may be.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the store: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Aggregator(#[from] aggregator::SpawnError),
    #[error("the server's own vantage: {0}")]
    OwnVantage(String),
    #[error("the alert sender: {0}")]
    Alerts(#[from] alerts::SetupError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The base URL clients use for a bound address.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The sockets the caller bound: the listener, and from the configuration the plaintext
/// health listener (`--health-listen`) and the STUN socket (`--stun-listen`).
pub struct Sockets {
    pub listener: TcpListener,
    pub health: Option<TcpListener>,
    pub stun: Option<UdpSocket>,
}

/// Serve on `sockets` until `shutdown` resolves, then drain (`--drain`) and stop within
/// `--shutdown-grace`. `ready` is called with the base URL once the server accepts
/// connections.
pub async fn serve(
    config: Config,
    sockets: Sockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&str),
) -> Result<(), ServeError> {
    config.validate()?;
    let Sockets {
        listener,
        health: health_listener,
        stun: stun_socket,
    } = sockets;
    let addr = listener.local_addr()?;
    app::refuse_unauthenticated(&config, addr)?;
    let security = security::Security::load(&config)?;
    let base = format!("{}://{addr}", security.scheme());
    let targets = app::Targets::from_config(&config, &base).await?;
    let stores = app::Stores::open(&config).await?;
    let agg = app::start_aggregator(&config, &targets, &stores).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    if stores.is_durable() {
        app::follow_cluster(&config, &stores, &agg, &cancel).await?;
    }
    let inventory = app::follow_inventory(&config, &targets, &stores, &agg, &cancel);
    reload::reload_on_hangup(&config, &targets, &stores, &cancel);
    let mut surface = app::surface(&config, &stores, &agg, &cancel);
    surface.alerts = app::start_alerts(&config, &targets, &base, &agg, &cancel)?;
    if config.server_vantage {
        app::start_own_vantage(&config, &stores, &agg, &inventory)?;
    }
    if let Some(socket) = stun_socket {
        app::answer_stun(socket, &cancel);
    }
    let (health, router) = app::router(&config, &targets, surface, &stores, inventory, &cancel)?;
    security.spawn_background(&config, &cancel);
    let health_listener = health_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "serving grpc.health.v1, /healthz and /readyz in plaintext");
        (l, api::grpc::health::listener_router(&health, cancel.clone()))
    });
    let server =
        serving::Server::start(listener, security.guard(router), &security, health_listener);
    ready(&base);
    let timing = serving::Shutdown {
        drain: config.drain,
        grace: config.shutdown_grace,
    };
    server.run_until(shutdown, &health, &cancel, timing).await
}
