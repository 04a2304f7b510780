//! What there is to check, and who checks what: builds each vantage's assignment (`docs/behaviour.md#assignment`):
//! access URL and websocket to every vantage; each DERP region and each workspace proxy to the
//! vantages of its region (or to all, by configuration); the database to `server`.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vantage_probe::rules::workspace_proxy::WorkspaceProxy;
use vantage_proto::pb::check::Target;
use vantage_proto::{Section, convert, pb};

use crate::aggregator::AssignedCheck;

/// One region of the effective DERP map, ready to assign.
#[derive(Debug, Clone)]
pub struct DerpRegion {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub json: String,
    /// Connect over WebSocket only (an attached Coder's `derp_force_websockets`).
    pub force_websockets: bool,
}

impl DerpRegion {
    pub fn from_map(r: &vantage_derp::map::Region) -> DerpRegion {
        DerpRegion {
            id: r.region_id,
            code: r.region_code.clone(),
            name: r.region_name.clone(),
            json: serde_json::to_string(r).unwrap_or_default(),
            force_websockets: false,
        }
    }

    /// Every region of `map`.
    pub fn all(map: &vantage_derp::map::DerpMap, force_websockets: bool) -> Vec<DerpRegion> {
        map.regions
            .values()
            .map(|r| DerpRegion {
                force_websockets,
                ..DerpRegion::from_map(r)
            })
            .collect()
    }
}

/// The access URL the Access URL and Websocket checks target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTarget {
    pub url: Arc<str>,
    /// The URL is an attached Coder's (configured while attached, or its `dashboard_url`), and
    /// so is the echo, which needs an Owner's credentials.
    pub coder: bool,
}

/// What the Websocket check may present to Coder's echo.
#[derive(Debug, Clone, Default)]
pub struct EchoAuth {
    /// `[coder] websocket_token`, sent as `Coder-Session-Token`.
    pub token: Option<crate::config::Secret>,
    /// The probes' sessions travel over TLS: only then does a probe receive the token (the
    /// server's own vantage, in-process, always does).
    pub over_tls: bool,
}

/// How often and how long each section's checks run: the global `interval` and the
/// `[sections.<section>]` tables, kept current (a reloaded configuration changes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub sections: crate::config::Sections,
}

impl Timing {
    pub fn new(interval: Duration) -> Timing {
        Timing {
            interval,
            sections: crate::config::Sections::default(),
        }
    }

    /// The interval and timeout of `section`'s checks (`timeout`: the built-in one).
    pub fn of(&self, section: Section, timeout: Duration) -> (Duration, Duration) {
        let given = self.sections.get(section);
        (
            given.interval.unwrap_or(self.interval),
            given.timeout.unwrap_or(timeout),
        )
    }
}

/// The effective inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The access URL, kept current (attached without `--access-url`: Coder's `dashboard_url`
    /// once imported).
    pub access: watch::Receiver<AccessTarget>,
    pub echo: EchoAuth,
    /// The intervals and timeouts, kept current.
    pub timing: watch::Receiver<Timing>,
    pub database_threshold: Duration,
    pub heartbeat: Duration,
    /// The effective DERP map's regions, kept current (an attached Coder's map changes).
    pub derp_regions: watch::Receiver<Arc<Vec<DerpRegion>>>,
    pub derp_node_timeout: Duration,
    /// Every DERP region to every vantage (default: a probe gets the regions whose
    /// RegionCode equals its region).
    pub derp_all_vantages: bool,
    /// The server's own vantage checks every DERP region.
    pub server_checks_derp: bool,
    /// Every proxy to every vantage (default: the proxies of the probe's region).
    pub proxies_all_vantages: bool,
    /// The registry's proxies, kept current by the server.
    pub proxies: watch::Receiver<Arc<Vec<WorkspaceProxy>>>,
}

pub const ACCESS_URL_TIMEOUT: Duration = Duration::from_secs(5);
pub const WEBSOCKET_TIMEOUT: Duration = Duration::from_secs(5);
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(5);
pub const DERP_TIMEOUT: Duration = Duration::from_secs(30);

impl Inventory {
    fn check(&self, id: String, section: Section, timeout: Duration, target: Target) -> pb::Check {
        let (interval, timeout) = self.timing.borrow().of(section, timeout);
        pb::Check {
            id,
            section: pb::Section::from(section) as i32,
            interval: Some(convert::duration(interval)),
            timeout: Some(convert::duration(timeout)),
            target: Some(target),
        }
    }

    /// The assignment of the vantage `name` in `region`.
    pub fn assignment_for(&self, name: &str, region: &str) -> pb::Assignment {
        let is_server = crate::config::is_server_vantage(name);
        let mut checks = self.every_vantages_checks(is_server);
        checks.extend(self.regional_checks(is_server, region));
        let mut hasher = DefaultHasher::new();
        for c in &checks {
            c.id.hash(&mut hasher);
            format!("{:?}", c.target).hash(&mut hasher);
            c.interval.map(|d| (d.seconds, d.nanos)).hash(&mut hasher);
            c.timeout.map(|d| (d.seconds, d.nanos)).hash(&mut hasher);
        }
        pb::Assignment {
            generation: hasher.finish(),
            checks,
            heartbeat_interval: Some(convert::duration(self.heartbeat)),
        }
    }

    /// The access URL and the websocket echo for every vantage; the database for the server's.
    fn every_vantages_checks(&self, is_server: bool) -> Vec<pb::Check> {
        let access = self.access.borrow().clone();
        let access_url = access.url.to_string();
        let token = match &self.echo.token {
            Some(t) if access.coder && (is_server || self.echo.over_tls) => t.expose(),
            _ => "",
        };
        let mut checks = vec![
            self.check(
                "access_url".into(),
                Section::AccessUrl,
                ACCESS_URL_TIMEOUT,
                Target::AccessUrl(pb::AccessUrlTarget {
                    url: access_url.clone(),
                }),
            ),
            self.check(
                "websocket".into(),
                Section::Websocket,
                WEBSOCKET_TIMEOUT,
                Target::Websocket(pb::WebsocketTarget {
                    url: access_url,
                    coder: access.coder,
                    session_token: token.to_owned(),
                }),
            ),
        ];
        if is_server {
            checks.push(self.check(
                "database".into(),
                Section::Database,
                DATABASE_TIMEOUT,
                Target::Database(pb::DatabaseTarget {
                    threshold: Some(convert::duration(self.database_threshold)),
                }),
            ));
        }
        checks
    }

    /// The DERP regions and workspace proxies of `region` (or all, as configured).
    fn regional_checks(&self, is_server: bool, region: &str) -> Vec<pb::Check> {
        let mut checks = Vec::new();
        for r in self.derp_regions.borrow().iter() {
            let mine = if is_server {
                self.server_checks_derp
            } else {
                self.derp_all_vantages || (!region.is_empty() && r.code == region)
            };
            if mine {
                checks.push(self.check(
                    format!("derp/{}", r.id),
                    Section::Derp,
                    DERP_TIMEOUT,
                    Target::DerpRegion(pb::DerpRegionTarget {
                        region_json: r.json.clone(),
                        node_timeout: Some(convert::duration(self.derp_node_timeout)),
                        force_websockets: r.force_websockets,
                    }),
                ));
            }
        }
        for p in self.proxies.borrow().iter() {
            let mine = self.proxies_all_vantages || (!region.is_empty() && p.region == region);
            if mine && !p.url.is_empty() {
                checks.push(self.check(
                    format!("proxy/{}", p.name),
                    Section::WorkspaceProxy,
                    PROXY_TIMEOUT,
                    Target::WorkspaceProxy(p.target()),
                ));
            }
        }
        checks
    }
}

/// One vantage's view of the inventory: its assignment now, and each new one when what it
/// must check changes (the registry's proxies, the DERP map's regions, the access URL, the
/// intervals and timeouts). Shared by probe
/// sessions and the own vantage.
pub struct Assignments {
    inventory: Arc<Inventory>,
    proxies: watch::Receiver<Arc<Vec<WorkspaceProxy>>>,
    derp: watch::Receiver<Arc<Vec<DerpRegion>>>,
    access: watch::Receiver<AccessTarget>,
    timing: watch::Receiver<Timing>,
    name: String,
    region: String,
    generation: u64,
}

impl Assignments {
    /// Follow `name` in `region`; also returns its current assignment.
    pub fn follow(
        inventory: Arc<Inventory>,
        name: &str,
        region: &str,
    ) -> (Assignments, pb::Assignment) {
        let current = inventory.assignment_for(name, region);
        let follow = Assignments {
            proxies: inventory.proxies.clone(),
            derp: inventory.derp_regions.clone(),
            access: inventory.access.clone(),
            timing: inventory.timing.clone(),
            inventory,
            name: name.to_owned(),
            region: region.to_owned(),
            generation: current.generation,
        };
        (follow, current)
    }

    /// The next assignment that differs from the last one; `None` once the inventory is no
    /// longer kept (the server stops). Cancel-safe.
    pub async fn changed(&mut self) -> Option<pb::Assignment> {
        loop {
            tokio::select! {
                r = self.proxies.changed() => r.ok()?,
                r = self.derp.changed() => r.ok()?,
                r = self.access.changed() => r.ok()?,
                r = self.timing.changed() => r.ok()?,
            }
            let a = self.inventory.assignment_for(&self.name, &self.region);
            if a.generation != self.generation {
                self.generation = a.generation;
                return Some(a);
            }
        }
    }
}

/// The check ids and sections of an assignment, for the aggregator.
pub fn check_ids(a: &pb::Assignment) -> Vec<AssignedCheck> {
    a.checks
        .iter()
        .filter_map(|c| {
            Some(AssignedCheck {
                id: c.id.clone(),
                section: Section::from_pb(c.section)?,
                targets: targets(c),
            })
        })
        .collect()
}

/// The targets a probe names in its observations of `check` (`vantage_probe::checks`): the
/// URL, `database`, the proxy's name, or for a DERP region each node (and `derp` or the check
/// id for a region it could not check); the check id for a check without a target.
fn targets(check: &pb::Check) -> BTreeSet<String> {
    use vantage_probe::checks::derp::node_target;
    match &check.target {
        Some(Target::AccessUrl(t)) => BTreeSet::from([t.url.clone()]),
        Some(Target::Websocket(t)) => BTreeSet::from([t.url.clone()]),
        Some(Target::Database(_)) => BTreeSet::from(["database".to_owned()]),
        Some(Target::WorkspaceProxy(t)) => BTreeSet::from([t.name.clone()]),
        Some(Target::DerpRegion(t)) => {
            let mut targets = BTreeSet::from(["derp".to_owned(), check.id.clone()]);
            if let Ok(region) = serde_json::from_str::<vantage_derp::Region>(&t.region_json) {
                targets.extend(
                    region
                        .nodes
                        .iter()
                        .map(|n| node_target(region.region_id, &n.name)),
                );
            }
            targets
        }
        None => BTreeSet::from([check.id.clone()]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::SERVER_VANTAGE;

    pub(crate) type Senders = (
        watch::Sender<Arc<Vec<WorkspaceProxy>>>,
        watch::Sender<Arc<Vec<DerpRegion>>>,
        watch::Sender<AccessTarget>,
        watch::Sender<Timing>,
    );

    /// An inventory of `proxies`, the DERP regions fra (1), iad (2) and the embedded relay's,
    /// the access URL `http://127.0.0.1:1` and 30 s intervals; and what changes each part.
    pub(crate) fn inv(proxies: Vec<WorkspaceProxy>) -> (Inventory, Senders) {
        let (tx, rx) = watch::channel(Arc::new(proxies));
        let region = |id: i64, code: &str| DerpRegion {
            id,
            code: code.into(),
            name: code.into(),
            json: "{}".into(),
            force_websockets: false,
        };
        let (derp_tx, derp_rx) = watch::channel(Arc::new(vec![
            region(1, "fra"),
            region(2, "iad"),
            region(999, "vantage"),
        ]));
        let (access_tx, access_rx) = watch::channel(AccessTarget {
            url: "http://127.0.0.1:1".into(),
            coder: false,
        });
        let (timing_tx, timing_rx) = watch::channel(Timing::new(Duration::from_secs(30)));
        (
            Inventory {
                access: access_rx,
                echo: EchoAuth::default(),
                timing: timing_rx,
                database_threshold: Duration::from_millis(15),
                heartbeat: Duration::from_secs(5),
                derp_regions: derp_rx,
                derp_node_timeout: Duration::from_secs(10),
                derp_all_vantages: false,
                server_checks_derp: true,
                proxies_all_vantages: false,
                proxies: rx,
            },
            (tx, derp_tx, access_tx, timing_tx),
        )
    }

    fn ids(a: &pb::Assignment) -> Vec<String> {
        check_ids(a).into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn assignments_follow_regions() {
        let proxy = |n: &str, r: &str| WorkspaceProxy {
            name: n.into(),
            url: format!("http://{n}"),
            region: r.into(),
            ..Default::default()
        };
        let (inv, (tx, derp_tx, _access, _timing)) =
            inv(vec![proxy("p-fra", "fra"), proxy("p-iad", "iad")]);
        assert_eq!(
            ids(&inv.assignment_for("fra-1", "fra")),
            vec!["access_url", "websocket", "derp/1", "proxy/p-fra"]
        );
        assert_eq!(
            ids(&inv.assignment_for(SERVER_VANTAGE, "")),
            vec![
                "access_url",
                "websocket",
                "database",
                "derp/1",
                "derp/2",
                "derp/999"
            ]
        );
        assert_eq!(
            ids(&inv.assignment_for("syd-1", "syd")),
            vec!["access_url", "websocket"]
        );
        let before = inv.assignment_for("fra-1", "fra").generation;
        tx.send_replace(Arc::new(vec![]));
        let after = inv.assignment_for("fra-1", "fra");
        assert_ne!(
            before, after.generation,
            "a registry change is a new assignment"
        );
        assert_eq!(
            inv.assignment_for("iad-1", "iad").generation,
            inv.assignment_for("iad-2", "iad").generation
        );
        // A region added to the DERP map goes to the probes of its code.
        derp_tx.send_modify(|r| {
            let mut more = (**r).clone();
            more.push(DerpRegion {
                id: 10001,
                code: "syd".into(),
                name: "Sydney".into(),
                json: "{}".into(),
                force_websockets: false,
            });
            *r = Arc::new(more);
        });
        assert_eq!(
            ids(&inv.assignment_for("syd-1", "syd")),
            vec!["access_url", "websocket", "derp/10001"]
        );
    }

    #[tokio::test]
    async fn a_follower_hears_of_a_new_derp_region() {
        let (inv, (_tx, derp_tx, _access, _timing)) = inv(vec![]);
        let (mut follow, first) = Assignments::follow(Arc::new(inv), "syd-1", "syd");
        assert_eq!(ids(&first), vec!["access_url", "websocket"]);
        derp_tx.send_modify(|r| {
            let mut more = (**r).clone();
            more.push(DerpRegion {
                id: 7,
                code: "syd".into(),
                name: "Sydney".into(),
                json: "{}".into(),
                force_websockets: false,
            });
            *r = Arc::new(more);
        });
        let next = follow.changed().await.unwrap();
        assert_eq!(ids(&next), vec!["access_url", "websocket", "derp/7"]);
    }

    fn echo_of(a: &pb::Assignment) -> pb::WebsocketTarget {
        a.checks
            .iter()
            .find_map(|c| match &c.target {
                Some(Target::Websocket(t)) => Some(t.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[tokio::test]
    async fn coders_dashboard_url_and_echo_token_reach_assignments() {
        let (mut inv, (_tx, _derp, access_tx, _timing)) = inv(vec![]);
        inv.echo.token = Some(crate::config::Secret::new("owner-secret"));
        let inv = Arc::new(inv);
        let (mut follow, first) = Assignments::follow(inv.clone(), "syd-1", "syd");
        // Not Coder's URL (yet): no token anywhere.
        assert_eq!(echo_of(&first).session_token, "");
        assert!(!echo_of(&first).coder);
        access_tx.send_replace(AccessTarget {
            url: "https://coder.example.com/".into(),
            coder: true,
        });
        let next = follow.changed().await.unwrap();
        let echo = echo_of(&next);
        assert_eq!(echo.url, "https://coder.example.com/");
        assert!(echo.coder);
        // Plaintext sessions: a probe gets no token, the server's own vantage does.
        assert_eq!(echo.session_token, "");
        let own = echo_of(&inv.assignment_for(SERVER_VANTAGE, ""));
        assert_eq!(own.session_token, "owner-secret");
        // Over TLS a probe gets it too.
        let mut tls = (*inv).clone();
        tls.echo.over_tls = true;
        assert_eq!(
            echo_of(&tls.assignment_for("syd-1", "syd")).session_token,
            "owner-secret"
        );
    }

    fn timing_of(a: &pb::Assignment, id: &str) -> (Duration, Duration) {
        let c = a.checks.iter().find(|c| c.id == id).unwrap();
        (
            convert::from_duration(c.interval.as_ref()).unwrap(),
            convert::from_duration(c.timeout.as_ref()).unwrap(),
        )
    }

    #[tokio::test]
    async fn section_intervals_and_timeouts_reach_the_checks_and_follow_changes() {
        use crate::config::SectionTiming;
        let (inv, (_tx, _derp, _access, timing_tx)) = inv(vec![]);
        let inv = Arc::new(inv);
        let (mut follow, first) = Assignments::follow(inv.clone(), SERVER_VANTAGE, "");
        assert_eq!(
            timing_of(&first, "derp/1"),
            (Duration::from_secs(30), DERP_TIMEOUT)
        );
        let mut next = Timing::new(Duration::from_secs(60));
        next.sections.set(
            Section::Derp,
            SectionTiming {
                interval: Some(Duration::from_secs(15)),
                timeout: Some(Duration::from_secs(20)),
            },
        );
        next.sections.set(
            Section::Database,
            SectionTiming {
                interval: None,
                timeout: Some(Duration::from_secs(2)),
            },
        );
        timing_tx.send_replace(next);
        let a = follow.changed().await.unwrap();
        assert_eq!(
            timing_of(&a, "derp/1"),
            (Duration::from_secs(15), Duration::from_secs(20))
        );
        assert_eq!(
            timing_of(&a, "database"),
            (Duration::from_secs(60), Duration::from_secs(2))
        );
        assert_eq!(
            timing_of(&a, "access_url"),
            (Duration::from_secs(60), ACCESS_URL_TIMEOUT)
        );
        // Only a timeout changes: still a new assignment.
        timing_tx.send_modify(|t| {
            t.sections.set(
                Section::Derp,
                SectionTiming {
                    interval: Some(Duration::from_secs(15)),
                    timeout: Some(Duration::from_secs(25)),
                },
            )
        });
        let b = follow.changed().await.unwrap();
        assert_ne!(a.generation, b.generation);
        assert_eq!(timing_of(&b, "derp/1").1, Duration::from_secs(25));
    }
}
