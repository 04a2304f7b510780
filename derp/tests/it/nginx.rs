//! A real nginx in front of the relay: EDERP01 when only `Upgrade: DERP` is refused, a clear
//! error when every upgrade is refused.

use std::time::Duration;

use vantage_derp::client::{Client, ClientOptions, WEBSOCKET_FALLBACK_LOG};
use vantage_derp::health::{self, NodeCheckOptions, Severity};
use vantage_derp::map::Node;

use vantage_testkit::{Nginx, NginxMode};

use crate::support::{TestRelay, derp_url, region};

fn node_behind(nginx: &Nginx) -> Node {
    Node {
        name: "1n".into(),
        region_id: 1,
        host_name: "127.0.0.1".into(),
        derp_port: i64::from(nginx.addr.port()),
        force_http: true,
        stun_port: -1,
        ..Node::default()
    }
}

#[tokio::test]
async fn derp_upgrade_blocked_falls_back_to_websocket() {
    let relay = TestRelay::start().await;
    let nginx = Nginx::start(NginxMode::BlockDerpUpgrade(relay.addr)).await;
    let opts = ClientOptions::default();
    let c = Client::connect(&derp_url(nginx.addr), &opts)
        .await
        .expect("connects via websocket");
    assert!(c.uses_websocket());
    assert!(
        opts.log.contains(WEBSOCKET_FALLBACK_LOG),
        "{:?}",
        opts.log.lines()
    );
    assert!(
        opts.log
            .lines()
            .iter()
            .any(|l| l.contains("status code 403")),
        "{:?}",
        opts.log.lines()
    );

    let node = node_behind(&nginx);
    let out = health::check_node(
        &region(1, vec![node.clone()]),
        &node,
        &NodeCheckOptions::default(),
    )
    .await;
    let r = &out.report;
    assert!(r.uses_websocket, "{r:#?}");
    assert!(r.can_exchange_messages, "{r:#?}");
    assert_eq!(r.severity, Severity::Warning);
    assert!(r.healthy);
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].code, "EDERP01");
}

#[tokio::test]
async fn every_upgrade_blocked_is_an_error_naming_the_refusal() {
    let relay = TestRelay::start().await;
    let nginx = Nginx::start(NginxMode::BlockAllUpgrades(relay.addr)).await;
    let err = Client::connect(&derp_url(nginx.addr), &ClientOptions::default())
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("websocket upgrade refused with status code 403"),
        "{err}"
    );

    let node = node_behind(&nginx);
    let opts = NodeCheckOptions {
        deadline: Duration::from_secs(5),
        ..NodeCheckOptions::default()
    };
    let out = health::check_node(&region(1, vec![node.clone()]), &node, &opts).await;
    let r = &out.report;
    assert!(!r.can_exchange_messages);
    assert!(!r.healthy, "{r:#?}");
    let error = r.error.as_deref().unwrap_or_default();
    assert!(error.contains("refused with status code 403"), "{error}");
    assert!(
        r.client_errs[0]
            .iter()
            .any(|e| e.contains("couldn't connect after 5 tries"))
    );
    // The fallback was tried (EDERP01 is there) but could not relay either: still an error
    // (vantage does not keep Coder's quirk of downgrading it to a warning here).
    assert!(r.uses_websocket);
    assert!(r.warnings.iter().any(|w| w.code == "EDERP01"));
    assert_eq!(r.severity, Severity::Error);
}
