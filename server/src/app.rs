//! The composition root: builds each part of the server from the configuration and wires them
//! together. [`crate::serve`] reads as its table of contents.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage_derp::map::DerpMap;
use vantage_probe::checks::CheckContext;
use vantage_proto::{Section, pb};

use crate::aggregator::{Aggregator, AggregatorConfig, ClusterCommand, DurableParts};
use crate::api::App;
use crate::api::grpc::HealthApi;
use crate::config::{Config, ConfigError};
use crate::ingest::derpfeed::{self, Base, CoderMap, MapSource};
use crate::ingest::inventory::{AccessTarget, DerpRegion, EchoAuth, Inventory, Timing};
use crate::ingest::{derpmap, hub, own};
use crate::registry::Registry;
use crate::store::pg::{PgOptions, PgPinger, PgStore};
use crate::store::{MemoryStore, Store, WriteBehind, WriteBehindOptions};
use crate::{MAX_MESSAGE, ServeError, api, cluster};

pub use crate::registry::follow::ProvisionerPolicy;

/// Without tokens, only a loopback listener (unless the operator insists).
pub(crate) fn refuse_unauthenticated(config: &Config, addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || config.insecure_no_auth || config.token_file.is_some() {
        return Ok(());
    }
    Err(ConfigError {
        field: "listen".into(),
        message: format!(
            "{addr} is not a loopback address and no tokens are configured: refusing to serve without authentication (pass --insecure-no-auth to do it anyway)"
        ),
    })
}

/// What the checks target: the access URL, the effective DERP map (the configured one, read
/// again every refresh, and an attached Coder's over it) and the intervals, each kept current.
pub(crate) struct Targets {
    /// The configured access URL, or the listen URL.
    access_url: String,
    /// What the checks target now (attached without `--access-url`: Coder's `dashboard_url`
    /// once imported).
    access: Arc<watch::Sender<AccessTarget>>,
    /// The listen URL.
    base: String,
    /// Where the configured map comes from (a reloaded configuration changes it).
    pub(crate) map_source: Arc<watch::Sender<MapSource>>,
    /// The regions every configured map gets: the embedded relay, the STUN servers.
    extras: DerpMap,
    /// The map read at start (none when it could not be read).
    loaded: DerpMap,
    /// The configured map: `--derp-map` with the extras, kept current by the refresher.
    configured: Arc<watch::Sender<Base>>,
    /// An attached Coder's map, kept current by the importer.
    coder_map: Arc<watch::Sender<Option<CoderMap>>>,
    derp_regions: Arc<watch::Sender<Arc<Vec<DerpRegion>>>>,
    map_json: Arc<watch::Sender<Arc<String>>>,
    /// The intervals and timeouts of the checks (the global one and `[sections.*]`).
    pub(crate) timing: Arc<watch::Sender<Timing>>,
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
        // Attached, Coder's own embedded region is 999 too: ours needs a free ID.
        let embedded_id = match (&config.coder_url, config.embedded_relay_region) {
            (_, Some(id)) => Some(id),
            (None, None) => Some(derpmap::EMBEDDED_REGION_ID),
            (Some(_), None) => None,
        };
        let embedded = embedded_id
            .filter(|_| config.embedded_relay)
            .map(|id| (&access, id));
        let extras = derpmap::effective(None, embedded, &config.stun_servers).await?;
        // A map that cannot be read at start is EDERP05, not an exit: it is read again.
        let (loaded, warning) = match derpfeed::read(config.derp_map.as_deref()).await {
            Ok(map) => (map, None),
            Err(e) => {
                let warning = derpfeed::unreadable(&e);
                tracing::warn!("{warning}");
                (DerpMap::default(), Some(warning))
            }
        };
        let map = derpfeed::compose(&loaded, &extras);
        let (derp_regions, _) = watch::channel(Arc::new(DerpRegion::all(&map, false)));
        let (map_json, _) = watch::channel(Arc::new(map.to_json()));
        let (configured, _) = watch::channel(Base {
            map: Arc::new(map),
            warning,
        });
        let (map_source, _) = watch::channel(MapSource {
            source: config.derp_map.clone(),
            refresh: config.derp_map_refresh,
        });
        let (access, _) = watch::channel(AccessTarget {
            url: access_url.as_str().into(),
            // Attached, a configured access URL is taken to be Coder's.
            coder: config.coder_url.is_some() && config.access_url.is_some(),
        });
        let (timing, _) = watch::channel(Timing {
            interval: config.interval,
            sections: config.sections.clone(),
        });
        Ok(Targets {
            timing: Arc::new(timing),
            access: Arc::new(access),
            access_url,
            base: base.to_owned(),
            map_source: Arc::new(map_source),
            extras,
            loaded,
            configured: Arc::new(configured),
            coder_map: Arc::new(watch::channel(None).0),
            derp_regions: Arc::new(derp_regions),
            map_json: Arc::new(map_json),
        })
    }

    /// Read the configured map again and again, and publish the effective map on each change.
    fn follow_derp_map(&self, agg: &Aggregator, cancel: &CancellationToken) {
        tokio::spawn(
            derpfeed::Refresher {
                source: self.map_source.subscribe(),
                extras: self.extras.clone(),
                last: self.loaded.clone(),
                base: self.configured.clone(),
                cancel: cancel.clone(),
            }
            .run(),
        );
        tokio::spawn(
            derpfeed::Publisher {
                base: self.configured.subscribe(),
                coder: self.coder_map.subscribe(),
                regions: self.derp_regions.clone(),
                map_json: self.map_json.clone(),
                agg: agg.clone(),
                cancel: cancel.clone(),
            }
            .run(),
        );
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
                let options = WriteBehindOptions {
                    capacity: config.write_queue,
                    ..WriteBehindOptions::default()
                };
                let writer = WriteBehind::spawn(store.clone(), options);
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
        let registry = registry.allow_proxy_networks(config.allowed_proxy_networks.clone());
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

/// The probes' heartbeat interval (their assignment says it).
const HEARTBEAT: Duration = Duration::from_secs(5);

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
            .configured
            .borrow()
            .map
            .regions
            .values()
            .map(|r| (r.region_id, r.region_name.clone()))
            .collect(),
        derp_has_nodes: targets.configured.borrow().map.has_derp_nodes(),
        epoch: stores.durable.as_ref().map(|d| d.epoch.clone()),
        dedicated_thread: true,
        max_vantages: config.max_vantages,
        // The heartbeat interval (5 s) and half of it again for a late heartbeat.
        holder_silence: HEARTBEAT * 3 / 2,
        force_join: config.force_timeout,
        max_report_bytes: crate::aggregator::MAX_REPORT_BYTES,
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
    let _ = agg
        .send(ClusterCommand::RemoteVantages {
            vantages,
            initial: true,
        })
        .await;
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
    targets.follow_derp_map(agg, cancel);
    let coder_daemons = attach_coder(config, targets, stores, agg, cancel);
    tokio::spawn(crate::registry::follow::follow(
        stores.registry.clone(),
        agg.clone(),
        proxies_tx,
        ProvisionerPolicy {
            required: config.provisioner_daemons_required,
            stale_after: config.provisioner_stale_after,
        },
        coder_daemons,
        cancel.clone(),
    ));
    Arc::new(Inventory {
        access: targets.access.subscribe(),
        echo: EchoAuth {
            token: config.coder.websocket_token.clone(),
            over_tls: config.tls_cert.is_some(),
        },
        timing: targets.timing.subscribe(),
        database_threshold: config.database_threshold,
        heartbeat: HEARTBEAT,
        derp_regions: targets.derp_regions.subscribe(),
        derp_node_timeout: config.derp_node_timeout,
        derp_all_vantages: config.derp_all_vantages,
        server_checks_derp: config.server_checks_derp,
        proxies_all_vantages: config.proxies_all_vantages,
        proxies: proxies_rx,
    })
}

/// Attach mode (`--coder-url`): import and follow the Coder deployment. Returns what the
/// ProvisionerDaemons section takes from it (always `None` when not attached).
fn attach_coder(
    config: &Config,
    targets: &Targets,
    stores: &Stores,
    agg: &Aggregator,
    cancel: &CancellationToken,
) -> tokio::sync::watch::Receiver<Option<Arc<crate::ingest::coder::CoderDaemons>>> {
    use crate::ingest::coder::{Importer, client::CoderClient};
    let (tx, rx) = tokio::sync::watch::channel(None);
    let Some(url) = &config.coder_url else {
        return rx;
    };
    match CoderClient::new(url.clone(), config.coder_token.clone()) {
        Ok(client) => {
            tracing::info!(url = %url, "attached to Coder");
            tokio::spawn(
                Importer {
                    client,
                    registry: stores.registry.clone(),
                    agg: agg.clone(),
                    daemons: tx,
                    derp: targets.coder_map.clone(),
                    refresh: config.coder_refresh,
                    proxy_regions: config.coder.proxy_regions.clone(),
                    access: config.access_url.is_none().then(|| targets.access.clone()),
                    echo_unavailable: echo_unavailable(config),
                    cancel: cancel.clone(),
                }
                .run(),
            );
        }
        Err(e) => tracing::error!(error = %e, "cannot attach to Coder"),
    }
    rx
}

/// Attached: why probes cannot run Coder's WebSocket echo, if they cannot.
fn echo_unavailable(config: &Config) -> Option<vantage_proto::report::Unavailable> {
    let reason = match (&config.coder.websocket_token, config.tls_cert.is_some()) {
        (Some(_), true) => return None,
        (None, _) => {
            "no [coder] websocket_token: the Websocket check reaches Coder's echo but does not \
             run it (it needs an Owner's session token)"
        }
        (Some(_), false) => {
            "vantaged serves plaintext, and [coder] websocket_token is given to probes only over \
             TLS: only the server's own vantage runs Coder's echo"
        }
    };
    Some(vantage_proto::report::Unavailable {
        part: "websocket_echo".into(),
        endpoint: vantage_probe::checks::websocket::ECHO_PATH.into(),
        reason: reason.into(),
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
        report_json: Arc::default(),
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
    // Attached without an access URL, the deployment is the Coder URL's.
    let named = match (&config.access_url, &config.coder_url) {
        (None, Some(coder)) => coder.to_string(),
        _ => targets.access_url.clone(),
    };
    let deployment = config.alerting.deployment_name.clone().unwrap_or_else(|| {
        url::Url::parse(&named)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| named.clone())
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
    // The own vantage trusts the certificate this server serves (a self-signed one, or a
    // chain that includes its CA), beside the system roots.
    let own_cert = match &config.tls_cert {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| ServeError::OwnVantage(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let extra = match &config.tls_cert {
        Some(p) => vantage_probe::tls::load_pem_certs(p)
            .map_err(|e| ServeError::OwnVantage(e.to_string()))?,
        None => Vec::new(),
    };
    let tls = vantage_probe::tls::client_config(&extra)
        .map_err(|e| ServeError::OwnVantage(e.to_string()))?;
    let mut ctx =
        CheckContext::new(tls).map_err(|e| ServeError::OwnVantage(format!("HTTP client: {e}")))?;
    ctx.extra_ca_pem = own_cert;
    if let Some(url) = &config.check_database_url {
        let pinger = PgPinger::new(url, &PgOptions::default()).map_err(|e| ConfigError {
            field: "check_database_url".into(),
            message: e.to_string(),
        })?;
        ctx.database = Some(Arc::new(pinger));
    } else if let Some(d) = &stores.durable {
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
) -> Result<(api::grpc::health::HealthReporter, axum::Router), ServeError> {
    let (reporter, health_service) = api::grpc::health::health_service(cancel.clone());
    tokio::spawn(api::grpc::health::track(
        app.agg.clone(),
        reporter.clone(),
        cancel.clone(),
    ));
    // Reflection in both versions: grpcurl 1.8 and Python's grpcio-reflection speak only
    // v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vantage_proto::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
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
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha)
    .into_axum_router();
    let served = api::http::guard::Served::new(&[&targets.base, &targets.access_url]);
    let mut router = api::http::router(app.clone(), served)
        .merge(api::grpc::health::readyz_router(reporter.clone()))
        .merge(api::grpc::watch_codec::router(app))
        .merge(grpc)
        .merge(api::http::derp_map_router(targets.map_json.subscribe()));
    if config.embedded_relay {
        router = router.merge(vantage_derp::relay::router(Arc::new(
            vantage_derp::Relay::new(),
        )));
    }
    // Unknown paths: 404 (gRPC requests: UNIMPLEMENTED), not tonic's gRPC answer to all.
    let router = router.fallback(api::http::guard::not_found);
    Ok((reporter, router))
}
