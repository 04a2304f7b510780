//! Attach mode (`--coder-url`): imports a live Coder deployment's inventory and keeps following
//! it — its DERP map (over the configured one; Coder wins region-ID clashes), its version (what `coder_version` and EPD02/EPD03 compare against), its workspace
//! proxies (into the registry, source `coder`, so probes of their regions check them), its
//! provisioner daemons (judged with Coder's rules, no heartbeat needed), its replicas and, with
//! an Owner token, Coder's own health report as one more vantage named `coderd`.
//! Every `refresh` (jittered); each round's outcome is the report's `coder` block. The last
//! good inventory is kept when a round fails, never replaced by nothing.

pub mod client;
pub mod import;
pub mod model;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage_probe::rules::provisioners::ProvisionerDaemon;
use vantage_proto::Severity;
use vantage_proto::backoff::Backoff;
use vantage_proto::report::{CoderReplica, CoderReport, Unavailable};

use self::client::CoderClient;
use self::import::{ImportedProxy, ProxyRegions, Round};
use crate::aggregator::{AdminCommand, Aggregator};
use crate::ingest::derpfeed::CoderMap;
use crate::ingest::inventory::AccessTarget;
use crate::registry::Registry;
use vantage_derp::map::DerpMap;

/// The vantage that carries Coder's own health report.
pub const CODERD: &str = "coderd";

/// What the ProvisionerDaemons section takes from Coder: the deployment version and its daemons.
#[derive(Debug, Clone, PartialEq)]
pub struct CoderDaemons {
    pub version: String,
    pub daemons: Vec<ProvisionerDaemon>,
}

/// The importer's parts.
pub struct Importer {
    pub client: CoderClient,
    pub registry: Arc<Registry>,
    pub agg: Aggregator,
    pub daemons: watch::Sender<Option<Arc<CoderDaemons>>>,
    /// Where Coder's DERP map goes: merged over the configured map (Coder wins every
    /// region-ID clash) by [`crate::ingest::derpfeed::Publisher`].
    pub derp: Arc<watch::Sender<Option<CoderMap>>>,
    pub refresh: Duration,
    pub proxy_regions: ProxyRegions,
    /// Without `--access-url`: where Coder's `dashboard_url` goes (the checks' access URL).
    pub access: Option<Arc<watch::Sender<AccessTarget>>>,
    /// Why probes cannot run Coder's WebSocket echo, listed under `unavailable` every round.
    pub echo_unavailable: Option<Unavailable>,
    pub cancel: CancellationToken,
}

/// The last good inventory.
#[derive(Default)]
struct Last {
    version: String,
    proxies: Vec<ImportedProxy>,
    daemons: Vec<ProvisionerDaemon>,
    replicas: Vec<CoderReplica>,
    imported_at: Option<chrono::DateTime<Utc>>,
}

impl Importer {
    /// Import at once, then every `refresh` (±10 %), until cancelled.
    pub async fn run(self) {
        let mut last = Last::default();
        let mut every = Backoff::new(self.refresh, self.refresh).jitter(0.1);
        loop {
            let round = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = import::round(&self.client, &self.proxy_regions) => r,
            };
            let report = self.apply(round, &mut last).await;
            if self.agg.send(AdminCommand::Coder { report }).await.is_err() {
                return;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(every.next_delay()) => {}
            }
        }
    }

    /// Coder's map, for the publisher to put over the configured one; a change re-sends
    /// assignments at once.
    fn follow_derp(&self, map: DerpMap, force_websockets: bool) {
        let next = CoderMap {
            map,
            force_websockets,
        };
        self.derp.send_if_modified(|now| {
            let changed = now.as_ref() != Some(&next);
            if changed {
                *now = Some(next);
            }
            changed
        });
    }

    /// Without `--access-url`: Coder's dashboard URL becomes what the checks target (a change
    /// re-sends assignments at once).
    fn follow_access(&self, url: &url::Url) {
        let Some(access) = &self.access else {
            return;
        };
        let next = AccessTarget {
            url: url.as_str().into(),
            coder: true,
        };
        access.send_if_modified(|now| {
            let changed = *now != next;
            if changed {
                tracing::info!(access_url = %url, "the access URL is Coder's dashboard URL");
                *now = next;
            }
            changed
        });
    }

    /// Keep what this round read, push it to the registry and the daemons' section, and
    /// build the `coder` block.
    async fn apply(&self, round: Round, last: &mut Last) -> CoderReport {
        let now = Utc::now();
        let complete = round.complete();
        let warnings = round.warnings;
        let mut unavailable = round.unavailable;
        if let Some(v) = round.version {
            last.version = v;
        }
        if let Some(url) = &round.dashboard_url {
            self.follow_access(url);
        }
        unavailable.extend(self.echo_unavailable.clone());
        if let Some(p) = round.proxies {
            let specs = p.iter().map(|p| p.spec.clone()).collect();
            match self.registry.sync_coder_proxies(specs).await {
                Ok(skipped) => {
                    for reason in skipped {
                        unavailable.push(Unavailable {
                            part: "workspace_proxies".into(),
                            endpoint: import::WORKSPACE_PROXIES.into(),
                            reason: format!("a proxy Coder lists was not imported: {reason}"),
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "storing Coder's workspace proxies"),
            }
            last.proxies = p;
        }
        if let Some((map, force_websockets)) = round.derp {
            self.follow_derp(map, force_websockets);
        }
        if let Some(sections) = round.coderd {
            let _ = self
                .agg
                .send(AdminCommand::ExternalVantage {
                    name: CODERD.to_owned(),
                    version: last.version.clone(),
                    sections,
                })
                .await;
        }
        if let Some(d) = round.daemons {
            last.daemons = d;
        }
        if let Some(r) = round.replicas {
            last.replicas = r;
        }
        if complete {
            last.imported_at = Some(now);
        }
        if !last.version.is_empty() {
            let feed = Arc::new(CoderDaemons {
                version: last.version.clone(),
                daemons: last.daemons.clone(),
            });
            self.daemons.send_if_modified(|old| {
                if old.as_deref() == Some(&*feed) {
                    return false;
                }
                *old = Some(feed);
                true
            });
        }
        CoderReport {
            url: self.client.base().to_string(),
            version: last.version.clone(),
            imported_at: last.imported_at,
            attempted_at: Some(now),
            severity: if warnings.is_empty() {
                Severity::Ok
            } else {
                Severity::Warning
            },
            warnings,
            unavailable,
            proxies: last.proxies.iter().map(|p| p.coder.clone()).collect(),
            replicas: last.replicas.clone(),
        }
    }
}
