//! The DERP section end to end over real sockets: EDERP02, EDERP03, ESTUN01, ESTUN02.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use vantage_derp::health::{self, NodeCheckOptions, Severity};
use vantage_derp::map::{self, DerpMap};
use vantage_derp::stun::StunResponder;

use vantage_testkit::{closed_tcp_port, closed_udp_port};

use crate::support::{TestRelay, http_node, region};

fn fast() -> NodeCheckOptions {
    NodeCheckOptions {
        deadline: Duration::from_secs(3),
        ..NodeCheckOptions::default()
    }
}

fn codes(r: &health::DerpHealthReport) -> Vec<&str> {
    r.warnings.iter().map(|w| w.code.as_str()).collect()
}

async fn responder(
    mapped_override: Option<SocketAddr>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    let mut r = StunResponder::new(sock);
    if let Some(a) = mapped_override {
        r = r.with_mapped_override(a);
    }
    (addr, tokio::spawn(r.run(std::future::pending())))
}

#[tokio::test]
async fn two_node_region_with_one_down_is_ederp02() {
    let relay = TestRelay::start().await;
    let down = http_node("1b", 1, closed_tcp_port());
    let mut map = DerpMap::default();
    map.regions
        .insert(1, region(1, vec![relay.node("1a", 1), down]));
    let report = health::check_map(&map, &fast()).await;
    let reg = &report.regions[&1];
    assert_eq!(reg.severity, Severity::Warning, "{reg:#?}");
    assert!(reg.healthy);
    let bad = &reg.node_reports[1];
    assert_eq!(bad.node.name, "1b");
    assert_eq!(bad.severity, Severity::Error);
    assert!(!bad.can_exchange_messages);
    assert_eq!(bad.client_errs.len(), 1, "sender never created");
    assert_eq!(bad.client_errs[0].len(), 6, "{:?}", bad.client_errs);
    assert!(bad.client_errs[0][0].starts_with("connect to derp: "));
    assert!(bad.client_errs[0][5].starts_with("couldn't connect after 5 tries, last error: "));
    assert!(
        bad.error
            .as_deref()
            .unwrap_or_default()
            .contains("couldn't connect")
    );
    assert!(reg.node_reports[0].can_exchange_messages);
    assert_eq!(codes(&report), ["EDERP02"]);
    assert_eq!(report.severity, Severity::Warning);
    assert!(report.healthy);
}

#[tokio::test]
async fn map_without_derp_nodes_is_ederp03() {
    let (addr, _t) = responder(None).await;
    let mut map = DerpMap::default();
    map.regions.insert(
        1000,
        map::stun_only_region(1000, &addr.to_string()).expect("stun region"),
    );
    let report = health::check_map(&map, &fast()).await;
    assert_eq!(codes(&report), ["EDERP03"]);
    assert_eq!(report.severity, Severity::Error);
    assert!(!report.healthy);
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("EDERP03: ")
    );
    let node = &report.regions[&1000].node_reports[0];
    assert!(node.stun.can_stun, "{node:#?}");
    assert_eq!(node.severity, Severity::Ok);
    // An empty map too.
    let report = health::check_map(&DerpMap::default(), &fast()).await;
    assert_eq!(codes(&report), ["EDERP03"]);
}

#[tokio::test]
async fn no_reachable_stun_server_is_estun01() {
    let relay = TestRelay::start().await;
    let mut node = relay.node("1a", 1);
    node.stun_port = i64::from(closed_udp_port());
    node.stun_test_ip = "127.0.0.1".into();
    let mut map = DerpMap::default();
    map.regions.insert(1, region(1, vec![node]));
    let report = health::check_map(&map, &fast()).await;
    let n = &report.regions[&1].node_reports[0];
    assert!(n.stun.enabled && !n.stun.can_stun);
    assert!(
        n.stun
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("probe stun: "),
        "{:?}",
        n.stun
    );
    assert!(n.can_exchange_messages);
    assert_eq!(n.severity, Severity::Error);
    assert!(codes(&report).contains(&"ESTUN01"), "{:?}", report.warnings);
    assert_eq!(report.severity, Severity::Error);
}

#[tokio::test]
async fn stun_address_errors() {
    let relay = TestRelay::start().await;
    let mut node = relay.node("1a", 1);
    node.stun_port = 0;
    node.host_name = String::new();
    node.ipv4 = String::new();
    node.ipv6 = String::new();
    let out = health::check_node(&region(1, vec![node.clone()]), &node, &fast()).await;
    assert_eq!(
        out.report.stun.error.as_deref(),
        Some("get stun addr: no stun ips provided")
    );
}

#[tokio::test]
async fn differing_mapped_addresses_are_estun02() {
    let relay = TestRelay::start().await;
    let (honest, _t1) = responder(None).await;
    let (liar, _t2) = responder(Some("203.0.113.50:40000".parse().expect("addr"))).await;
    let mut map = DerpMap::default();
    map.regions.insert(1, region(1, vec![relay.node("1a", 1)]));
    map.regions.insert(
        1000,
        map::stun_only_region(1000, &honest.to_string()).expect("r"),
    );
    map.regions.insert(
        1001,
        map::stun_only_region(1001, &liar.to_string()).expect("r"),
    );
    map.validate().expect("valid map");
    let report = health::check_map(&map, &fast()).await;
    assert_eq!(codes(&report), ["ESTUN02"], "{report:#?}");
    // Coder's rule: ESTUN02 does not raise the severity.
    assert_eq!(report.severity, Severity::Ok);
    assert!(report.healthy);

    // Two honest responders agree: no ESTUN02.
    let (honest2, _t3) = responder(None).await;
    map.regions.insert(
        1001,
        map::stun_only_region(1001, &honest2.to_string()).expect("r"),
    );
    let report = health::check_map(&map, &fast()).await;
    assert!(codes(&report).is_empty(), "{:?}", report.warnings);
}

#[tokio::test]
async fn section_json_has_string_region_keys() {
    let relay = TestRelay::start().await;
    let mut map = DerpMap::default();
    let url = url::Url::parse(&format!("http://{}/", relay.addr)).expect("url");
    map.regions.insert(
        999,
        map::embedded_region(&url, 999, "Embedded Relay").expect("embedded"),
    );
    let report = health::check_map(&map, &fast()).await;
    assert_eq!(report.severity, Severity::Ok, "{report:#?}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["regions"]["999"]["region"]["EmbeddedRelay"], true);
    assert_eq!(
        json["regions"]["999"]["node_reports"][0]["can_exchange_messages"],
        true
    );
}
