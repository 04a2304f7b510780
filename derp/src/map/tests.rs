use super::*;

const CODER: &str = r#"{"Regions":{"999":{"EmbeddedRelay":true,"RegionID":999,"RegionCode":"coder","RegionName":"Coder Embedded Relay",
 "Nodes":[{"Name":"999stun0","RegionID":999,"HostName":"stun.l.google.com","STUNOnly":true,"STUNPort":19302},
          {"Name":"999b","RegionID":999,"HostName":"coder.example.com","STUNPort":-1,"DERPPort":443}]}}}"#;

const TAILSCALE: &str = r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"nyc","RegionName":"New York City",
 "Latitude":40.7,"Longitude":-74.0,"Nodes":[{"Name":"1f","RegionID":1,"HostName":"derp1f.tailscale.com",
 "IPv4":"199.38.181.104","IPv6":"2607:f740:f::bc","CanPort80":true}]},
 "2":{"RegionID":2,"RegionCode":"sfo","RegionName":"San Francisco","NoMeasureNoHome":true,"Nodes":[{"Name":"2d",
 "RegionID":2,"HostName":"derp2d.tailscale.com","IPv4":"192.73.242.187","IPv6":"none","STUNPort":0}]}},
 "HomeParams":{"RegionScore":{"1":0.9}},"omitDefaultRegions":true}"#;

const HEADSCALE: &str = r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"headscale","RegionName":"Headscale Embedded DERP",
 "Avoid":false,"Nodes":[{"Name":"900a","RegionID":900,"HostName":"hs.example.com","IPv4":"","IPv6":"","STUNPort":3478,
 "STUNOnly":false,"DERPPort":443,"InsecureForTests":false,"STUNTestIP":"","CanPort80":false}]}}}"#;

#[test]
fn real_world_maps_load() {
    let coder = DerpMap::parse(CODER).expect("coder map");
    let r = &coder.regions[&999];
    assert!(r.embedded_relay);
    assert_eq!(r.nodes[0].stun_port, 19302);
    assert!(r.nodes[0].stun_only);
    assert_eq!(r.nodes[1].stun_port, -1);
    let ts = DerpMap::parse(TAILSCALE).expect("tailscale map");
    assert!(ts.omit_default_regions);
    assert!(ts.home_params.is_some());
    assert_eq!(ts.regions[&2].nodes[0].ipv6, "none");
    let hs = DerpMap::parse(HEADSCALE).expect("headscale map");
    assert_eq!(hs.regions[&900].nodes[0].derp_port, 443);
    // Re-serialising and parsing again gives the same map.
    for m in [coder, ts, hs] {
        assert_eq!(DerpMap::parse(&m.to_json()).expect("round trip"), m);
    }
}

#[test]
fn node_json_omits_empty_fields() {
    let map = DerpMap::parse(CODER).expect("coder map");
    let json = serde_json::to_value(&map.regions[&999].nodes[1]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"Name":"999b","RegionID":999,"HostName":"coder.example.com","STUNPort":-1,"DERPPort":443})
    );
    let region = serde_json::to_value(&map.regions[&999]).expect("json");
    assert!(region.get("Avoid").is_none());
    assert_eq!(region["EmbeddedRelay"], true);
}

#[test]
fn validation_names_the_problem() {
    let cases = [
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"1a","RegionID":1}]}}}"#,
            r#"Regions["1"].Nodes[0].HostName: empty"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":2,"Nodes":[]}}}"#,
            r#"Regions["1"].RegionID: 2 does not match its key 1"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"1a","RegionID":3,"HostName":"h"}]}}}"#,
            r#"Regions["1"].Nodes[0].RegionID: 3 does not match the region's RegionID 1"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"1a","RegionID":1,"HostName":"h","DERPPort":70000}]}}}"#,
            r#"Regions["1"].Nodes[0].DERPPort: 70000 out of range 0..=65535"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"1a","RegionID":1,"HostName":"h","STUNPort":-2}]}}}"#,
            r#"Regions["1"].Nodes[0].STUNPort: -2 out of range -1..=65535"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"","RegionID":1,"HostName":"h"}]}}}"#,
            r#"Regions["1"].Nodes[0].Name: empty"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"a","HostName":"h"},{"Name":"a","HostName":"i"}]}}}"#,
            r#"Regions["1"].Nodes[1].Name: duplicate node name "a" (also at Regions["1"].Nodes[0])"#,
        ),
        (
            r#"{"Regions":{"0":{"RegionID":0}}}"#,
            r#"Regions["0"]: region ID 0 out of range 1..=9007199254740991"#,
        ),
        (
            r#"{"Regions":{"1":{"RegionID":1,"Nodes":[{"Name":"a","HostName":"h","STUNTestIP":"x"}]}}}"#,
            r#"Regions["1"].Nodes[0].STUNTestIP: "x" is not an IP address"#,
        ),
    ];
    for (json, want) in cases {
        let err = DerpMap::parse(json).expect_err(json);
        assert_eq!(err.to_string(), want, "{json}");
    }
    assert!(matches!(DerpMap::parse("{"), Err(MapError::Json(_))));
    assert!(matches!(
        DerpMap::parse(r#"{"Regions":{"x":{}}}"#),
        Err(MapError::Json(_))
    ));
    // A node without RegionID inherits it.
    let m =
        DerpMap::parse(r#"{"Regions":{"7":{"RegionID":7,"Nodes":[{"Name":"a","HostName":"h"}]}}}"#)
            .expect("inherit");
    assert_eq!(m.regions[&7].nodes[0].region_id, 7);
}

#[test]
fn derp_urls() {
    let n = |host: &str, ipv4: &str, port: i64, http: bool| Node {
        name: "n".into(),
        host_name: host.into(),
        ipv4: ipv4.into(),
        derp_port: port,
        force_http: http,
        ..Node::default()
    };
    let cases = [
        (
            n("derp.example.com", "", 0, false),
            "https://derp.example.com/derp",
        ),
        (
            n("derp.example.com", "", 443, false),
            "https://derp.example.com/derp",
        ),
        (
            n("derp.example.com", "", 8443, false),
            "https://derp.example.com:8443/derp",
        ),
        (
            n("derp.example.com", "", 80, true),
            "http://derp.example.com/derp",
        ),
        (
            n("derp.example.com", "", 443, true),
            "http://derp.example.com:443/derp",
        ),
        (n("", "10.0.0.1", 3340, true), "http://10.0.0.1:3340/derp"),
        (n("::1", "", 8080, true), "http://[::1]:8080/derp"),
    ];
    for (node, want) in cases {
        assert_eq!(node.derp_url().expect("url").as_str(), want);
    }
    assert!(n("", "", 0, false).derp_url().is_err());
}

#[test]
fn embedded_and_stun_regions() {
    let u = url::Url::parse("http://127.0.0.1:3000/").expect("url");
    let r = embedded_region(&u, 999, "Embedded Relay").expect("region");
    assert!(r.embedded_relay);
    let node = &r.nodes[0];
    assert_eq!(node.name, "999b");
    assert_eq!(node.stun_port, -1);
    assert!(node.force_http);
    assert_eq!(
        node.derp_url().expect("url").as_str(),
        "http://127.0.0.1:3000/derp"
    );
    let u = url::Url::parse("https://coder.example.com").expect("url");
    let r = embedded_region(&u, 999, "Embedded Relay").expect("region");
    assert_eq!(r.nodes[0].derp_port, 443);
    assert!(!r.nodes[0].force_http);
    assert_eq!(
        r.nodes[0].derp_url().expect("url").as_str(),
        "https://coder.example.com/derp"
    );

    let s = stun_only_region(1000, "stun.l.google.com:19302").expect("stun");
    assert_eq!(s.region_code, "vantage_stun_1000");
    assert_eq!(s.nodes[0].name, "1000stun0");
    assert!(s.nodes[0].stun_only);
    assert_eq!(s.nodes[0].stun_port, 19302);
    let s = stun_only_region(1001, "[::1]:3479").expect("v6");
    assert_eq!(s.nodes[0].ipv6, "::1");
    let s = stun_only_region(1002, "127.0.0.1").expect("bare");
    assert_eq!(s.nodes[0].stun_port, 3478);
    assert_eq!(s.nodes[0].ipv4, "127.0.0.1");
    assert!(stun_only_region(1003, "host:notaport").is_err());
    let mut map = DerpMap::default();
    map.regions
        .insert(999, embedded_region(&u, 999, "E").expect("e"));
    map.regions
        .insert(1000, stun_only_region(1000, "h:1").expect("s"));
    map.validate().expect("valid");
    assert!(map.has_derp_nodes());
}
