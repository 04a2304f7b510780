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

#[test]
fn a_malformed_server_url_in_any_position_exits_64_at_once_naming_it() {
    let cases: [&[&str]; 4] = [
        &["--server", "http://127.0.0.1:7080", "--server", "not a url"],
        &["--server", "not a url,http://127.0.0.1:7080"],
        &["--server", "http://127.0.0.1:7080,ftp://127.0.0.1:21"],
        &[
            "--server",
            "https://a.example",
            "--server",
            "http://10.1.2.3:7080",
        ],
    ];
    for args in cases {
        let start = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
            .args(["--name", "a"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        let bad = ["not a url", "ftp://127.0.0.1:21", "http://10.1.2.3:7080"]
            .into_iter()
            .find(|b| args.iter().any(|a| a.contains(b)))
            .unwrap();
        assert!(err.contains(bad), "{args:?}: {err}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "at once"
        );
    }
    // The environment variable takes a comma-separated list too.
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
        .args(["--name", "a"])
        .env("VANTAGE_SERVER", "http://127.0.0.1:7080,::nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("::nope"));
}

#[test]
fn once_exits_3_only_after_trying_every_server() {
    let closed = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    };
    let (a, b) = (closed(), closed());
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-probe"))
        .args(["--name", "a", "--once", "--server", &a, "--server", &b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to") && err.contains(&b),
        "the last tried: {err}"
    );
}
