//! The `vantage` binary's command-line contract.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn unreachable_server_exits_3() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["--server", &format!("http://127.0.0.1:{port}"), "report"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not reach the server"));
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["watch", "--section", "Pubsub"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown healthcheck section: \"Pubsub\"")
    );
}

#[test]
fn a_malformed_server_url_in_any_position_exits_64_naming_it() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--server", "http://127.0.0.1:7080", "--server", "not a url"],
            "not a url",
        ),
        (
            &["--server", "ftp://h:21,http://127.0.0.1:7080"],
            "ftp://h:21",
        ),
        (
            &["--server", "http://127.0.0.1:7080,http://10.1.2.3:7080"],
            "http://10.1.2.3:7080",
        ),
    ];
    for (args, bad) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
            .args(args)
            .arg("report")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(bad), "{args:?}: {err}");
    }
}

#[test]
fn every_server_is_tried_in_order_before_exiting_3() {
    let closed = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    };
    let (a, b) = (closed(), closed());
    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["--server", &format!("{a},{b}"), "vantages"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let (at_a, at_b) = (err.find(&a).unwrap(), err.find(&b).unwrap());
    assert!(at_a < at_b, "a, then b: {err}");
    assert!(out.stdout.is_empty());
}
