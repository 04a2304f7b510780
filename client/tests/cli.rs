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

/// Every subcommand's `--help` ends with an example of its own use.
#[test]
fn every_subcommands_help_ends_with_an_example() {
    let subcommands: [&[&str]; 11] = [
        &["report"],
        &["watch"],
        &["vantages"],
        &["vantages", "forget"],
        &["history"],
        &["settings"],
        &["settings", "dismiss"],
        &["settings", "undismiss"],
        &["provisioner"],
        &["provisioner", "heartbeat"],
        &["netcheck"],
    ];
    for sub in subcommands {
        let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let last = help.trim_end().lines().last().unwrap_or("");
        let want = format!("  vantage {}", sub.join(" "));
        assert!(
            last.starts_with(&want) || last.starts_with("  vantage --server"),
            "{sub:?}: the help should end with an example of `{want}`, ends with {last:?}"
        );
        assert!(help.contains("Example"), "{sub:?}: {help}");
    }
    // The list above is every subcommand `vantage --help` names.
    let out = Command::new(env!("CARGO_BIN_EXE_vantage"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let tops: Vec<&str> = subcommands
        .iter()
        .filter(|s| s.len() == 1)
        .map(|s| s[0])
        .collect();
    assert_eq!(listed, tops);
}
