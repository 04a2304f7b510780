//! What there is to check, and who checks what: builds each vantage's assignment from the
//! configuration (SPEC §2: access URL and websocket to every vantage; database to `server`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use vantage_proto::pb::check::Target;
use vantage_proto::{Section, convert, pb};

use crate::config::SERVER_VANTAGE;

/// The effective inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub access_url: String,
    pub interval: Duration,
    pub database_threshold: Duration,
    pub heartbeat: Duration,
}

pub const ACCESS_URL_TIMEOUT: Duration = Duration::from_secs(5);
pub const WEBSOCKET_TIMEOUT: Duration = Duration::from_secs(5);
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Inventory {
    fn check(&self, id: &str, section: Section, timeout: Duration, target: Target) -> pb::Check {
        pb::Check {
            id: id.to_owned(),
            section: pb::Section::from(section) as i32,
            interval: Some(convert::duration(self.interval)),
            timeout: Some(convert::duration(timeout)),
            target: Some(target),
        }
    }

    /// The assignment of the vantage `name` in `region`.
    pub fn assignment_for(&self, name: &str, _region: &str) -> pb::Assignment {
        let mut checks = vec![
            self.check(
                "access_url",
                Section::AccessUrl,
                ACCESS_URL_TIMEOUT,
                Target::AccessUrl(pb::AccessUrlTarget {
                    url: self.access_url.clone(),
                }),
            ),
            self.check(
                "websocket",
                Section::Websocket,
                WEBSOCKET_TIMEOUT,
                Target::Websocket(pb::WebsocketTarget {
                    url: self.access_url.clone(),
                }),
            ),
        ];
        if name == SERVER_VANTAGE {
            checks.push(self.check(
                "database",
                Section::Database,
                DATABASE_TIMEOUT,
                Target::Database(pb::DatabaseTarget {
                    threshold: Some(convert::duration(self.database_threshold)),
                }),
            ));
        }
        let mut hasher = DefaultHasher::new();
        for c in &checks {
            c.id.hash(&mut hasher);
            format!("{:?}", c.target).hash(&mut hasher);
            c.interval.map(|d| (d.seconds, d.nanos)).hash(&mut hasher);
        }
        pb::Assignment {
            generation: hasher.finish(),
            checks,
            heartbeat_interval: Some(convert::duration(self.heartbeat)),
        }
    }
}

/// The check ids and sections of an assignment, for the aggregator.
pub fn check_ids(a: &pb::Assignment) -> Vec<(String, Section)> {
    a.checks
        .iter()
        .filter_map(|c| Some((c.id.clone(), Section::from_pb(c.section)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        Inventory {
            access_url: "http://127.0.0.1:1".into(),
            interval: Duration::from_secs(30),
            database_threshold: Duration::from_millis(15),
            heartbeat: Duration::from_secs(5),
        }
    }

    #[test]
    fn probes_get_access_url_and_websocket_server_also_database() {
        let probe = inv().assignment_for("fra-1", "fra");
        assert_eq!(check_ids(&probe).len(), 2);
        let server = inv().assignment_for(SERVER_VANTAGE, "");
        assert!(check_ids(&server).contains(&("database".into(), Section::Database)));
        assert_eq!(
            probe.generation,
            inv().assignment_for("iad-1", "iad").generation
        );
    }
}
