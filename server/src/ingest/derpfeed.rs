//! The effective DERP map, kept current (`docs/behaviour.md#the-effective-derp-map`): the
//! [`Refresher`] reads the configured map (`--derp-map`, a file or an http(s) URL) again every
//! `--derp-map-refresh` (±10 %) and at once when the source changes (a reloaded
//! configuration); a read that fails keeps the last map read and is EDERP05 in the DERP
//! section until a read succeeds. The [`Publisher`] puts an attached Coder's map over the
//! configured one and sends each change to the assignments, `/api/v2/debug/derp-map` and the
//! aggregator.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage_derp::map::DerpMap;
use vantage_proto::backoff::Backoff;

use crate::aggregator::{AdminCommand, Aggregator};
use crate::ingest::derpmap;
use crate::ingest::inventory::DerpRegion;

/// Where the configured map comes from, and how often it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSource {
    /// A file path or an http(s) URL; `None`: no configured map.
    pub source: Option<String>,
    pub refresh: Duration,
}

/// The configured map: the last map read (with the embedded relay's and the STUN servers'
/// regions), and why the last read failed, if it did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Base {
    pub map: Arc<DerpMap>,
    pub warning: Option<String>,
}

/// An attached Coder's map, as the importer last read it.
#[derive(Debug, Clone, PartialEq)]
pub struct CoderMap {
    pub map: DerpMap,
    /// Coder's `derp_force_websockets`.
    pub force_websockets: bool,
}

/// `loaded` with the regions every configured map gets (`extras`: the embedded relay, the
/// STUN-only regions).
pub fn compose(loaded: &DerpMap, extras: &DerpMap) -> DerpMap {
    let mut map = loaded.clone();
    for (id, region) in &extras.regions {
        map.regions.insert(*id, region.clone());
    }
    map
}

/// The EDERP05 message of a map that cannot be read.
pub fn unreadable(e: &str) -> String {
    format!(
        "the DERP map cannot be read (it is read again every refresh; meanwhile the last map read, if any, is checked): {e}"
    )
}

/// Read `source` (if any): the map, or why it cannot be read.
pub async fn read(source: Option<&str>) -> Result<DerpMap, String> {
    match source {
        Some(s) => derpmap::load(s).await.map_err(|e| e.message),
        None => Ok(DerpMap::default()),
    }
}

/// Reads the configured map again and again.
pub struct Refresher {
    pub source: watch::Receiver<MapSource>,
    /// The regions added to every map read.
    pub extras: DerpMap,
    /// The last map read (at start: the one read then, or none).
    pub last: DerpMap,
    pub base: Arc<watch::Sender<Base>>,
    pub cancel: CancellationToken,
}

impl Refresher {
    /// Until cancelled: wait for the refresh (or a new source), read, publish.
    pub async fn run(mut self) {
        let mut every = self.backoff();
        loop {
            let has_source = self.source.borrow().source.is_some();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(every.next_delay()), if has_source => {}
                r = self.source.changed() => {
                    if r.is_err() {
                        return;
                    }
                    every = self.backoff();
                }
            }
            let source = self.source.borrow_and_update().source.clone();
            let read = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = read(source.as_deref()) => r,
            };
            self.apply(source.as_deref(), read);
        }
    }

    fn backoff(&self) -> Backoff {
        let refresh = self.source.borrow().refresh;
        Backoff::new(refresh, refresh).jitter(0.1)
    }

    /// Keep what was read (or the last map, with the warning) and publish it if it changed.
    fn apply(&mut self, source: Option<&str>, read: Result<DerpMap, String>) {
        let warning = match read {
            Ok(map) => {
                self.last = map;
                None
            }
            Err(e) => Some(unreadable(&e)),
        };
        let next = Base {
            map: Arc::new(compose(&self.last, &self.extras)),
            warning,
        };
        self.base.send_if_modified(|now| {
            if *now == next {
                return false;
            }
            match (&now.warning, &next.warning) {
                (_, Some(w)) if now.warning != next.warning => {
                    tracing::warn!(source = source.unwrap_or(""), "{w}");
                }
                (Some(_), None) => {
                    tracing::info!(source = source.unwrap_or(""), "the DERP map is read again");
                }
                _ => {}
            }
            if now.map != next.map {
                tracing::info!(
                    regions = next.map.regions.len(),
                    "the configured DERP map changed"
                );
            }
            *now = next;
            true
        });
    }
}

/// Puts Coder's map over the configured one and sends every change on.
pub struct Publisher {
    pub base: watch::Receiver<Base>,
    pub coder: watch::Receiver<Option<CoderMap>>,
    pub regions: Arc<watch::Sender<Arc<Vec<DerpRegion>>>>,
    pub map_json: Arc<watch::Sender<Arc<String>>>,
    pub agg: Aggregator,
    pub cancel: CancellationToken,
}

impl Publisher {
    /// Publish now, then on every change, until cancelled.
    pub async fn run(mut self) {
        loop {
            if !self.publish().await {
                return;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                r = self.base.changed() => if r.is_err() { return },
                r = self.coder.changed() => if r.is_err() { return },
            }
        }
    }

    /// The effective map now, to the assignments (a change re-sends them at once), the
    /// debug route and the aggregator. `false` once the aggregator is gone.
    async fn publish(&mut self) -> bool {
        let base = self.base.borrow_and_update().clone();
        let coder = self.coder.borrow_and_update().clone();
        let (map, force_websockets) = match &coder {
            Some(c) => (derpmap::merge_coder(&base.map, &c.map), c.force_websockets),
            None => ((*base.map).clone(), false),
        };
        let regions = DerpRegion::all(&map, force_websockets);
        self.regions.send_if_modified(|old| {
            let same = old.len() == regions.len()
                && old.iter().zip(&regions).all(|(a, b)| {
                    a.id == b.id && a.json == b.json && a.force_websockets == b.force_websockets
                });
            if !same {
                *old = Arc::new(regions);
            }
            !same
        });
        let json = map.to_json();
        self.map_json.send_if_modified(|old| {
            let changed = **old != json;
            if changed {
                *old = Arc::new(json);
            }
            changed
        });
        let names = map
            .regions
            .values()
            .map(|r| (r.region_id, r.region_name.clone()))
            .collect();
        self.agg
            .send(AdminCommand::DerpRegions {
                regions: names,
                has_nodes: map.has_derp_nodes(),
                map_warning: base.warning,
            })
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(json: &str) -> DerpMap {
        DerpMap::parse(json).unwrap()
    }

    const ONE: &str = r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"fra","RegionName":"Frankfurt","Nodes":[{"Name":"1a","RegionID":1,"HostName":"127.0.0.1"}]}}}"#;
    const TWO: &str = r#"{"Regions":{"2":{"RegionID":2,"RegionCode":"iad","RegionName":"Ashburn","Nodes":[{"Name":"2a","RegionID":2,"HostName":"127.0.0.1"}]}}}"#;

    /// A refresher of the file `path`, every `refresh`, with region 999 as the extra.
    fn refresher(
        path: &std::path::Path,
        refresh: Duration,
    ) -> (
        Refresher,
        watch::Sender<MapSource>,
        watch::Receiver<Base>,
        CancellationToken,
    ) {
        let (source_tx, source) = watch::channel(MapSource {
            source: Some(path.to_str().unwrap().to_owned()),
            refresh,
        });
        let extras = map(
            r#"{"Regions":{"999":{"RegionID":999,"RegionCode":"vantage","RegionName":"Embedded Relay","Nodes":[]}}}"#,
        );
        let (base_tx, base_rx) = watch::channel(Base {
            map: Arc::new(extras.clone()),
            warning: None,
        });
        let cancel = CancellationToken::new();
        (
            Refresher {
                source,
                extras,
                last: DerpMap::default(),
                base: Arc::new(base_tx),
                cancel: cancel.clone(),
            },
            source_tx,
            base_rx,
            cancel,
        )
    }

    fn ids(b: &Base) -> Vec<i64> {
        b.map.regions.keys().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_is_read_again_and_a_failed_read_keeps_the_last_one_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.json");
        std::fs::write(&path, ONE).unwrap();
        let (r, source_tx, mut base, cancel) = refresher(&path, Duration::from_secs(15));
        let task = tokio::spawn(r.run());
        // Read within a refresh (15 s ± 10 %), not before 13.5 s.
        let start = tokio::time::Instant::now();
        base.changed().await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(13_500) && waited <= Duration::from_millis(16_500),
            "{waited:?}"
        );
        assert_eq!(ids(&base.borrow_and_update()), vec![1, 999]);
        // Broken: the last map stays, with a warning that says why.
        std::fs::write(&path, r#"{"Regions":{"7":{"RegionID":8,"Nodes":[]}}}"#).unwrap();
        base.changed().await.unwrap();
        {
            let b = base.borrow_and_update();
            assert_eq!(ids(&b), vec![1, 999]);
            let w = b.warning.as_deref().unwrap();
            assert!(w.contains("RegionID") && w.contains("map.json"), "{w}");
        }
        // Fixed: the new map, the warning gone.
        std::fs::write(&path, TWO).unwrap();
        base.changed().await.unwrap();
        {
            let b = base.borrow_and_update();
            assert_eq!(ids(&b), vec![2, 999]);
            assert_eq!(b.warning, None);
        }
        // A new source is read at once.
        let other = dir.path().join("other.json");
        std::fs::write(&other, ONE).unwrap();
        let at = tokio::time::Instant::now();
        source_tx.send_replace(MapSource {
            source: Some(other.to_str().unwrap().to_owned()),
            refresh: Duration::from_secs(15),
        });
        base.changed().await.unwrap();
        assert!(at.elapsed() < Duration::from_secs(1));
        assert_eq!(ids(&base.borrow_and_update()), vec![1, 999]);
        // No source: only the extras, and nothing to read again.
        source_tx.send_replace(MapSource {
            source: None,
            refresh: Duration::from_secs(15),
        });
        base.changed().await.unwrap();
        assert_eq!(ids(&base.borrow_and_update()), vec![999]);
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn extras_win_over_the_loaded_map() {
        let loaded = map(ONE);
        let extras = map(
            r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"mine","RegionName":"Mine","Nodes":[]}}}"#,
        );
        assert_eq!(compose(&loaded, &extras).regions[&1].region_code, "mine");
    }

    fn aggregator() -> Aggregator {
        Aggregator::spawn(crate::aggregator::AggregatorConfig::for_tests(), vec![]).unwrap()
    }

    /// What `f` finds in the aggregated DERP section, waiting (5 s at most) until it finds it.
    async fn until<T>(
        agg: &Aggregator,
        f: impl Fn(&vantage_proto::report::DerpReport) -> Option<T>,
    ) -> T {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let (report, _) = agg.report().await.unwrap();
                if let Some(t) = f(&report.derp.report) {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn coders_map_goes_over_the_configured_one_as_either_changes_and_the_warning_shows() {
        let agg = aggregator();
        let (base_tx, base) = watch::channel(Base {
            map: Arc::new(map(ONE)),
            warning: None,
        });
        let (coder_tx, coder) = watch::channel(None);
        let (regions_tx, mut regions) = watch::channel(Arc::new(Vec::new()));
        let (json_tx, json) = watch::channel(Arc::new(String::new()));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            Publisher {
                base,
                coder,
                regions: Arc::new(regions_tx),
                map_json: Arc::new(json_tx),
                agg: agg.clone(),
                cancel: cancel.clone(),
            }
            .run(),
        );
        let ids = |r: &Vec<DerpRegion>| r.iter().map(|r| r.id).collect::<Vec<_>>();
        regions.changed().await.unwrap();
        assert_eq!(ids(&regions.borrow_and_update()), vec![1]);
        // Coder's map: over the configured one, Coder's region 1 wins the clash.
        let coders = map(
            r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"coder","RegionName":"Coder","Nodes":[]},"5":{"RegionID":5,"RegionCode":"c5","RegionName":"C5","Nodes":[]}}}"#,
        );
        coder_tx.send_replace(Some(CoderMap {
            map: coders,
            force_websockets: true,
        }));
        regions.changed().await.unwrap();
        {
            let r = regions.borrow_and_update();
            assert_eq!(ids(&r), vec![1, 5]);
            assert_eq!(r[0].code, "coder");
            assert!(r.iter().all(|r| r.force_websockets));
        }
        // The configured map changes under it (a refresh): merged again, with the warning.
        base_tx.send_replace(Base {
            map: Arc::new(map(TWO)),
            warning: Some(unreadable("HTTP 503")),
        });
        regions.changed().await.unwrap();
        assert_eq!(ids(&regions.borrow_and_update()), vec![1, 2, 5]);
        let text = json.borrow().to_string();
        assert!(text.contains("\"RegionCode\":\"iad\""), "{text}");
        // The aggregator hears of it once the publisher has sent it.
        let w = until(&agg, |d| {
            d.base
                .warnings
                .iter()
                .find(|w| w.code == "EDERP05")
                .cloned()
        })
        .await;
        assert!(w.message.contains("HTTP 503"), "{w:?}");
        until(&agg, |d| {
            (d.base.severity == vantage_proto::Severity::Warning).then_some(())
        })
        .await;
        // A read that succeeds clears it.
        base_tx.send_modify(|b| b.warning = None);
        until(&agg, |d| {
            d.base
                .warnings
                .iter()
                .all(|w| w.code != "EDERP05")
                .then_some(())
        })
        .await;
        cancel.cancel();
        task.await.unwrap();
    }
}
