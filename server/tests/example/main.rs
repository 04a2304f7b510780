//! `deploy/vantage.example.toml` cannot drift from the configuration: it names every key of
//! [`Settings`], the keys it sets are the defaults, and every commented key is valid too.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use vantage_server::config::{Config, Flags, Settings};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vantage.example.toml")
}

fn load(path: &Path) -> Config {
    let argv = ["vantaged", "--config", path.to_str().unwrap()];
    Config::load(Flags::try_parse_args(argv).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The key of a `key = value` line, set (`key = …`) or commented (`# key = …`).
fn key_of(line: &str) -> Option<(&str, bool)> {
    let (commented, rest) = match line.strip_prefix("# ") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (key, _) = rest.split_once(" = ")?;
    key.chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')
        .then_some((key, commented))
}

#[test]
fn the_example_names_every_setting() {
    let text = std::fs::read_to_string(example()).unwrap();
    let keys: Vec<&str> = text.lines().filter_map(key_of).map(|(k, _)| k).collect();
    let missing: Vec<String> = Settings::keys()
        .into_iter()
        .filter(|k| !keys.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/vantage.example.toml lacks {missing:?}"
    );
}

#[test]
fn what_the_example_sets_is_the_default() {
    let mut loaded = load(&example());
    loaded.deprecations.clear();
    assert_eq!(loaded, Config::default());
}

#[test]
fn every_commented_key_of_the_example_is_valid() {
    let text = std::fs::read_to_string(example()).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match key_of(line) {
            // An alternative to other keys stays commented: both cannot be given at once.
            Some((_, true)) if line.contains("# instead of") => line,
            Some((_, true)) => line.trim_start_matches("# "),
            _ => line,
        })
        .map(|line| {
            // The tables' header lines are commented examples too.
            match line.strip_prefix("# ") {
                Some(header) if header.starts_with('[') => header,
                _ => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.toml");
    std::fs::write(&path, &uncommented).unwrap();
    // The DERP map file does not exist here: everything else is checked by loading.
    let c = load(&path);
    assert!(c.database_url.is_some() && c.stun_listen.is_some() && c.access_url.is_some());
    assert_eq!(c.workspace_proxies.len(), 1, "{uncommented}");
    assert_eq!(c.workspace_proxies[0].region, "syd");
    let derp = c.sections.get(vantage_proto::Section::Derp);
    assert_eq!(derp.interval, Some(std::time::Duration::from_secs(15)));
    assert_eq!(derp.timeout, Some(std::time::Duration::from_secs(20)));
}
