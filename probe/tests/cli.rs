//! The `vantage-probe` binary's command-line contract.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
        .args(["--name", " "])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));

    let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
        .args(["--name", "a", "--label", "novalue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected key=value"));
}

#[test]
fn once_against_nothing_fails_with_status_3() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
        .args([
            "--name",
            "a",
            "--once",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to"));
}
