use tonic::{Request, Status};

use super::*;
use pb::registry_service_server::RegistryService as _;
use tonic::Code;
use vantage_probe::rules::{provisioners, workspace_proxy};
use vantage_proto::Severity;

/// A wall clock that follows tokio's clock, so `tokio::time::pause`/`advance` move it.
fn tokio_clock() -> Clock {
    let base = DateTime::from_timestamp(1_750_000_000, 0).expect("valid");
    let start = tokio::time::Instant::now();
    Arc::new(move || {
        base + chrono::TimeDelta::from_std(start.elapsed()).expect("test durations fit")
    })
}

fn api(registry: Registry) -> RegistryApi {
    RegistryApi {
        registry: Arc::new(registry),
    }
}

fn hb(name: &str, version: &str, api_version: &str) -> pb::ProvisionerHeartbeatRequest {
    pb::ProvisionerHeartbeatRequest {
        name: name.into(),
        version: version.into(),
        api_version: api_version.into(),
        provisioners: vec!["terraform".into()],
        tags: [("scope".to_owned(), "organization".to_owned())].into(),
        organization_id: None,
    }
}

fn reg(name: &str, url: &str, region: &str) -> pb::RegisterWorkspaceProxyRequest {
    pb::RegisterWorkspaceProxyRequest {
        name: name.into(),
        display_name: format!("Proxy {name}"),
        url: url.into(),
        region: region.into(),
        ..Default::default()
    }
}

fn with_version(
    r: pb::RegisterWorkspaceProxyRequest,
    version: &str,
) -> pb::RegisterWorkspaceProxyRequest {
    pb::RegisterWorkspaceProxyRequest {
        version: version.into(),
        ..r
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_id_and_daemon_goes_stale_after_90s() {
    let a = api(Registry::in_memory().with_clock(tokio_clock()));
    let first = a
        .provisioner_heartbeat(Request::new(hb("d1", "v2.26.0", "1.9")))
        .await
        .expect("heartbeat")
        .into_inner();
    let d1 = first.daemon.expect("daemon");
    assert_eq!(d1.organization_id, NIL_UUID);
    assert_eq!(first.stale_after, Some(convert::duration(STALE_AFTER)));

    tokio::time::advance(Duration::from_secs(30)).await;
    let second = a
        .provisioner_heartbeat(Request::new(hb("d1", "v2.26.1", "1.9")))
        .await
        .expect("heartbeat")
        .into_inner()
        .daemon
        .expect("daemon");
    assert_eq!(second.id, d1.id, "id assigned once");
    assert_eq!(second.created_at, d1.created_at);
    assert_eq!(second.version, "v2.26.1");
    assert_ne!(second.last_seen_at, d1.last_seen_at);

    let registry = &a.registry;
    let section = |registry: &Registry, inputs: &[ProvisionerDaemon]| {
        provisioners::section(
            inputs,
            registry.now(),
            "v2.26.0",
            provisioners::CURRENT_API_MAJOR,
            true,
            STALE_AFTER,
        )
    };
    let r = section(registry, &registry.daemons().await);
    assert_eq!(r.base.severity, Severity::Ok);
    assert_eq!(r.items.len(), 1);

    tokio::time::advance(Duration::from_secs(90)).await;
    let r = section(registry, &registry.daemons().await);
    assert_eq!(r.items.len(), 1, "exactly 90 s: still fresh");

    tokio::time::advance(Duration::from_millis(1)).await;
    let r = section(registry, &registry.daemons().await);
    assert!(r.items.is_empty(), "past 90 s: stale");
    assert_eq!(r.base.severity, Severity::Error);
    assert_eq!(r.base.warnings[0].code, "EPD01");

    let listed = a
        .list_provisioner_daemons(Request::new(pb::ListProvisionerDaemonsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.daemons.len(), 1, "stale daemons are still listed");
}

#[tokio::test]
async fn heartbeat_validation_names_the_field() {
    let a = api(Registry::in_memory());
    let cases: Vec<(&str, pb::ProvisionerHeartbeatRequest, &str)> = vec![
        ("empty name", hb("", "v1.0.0", "1.0"), "name: "),
        ("bad name", hb("a b", "v1.0.0", "1.0"), "name: "),
        ("long name", hb(&"x".repeat(65), "v1.0.0", "1.0"), "name: "),
        (
            "control char",
            hb("d", "v1\n", "1.0"),
            "version: must not contain control characters",
        ),
        (
            "too many tags",
            pb::ProvisionerHeartbeatRequest {
                tags: (0..=MAX_TAGS)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect(),
                ..hb("d", "v1.0.0", "1.0")
            },
            "tags: at most 64 entries",
        ),
        (
            "empty tag key",
            pb::ProvisionerHeartbeatRequest {
                tags: [(String::new(), "v".to_owned())].into(),
                ..hb("d", "v1.0.0", "1.0")
            },
            "tags: a tag key is empty",
        ),
        (
            "bad provisioner",
            pb::ProvisionerHeartbeatRequest {
                provisioners: vec!["ok".into(), "no way".into()],
                ..hb("d", "v1.0.0", "1.0")
            },
            "provisioners[1]: ",
        ),
        (
            "bad organization",
            pb::ProvisionerHeartbeatRequest {
                organization_id: Some("nope".into()),
                ..hb("d", "v1.0.0", "1.0")
            },
            "organization_id: \"nope\" is not a UUID",
        ),
    ];
    for (name, req, want) in cases {
        let err = a
            .provisioner_heartbeat(Request::new(req))
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        assert!(err.message().starts_with(want), "{name}: {}", err.message());
    }
    assert!(
        a.registry.daemons().await.is_empty(),
        "bad input changes nothing"
    );

    // An invalid version is accepted: the section reports it (EUNKNOWN).
    let ok = a
        .provisioner_heartbeat(Request::new(pb::ProvisionerHeartbeatRequest {
            organization_id: Some("6BA7B810-9DAD-11D1-80B4-00C04FD430C8".into()),
            ..hb("d", "2.26.0", "x.y")
        }))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(
        ok.daemon.expect("daemon").organization_id,
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    );
}

#[tokio::test(start_paused = true)]
async fn daemons_are_bounded_and_old_ones_make_room() {
    let a = api(Registry::in_memory()
        .with_clock(tokio_clock())
        .with_max_entries(2));
    for n in ["a", "b"] {
        a.provisioner_heartbeat(Request::new(hb(n, "v1.0.0", "1.0")))
            .await
            .expect("fits");
    }
    let err = a
        .provisioner_heartbeat(Request::new(hb("c", "v1.0.0", "1.0")))
        .await
        .expect_err("full");
    assert_eq!(err.code(), Code::ResourceExhausted);
    // A known daemon still heartbeats when full.
    a.provisioner_heartbeat(Request::new(hb("a", "v1.0.0", "1.0")))
        .await
        .expect("known daemon");

    tokio::time::advance(DAEMON_RETENTION + Duration::from_secs(1)).await;
    a.provisioner_heartbeat(Request::new(hb("c", "v1.0.0", "1.0")))
        .await
        .expect("room after forgetting daemons unseen for 7 days");
    let names: Vec<String> = a
        .registry
        .daemons()
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["c".to_owned()]);

    tokio::time::advance(Duration::from_secs(120)).await;
    assert_eq!(
        a.registry
            .prune_daemons(Duration::from_secs(60))
            .await
            .expect("prune"),
        1
    );
}

#[tokio::test]
async fn proxy_registration_listing_and_targets() {
    let a = api(Registry::in_memory());
    let eu = a
        .register_workspace_proxy(Request::new(reg("eu-1", "https://eu-1.example.com/", "eu")))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(eu.source, "registered");
    a.register_workspace_proxy(Request::new(reg("us-1", "http://us-1.example.com", "us")))
        .await
        .expect("register");
    a.register_workspace_proxy(Request::new(reg("eu-0", "", "eu")))
        .await
        .expect("an empty URL is allowed");

    // Re-registering keeps the id.
    let again = a
        .register_workspace_proxy(Request::new(with_version(
            reg("eu-1", "https://eu-1.example.com/", "eu"),
            "v2.26.0",
        )))
        .await
        .expect("re-register")
        .into_inner();
    assert_eq!(again.id, eu.id);
    assert_eq!(again.version, "v2.26.0");

    let targets = a.registry.proxy_targets("eu", false).await;
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["eu-0", "eu-1"]);
    assert_eq!(targets[1].url, "https://eu-1.example.com/");
    assert_eq!(a.registry.proxy_targets("eu", true).await.len(), 3);
    assert!(a.registry.proxy_targets("ap", false).await.is_empty());

    let listed = a
        .list_workspace_proxies(Request::new(pb::ListWorkspaceProxiesRequest {
            region: "us".into(),
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.proxies.len(), 1);
    assert_eq!(listed.proxies[0].name, "us-1");

    // Inputs feed the section: never polled → eu-0 unregistered, the others unknown.
    let inputs = a.registry.proxy_inputs().await;
    assert_eq!(inputs.len(), 3);
    assert_eq!(inputs[0].status(), "unregistered");
    assert_eq!(inputs[1].status(), "unknown");
    let r = workspace_proxy::section(&inputs);
    assert_eq!(r.base.severity, Severity::Error, "no proxy healthy yet");

    a.deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
        name: "us-1".into(),
    }))
    .await
    .expect("deregister");
    let err = a
        .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
            name: "us-1".into(),
        }))
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(a.registry.proxies(None).await.len(), 2);
}

#[tokio::test]
async fn proxy_validation_names_the_field() {
    let a = api(Registry::in_memory());
    let cases: Vec<(&str, pb::RegisterWorkspaceProxyRequest, &str)> = vec![
        ("bad name", reg("", "https://x.example.com", "eu"), "name: "),
        (
            "ftp url",
            reg("p", "ftp://x.example.com", "eu"),
            "url: must be an http:// or https:// URL",
        ),
        ("not a url", reg("p", "x.example.com", "eu"), "url: "),
        (
            "query",
            reg("p", "https://x.example.com/?a=b", "eu"),
            "url: must not have a query or fragment",
        ),
        (
            "bad region",
            reg("p", "https://x.example.com", "e u"),
            "region: ",
        ),
        (
            "long display name",
            pb::RegisterWorkspaceProxyRequest {
                display_name: "x".repeat(MAX_TEXT + 1),
                ..reg("p", "", "eu")
            },
            "display_name: at most 256 bytes",
        ),
    ];
    for (name, req, want) in cases {
        let err = a
            .register_workspace_proxy(Request::new(req))
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        assert!(err.message().starts_with(want), "{name}: {}", err.message());
    }
    assert!(a.registry.proxies(None).await.is_empty());
    let err = a
        .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
            name: "no such".into(),
        }))
        .await
        .expect_err("invalid name");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn proxies_are_bounded() {
    let a = api(Registry::in_memory().with_max_entries(1));
    a.register_workspace_proxy(Request::new(reg("a", "", "eu")))
        .await
        .expect("fits");
    let err = a
        .register_workspace_proxy(Request::new(reg("b", "", "eu")))
        .await
        .expect_err("full");
    assert_eq!(err.code(), Code::ResourceExhausted);
    a.register_workspace_proxy(Request::new(reg("a", "https://a.example.com", "eu")))
        .await
        .expect("updating a known proxy is fine when full");
}

#[tokio::test]
async fn configured_proxies_take_registrations_and_cannot_be_deregistered() {
    let registry = Registry::in_memory();
    let spec = |name: &str, url: &str| ProxySpec {
        name: name.into(),
        display_name: format!("Configured {name}"),
        url: url.into(),
        region: "eu".into(),
        ..Default::default()
    };
    registry
        .configure_proxies(vec![
            spec("eu-1", ""),
            spec("eu-2", "https://eu-2.example.com"),
        ])
        .await
        .expect("configure");
    let a = api(registry);
    let before = a.registry.proxies(None).await;
    assert!(before.iter().all(|p| p.source == ProxySource::Config));

    // The proxy starts and announces its URL; configured fields win.
    let r = a
        .register_workspace_proxy(Request::new(with_version(
            reg("eu-1", "https://eu-1.example.com", "us"),
            "v2.26.0",
        )))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(r.source, "config");
    assert_eq!(r.id, before[0].id);
    assert_eq!(r.url, "https://eu-1.example.com");
    assert_eq!(r.region, "eu");
    assert_eq!(r.display_name, "Configured eu-1");

    let err = a
        .deregister_workspace_proxy(Request::new(pb::DeregisterWorkspaceProxyRequest {
            name: "eu-1".into(),
        }))
        .await
        .expect_err("configured");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Reconfigure: eu-2 dropped, eu-1 keeps its registered URL and id.
    a.registry
        .configure_proxies(vec![spec("eu-1", "")])
        .await
        .expect("reconfigure");
    let after = a.registry.proxies(None).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].url, "https://eu-1.example.com");

    // Invalid or duplicate specs change nothing.
    let err = a
        .registry
        .configure_proxies(vec![spec("x", ""), spec("x", "")])
        .await
        .expect_err("duplicate");
    assert!(
        err.to_string().starts_with("workspace_proxies[1].name: "),
        "{err}"
    );
    let err = a
        .registry
        .configure_proxies(vec![spec("x", "gopher://x")])
        .await
        .expect_err("bad url");
    assert!(
        err.to_string().starts_with("workspace_proxies[0].url: "),
        "{err}"
    );
    assert_eq!(a.registry.proxies(None).await, after);
}

#[tokio::test]
async fn store_round_trip_restores_the_registry() {
    let store: Arc<dyn RegistryStore> = Arc::new(MemoryRegistryStore::default());
    let first = Registry::open(store.clone()).await.expect("open");
    let d = first
        .heartbeat(Heartbeat::try_from(hb("d1", "v2.26.0", "1.9")).expect("valid heartbeat"))
        .await
        .expect("heartbeat");
    let p = first
        .register_proxy(ProxySpec {
            name: "eu-1".into(),
            url: "https://eu-1.example.com".into(),
            region: "eu".into(),
            ..Default::default()
        })
        .await
        .expect("register");

    let second = Registry::open(store.clone()).await.expect("reopen");
    assert_eq!(second.daemons().await, vec![d.clone()]);
    assert_eq!(second.proxies(None).await, vec![p]);
    second.deregister_proxy("eu-1").await.expect("deregister");
    assert!(
        Registry::open(store.clone())
            .await
            .expect("reopen")
            .proxies(None)
            .await
            .is_empty()
    );

    // An older save arriving late does not overwrite a newer one.
    let older = ProvisionerDaemon {
        last_seen_at: d.last_seen_at.map(|t| t - chrono::TimeDelta::seconds(5)),
        version: "v0.1.0".into(),
        ..d.clone()
    };
    store.save_daemon(older).await.expect("save");
    let loaded = store.load_registry().await.expect("load");
    assert_eq!(loaded.daemons, vec![d]);
}

#[test]
fn store_errors_are_unavailable_without_internals() {
    let s = Status::from(RegistryError::Store(StoreError::Database {
        what: "saving a proxy",
        reason: "connection to 10.0.0.5 refused".into(),
    }));
    assert_eq!(s.code(), Code::Unavailable);
    assert!(!s.message().contains("10.0.0.5"));
}

/// A burst of registrations is one rebuild per gap: the first change is followed at once, and
/// what arrives before the gap has passed waits for it and goes out together.
#[tokio::test(start_paused = true)]
async fn a_burst_of_registrations_is_followed_once_per_gap() {
    use follow::{ProvisionerPolicy, REBUILD_GAP};
    let a = api(Registry::in_memory().with_clock(tokio_clock()));
    let agg = crate::aggregator::Aggregator::spawn(
        crate::aggregator::AggregatorConfig::for_tests(),
        vec![],
    )
    .expect("aggregator");
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let (_coder_tx, coder_rx) = tokio::sync::watch::channel(None);
    let cancel = tokio_util::sync::CancellationToken::new();
    let policy = ProvisionerPolicy {
        required: false,
        stale_after: Duration::from_secs(90),
    };
    tokio::spawn(follow::follow(
        a.registry.clone(),
        agg,
        tx,
        policy,
        coder_rx,
        cancel.clone(),
    ));
    let names = |rx: &tokio::sync::watch::Receiver<Arc<Vec<WorkspaceProxy>>>| -> Vec<String> {
        rx.borrow().iter().map(|p| p.name.clone()).collect()
    };
    // The follower's first rebuild (of an empty registry) has run.
    tokio::time::sleep(REBUILD_GAP).await;

    let start = tokio::time::Instant::now();
    a.register_workspace_proxy(Request::new(reg("p1", "https://p1.example.com", "eu")))
        .await
        .expect("p1");
    rx.changed().await.expect("follower runs");
    assert_eq!(names(&rx), ["p1"]);
    assert!(
        start.elapsed() < REBUILD_GAP,
        "the first change is followed at once"
    );

    let burst = tokio::time::Instant::now();
    for n in ["p2", "p3", "p4"] {
        a.register_workspace_proxy(Request::new(reg(
            n,
            &format!("https://{n}.example.com"),
            "eu",
        )))
        .await
        .expect(n);
    }
    rx.changed().await.expect("follower runs");
    assert_eq!(
        names(&rx),
        ["p1", "p2", "p3", "p4"],
        "one rebuild for the burst"
    );
    assert!(
        burst.elapsed() >= REBUILD_GAP - Duration::from_millis(1),
        "the burst waited for the gap: {:?}",
        burst.elapsed()
    );
    cancel.cancel();
}
