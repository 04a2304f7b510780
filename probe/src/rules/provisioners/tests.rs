use std::collections::BTreeMap;

use super::*;
use chrono::TimeDelta;

#[test]
fn semver_validity_mirrors_go() {
    let cases: &[(&str, bool)] = &[
        ("v1", true),
        ("v1.2", true),
        ("v1.2.3", true),
        ("v0.0.0", true),
        ("v2.26.0+abc1234", true),
        ("v0.0.0-devel+abc", true),
        ("v1.2.3-pre.1+build.001", true),
        ("v1.2.3-alpha-beta", true),
        ("v1.2.3-0", true),
        ("v1.2.3-0a", true),
        ("v1.2.3+0001", true),
        ("", false),
        ("v", false),
        ("1.2.3", false),
        ("2.26.0", false),
        ("V1.2.3", false),
        ("v01.2.3", false),
        ("v1.02.3", false),
        ("v1.2.03", false),
        ("v1.2-pre", false),
        ("v1-pre", false),
        ("v1+build", false),
        ("v1.2.3-", false),
        ("v1.2.3-01", false),
        ("v1.2.3-a..b", false),
        ("v1.2.3-a_b", false),
        ("v1.2.3+", false),
        ("v1.2.3+a..b", false),
        ("v1.2.3.4", false),
        ("v1.2.", false),
        ("v1.", false),
        ("v-1.2.3", false),
        (" v1.2.3", false),
        ("v1.2.3 ", false),
    ];
    for (v, want) in cases {
        assert_eq!(is_valid_semver(v), *want, "{v:?}");
    }
}

#[test]
fn major_minor_mirrors_go() {
    let cases: &[(&str, &str)] = &[
        ("v1", "v1.0"),
        ("v1.2", "v1.2"),
        ("v1.2.3", "v1.2"),
        ("v2.26.0+abc", "v2.26"),
        ("v0.0.0-devel+abc", "v0.0"),
        ("2.26.0", ""),
        ("", ""),
    ];
    for (v, want) in cases {
        assert_eq!(major_minor(v), *want, "{v:?}");
    }
}

#[test]
fn versions_match_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("v2.26.0", "v2.26.1", true),
        ("v2.26.0+abc", "v2.26.9-rc.1", true),
        ("v2.26.0", "v2.25.0", false),
        ("v2.26.0", "v3.26.0", false),
        ("v0.0.0-devel+abc", "v1.0.0", true),
        ("v2.26.0", "v0.0.0-devel+abc", true),
        ("v2", "v2.0.5", true),
    ];
    for (a, b, want) in cases {
        assert_eq!(versions_match(a, b), *want, "{a:?} vs {b:?}");
    }
}

#[test]
fn api_version_parse_table() {
    type Want = Result<(i64, i64), &'static str>;
    let cases: &[(&str, Want)] = &[
        ("1.9", Ok((1, 9))),
        ("2.0", Ok((2, 0))),
        ("+1.-2", Ok((1, -2))),
        ("x.y", Err("invalid major version: x.y")),
        ("1.y", Err("invalid minor version: 1.y")),
        ("1", Err("invalid version string: 1")),
        ("1.2.3", Err("invalid version string: 1.2.3")),
        ("", Err("invalid version string: ")),
        (".1", Err("invalid major version: .1")),
        ("1 .2", Err("invalid major version: 1 .2")),
        (
            "99999999999999999999.1",
            Err("invalid major version: 99999999999999999999.1"),
        ),
    ];
    for (v, want) in cases {
        assert_eq!(
            parse_api_version(v),
            want.map_err(ToOwned::to_owned),
            "{v:?}"
        );
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).expect("valid")
}

fn daemon(name: &str, version: &str, api: &str) -> ProvisionerDaemon {
    ProvisionerDaemon {
        id: format!("id-{name}"),
        organization_id: "00000000-0000-0000-0000-000000000000".into(),
        key_id: "00000000-0000-0000-0000-000000000000".into(),
        created_at: now() - TimeDelta::hours(1),
        last_seen_at: Some(now() - TimeDelta::seconds(10)),
        name: name.into(),
        version: version.into(),
        api_version: api.into(),
        provisioners: vec!["terraform".into()],
        tags: BTreeMap::from([("scope".into(), "organization".into())]),
    }
}

fn m(code: &str, text: &str) -> Message {
    Message::new(code, text)
}

const SERVER: &str = "v2.26.0+abc1234";
const INVALID_VERSION: &str = "Some provisioner daemons report invalid version information.";
const MISMATCH: &str = "Some provisioner daemons report mismatched versions.";
const INVALID_API: &str = "Some provisioner daemons report invalid API version information.";
const DEPRECATED: &str =
    "Some provisioner daemons report deprecated major API versions. Consider upgrading!";

#[test]
fn section_table() {
    struct Case {
        name: &'static str,
        daemons: Vec<ProvisionerDaemon>,
        server: &'static str,
        api_major: u32,
        required: bool,
        severity: Severity,
        error: Option<&'static str>,
        warnings: Vec<Message>,
        /// (name, item warnings) in order.
        items: Vec<(&'static str, Vec<Message>)>,
    }
    let stale_at = |mut d: ProvisionerDaemon, age: TimeDelta| {
        d.last_seen_at = Some(now() - age);
        d
    };
    let cases = vec![
        Case {
            name: "empty registry, not required: ok",
            daemons: vec![],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![],
        },
        Case {
            name: "empty registry, required: EPD01 error, text in warnings",
            daemons: vec![],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Error,
            error: None,
            warnings: vec![m("EPD01", "No active provisioner daemons found!")],
            items: vec![],
        },
        Case {
            name: "matching daemon: ok",
            daemons: vec![daemon("a", "v2.26.0", "1.9")],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "patch differs: still a match",
            daemons: vec![daemon("a", "v2.26.1", "1.9")],
            server: "v2.26.0",
            api_major: 1,
            required: false,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "minor differs: EPD02",
            daemons: vec![daemon("a", "v2.25.0", "1.9")],
            server: "v2.26.0",
            api_major: 1,
            required: false,
            severity: Severity::Warning,
            error: None,
            warnings: vec![m("EPD02", MISMATCH)],
            items: vec![("a", vec![m("EPD02", "Mismatched version \"v2.25.0\"")])],
        },
        Case {
            name: "dev daemon build always matches",
            daemons: vec![daemon("a", "v0.0.0-devel+abc", "1.9")],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "dev server build always matches",
            daemons: vec![daemon("a", "v1.0.0", "1.9")],
            server: "v0.0.0-devel+abc",
            api_major: 1,
            required: false,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "version without v: EUNKNOWN error, text in warnings",
            daemons: vec![daemon("a", "2.26.0", "1.9")],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Error,
            error: None,
            warnings: vec![m("EUNKNOWN", INVALID_VERSION)],
            items: vec![("a", vec![m("EUNKNOWN", "Invalid version \"2.26.0\"")])],
        },
        Case {
            name: "API 2.0: EPD03, item prints the server's major",
            daemons: vec![daemon("a", "v2.26.0", "2.0")],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Warning,
            error: None,
            warnings: vec![m("EPD03", DEPRECATED)],
            items: vec![("a", vec![m("EPD03", "Deprecated major API version 1.")])],
        },
        Case {
            name: "API x.y: EUNKNOWN error",
            daemons: vec![daemon("a", "v2.26.0", "x.y")],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Error,
            error: None,
            warnings: vec![m("EUNKNOWN", INVALID_API)],
            items: vec![(
                "a",
                vec![m(
                    "EUNKNOWN",
                    "Invalid API version: invalid major version: x.y",
                )],
            )],
        },
        Case {
            name: "mismatch and deprecated API on one daemon, severity only rises",
            daemons: vec![daemon("a", "v2.25.0", "0.5"), daemon("b", "bad", "1.0")],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Error,
            error: None,
            warnings: vec![
                m("EPD02", MISMATCH),
                m("EPD03", DEPRECATED),
                m("EUNKNOWN", INVALID_VERSION),
            ],
            items: vec![
                (
                    "a",
                    vec![
                        m("EPD02", "Mismatched version \"v2.25.0\""),
                        m("EPD03", "Deprecated major API version 1."),
                    ],
                ),
                ("b", vec![m("EUNKNOWN", "Invalid version \"bad\"")]),
            ],
        },
        Case {
            name: "section warnings repeat once per daemon; items sorted by name",
            daemons: vec![
                daemon("zeta", "v2.24.0", "1.1"),
                daemon("alpha", "v2.25.0", "1.1"),
            ],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Warning,
            error: None,
            warnings: vec![m("EPD02", MISMATCH), m("EPD02", MISMATCH)],
            items: vec![
                ("alpha", vec![m("EPD02", "Mismatched version \"v2.25.0\"")]),
                ("zeta", vec![m("EPD02", "Mismatched version \"v2.24.0\"")]),
            ],
        },
        Case {
            name: "seen exactly 90 s ago: included",
            daemons: vec![stale_at(
                daemon("a", "v2.26.0", "1.9"),
                TimeDelta::seconds(90),
            )],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "seen 90 s + 1 ns ago: stale, excluded (EPD01 when required)",
            daemons: vec![stale_at(
                daemon("a", "v2.26.0", "1.9"),
                TimeDelta::seconds(90) + TimeDelta::nanoseconds(1),
            )],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Error,
            error: None,
            warnings: vec![m("EPD01", "No active provisioner daemons found!")],
            items: vec![],
        },
        Case {
            name: "stale bad daemon does not count, fresh one does",
            daemons: vec![
                stale_at(daemon("old", "bad", "x"), TimeDelta::minutes(5)),
                daemon("new", "v2.26.3", "1.2"),
            ],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("new", vec![])],
        },
        Case {
            name: "never seen: excluded; not required so ok",
            daemons: vec![ProvisionerDaemon {
                last_seen_at: None,
                ..daemon("a", "v2.26.0", "1.9")
            }],
            server: SERVER,
            api_major: 1,
            required: false,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![],
        },
        Case {
            name: "seen in the future (clock skew): fresh",
            daemons: vec![stale_at(
                daemon("a", "v2.26.0", "1.9"),
                TimeDelta::seconds(-30),
            )],
            server: SERVER,
            api_major: 1,
            required: true,
            severity: Severity::Ok,
            error: None,
            warnings: vec![],
            items: vec![("a", vec![])],
        },
        Case {
            name: "empty server version: developer error",
            daemons: vec![daemon("a", "v2.26.0", "1.9")],
            server: "",
            api_major: 1,
            required: true,
            severity: Severity::Error,
            error: Some("Developer error: CurrentVersion is empty!"),
            warnings: vec![],
            items: vec![],
        },
        Case {
            name: "zero API major: developer error",
            daemons: vec![daemon("a", "v2.26.0", "1.9")],
            server: SERVER,
            api_major: 0,
            required: true,
            severity: Severity::Error,
            error: Some("Developer error: CurrentAPIMajorVersion must be non-zero!"),
            warnings: vec![],
            items: vec![],
        },
    ];
    for c in cases {
        let r = section(
            &c.daemons,
            now(),
            c.server,
            c.api_major,
            c.required,
            STALE_AFTER,
        );
        assert_eq!(r.base.severity, c.severity, "{}", c.name);
        assert_eq!(r.base.error.as_deref(), c.error, "{}", c.name);
        assert_eq!(r.base.warnings, c.warnings, "{}", c.name);
        let items: Vec<(&str, Vec<Message>)> = r
            .items
            .iter()
            .map(|i| {
                (
                    i.provisioner_daemon.daemon.name.as_str(),
                    i.warnings.clone(),
                )
            })
            .collect();
        let want: Vec<(&str, Vec<Message>)> = c.items;
        assert_eq!(items, want, "{}", c.name);
    }
}

#[test]
fn item_carries_the_daemon_and_json_shape() {
    let d = daemon("a", "v2.26.0", "1.9");
    let r = section(
        std::slice::from_ref(&d),
        now(),
        SERVER,
        1,
        false,
        STALE_AFTER,
    );
    let item = &r.items[0].provisioner_daemon;
    assert_eq!(item.daemon.id, d.id);
    assert_eq!(item.daemon.last_seen_at, d.last_seen_at);
    assert_eq!(item.daemon.tags, d.tags);
    let json = serde_json::to_value(&r).expect("serialises");
    assert_eq!(json["items"][0]["warnings"], serde_json::json!([]));
    assert_eq!(
        json["items"][0]["provisioner_daemon"]["key_name"],
        serde_json::Value::Null
    );
    assert_eq!(json["warnings"], serde_json::json!([]));
    assert!(json.get("error").is_none());
    assert!(
        json.get("healthy").is_none(),
        "ProvisionerDaemons has no healthy"
    );
    let empty = section(&[], now(), SERVER, 1, false, STALE_AFTER);
    assert_eq!(
        serde_json::to_value(&empty).expect("serialises")["items"],
        serde_json::json!([])
    );
}
