use super::*;

fn node(name: &str, stun_only: bool) -> Node {
    Node {
        name: name.into(),
        region_id: 1,
        host_name: "h".into(),
        stun_only,
        ..Node::default()
    }
}

fn node_report(name: &str, severity: Severity) -> DerpNodeReport {
    DerpNodeReport {
        healthy: severity != Severity::Error,
        severity,
        node: node(name, false),
        ..DerpNodeReport::default()
    }
}

fn region(nodes: &[&str]) -> Region {
    Region {
        region_id: 1,
        region_code: "r".into(),
        region_name: "R".into(),
        nodes: nodes.iter().map(|n| node(n, false)).collect(),
        ..Region::default()
    }
}

#[test]
fn node_verdict_table() {
    struct Case {
        name: &'static str,
        can_exchange: bool,
        stun_only: bool,
        stun_error: bool,
        websocket: bool,
        healthy: bool,
        severity: Severity,
        ederp01: bool,
    }
    let cases = [
        Case {
            name: "all good",
            can_exchange: true,
            stun_only: false,
            stun_error: false,
            websocket: false,
            healthy: true,
            severity: Severity::Ok,
            ederp01: false,
        },
        Case {
            name: "no exchange",
            can_exchange: false,
            stun_only: false,
            stun_error: false,
            websocket: false,
            healthy: false,
            severity: Severity::Error,
            ederp01: false,
        },
        Case {
            name: "stun-only, no exchange",
            can_exchange: false,
            stun_only: true,
            stun_error: false,
            websocket: false,
            healthy: true,
            severity: Severity::Ok,
            ederp01: false,
        },
        Case {
            name: "stun error",
            can_exchange: true,
            stun_only: false,
            stun_error: true,
            websocket: false,
            healthy: false,
            severity: Severity::Error,
            ederp01: false,
        },
        Case {
            name: "stun-only stun error",
            can_exchange: false,
            stun_only: true,
            stun_error: true,
            websocket: false,
            healthy: false,
            severity: Severity::Error,
            ederp01: false,
        },
        Case {
            name: "websocket",
            can_exchange: true,
            stun_only: false,
            stun_error: false,
            websocket: true,
            healthy: true,
            severity: Severity::Warning,
            ederp01: true,
        },
        Case {
            name: "websocket that could not relay either stays an error",
            can_exchange: false,
            stun_only: false,
            stun_error: false,
            websocket: true,
            healthy: false,
            severity: Severity::Error,
            ederp01: true,
        },
        Case {
            name: "websocket overrides a STUN error (Coder's rule) when the relay works",
            can_exchange: true,
            stun_only: false,
            stun_error: true,
            websocket: true,
            healthy: false,
            severity: Severity::Warning,
            ederp01: true,
        },
    ];
    for c in cases {
        let mut r = DerpNodeReport {
            node: node("n", c.stun_only),
            can_exchange_messages: c.can_exchange,
            uses_websocket: c.websocket,
            stun: StunReport {
                enabled: true,
                can_stun: !c.stun_error,
                error: c.stun_error.then(|| "probe stun: x".into()),
            },
            ..DerpNodeReport::default()
        };
        node_verdict(&mut r);
        assert_eq!(r.healthy, c.healthy, "{}", c.name);
        assert_eq!(r.severity, c.severity, "{}", c.name);
        assert_eq!(
            r.warnings.iter().any(|w| w.code == "EDERP01"),
            c.ederp01,
            "{}",
            c.name
        );
        node_verdict(&mut r);
        assert!(r.warnings.len() <= 1, "{}: idempotent", c.name);
    }
}

#[test]
fn region_rules_table() {
    use Severity::*;
    struct Case {
        name: &'static str,
        nodes: &'static [&'static str],
        reports: Vec<DerpNodeReport>,
        healthy: bool,
        severity: Severity,
        ederp02: bool,
        error: bool,
    }
    let cases = [
        Case {
            name: "zero nodes",
            nodes: &[],
            reports: vec![],
            healthy: true,
            severity: Ok,
            ederp02: false,
            error: false,
        },
        Case {
            name: "one ok",
            nodes: &["a"],
            reports: vec![node_report("a", Ok)],
            healthy: true,
            severity: Ok,
            ederp02: false,
            error: false,
        },
        Case {
            name: "one warning",
            nodes: &["a"],
            reports: vec![node_report("a", Warning)],
            healthy: true,
            severity: Warning,
            ederp02: false,
            error: false,
        },
        Case {
            name: "one error",
            nodes: &["a"],
            reports: vec![node_report("a", Error)],
            healthy: false,
            severity: Error,
            ederp02: false,
            error: false,
        },
        Case {
            name: "two ok",
            nodes: &["a", "b"],
            reports: vec![node_report("a", Ok), node_report("b", Ok)],
            healthy: true,
            severity: Ok,
            ederp02: false,
            error: false,
        },
        Case {
            name: "two, one error",
            nodes: &["a", "b"],
            reports: vec![node_report("a", Ok), node_report("b", Error)],
            healthy: true,
            severity: Warning,
            ederp02: true,
            error: false,
        },
        Case {
            name: "two, one warning",
            nodes: &["a", "b"],
            reports: vec![node_report("a", Warning), node_report("b", Ok)],
            healthy: true,
            severity: Warning,
            ederp02: true,
            error: false,
        },
        Case {
            name: "three, two bad",
            nodes: &["a", "b", "c"],
            reports: vec![
                node_report("a", Warning),
                node_report("b", Error),
                node_report("c", Ok),
            ],
            healthy: false,
            severity: Error,
            ederp02: false,
            error: false,
        },
        Case {
            name: "two warnings",
            nodes: &["a", "b"],
            reports: vec![node_report("a", Warning), node_report("b", Warning)],
            healthy: false,
            severity: Warning,
            ederp02: false,
            error: false,
        },
        Case {
            name: "missing report",
            nodes: &["a", "b"],
            reports: vec![node_report("a", Ok)],
            healthy: false,
            severity: Error,
            ederp02: false,
            error: true,
        },
    ];
    for c in cases {
        let r = region_report(&region(c.nodes), c.reports);
        assert_eq!(r.healthy, c.healthy, "{}", c.name);
        assert_eq!(r.severity, c.severity, "{}", c.name);
        assert_eq!(
            r.warnings.iter().any(|w| w.code == "EDERP02"),
            c.ederp02,
            "{}",
            c.name
        );
        assert_eq!(
            r.error.as_deref() == Some(MSG_MISSING_NODE_REPORT),
            c.error,
            "{}",
            c.name
        );
    }
}

#[test]
fn region_sorts_nodes_and_collects_warnings() {
    let mut b = node_report("b", Severity::Warning);
    b.warnings
        .push(Message::new("EDERP01", MSG_DERP_NODE_USES_WEBSOCKET));
    let r = region_report(
        &region(&["b", "a"]),
        vec![b, node_report("a", Severity::Ok)],
    );
    let names: Vec<_> = r
        .node_reports
        .iter()
        .map(|n| n.node.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let codes: Vec<_> = r.warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(codes, ["EDERP01", "EDERP02"]);
}

fn region_with(id: i64, reports: Vec<DerpNodeReport>, stun_only: bool) -> DerpRegionReport {
    let mut reg = Region {
        region_id: id,
        ..Region::default()
    };
    reg.nodes = reports
        .iter()
        .map(|r| Node {
            stun_only,
            ..r.node.clone()
        })
        .collect();
    let reports = reports
        .into_iter()
        .map(|mut r| {
            r.node.stun_only = stun_only;
            r
        })
        .collect();
    region_report(&reg, reports)
}

fn stun(enabled: bool, ok: bool) -> StunReport {
    StunReport {
        enabled,
        can_stun: ok,
        error: (enabled && !ok).then(|| "probe stun: timeout".into()),
    }
}

#[test]
fn section_rules_table() {
    use Severity::*;
    let derp_ok = || {
        let mut n = node_report("1a", Ok);
        n.can_exchange_messages = true;
        n
    };
    let with_stun = |mut n: DerpNodeReport, s: StunReport| {
        n.stun = s;
        n
    };
    let a: SocketAddr = "198.51.100.1:1000".parse().expect("addr");
    let b: SocketAddr = "198.51.100.1:2000".parse().expect("addr");
    let c: SocketAddr = "203.0.113.9:1000".parse().expect("addr");
    struct Case {
        name: &'static str,
        regions: Vec<DerpRegionReport>,
        mapped: Vec<SocketAddr>,
        healthy: bool,
        severity: Severity,
        codes: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "healthy",
            regions: vec![region_with(1, vec![derp_ok()], false)],
            mapped: vec![],
            healthy: true,
            severity: Ok,
            codes: &[],
        },
        Case {
            name: "no regions",
            regions: vec![],
            mapped: vec![],
            healthy: false,
            severity: Error,
            codes: &["EDERP03"],
        },
        Case {
            name: "stun-only map",
            regions: vec![region_with(
                2,
                vec![with_stun(node_report("2s", Ok), stun(true, true))],
                true,
            )],
            mapped: vec![a],
            healthy: false,
            severity: Error,
            codes: &["EDERP03"],
        },
        Case {
            name: "stun enabled, none works",
            regions: vec![region_with(
                1,
                vec![with_stun(derp_ok(), stun(true, false))],
                false,
            )],
            mapped: vec![],
            healthy: true,
            severity: Warning,
            codes: &["ESTUN01"],
        },
        Case {
            name: "one of two stun works",
            regions: vec![
                region_with(1, vec![with_stun(derp_ok(), stun(true, false))], false),
                region_with(
                    2,
                    vec![with_stun(node_report("2s", Ok), stun(true, true))],
                    true,
                ),
            ],
            mapped: vec![a],
            healthy: true,
            severity: Ok,
            codes: &[],
        },
        Case {
            name: "stun disabled everywhere",
            regions: vec![region_with(
                1,
                vec![with_stun(derp_ok(), stun(false, false))],
                false,
            )],
            mapped: vec![],
            healthy: true,
            severity: Ok,
            codes: &[],
        },
        Case {
            name: "same ip, other port",
            regions: vec![region_with(1, vec![derp_ok()], false)],
            mapped: vec![a, b],
            healthy: true,
            severity: Ok,
            codes: &[],
        },
        Case {
            name: "mapping varies",
            regions: vec![region_with(1, vec![derp_ok()], false)],
            mapped: vec![a, c],
            healthy: true,
            severity: Ok,
            codes: &["ESTUN02"],
        },
        Case {
            name: "region error raises",
            regions: vec![region_with(1, vec![node_report("1a", Error)], false)],
            mapped: vec![],
            healthy: false,
            severity: Error,
            codes: &[],
        },
        Case {
            name: "region warning raises",
            regions: vec![region_with(
                1,
                vec![derp_ok(), node_report("1b", Error)],
                false,
            )],
            mapped: vec![],
            healthy: true,
            severity: Warning,
            codes: &["EDERP02"],
        },
    ];
    for c in cases {
        let regions = c
            .regions
            .into_iter()
            .map(|r| (r.region.region_id, r))
            .collect();
        let mapped: Vec<StunMapping> = c
            .mapped
            .iter()
            .enumerate()
            .map(|(i, a)| StunMapping {
                region_id: 1,
                node: format!("n{i}"),
                address: *a,
            })
            .collect();
        let r = section_report(regions, &mapped);
        assert_eq!(r.healthy, c.healthy, "{}", c.name);
        assert_eq!(r.severity, c.severity, "{}", c.name);
        let codes: Vec<_> = r.warnings.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(codes, c.codes, "{}", c.name);
    }
}

#[test]
fn netcheck_logs_say_where_each_stun_server_saw_the_vantage() {
    let with_stun = |name: &str, enabled: bool, error: Option<&str>| {
        let mut n = node_report(name, Severity::Ok);
        n.stun = StunReport {
            enabled,
            can_stun: enabled && error.is_none(),
            error: error.map(str::to_owned),
        };
        n
    };
    let r1 = region_with(
        1,
        vec![with_stun("1a", true, None), with_stun("1b", false, None)],
        false,
    );
    let r2 = region_with(
        2,
        vec![with_stun("2s", true, Some("probe stun: timeout"))],
        true,
    );
    let regions = [(1, r1), (2, r2)].into_iter().collect();
    let mapped = [StunMapping {
        region_id: 1,
        node: "1a".into(),
        address: "10.77.0.2:40000".parse().expect("addr"),
    }];
    let r = section_report(regions, &mapped);
    assert_eq!(
        r.netcheck_logs,
        [
            "netcheck: STUN 1a (region 1) mapped this vantage to 10.77.0.2:40000",
            "netcheck: STUN 2s (region 2) failed: probe stun: timeout",
        ]
    );
}

#[test]
fn json_shape_matches_coder() {
    let mut n = node_report("999b", Severity::Ok);
    n.node.stun_port = -1;
    n.can_exchange_messages = true;
    n.round_trip_ping = "1.5ms".into();
    n.round_trip_ping_ms = 1;
    n.client_logs = vec![vec![], vec![]];
    n.client_errs = vec![vec![], vec![]];
    let v = serde_json::to_value(&n).expect("json");
    assert_eq!(
        v,
        serde_json::json!({
            "healthy": true, "severity": "ok", "warnings": [],
            "node": {"Name": "999b", "RegionID": 1, "HostName": "h", "STUNPort": -1},
            "node_info": {"TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0},
            "can_exchange_messages": true, "round_trip_ping": "1.5ms", "round_trip_ping_ms": 1,
            "uses_websocket": false, "client_logs": [[], []], "client_errs": [[], []],
            "stun": {"Enabled": false, "CanSTUN": false, "Error": null}
        })
    );
    let mut reg = region(&["999b"]);
    reg.region_id = 999;
    let section = section_report(
        [(999, region_report(&reg, vec![n]))].into_iter().collect(),
        &[],
    );
    let v = serde_json::to_value(&section).expect("json");
    assert!(v["regions"]["999"]["node_reports"].is_array());
    assert!(v.get("error").is_none());
    assert!(v.get("netcheck").is_none());
    assert_eq!(v["netcheck_logs"], serde_json::json!([]));
    assert_eq!(v["dismissed"], false);
    let back: DerpHealthReport = serde_json::from_value(v).expect("parse back");
    assert_eq!(back, section);
    assert!(Severity::Ok < Severity::Warning && Severity::Warning < Severity::Error);
}
