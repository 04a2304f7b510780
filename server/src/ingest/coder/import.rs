//! One import round: ask Coder for each part of its inventory and turn every answer into data —
//! the part itself, a warning (ECDR01…ECDR04) or an entry under `unavailable`. A part that
//! could not be read is `None`, so the caller keeps the last good one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use vantage_probe::rules::provisioners::ProvisionerDaemon;
use vantage_proto::codes;
use vantage_proto::report::{CoderProxy, CoderReplica, Message, Unavailable};

use super::client::{CoderClient, CoderError};
use super::model::{self, PRIMARY};
use crate::registry::ProxySpec;
use vantage_probe::rules::SectionReport;

pub const BUILDINFO: &str = "/api/v2/buildinfo";
pub const CONNECTION: &str = "/api/v2/workspaceagents/connection";
pub const WORKSPACE_PROXIES: &str = "/api/v2/workspaceproxies";
pub const REGIONS: &str = "/api/v2/regions";
pub const ORGANIZATIONS: &str = "/api/v2/organizations";
pub const REPLICAS: &str = "/api/v2/replicas";
pub const DEBUG_HEALTH: &str = "/api/v2/debug/health";

/// A workspace proxy as imported: what the registry takes and Coder's status of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedProxy {
    pub spec: ProxySpec,
    pub coder: CoderProxy,
}

/// What one round found. `None`: not read this time (keep the last good).
#[derive(Debug, Default)]
pub struct Round {
    pub version: Option<String>,
    /// Coder's `dashboard_url` (build info), when it is an http(s) URL: the default access URL.
    pub dashboard_url: Option<url::Url>,
    /// Coder's DERP map and whether it forces WebSockets.
    pub derp: Option<(vantage_derp::map::DerpMap, bool)>,
    pub proxies: Option<Vec<ImportedProxy>>,
    pub daemons: Option<Vec<ProvisionerDaemon>>,
    pub replicas: Option<Vec<CoderReplica>>,
    /// Coder's own health report, section by section (Owner only).
    pub coderd: Option<Vec<SectionReport>>,
    pub warnings: Vec<Message>,
    pub unavailable: Vec<Unavailable>,
}

impl Round {
    /// Every part was read (or is known not to exist).
    pub fn complete(&self) -> bool {
        self.warnings
            .iter()
            .all(|w| w.code != codes::ECDR01 && w.code != codes::ECDR02)
    }
}

/// The round stopped: Coder is away or refused the token.
struct Stop;

/// Which probe region checks each Coder proxy.
pub type ProxyRegions = BTreeMap<String, String>;

/// Ask Coder for everything, in order; stop at the first sign that Coder is away or refused
/// the token (the rest would only fail the same way).
pub async fn round(client: &CoderClient, regions: &ProxyRegions) -> Round {
    let mut r = Round::default();
    let _ = round_inner(client, regions, &mut r).await;
    r
}

async fn round_inner(
    client: &CoderClient,
    regions: &ProxyRegions,
    r: &mut Round,
) -> Result<(), Stop> {
    let info: model::BuildInfo = match client.get(BUILDINFO).await {
        Ok(i) => i,
        Err(e) => return Err(stop(r, BUILDINFO, &e)),
    };
    r.version = Some(info.version);
    r.dashboard_url = url::Url::parse(&info.dashboard_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    r.derp = derp_map(client, r).await?;
    r.proxies = proxies(client, regions, r).await?;
    r.daemons = daemons(client, r).await?;
    r.replicas = replicas(client, r).await?;
    r.coderd = coderd_report(client, r).await?;
    Ok(())
}

/// ECDR01 for an unreachable Coder or a 5xx, ECDR02 for 401; anything else is the caller's.
fn fatal(r: &mut Round, endpoint: &str, e: &CoderError) -> Option<Stop> {
    match e.status() {
        Some(401) => {
            r.warnings.push(Message::new(
                codes::ECDR02,
                format!("Coder refused the token at GET {endpoint}: {e}"),
            ));
            Some(Stop)
        }
        None | Some(500..) => {
            r.warnings.push(Message::new(
                codes::ECDR01,
                format!("Coder is unreachable at GET {endpoint}: {e}; keeping the last inventory"),
            ));
            Some(Stop)
        }
        Some(_) => None,
    }
}

/// Like [`fatal`], but every other answer is ECDR01 too (the route must exist).
fn stop(r: &mut Round, endpoint: &str, e: &CoderError) -> Stop {
    if let Some(s) = fatal(r, endpoint, e) {
        return s;
    }
    r.warnings.push(Message::new(
        codes::ECDR01,
        format!("Coder answered GET {endpoint} with {e}; keeping the last inventory"),
    ));
    Stop
}

fn lacks(r: &mut Round, endpoint: &str, what: &str, e: &CoderError) {
    r.warnings.push(Message::new(
        codes::ECDR03,
        format!("GET {endpoint}: {e}: the token lacks {what}"),
    ));
}

fn unavailable(r: &mut Round, part: &str, endpoint: &str, reason: String) {
    r.unavailable.push(Unavailable {
        part: part.to_owned(),
        endpoint: endpoint.to_owned(),
        reason,
    });
}

async fn derp_map(
    client: &CoderClient,
    r: &mut Round,
) -> Result<Option<(vantage_derp::map::DerpMap, bool)>, Stop> {
    let conn: model::Connection = match client.get(CONNECTION).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(s) = fatal(r, CONNECTION, &e) {
                return Err(s);
            }
            lacks(r, CONNECTION, "the permission to read the DERP map", &e);
            return Ok(None);
        }
    };
    match vantage_derp::map::DerpMap::parse(&conn.derp_map.to_string()) {
        Ok(map) => Ok(Some((map, conn.derp_force_websockets))),
        Err(e) => {
            r.warnings.push(Message::new(
                codes::ECDR01,
                format!(
                    "GET {CONNECTION}: Coder's DERP map is not valid: {e}; keeping the last one"
                ),
            ));
            Ok(None)
        }
    }
}

async fn proxies(
    client: &CoderClient,
    regions: &ProxyRegions,
    r: &mut Round,
) -> Result<Option<Vec<ImportedProxy>>, Stop> {
    let first = match client.get::<model::ProxyList>(WORKSPACE_PROXIES).await {
        Ok(list) => return Ok(Some(to_imported(list.into_vec(), regions))),
        Err(e) => e,
    };
    if let Some(s) = fatal(r, WORKSPACE_PROXIES, &first) {
        return Err(s);
    }
    if !matches!(first.status(), Some(403 | 404)) {
        r.warnings.push(Message::new(
            codes::ECDR01,
            format!(
                "Coder answered GET {WORKSPACE_PROXIES} with {first}; keeping the last proxies"
            ),
        ));
        return Ok(None);
    }
    // The user's view of the regions: every member may read it.
    let listed = match client.get::<model::Regions>(REGIONS).await {
        Ok(list) => to_imported(list.regions, regions),
        Err(e) => {
            if let Some(s) = fatal(r, REGIONS, &e) {
                return Err(s);
            }
            lacks(r, REGIONS, "the permission to list regions", &e);
            return Ok(None);
        }
    };
    if listed.is_empty() {
        let reason = if first.status() == Some(404) {
            format!("the deployment has no workspace proxies: {first} (an open-source deployment)")
        } else {
            format!("the deployment offers no workspace proxies to this token: {first}")
        };
        unavailable(r, "workspace_proxies", WORKSPACE_PROXIES, reason);
    } else if first.status() == Some(403) {
        lacks(
            r,
            WORKSPACE_PROXIES,
            "workspace_proxy:read (the proxies come from /api/v2/regions, without Coder's status)",
            &first,
        );
    }
    Ok(Some(listed))
}

fn to_imported(list: Vec<model::Proxy>, regions: &ProxyRegions) -> Vec<ImportedProxy> {
    list.into_iter()
        .filter(|p| p.name != PRIMARY && !p.deleted)
        .map(|p| {
            let region = regions
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| p.name.clone());
            let (status, errors, warnings, checked_at) = match p.status {
                Some(s) => (
                    s.status,
                    s.report.errors.unwrap_or_default(),
                    s.report.warnings.unwrap_or_default(),
                    s.checked_at,
                ),
                None => (String::new(), Vec::new(), Vec::new(), None::<DateTime<Utc>>),
            };
            ImportedProxy {
                coder: CoderProxy {
                    name: p.name.clone(),
                    region: region.clone(),
                    coder_status: status,
                    coder_errors: errors,
                    coder_warnings: warnings,
                    coder_checked_at: checked_at,
                    probe_status: String::new(),
                },
                spec: ProxySpec {
                    name: p.name,
                    display_name: p.display_name,
                    url: p.path_app_url,
                    region,
                    icon_url: p.icon_url,
                    derp_enabled: p.derp_enabled,
                    derp_only: p.derp_only,
                    version: p.version,
                },
            }
        })
        .collect()
}

async fn daemons(
    client: &CoderClient,
    r: &mut Round,
) -> Result<Option<Vec<ProvisionerDaemon>>, Stop> {
    let orgs: Vec<model::Organization> = match client.get(ORGANIZATIONS).await {
        Ok(o) => o,
        Err(e) => {
            if let Some(s) = fatal(r, ORGANIZATIONS, &e) {
                return Err(s);
            }
            lacks(r, ORGANIZATIONS, "the permission to read organizations", &e);
            return Ok(None);
        }
    };
    let mut all = Vec::new();
    let mut complete = true;
    for org in orgs {
        let endpoint = format!("{ORGANIZATIONS}/{}/provisionerdaemons", org.id);
        match client.get::<Vec<model::ProvisionerDaemon>>(&endpoint).await {
            Ok(list) => all.extend(list.into_iter().map(model::ProvisionerDaemon::into_daemon)),
            Err(e) => {
                if let Some(s) = fatal(r, &endpoint, &e) {
                    return Err(s);
                }
                let what = format!("provisioner_daemon:read in organization {:?}", org.name);
                lacks(r, &endpoint, &what, &e);
                complete = false;
            }
        }
    }
    Ok(complete.then_some(all))
}

/// Coder's own report, each section as Coder computed it; a section whose JSON this version
/// cannot read is left out.
async fn coderd_report(
    client: &CoderClient,
    r: &mut Round,
) -> Result<Option<Vec<SectionReport>>, Stop> {
    let body: serde_json::Value = match client.get(DEBUG_HEALTH).await {
        Ok(b) => b,
        Err(e) => {
            if let Some(s) = fatal(r, DEBUG_HEALTH, &e) {
                return Err(s);
            }
            let reason = format!("{e}: Coder's own health report needs an Owner token");
            unavailable(r, "coderd_report", DEBUG_HEALTH, reason);
            return Ok(None);
        }
    };
    fn section<T: serde::de::DeserializeOwned>(body: &serde_json::Value, key: &str) -> Option<T> {
        serde_json::from_value(body.get(key)?.clone()).ok()
    }
    let sections = [
        section(&body, "access_url").map(SectionReport::AccessUrl),
        section(&body, "database").map(SectionReport::Database),
        section(&body, "derp").map(SectionReport::Derp),
        section(&body, "websocket").map(SectionReport::Websocket),
        section(&body, "workspace_proxy").map(SectionReport::WorkspaceProxy),
        section(&body, "provisioner_daemons").map(SectionReport::ProvisionerDaemons),
    ];
    Ok(Some(sections.into_iter().flatten().collect()))
}

async fn replicas(client: &CoderClient, r: &mut Round) -> Result<Option<Vec<CoderReplica>>, Stop> {
    match client.get::<Vec<model::Replica>>(REPLICAS).await {
        Ok(list) => {
            let list: Vec<CoderReplica> = list.into_iter().map(CoderReplica::from).collect();
            for rep in list.iter().filter(|x| !x.error.is_empty()) {
                r.warnings.push(Message::new(
                    codes::ECDR04,
                    format!(
                        "coderd replica {} ({}) reports: {}",
                        rep.hostname, rep.id, rep.error
                    ),
                ));
            }
            Ok(Some(list))
        }
        Err(e) => {
            if let Some(s) = fatal(r, REPLICAS, &e) {
                return Err(s);
            }
            let reason = match e.status() {
                // Coder answers 404 both without the enterprise route and to a caller that may
                // not read replicas.
                Some(404) => format!(
                    "{e}: an open-source deployment has no replicas, and Coder hides them from a token that may not read them (Owner may)"
                ),
                Some(403) => format!("{e}: the token may not read the replicas (Owner may)"),
                _ => e.to_string(),
            };
            unavailable(r, "replicas", REPLICAS, reason);
            Ok(None)
        }
    }
}
