//! The composition root: builds each part of the server from the configuration and wires them
//! together. [`crate::serve`] reads as its table of contents.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use vantage_derp::map::DerpMap;
use vantage_probe::checks::CheckContext;
use vantage_proto::{Section, pb};

use crate::aggregator::{Aggregator, AggregatorConfig, ClusterCommand, DurableParts};
use crate::api::App;
use crate::api::grpc::HealthApi;
use crate::config::{Config, ConfigError};
use crate::ingest::inventory::{DerpRegion, Inventory};
use crate::ingest::{derpmap, hub, own};
use crate::registry::Registry;
use crate::store::pg::{PgOptions, PgPinger, PgStore};
use crate::store::{MemoryStore, Store, WriteBehind, WriteBehindOptions};
use crate::{MAX_MESSAGE, SHUTDOWN_GRACE, ServeError, api, cluster};

pub use crate::registry::follow::ProvisionerPolicy;

/// Without tokens, only a loopback listener (unless the operator insists).
pub(crate) fn refuse_unauthenticated(config: &Config, addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || config.insecure_no_auth {
        return Ok(());
    }
    Err(ConfigError {
        field: "listen".into(),
        message: format!(
            "{addr} is not a loopback address and no tokens are configured: refusing to serve without authentication (pass --insecure-no-auth to do it anyway)"
        ),
    })
}

/// What the checks target: the access URL and the effective DERP map.
pub(crate) struct Targets {
    access_url: String,
    map: DerpMap,
    derp_regions: Vec<DerpRegion>,
}

impl Targets {
    pub(crate) async fn from_config(config: &Config, base: &str) -> Result<Targets, ConfigError> {
        let access_url = config
            .access_url
            .as_ref()
            .map_or_else(|| base.to_owned(), ToString::to_string);
        let access = url::Url::parse(&access_url).map_err(|e| ConfigError {
            field: "access_url".into(),
            message: format!("{access_url:?}: {e}"),
        })?;
        let map = derpmap::effective(
            config.derp_map.as_deref(),
            config.embedded_relay.then_some(&access),
            &config.stun_servers,
        )
        .await?;
        let derp_regions = map.regions.values().map(DerpRegion::from_map).collect();
        Ok(Targets {
            access_url,
            map,
            derp_regions,
        })
    }
}

/// Where state lives: the store (memory or PostgreSQL) and the registry on it.
pub(crate) struct Stores {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<Registry>,
    /// With a database: the observation writer, the database's pinger and the cluster's epoch.
    durable: Option<Durable>,
}

struct Durable {
    writer: WriteBehind,
    pinger: PgPinger,
    epoch: String,
}

impl Stores {
    pub(crate) async fn open(config: &Config) -> Result<Stores, ServeError> {
        let (store, registry, durable): (Arc<dyn Store>, Registry, _) = match &config.database_url {
            Some(url) => {
                let pg = PgStore::connect(url, PgOptions::default()).await?;
                let registry = Registry::open(Arc::new(pg.clone()))
                    .await?
                    // PostgreSQL keeps microseconds: so must the registry's clock.
                    .with_clock(Arc::new(|| {
                        use chrono::SubsecRound as _;
                        chrono::Utc::now().trunc_subsecs(6)
                    }));
                let epoch = pg.cluster_id().await?;
                let pinger = pg.pinger();
                let store: Arc<dyn Store> = Arc::new(pg);
                let writer = WriteBehind::spawn(store.clone(), WriteBehindOptions::default());
                let durable = Durable {
                    writer,
                    pinger,
                    epoch,
                };
                (store, registry, Some(durable))
            }
            None => (
                Arc::new(MemoryStore::default()),
                Registry::in_memory(),
                None,
            ),
        };
        let proxies = config.workspace_proxies.clone();
        registry
            .configure_proxies(proxies)
            .await
            .map_err(|e| ConfigError {
                field: "workspace_proxies".into(),
                message: e.to_string(),
            })?;
        Ok(Stores {
            store,
            registry: Arc::new(registry),
            durable,
        })
    }

    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    fn writer(&self) -> Option<WriteBehind> {
        self.durable.as_ref().map(|d| d.writer.clone())
    }
}

pub(crate) async fn start_aggregator(
    config: &Config,
    targets: &Targets,
    stores: &Stores,
) -> Result<Aggregator, ServeError> {
    let mut expected = vec![Section::AccessUrl, Section::Websocket];
    if config.server_vantage {
        expected.push(Section::Database);
    }
    let agg_config = AggregatorConfig {
        quorum: config.quorum,
        stale_after: config.stale_after,
        forget_after: config.forget_after,
        raise_after: config.raise_after,
        clear_after: config.clear_after,
        history: config.history,
        version: vantage_probe::VERSION.to_owned(),
        expected,
        derp_regions: targets
            .derp_regions
            .iter()
            .map(|r| (r.id, r.name.clone()))
            .collect(),
        derp_has_nodes: targets.map.has_derp_nodes(),
        epoch: stores.durable.as_ref().map(|d| d.epoch.clone()),
        dedicated_thread: true,
    };
    let (dismissed, until) = crate::store::load_settings(&*stores.store).await?;
    let durable = stores.durable.as_ref().map(|d| DurableParts {
        writer: d.writer.clone(),
        store: stores.store.clone(),
    });
    // A stored maintenance window that has ended stays ended; the others get their deadline.
    let now = chrono::Utc::now();
    let open: Vec<_> = dismissed
        .iter()
        .copied()
        .filter(|s| !until.iter().any(|(u, end)| u == s && *end <= now))
        .collect();
    let agg = Aggregator::spawn_with(agg_config, open, durable)?;
    if !until.is_empty() {
        let _ = agg.dismiss(dismissed, until).await;
    }
    Ok(agg)
}

/// Put back what the store remembers, then follow what other replicas store.
pub(crate) async fn follow_cluster(
    config: &Config,
    stores: &Stores,
    agg: &Aggregator,
    cancel: &CancellationToken,
) -> Result<(), ServeError> {
    let store = &stores.store;
    let vantages = store.load_vantages().await?;
    let latest = store.latest_observations().await?;
    let last_id = latest.iter().map(|o| o.id).max().unwrap_or(0);
    let _ = agg.send(ClusterCommand::RemoteVantages { vantages }).await;
    let _ = agg
        .send(ClusterCommand::Restore {
            observations: latest,
        })
        .await;
    // The recent event history, so `Watch` resumes across restarts and replicas.
    let newest = store.latest_event_revision().await?.unwrap_or(0);
    tokio::spawn(cluster::follow_store(cluster::Follower {
        store: store.clone(),
        registry: stores.registry.clone(),
        retention: cluster::Retention {
            observations: config.observation_retention,
            events: config.event_retention,
        },
        agg: agg.clone(),
        last_id,
        last_revision: newest.saturating_sub(config.history as u64),
        cancel: cancel.clone(),
    }));
    Ok(())
}

/// What there is to check, kept in step with the registry.
pub(crate) fn follow_inventory(
    config: &Config,
    targets: &Targets,
    stores: &Stores,
    agg: &Aggregator,
    cancel: &CancellationToken,
) -> Arc<Inventory> {
    let (proxies_tx, proxies_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    tokio::spawn(crate::registry::follow::follow(
        stores.registry.clone(),
        agg.clone(),
        proxies_tx,
        ProvisionerPolicy {
            required: config.provisioner_daemons_required,
            stale_after: config.provisioner_stale_after,
        },
        cancel.clone(),
    ));
    Arc::new(Inventory {
        access_url: targets.access_url.clone(),
        interval: config.interval,
        database_threshold: config.database_threshold,
        heartbeat: Duration::from_secs(5),
        derp_regions: targets.derp_regions.clone(),
        derp_node_timeout: config.derp_node_timeout,
        derp_all_vantages: config.derp_all_vantages,
        server_checks_derp: config.server_checks_derp,
        proxies_all_vantages: config.proxies_all_vantages,
        proxies: proxies_rx,
    })
}

/// What the gRPC and HTTP surfaces share.
pub(crate) fn surface(
    config: &Config,
    stores: &Stores,
    agg: &Aggregator,
    cancel: &CancellationToken,
) -> App {
    App {
        agg: agg.clone(),
        writer: stores.writer(),
        store: stores.store.clone(),
        force_timeout: config.force_timeout,
        watchers: Arc::new(AtomicUsize::new(0)),
        cancel: cancel.clone(),
        alerts: None,
    }
}

/// The Alertmanager sender, when one is configured: its links point at this server, its
/// `deployment` label is the configured name or the access URL's host:port.
pub(crate) fn start_alerts(
    config: &Config,
    targets: &Targets,
    base: &str,
    agg: &Aggregator,
    cancel: &CancellationToken,
) -> Result<Option<crate::alerts::AlertStats>, ServeError> {
    let deployment = config.alerting.deployment_name.clone().unwrap_or_else(|| {
        url::Url::parse(&targets.access_url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| targets.access_url.clone())
    });
    let ctx = crate::alerts::Context {
        base: base.trim_end_matches('/').to_owned(),
        deployment,
    };
    Ok(crate::alerts::start(
        &config.alerting,
        ctx,
        agg.clone(),
        cancel,
    )?)
}

/// The server's own vantage: the probe's checks, run in-process.
pub(crate) fn start_own_vantage(
    config: &Config,
    stores: &Stores,
    agg: &Aggregator,
    inventory: &Arc<Inventory>,
) -> Result<(), ServeError> {
    let tls = vantage_probe::tls::client_config(&[])
        .map_err(|e| ServeError::OwnVantage(e.to_string()))?;
    let mut ctx =
        CheckContext::new(tls).map_err(|e| ServeError::OwnVantage(format!("HTTP client: {e}")))?;
    if let Some(d) = &stores.durable {
        ctx.database = Some(Arc::new(d.pinger.clone()));
    }
    tokio::spawn(own::run(
        agg.clone(),
        ctx,
        inventory.clone(),
        config.server_vantage_name.clone(),
        "server".to_owned(),
    ));
    Ok(())
}

pub(crate) fn answer_stun(socket: UdpSocket, cancel: &CancellationToken) {
    let cancel = cancel.clone();
    tracing::info!(addr = ?socket.local_addr().ok(), "answering STUN");
    tokio::spawn(
        vantage_derp::stun::StunResponder::new(socket).run(async move { cancel.cancelled().await }),
    );
}

/// Every route on the one listener: the gRPC services (with `grpc.health.v1` kept in step
/// with the report, and reflection), the HTTP surface, the DERP map and the embedded relay.
pub(crate) fn router(
    config: &Config,
    targets: &Targets,
    app: App,
    stores: &Stores,
    inventory: Arc<Inventory>,
    cancel: &CancellationToken,
) -> Result<(tonic_health::server::HealthReporter, axum::Router), ServeError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(api::grpc::health::track(
        app.agg.clone(),
        reporter.clone(),
        cancel.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vantage_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let idle = (config.stale_after * 2).max(Duration::from_secs(30));
    let hub = hub::ProbeHub::new(app.agg.clone(), inventory, idle, cancel.clone());
    let grpc = tonic::service::Routes::new(
        pb::probe_service_server::ProbeServiceServer::new(hub)
            .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        pb::health_service_server::HealthServiceServer::new(HealthApi { app: app.clone() })
            .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        pb::registry_service_server::RegistryServiceServer::new(crate::registry::RegistryApi {
            registry: stores.registry.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(health_service)
    .add_service(reflection)
    .into_axum_router();
    let mut router = api::http::router(app.clone())
        .merge(api::grpc::watch_codec::router(app))
        .merge(grpc)
        .merge(api::http::derp_map_router(Arc::new(targets.map.to_json())));
    if config.embedded_relay {
        router = router.merge(vantage_derp::relay::router(Arc::new(
            vantage_derp::Relay::new(),
        )));
    }
    Ok((reporter, router))
}

type Serving = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// The listener, serving the router until told to stop.
pub(crate) struct Server {
    serving: Serving,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    pub(crate) fn start(listener: TcpListener, router: axum::Router) -> Server {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        // No Nagle: DERP packets, acks and watch events are small and latency-bound (with it,
        // a small write behind an unacknowledged one waits for the peer's delayed ACK, ~40 ms).
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                let _ = tcp.set_nodelay(true);
            });
        let serving = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .into_future();
        Server {
            serving: Box::pin(serving),
            stop,
        }
    }

    /// Serve until `shutdown`; then NOT_SERVING on every health service, end every stream,
    /// and give connections [`SHUTDOWN_GRACE`] to finish.
    pub(crate) async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
        health: &tonic_health::server::HealthReporter,
        cancel: &CancellationToken,
    ) -> Result<(), ServeError> {
        tokio::select! {
            r = &mut self.serving => return r.map_err(ServeError::Io),
            () = shutdown => {}
        }
        tracing::info!("shutting down");
        api::grpc::health::not_serving(health).await;
        cancel.cancel();
        let _ = self.stop.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, self.serving).await {
            Ok(r) => r.map_err(ServeError::Io),
            Err(_) => {
                tracing::warn!("connections still open after the grace period; stopping anyway");
                Ok(())
            }
        }
    }
}
