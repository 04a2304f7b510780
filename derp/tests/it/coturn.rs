//! STUN against a real coturn (`turnserver --stun-only`) on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use vantage_derp::health::{self, NodeCheckOptions};
use vantage_derp::map;
use vantage_derp::stun;
use vantage_testkit::Coturn;

#[tokio::test]
async fn probe_coturn_and_check_stun_only_node() {
    let coturn = Coturn::start().await;
    let out = stun::probe(coturn.addr, Duration::from_secs(5))
        .await
        .expect("coturn answers");
    assert_eq!(out.mapped.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(out.mapped.port(), out.local.port());
    assert!(out.latency > Duration::ZERO);

    let region = map::stun_only_region(1000, &coturn.addr.to_string()).expect("region");
    let node = region.nodes[0].clone();
    let res = health::check_node(&region, &node, &NodeCheckOptions::default()).await;
    assert!(
        res.report.stun.enabled && res.report.stun.can_stun,
        "{:#?}",
        res.report
    );
    assert!(res.report.healthy);
    assert_eq!(
        res.stun_mapped.map(|a| a.ip()),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert!(
        res.report.client_logs.is_empty(),
        "STUN-only: no DERP clients"
    );
}
