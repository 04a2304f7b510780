//! `vantaged`, the vantage server: probe hub, aggregator, report surfaces (gRPC, Coder JSON,
//! HTML, Prometheus) and the server's own vantage, on one listener.
//!
//! Libraries take a bound listener and a shutdown future; only `main.rs` binds, reads the
//! environment and installs logging.

pub mod aggregate;
pub mod aggregator;
pub mod api;
mod cluster;
pub mod config;
pub mod ingest;
pub mod registry;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vantage_probe::checks::CheckContext;
use vantage_proto::{Section, Severity, pb};

use crate::aggregator::{Aggregator, AggregatorConfig, Command};
use crate::api::App;
use crate::api::grpc::HealthApi;
use crate::api::{grpc::watch_codec, http};
use crate::config::{Config, ConfigError};
use crate::ingest::inventory::{self, Inventory};
use crate::ingest::{derpmap, hub, own};
use crate::store::pg;
use crate::store::{MemoryStore, Store};

/// Longest a probe message may be.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// How long shutdown waits for connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Start(String),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The base URL clients use for a bound address.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Serve on `listener` (and answer STUN on `stun_socket`, bound by the caller from
/// `--stun-listen`) until `shutdown` resolves. `ready` is called with the base URL once the
/// server accepts connections.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    stun_socket: Option<tokio::net::UdpSocket>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&str),
) -> Result<(), ServeError> {
    config.validate()?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !config.insecure_no_auth {
        return Err(ConfigError {
            field: "listen".into(),
            message: format!(
                "{addr} is not a loopback address and no tokens are configured: refusing to serve without authentication (pass --insecure-no-auth to do it anyway)"
            ),
        }
        .into());
    }
    let base = base_url(addr);
    let access_url = config
        .access_url
        .as_ref()
        .map_or_else(|| base.clone(), ToString::to_string);
    let access = url::Url::parse(&access_url).map_err(|e| ConfigError {
        field: "access_url".into(),
        message: format!("{access_url:?}: {e}"),
    })?;

    // The effective DERP map and the embedded relay.
    let map = derpmap::effective(
        config.derp_map.as_deref(),
        config.embedded_relay.then_some(&access),
        &config.stun_servers,
    )
    .await?;
    let derp_regions: Vec<inventory::DerpRegion> = map
        .regions
        .values()
        .map(|r| inventory::DerpRegion {
            id: r.region_id,
            code: r.region_code.clone(),
            name: r.region_name.clone(),
            json: serde_json::to_string(r).unwrap_or_default(),
        })
        .collect();

    let cancel_root = CancellationToken::new();
    let (store, pg): (Arc<dyn Store>, Option<pg::PgStore>) = match &config.database_url {
        Some(url) => {
            let pg = pg::PgStore::connect(url, pg::PgOptions::default())
                .await
                .map_err(|e| ServeError::Start(e.to_string()))?;
            (Arc::new(pg.clone()), Some(pg))
        }
        None => (Arc::new(MemoryStore::default()), None),
    };
    let dismissed = store
        .load_dismissed()
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    let registry = Arc::new(match &pg {
        Some(pg) => registry::Registry::open(Arc::new(pg.clone()))
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?
            // PostgreSQL keeps microseconds: so must the registry's clock.
            .with_clock(Arc::new(|| {
                use chrono::SubsecRound as _;
                chrono::Utc::now().trunc_subsecs(6)
            })),
        None => registry::Registry::in_memory(),
    });
    let writer = pg
        .as_ref()
        .map(|_| store::WriteBehind::spawn(store.clone(), store::WriteBehindOptions::default()));
    let db_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let epoch = match &pg {
        Some(pg) => Some(
            pg.cluster_id()
                .await
                .map_err(|e| ServeError::Start(e.to_string()))?,
        ),
        None => None,
    };
    registry
        .configure_proxies(config.workspace_proxies.iter().map(proxy_spec).collect())
        .await
        .map_err(|e| ConfigError {
            field: "workspace_proxies".into(),
            message: e.to_string(),
        })?;

    let mut expected = vec![Section::AccessUrl, Section::Websocket];
    if config.server_vantage {
        expected.push(Section::Database);
    }
    let agg = Aggregator::spawn_with(
        AggregatorConfig {
            quorum: config.quorum,
            stale_after: config.stale_after,
            forget_after: config.forget_after,
            raise_after: config.raise_after,
            clear_after: config.clear_after,
            history: config.history,
            version: vantage_probe::VERSION.to_owned(),
            expected,
            derp_regions: derp_regions
                .iter()
                .map(|r| (r.id, r.name.clone()))
                .collect(),
            derp_has_nodes: map.has_derp_nodes(),
            epoch,
            dedicated_thread: true,
        },
        dismissed,
        writer.clone().map(|w| (w, store.clone(), db_ok.clone())),
    );
    if pg.is_some() {
        // Put back what the store remembers, then follow what other replicas store.
        let vantages = store
            .load_vantages()
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?;
        let latest = store
            .latest_observations()
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?;
        let last_id = latest.iter().map(|o| o.id).max().unwrap_or(0);
        let _ = agg.send(Command::RemoteVantages { vantages }).await;
        let _ = agg
            .send(Command::Restore {
                observations: latest,
            })
            .await;
        // The recent event history, so `Watch` resumes across restarts and replicas.
        let newest = store
            .latest_event_revision()
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?
            .unwrap_or(0);
        let from = newest.saturating_sub(config.history as u64);
        tokio::spawn(cluster::follow_store(cluster::Follower {
            store: store.clone(),
            registry: registry.clone(),
            retention: cluster::Retention {
                observations: config.observation_retention,
                events: config.event_retention,
            },
            agg: agg.clone(),
            last_id,
            last_revision: from,
            db_ok: db_ok.clone(),
            cancel: cancel_root.clone(),
        }));
    }
    let (proxies_tx, proxies_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let inventory = Arc::new(Inventory {
        access_url,
        interval: config.interval,
        database_threshold: config.database_threshold,
        heartbeat: Duration::from_secs(5),
        derp_regions,
        derp_node_timeout: config.derp_node_timeout,
        derp_all_vantages: config.derp_all_vantages,
        server_checks_derp: config.server_checks_derp,
        proxies_all_vantages: config.proxies_all_vantages,
        proxies: proxies_rx,
    });
    let cancel = cancel_root;
    tokio::spawn(follow_registry(
        registry.clone(),
        agg.clone(),
        proxies_tx,
        ProvisionerPolicy {
            required: config.provisioner_daemons_required,
            stale_after: config.provisioner_stale_after,
        },
        cancel.clone(),
    ));
    let app = App {
        agg: agg.clone(),
        writer: writer.clone(),
        store,
        force_timeout: config.force_timeout,
        watchers: Arc::new(AtomicUsize::new(0)),
        cancel: cancel.clone(),
    };

    if config.server_vantage {
        let tls =
            vantage_probe::tls::client_config(&[]).map_err(|e| ServeError::Start(e.to_string()))?;
        let mut ctx =
            CheckContext::new(tls).map_err(|e| ServeError::Start(format!("HTTP client: {e}")))?;
        if let Some(pg) = &pg {
            ctx.database = Some(Arc::new(pg.pinger()));
        }
        tokio::spawn(own::run(
            agg.clone(),
            ctx,
            inventory.clone(),
            config.server_vantage_name.clone(),
            "server".to_owned(),
        ));
    }
    if let Some(socket) = stun_socket {
        let cancel = cancel.clone();
        tracing::info!(addr = ?socket.local_addr().ok(), "answering STUN");
        tokio::spawn(
            vantage_derp::stun::StunResponder::new(socket)
                .run(async move { cancel.cancelled().await }),
        );
    }

    let (reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(track_grpc_health(
        agg.clone(),
        reporter.clone(),
        cancel.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vantage_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Start(format!("reflection: {e}")))?;
    let idle = (config.stale_after * 2).max(Duration::from_secs(30));
    let hub = hub::ProbeHub::new(agg.clone(), inventory, idle, cancel.clone());
    let grpc = tonic::service::Routes::new(
        pb::probe_service_server::ProbeServiceServer::new(hub)
            .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        pb::health_service_server::HealthServiceServer::new(HealthApi { app: app.clone() })
            .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        pb::registry_service_server::RegistryServiceServer::new(registry::RegistryApi {
            registry: registry.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE),
    )
    .add_service(health_service)
    .add_service(reflection)
    .into_axum_router();
    let mut router = http::router(app.clone())
        .merge(watch_codec::router(app.clone()))
        .merge(grpc)
        .merge(http::derp_map_router(Arc::new(map.to_json())));
    if config.embedded_relay {
        router = router.merge(vantage_derp::relay::router(Arc::new(
            vantage_derp::Relay::new(),
        )));
    }

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // No Nagle: DERP packets, acks and watch events are small and latency-bound (with it, a
    // small write behind an unacknowledged one waits for the peer's delayed ACK, ~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    })
    .into_future();
    tokio::pin!(server);
    ready(&base);
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut server => return r.map_err(ServeError::Io),
        () = &mut shutdown => {}
    }
    tracing::info!("shutting down");
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for s in Section::ALL {
        reporter
            .set_service_status(
                s.health_service_name(),
                tonic_health::ServingStatus::NotServing,
            )
            .await;
    }
    cancel.cancel();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(r) => r.map_err(ServeError::Io),
        Err(_) => {
            tracing::warn!("connections still open after the grace period; stopping anyway");
            Ok(())
        }
    }
}

fn proxy_spec(p: &config::ProxyFile) -> registry::ProxySpec {
    registry::ProxySpec {
        name: p.name.clone(),
        display_name: p.display_name.clone(),
        url: p.url.clone(),
        region: p.region.clone(),
        icon_url: p.icon_url.clone(),
        derp_enabled: p.derp_enabled,
        derp_only: p.derp_only,
        version: String::new(),
    }
}

/// What the ProvisionerDaemons section requires.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionerPolicy {
    pub required: bool,
    pub stale_after: Duration,
}

/// Keep assignments, the WorkspaceProxy rules' inputs and the ProvisionerDaemons section in
/// step with the registry: on every change, and every few seconds (daemons go stale by time).
async fn follow_registry(
    registry: Arc<registry::Registry>,
    agg: Aggregator,
    proxies: tokio::sync::watch::Sender<Arc<Vec<inventory::ProxyTarget>>>,
    policy: ProvisionerPolicy,
    cancel: CancellationToken,
) {
    use vantage_probe::rules::{SectionReport, provisioners};
    let mut changes = registry.subscribe();
    let tick_every =
        (policy.stale_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_targets: Option<Vec<inventory::ProxyTarget>> = None;
    let mut last_inputs = None;
    loop {
        let records = registry.proxies(None).await;
        let targets: Vec<inventory::ProxyTarget> = records
            .iter()
            .map(|p| inventory::ProxyTarget {
                name: p.name.clone(),
                url: p.url.clone(),
                region: p.region.clone(),
            })
            .collect();
        if last_targets.as_ref() != Some(&targets) {
            proxies.send_replace(Arc::new(targets.clone()));
            last_targets = Some(targets);
        }
        let inputs = registry.proxy_inputs().await;
        if last_inputs.as_ref() != Some(&inputs) {
            if agg
                .send(Command::Proxies {
                    proxies: inputs.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
            last_inputs = Some(inputs);
        }
        let section = provisioners::section(
            &registry.provisioner_inputs().await,
            registry.now(),
            vantage_probe::VERSION,
            provisioners::CURRENT_API_MAJOR,
            policy.required,
            policy.stale_after,
        );
        let report = SectionReport::ProvisionerDaemons(section);
        if agg.send(Command::ServerSection { report }).await.is_err() {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Keep `grpc.health.v1` in step with the report: `""` and one service per section,
/// SERVING unless at error. Updates are coalesced (at most one per 100 ms).
async fn track_grpc_health(
    agg: Aggregator,
    reporter: tonic_health::server::HealthReporter,
    cancel: CancellationToken,
) {
    let Ok(mut sub) = agg.subscribe(0, "").await else {
        return;
    };
    loop {
        if let Ok((report, _)) = agg.report().await {
            let status = |sev: Severity| {
                if sev == Severity::Error {
                    tonic_health::ServingStatus::NotServing
                } else {
                    tonic_health::ServingStatus::Serving
                }
            };
            reporter
                .set_service_status("", status(report.severity))
                .await;
            for s in Section::ALL {
                reporter
                    .set_service_status(s.health_service_name(), status(report.base(s).severity))
                    .await;
            }
        } else {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = sub.events.recv() => match r {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Drain what came meanwhile: one update covers it.
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            sub.events.try_recv()
        {}
    }
}
