use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory};

use super::*;

/// `text` written to `v.toml` in `dir`.
fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("v.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `Config::load` of the flags `args` (no program name).
fn load_args(args: &[&str]) -> Result<Config, ConfigError> {
    let argv = std::iter::once("vantaged").chain(args.iter().copied());
    Config::load(Flags::try_parse_args(argv).unwrap())
}

/// `Config::load` of a file holding `text`.
fn load_toml(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    Config::load(Flags {
        config: Some(write(dir.path(), text)),
        ..Default::default()
    })
}

#[test]
fn defaults_are_valid_and_embedded() {
    let c = Config::load(Flags::default()).unwrap();
    assert_eq!(c.listen, DEFAULT_LISTEN);
    assert_eq!(c.stale_after, DEFAULT_INTERVAL * 3);
    assert!(c.database_url.is_none() && c.server_vantage);
    assert_eq!(c, Config::default());
}

#[test]
fn flags_override_file_and_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.toml");
    std::fs::write(&path, "interval = \"10s\"\nquorum = 2\n").unwrap();
    let c = Config::load(Flags {
        config: Some(path.clone()),
        settings: Settings {
            quorum: Some(3),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (c.interval, c.stale_after, c.quorum),
        (Duration::from_secs(10), Duration::from_secs(30), 3)
    );

    std::fs::write(&path, "interval = \"soon\"\n").unwrap();
    let e = Config::load(Flags {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "interval");
    assert!(e.message.contains("\"soon\""), "{e}");

    std::fs::write(&path, "colour = 1\n").unwrap();
    let e = Config::load(Flags {
        config: Some(path),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");

    let e = Config::load(Flags {
        settings: Settings {
            access_url: Some("ftp://x".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "access_url");
    let e = Config::load(Flags {
        settings: Settings {
            quorum: Some(0),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "quorum");
}

/// Valid values of a flag, by its value name: (on the command line, in TOML).
fn samples(arg: &clap::Arg) -> Vec<(String, String)> {
    let value_name = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.as_str())
        .unwrap_or_default();
    let strings: &[&str] = match value_name {
        "BOOL" => return ["true", "false"].map(|b| (b.into(), b.into())).into(),
        "N" => return vec![("2".into(), "2".into())],
        "DURATION" => &["45s", "5s", "2s"],
        "ADDR" => &["127.0.0.1:3478"],
        "URL" => &["https://coder.example.com"],
        "FILE|URL" => &["/etc/vantage/derp.json"],
        "HOST:PORT" => &["stun.example.com:3478"],
        "NAME" => &["server-b"],
        "CIDR" => &["169.254.10.0/24"],
        "TOKEN" => &["abcdefghij-0123456789012345678901"],
        "FILE" => &["/etc/vantage/tls.pem"],
        "SECRET" => &["s3cret"],
        other => panic!(
            "--{:?}: add samples for the value name {other:?}",
            arg.get_long()
        ),
    };
    strings
        .iter()
        .map(|s| {
            let quoted = toml::Value::String((*s).to_owned()).to_string();
            let toml = match arg.get_action() {
                ArgAction::Append => format!("[{quoted}]"),
                _ => quoted,
            };
            ((*s).to_owned(), toml)
        })
        .collect()
}

/// Every flag of the command is also a TOML key (its long name in snake_case) and a variable
/// (`VANTAGE_` and the key in upper case): the same value by flag and by file loads the same
/// configuration (or fails on the same field), and some value changes the default.
#[test]
fn every_flag_is_a_toml_key_and_a_variable_of_the_same_name() {
    let cmd = Flags::command();
    let mut checked = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if arg.is_hide_set() || matches!(long, "help" | "version") {
            continue;
        }
        let key = long.replace('-', "_");
        let env = format!("VANTAGE_{}", key.to_uppercase());
        assert_eq!(arg.get_env(), Some(OsStr::new(&env)), "--{long}");
        if key == "config" {
            continue;
        }
        let mut changed = false;
        // A setting that needs a partner gets it, by flag and by file alike.
        let (partner_flag, partner_key) = match long {
            "alertmanager-password" => (
                "--alertmanager-username=u",
                "alertmanager_username = \"u\"\n",
            ),
            _ => ("", ""),
        };
        for (flag_value, toml_value) in samples(arg) {
            let flag = format!("--{long}={flag_value}");
            let args: Vec<&str> = [partner_flag, flag.as_str()]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            let by_flag = load_args(&args);
            let by_file = load_toml(&format!("{partner_key}{key} = {toml_value}\n"));
            match (by_flag, by_file) {
                (Ok(by_flag), Ok(by_file)) => {
                    assert_eq!(
                        by_flag, by_file,
                        "--{long}={flag_value} vs {key} = {toml_value}"
                    );
                    assert!(by_file.deprecations.is_empty(), "{key}");
                    changed |= by_file != Config::default();
                }
                (Err(f), Err(t)) => assert_eq!(f.field, t.field, "{key}"),
                (f, t) => panic!("--{long}={flag_value}: {f:?}; {key} = {toml_value}: {t:?}"),
            }
        }
        assert!(changed, "no sample of --{long} changes the configuration");
        checked.push(key);
    }
    assert_eq!(checked, Settings::keys());
    for renamed in [
        "embedded_relay",
        "server_checks_derp",
        "server_vantage",
        "stun_servers",
        "provisioner_daemons_required",
        "provisioner_stale_after",
    ] {
        assert!(
            checked.iter().any(|k| k == renamed),
            "{renamed}: {checked:?}"
        );
    }
}

#[test]
fn deprecated_flags_still_work_and_are_recorded() {
    let c = load_args(&[
        "--no-embedded-relay",
        "--no-server-derp",
        "--no-server-vantage",
        "--stun-server",
        "a.example.com:3478",
        "--stun-server=b.example.com:3478",
    ])
    .unwrap();
    assert!(!c.embedded_relay && !c.server_checks_derp && !c.server_vantage);
    assert_eq!(c.stun_servers, ["a.example.com:3478", "b.example.com:3478"]);
    let old: Vec<_> = c.deprecations.iter().map(|d| d.old.as_str()).collect();
    assert_eq!(
        old,
        [
            "--no-embedded-relay / VANTAGE_NO_EMBEDDED_RELAY",
            "--no-server-derp / VANTAGE_NO_SERVER_DERP",
            "--no-server-vantage / VANTAGE_NO_SERVER_VANTAGE",
            "--stun-server",
        ]
    );
    assert_eq!(
        c.deprecations[0].to_string(),
        "--no-embedded-relay / VANTAGE_NO_EMBEDDED_RELAY is deprecated: \
         use --embedded-relay false / VANTAGE_EMBEDDED_RELAY=false"
    );
    assert_eq!(c.deprecations[3].new, "--stun-servers");

    // The new spellings: the same configuration, nothing deprecated.
    let new = load_args(&[
        "--embedded-relay",
        "false",
        "--server-checks-derp=false",
        "--server-vantage=false",
        "--stun-servers",
        "a.example.com:3478,b.example.com:3478",
    ])
    .unwrap();
    assert_eq!(
        new,
        Config {
            deprecations: Vec::new(),
            ..c
        }
    );

    // Old and new names that disagree.
    let e = load_args(&["--embedded-relay=true", "--no-embedded-relay"]).unwrap_err();
    assert_eq!(e.field, "embedded_relay");
    assert!(e.message.contains("--no-embedded-relay"), "{e}");
    // A bare boolean flag is true, and a bad one is clap's usage error.
    assert!(load_args(&["--insecure-no-auth"]).unwrap().insecure_no_auth);
    assert!(Flags::try_parse_args(["vantaged", "--embedded-relay=maybe"]).is_err());
}

#[test]
fn deprecated_keys_still_work_and_are_recorded() {
    let c = load_toml("[provisioner_daemons]\nrequired = true\nstale_after = \"2m\"\n").unwrap();
    assert!(c.provisioner_daemons_required);
    assert_eq!(c.provisioner_stale_after, Duration::from_secs(120));
    assert_eq!(
        c.deprecations,
        [
            Deprecation {
                old: "provisioner_daemons.required".into(),
                new: "provisioner_daemons_required".into(),
            },
            Deprecation {
                old: "provisioner_daemons.stale_after".into(),
                new: "provisioner_stale_after".into(),
            },
        ]
    );
    let new = load_toml("provisioner_daemons_required = true\nprovisioner_stale_after = \"2m\"\n")
        .unwrap();
    assert_eq!(
        new,
        Config {
            deprecations: Vec::new(),
            ..c
        }
    );

    // Errors name the key as written.
    let e = load_toml("[provisioner_daemons]\nstale_after = \"soon\"\n").unwrap_err();
    assert_eq!(e.field, "provisioner_daemons.stale_after");
    assert!(e.message.contains("\"soon\""), "{e}");
    let e = load_toml("[provisioner_daemons]\ncolour = 1\n").unwrap_err();
    assert_eq!(e.field, "provisioner_daemons.colour");
    let e =
        load_toml("provisioner_daemons_required = true\n[provisioner_daemons]\nrequired = true\n")
            .unwrap_err();
    assert_eq!(e.field, "provisioner_daemons_required");
    // A flag still overrides the deprecated key.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[provisioner_daemons]\nstale_after = \"2m\"\n");
    let path = path.to_str().unwrap();
    let c = load_args(&["--config", path, "--provisioner-stale-after", "3m"]).unwrap();
    assert_eq!(c.provisioner_stale_after, Duration::from_secs(180));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    for (text, field) in [
        ("colour = 1\n", "colour"),
        ("config = \"other.toml\"\n", "config"),
        ("no_embedded_relay = true\n", "no_embedded_relay"),
        ("quorum = \"three\"\n", "quorum"),
        ("embedded_relay = \"no\"\n", "embedded_relay"),
        ("stun_servers = \"a:1\"\n", "stun_servers"),
        ("stun_listen = \"here\"\n", "stun_listen"),
        (
            "[[workspace_proxies]]\nname = \"p\"\ncolour = 1\n",
            "workspace_proxies",
        ),
        ("interval = \n", "config"),
    ] {
        let e = load_toml(text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
        assert!(!e.message.is_empty(), "{text}");
        assert!(!e.to_string().contains('\n'), "{text}: {e}");
    }
    let e = load_toml("colour = 1\n").unwrap_err();
    assert!(e.message.contains("unknown key"), "{e}");
    assert!(e.message.contains("stun_servers"), "{e}");
    let e = load_toml("quorum = \"three\"\n").unwrap_err();
    assert!(e.message.contains("\"three\""), "{e}");
    let e = load_toml("interval = \n").unwrap_err();
    assert!(e.message.contains("v.toml:1:"), "{e}");
}

#[test]
fn workspace_proxies_keep_their_shape() {
    let c = load_toml(
        "[[workspace_proxies]]\nname = \"fra\"\ndisplay_name = \"Frankfurt\"\n\
         url = \"http://fra\"\nregion = \"fra\"\nicon_url = \"/fra.svg\"\n\
         derp_enabled = true\nderp_only = false\n",
    )
    .unwrap();
    assert_eq!(
        c.workspace_proxies,
        [ProxyFile {
            name: "fra".into(),
            display_name: "Frankfurt".into(),
            url: "http://fra".into(),
            region: "fra".into(),
            icon_url: "/fra.svg".into(),
            derp_enabled: true,
            derp_only: false,
            version: String::new(),
        }]
    );
}

#[test]
fn bounds_and_networks_are_validated_naming_the_field() {
    let c = load_args(&[
        "--max-vantages",
        "20",
        "--allowed-proxy-networks",
        "169.254.7.0/24,fe80::/64",
    ])
    .unwrap();
    assert_eq!(c.max_vantages, 20);
    assert_eq!(c.allowed_proxy_networks.len(), 2);
    assert_eq!(Config::default().max_vantages, 10_000);
    let e = load_args(&["--allowed-proxy-networks", "nope"]).unwrap_err();
    assert_eq!(e.field, "allowed_proxy_networks");
    assert!(
        e.message.contains("\"nope\"") && e.message.contains("CIDR"),
        "{e}"
    );
    let e = load_args(&["--max-vantages", "0"]).unwrap_err();
    assert_eq!(e.field, "max_vantages");
}

#[test]
fn the_coder_table_is_read_and_the_token_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "abcdefghij-0123456789012345678901\n").unwrap();
    let text = format!(
        "[coder]\nurl = \"https://coder.example.com\"\ntoken_file = {:?}\nrefresh = \"10s\"\n\
         proxy_regions = {{ \"sydney\" = \"syd\" }}\nwebsocket_token = \"owner-secret\"\n",
        token_file.to_str().unwrap()
    );
    let c = load_toml(&text).unwrap();
    assert_eq!(
        c.coder_url.as_ref().unwrap().as_str(),
        "https://coder.example.com/"
    );
    assert_eq!(
        c.coder_token.as_ref().unwrap().expose(),
        "abcdefghij-0123456789012345678901"
    );
    assert_eq!(c.coder_refresh, Duration::from_secs(10));
    assert_eq!(c.coder.proxy_regions["sydney"], "syd");
    let shown = format!("{c:?}");
    assert!(!shown.contains("0123456789012345678901") && !shown.contains("owner-secret"));
    // The flag beats the file, and errors name the key as written.
    let e = load_toml("[coder]\ncolour = 1\n").unwrap_err();
    assert_eq!(e.field, "coder.colour");
    let e = load_toml("coder_url = \"https://a\"\n[coder]\nurl = \"https://b\"\n").unwrap_err();
    assert_eq!(e.field, "coder.url");
    let e = load_toml("[coder]\nurl = \"ftp://a\"\n").unwrap_err();
    assert_eq!(e.field, "coder_url");
    assert!(e.message.contains("http or https"), "{e}");
    let e = load_toml("[coder]\nproxy_regions = 3\n").unwrap_err();
    assert_eq!(e.field, "coder.proxy_regions");
}

#[test]
fn drain_grace_and_the_health_listener_are_read_and_checked() {
    let c = Config::load(Flags::default()).unwrap();
    assert_eq!(
        (c.drain, c.shutdown_grace, c.health_listen),
        (DEFAULT_DRAIN, DEFAULT_SHUTDOWN_GRACE, None)
    );
    let c = load_args(&[
        "--drain",
        "2s",
        "--shutdown-grace",
        "3s",
        "--health-listen",
        "0.0.0.0:7081",
    ])
    .unwrap();
    assert_eq!(c.drain, Duration::from_secs(2));
    assert_eq!(c.shutdown_grace, Duration::from_secs(3));
    assert_eq!(c.health_listen, Some("0.0.0.0:7081".parse().unwrap()));
    let c = load_toml("drain = \"1s\"\nshutdown_grace = \"1s\"\n").unwrap();
    assert_eq!(
        (c.drain, c.shutdown_grace),
        (Duration::from_secs(1), Duration::from_secs(1))
    );

    // The grace includes the drain: shorter names both.
    let e = load_args(&["--drain", "8s", "--shutdown-grace", "5s"]).unwrap_err();
    assert_eq!(e.field, "shutdown_grace");
    assert!(
        e.message.contains("drain") && e.message.contains("8s") && e.message.contains("5s"),
        "{e}"
    );
    let e = load_args(&["--drain", "20s"]).unwrap_err();
    assert_eq!(
        e.field, "shutdown_grace",
        "the default grace is shorter: {e}"
    );
    let e = load_toml("health_listen = \"port 7081\"\n").unwrap_err();
    assert_eq!(e.field, "health_listen");
    assert!(
        e.message.contains("\"port 7081\"") && e.message.contains("ip:port"),
        "{e}"
    );
}

#[test]
fn section_tables_set_intervals_and_timeouts() {
    use vantage_proto::Section;
    let c = load_toml(
        "interval = \"1m\"\n[sections.derp]\ninterval = \"15s\"\ntimeout = \"20s\"\n\
         [sections.database]\ntimeout = \"2s\"\n",
    )
    .unwrap();
    assert_eq!(c.interval, Duration::from_secs(60));
    assert_eq!(
        c.sections.get(Section::Derp),
        SectionTiming {
            interval: Some(Duration::from_secs(15)),
            timeout: Some(Duration::from_secs(20)),
        }
    );
    assert_eq!(
        c.sections.get(Section::Database),
        SectionTiming {
            interval: None,
            timeout: Some(Duration::from_secs(2)),
        }
    );
    assert_eq!(c.sections.get(Section::Websocket), SectionTiming::default());
    assert!(load_toml("").unwrap().sections.is_empty());
}

#[test]
fn bad_section_tables_name_the_key_the_value_and_what_is_expected() {
    for (text, field, says) in [
        (
            "[sections.provisioner_daemons]\ninterval = \"1m\"\n",
            "sections.provisioner_daemons",
            "no probe check",
        ),
        (
            "[sections.derpp]\ninterval = \"1m\"\n",
            "sections.derpp",
            "expected one of access_url, database, derp, websocket, workspace_proxy",
        ),
        (
            "[sections.derp]\ninterval = \"0s\"\n",
            "sections.derp.interval",
            "\"0s\" is too short",
        ),
        (
            "[sections.derp]\ntimeout = \"0s\"\n",
            "sections.derp.timeout",
            "expected more than 0 and at most 5m",
        ),
        (
            "[sections.derp]\ntimeout = \"6m\"\n",
            "sections.derp.timeout",
            "\"6m\" is out of range",
        ),
        (
            "[sections.derp]\ntimeout = \"soon\"\n",
            "sections.derp.timeout",
            "invalid duration \"soon\"",
        ),
        (
            "[sections.derp]\ntimeout = 20\n",
            "sections.derp.timeout",
            "20 is not a duration",
        ),
        (
            "[sections.derp]\nretries = \"1\"\n",
            "sections.derp.retries",
            "expected interval or timeout",
        ),
        ("sections = 1\n", "sections", "not a table"),
        (
            "[sections.derp]\ntimeout = \"5s\"\n",
            "sections.derp.timeout",
            "shorter than derp_node_timeout 10s",
        ),
    ] {
        let e = load_toml(text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {e}");
    }
}
