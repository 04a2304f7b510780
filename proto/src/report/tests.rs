use super::*;

#[test]
fn a_vantage_change_is_read_from_its_kind_or_from_an_older_servers_name() {
    for c in VantageChange::ALL {
        let kind = crate::pb::VantageChangeKind::from(c);
        assert_ne!(kind, crate::pb::VantageChangeKind::Unspecified);
        let new = crate::pb::VantageChange {
            vantage: "fra-1".into(),
            change: c.as_str().into(),
            kind: kind as i32,
        };
        assert_eq!(VantageChange::of(&new), Some(c));
        // The kind wins over the name; without a kind the name is read.
        let mislabelled = crate::pb::VantageChange {
            change: "nonsense".into(),
            ..new.clone()
        };
        assert_eq!(VantageChange::of(&mislabelled), Some(c));
        let old = crate::pb::VantageChange { kind: 0, ..new };
        assert_eq!(VantageChange::of(&old), Some(c));
    }
    let unknown = crate::pb::VantageChange {
        change: "teleported".into(),
        kind: 99,
        ..Default::default()
    };
    assert_eq!(VantageChange::of(&unknown), None);
}

#[test]
fn go_duration_matches_go() {
    let cases: &[(Duration, &str)] = &[
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(999), "999ns"),
        (Duration::from_nanos(1_500), "1.5µs"),
        (Duration::from_millis(1), "1ms"),
        (Duration::from_nanos(1_234_567), "1.234567ms"),
        (Duration::from_secs(2), "2s"),
        (Duration::from_millis(2_500), "2.5s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(3600), "1h0m0s"),
        (Duration::from_nanos(3_723_000_000_001), "1h2m3.000000001s"),
        (Duration::from_nanos(1), "1ns"),
        (Duration::from_millis(60), "60ms"),
        (Duration::from_millis(7_384_500), "2h3m4.5s"),
        (Duration::from_nanos(1_000_000_001), "1.000000001s"),
        (Duration::MAX, "2562047h47m16.854775807s"),
    ];
    for (d, want) in cases {
        assert_eq!(go_duration(*d), *want, "{d:?}");
    }
}

#[test]
fn message_string_form() {
    assert_eq!(
        Message::new("EACS03", "get healthz endpoint: boom").to_string(),
        "EACS03: get healthz endpoint: boom"
    );
    assert_eq!(
        Message::new("", "parse access url: x").to_string(),
        "parse access url: x"
    );
}

#[test]
fn coder_json_indents_with_tabs_and_escapes_html() {
    let out = String::from_utf8(coder_json(&serde_json::json!({"a": "<b>&"}))).expect("utf8");
    assert_eq!(out, "{\n\t\"a\": \"\\u003cb\\u003e\\u0026\"\n}\n");
    let back: serde_json::Value = serde_json::from_str(&out).expect("valid json");
    assert_eq!(back["a"], "<b>&");
}

#[test]
fn base_omits_absent_error() {
    let json = serde_json::to_value(Base::default()).expect("serialize");
    assert_eq!(
        json,
        serde_json::json!({"severity": "ok", "warnings": [], "dismissed": false})
    );
}
