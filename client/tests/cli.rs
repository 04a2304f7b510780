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
