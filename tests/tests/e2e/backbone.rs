//! The backbone scenarios of `docs/behaviour.md#vantages` and `#the-aggregated-report`: vantages attach, go stale, come back; the server
//! restarts under running probes and nothing unacknowledged is lost or applied twice.

use std::time::Duration;

use vantage_testkit::eventually;
use vantage_tests::{Probe, Server, vantage};

fn fresh(report: &serde_json::Value, name: &str) -> bool {
    vantage(report, name).is_some_and(|v| v["state"] == "fresh")
        && report["access_url"]["vantage_reports"].get(name).is_some()
        && report["websocket"]["vantage_reports"].get(name).is_some()
}

#[tokio::test]
async fn probes_attach_go_stale_and_reattach() {
    let server = Server::start(&["--interval", "300ms", "--stale-after", "1500ms"]).await;
    let _iad = Probe::start(&server.url, "iad-1", "iad");
    let mut fra = Probe::start(&server.url, "fra-1", "fra");

    let report = eventually(Duration::from_secs(20), "three fresh vantages", || async {
        let r = server.report().await;
        ["server", "fra-1", "iad-1"]
            .iter()
            .all(|n| fresh(&r, n))
            .then_some(r)
    })
    .await;
    assert_eq!(vantage(&report, "fra-1").unwrap()["region"], "fra");
    assert_eq!(report["access_url"]["severity"], "ok");
    assert_eq!(report["websocket"]["vantage_reports"]["iad-1"]["code"], 101);

    fra.kill().await;
    let report = eventually(Duration::from_secs(20), "fra-1 stale", || async {
        let r = server.report().await;
        vantage(&r, "fra-1")
            .is_some_and(|v| v["state"] == "stale")
            .then_some(r)
    })
    .await;
    let v = vantage(&report, "fra-1").unwrap();
    assert!(v["stale_since"].is_string(), "{v}");
    assert_eq!(v["connected"], false);
    assert!(
        report["access_url"]["vantage_reports"]
            .get("fra-1")
            .is_none(),
        "stale results left the aggregate"
    );
    let warnings = report["vantages"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w["code"] == "EVNT01" && w["message"].as_str().unwrap().contains("fra-1"))
    );
    assert_eq!(report["severity"], "warning");
    // `vantage vantages` says so in its exit status, with the ages of what it lists;
    // `report --vantages` shows the EVNT01 message.
    let out = vantage_tests::cli(&["--server", &server.url, "vantages"]).await;
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{list}");
    assert!(list.contains("stale") && list.contains(" s ago"), "{list}");
    let out = vantage_tests::cli(&["--server", &server.url, "report", "--vantages"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EVNT01") && text.contains("fra-1"), "{text}");

    let _fra = Probe::start(&server.url, "fra-1", "fra");
    eventually(Duration::from_secs(20), "fra-1 fresh again", || async {
        let r = server.report().await;
        (fresh(&r, "fra-1") && r["vantages"]["warnings"].as_array().unwrap().is_empty())
            .then_some(())
    })
    .await;
    let out = vantage_tests::cli(&["--server", &server.url, "vantages"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test]
async fn a_server_restart_loses_no_unacknowledged_observation_and_applies_none_twice() {
    let mut server = Server::start(&["--interval", "200ms"]).await;
    let _probe = Probe::start(&server.url, "fra-1", "fra");
    let url = server.url.clone();
    eventually(Duration::from_secs(20), "fra-1 applying", || async {
        let v = vantage_list(&url).await;
        v.iter()
            .find(|v| v.name == "fra-1")
            .filter(|v| v.applied >= 4)
            .map(|_| ())
    })
    .await;

    // Kill the server without warning; the probe keeps checking and buffers meanwhile.
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    assert_eq!(server.url, url, "same port after the restart");

    let v = eventually(
        Duration::from_secs(30),
        "fra-1 re-attached and resent",
        || async {
            let v = vantage_list(&url).await;
            v.into_iter()
                .find(|v| v.name == "fra-1" && v.applied >= 6 && v.connected)
        },
    )
    .await;
    // The probe resent exactly what this server had not acknowledged: the new server's first
    // applied sequence follows the probe's last acknowledged one, with no gap and no duplicate.
    assert!(v.resumed_from_seq > 0, "{v:?}");
    assert_eq!(v.first_applied_seq, v.resumed_from_seq + 1, "{v:?}");
    assert_eq!(
        v.applied,
        v.last_applied_seq - v.first_applied_seq + 1,
        "{v:?}"
    );
    assert_eq!((v.gaps, v.duplicates, v.replay_dropped), (0, 0, 0), "{v:?}");

    // The report is whole again.
    eventually(
        Duration::from_secs(20),
        "a whole report after the restart",
        || async {
            let r = server.report().await;
            (fresh(&r, "server") && fresh(&r, "fra-1")).then_some(())
        },
    )
    .await;
}

async fn vantage_list(url: &str) -> Vec<vantage_proto::pb::Vantage> {
    match vantage_client::Client::connect(url, None).await {
        Ok(c) => c.vantages().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
