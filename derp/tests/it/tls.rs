//! Client ↔ relay over TLS with a test CA: CA trust, CertName, `sha256-raw:` pins.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use vantage_derp::client::{Client, ClientError, ClientOptions, ReceivedFrame};
use vantage_derp::health::{self, NodeCheckOptions, Severity};
use vantage_derp::map::Node;
use vantage_derp::relay::Relay;

use crate::support::{TestPki, region, start_tls_relay};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn tls_with_extra_ca() {
    let pki = TestPki::new();
    let (addr, _server) = start_tls_relay(Arc::new(Relay::new()), &pki).await;
    let url = url::Url::parse(&format!("https://127.0.0.1:{}/derp", addr.port())).expect("url");
    let opts = ClientOptions {
        extra_ca_pem: Some(pki.ca_pem.clone()),
        ..ClientOptions::default()
    };
    let a = Client::connect(&url, &opts)
        .await
        .expect("tls connect by IP SAN");
    let by_name = url::Url::parse(&format!("https://localhost:{}/derp", addr.port())).expect("url");
    let b = Client::connect(&by_name, &opts)
        .await
        .expect("tls connect by DNS SAN");
    a.send(b.public_key(), b"over tls").await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .expect("in time")
            .expect("recv")
        {
            ReceivedFrame::RecvPacket { src, payload } => {
                assert_eq!(src, a.public_key());
                assert_eq!(&payload[..], b"over tls");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn tls_rejects_unknown_ca_and_wrong_cert_name() {
    let pki = TestPki::new();
    let (addr, _server) = start_tls_relay(Arc::new(Relay::new()), &pki).await;
    let url = url::Url::parse(&format!("https://127.0.0.1:{}/derp", addr.port())).expect("url");
    let err = Client::connect(&url, &ClientOptions::default())
        .await
        .expect_err("unknown CA");
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
    // CertName matches a SAN: accepted even though the URL host is an IP.
    let opts = ClientOptions {
        extra_ca_pem: Some(pki.ca_pem.clone()),
        cert_name: Some("localhost".into()),
        ..ClientOptions::default()
    };
    Client::connect(&url, &opts)
        .await
        .expect("CertName localhost");
    // CertName that the certificate does not carry: refused.
    let opts = ClientOptions {
        cert_name: Some("derp.example.com".into()),
        ..opts
    };
    let err = Client::connect(&url, &opts)
        .await
        .expect_err("CertName mismatch");
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
    // InsecureForTests skips verification.
    let opts = ClientOptions {
        insecure_for_tests: true,
        ..ClientOptions::default()
    };
    Client::connect(&url, &opts).await.expect("insecure");
}

#[tokio::test]
async fn tls_sha256_raw_pin() {
    let pki = TestPki::new();
    let (addr, _server) = start_tls_relay(Arc::new(Relay::new()), &pki).await;
    let url = url::Url::parse(&format!("https://127.0.0.1:{}/derp", addr.port())).expect("url");
    let pin = format!("sha256-raw:{}", hex(&sha2::Sha256::digest(&pki.leaf_der)));
    let opts = ClientOptions {
        cert_name: Some(pin),
        ..ClientOptions::default()
    };
    Client::connect(&url, &opts)
        .await
        .expect("pinned cert accepted without CA");
    let opts = ClientOptions {
        cert_name: Some(format!("sha256-raw:{}", "00".repeat(32))),
        ..ClientOptions::default()
    };
    let err = Client::connect(&url, &opts).await.expect_err("wrong pin");
    assert!(
        err.to_string().contains("does not match the pinned"),
        "{err}"
    );
}

#[tokio::test]
async fn check_node_over_tls_with_cert_name() {
    let pki = TestPki::new();
    let (addr, _server) = start_tls_relay(Arc::new(Relay::new()), &pki).await;
    let node = Node {
        name: "1t".into(),
        region_id: 1,
        host_name: "127.0.0.1".into(),
        cert_name: "localhost".into(),
        derp_port: i64::from(addr.port()),
        stun_port: -1,
        ..Node::default()
    };
    let mut opts = NodeCheckOptions::default();
    opts.client.extra_ca_pem = Some(pki.ca_pem.clone());
    let out = health::check_node(&region(1, vec![node.clone()]), &node, &opts).await;
    assert!(out.report.can_exchange_messages, "{:#?}", out.report);
    assert_eq!(out.report.severity, Severity::Ok);
}
