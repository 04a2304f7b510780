//! The TOML file (`--config`): every [`Settings`] key, the `[[workspace_proxies]]`, the
//! `[coder]` and `[sections.<section>]` tables, and the
//! deprecated `[provisioner_daemons]` table (still accepted, recorded as a [`Deprecation`]).
//! Each key is read on its own, so an error names the key, the value and what was expected.

use std::collections::HashMap;
use std::path::Path;

use super::settings::Settings;
use super::{ConfigError, Deprecation};

/// The file's one key that is not a setting.
const WORKSPACE_PROXIES: &str = "workspace_proxies";

/// Deprecated tables: each `[table] key` is now a top-level key.
type Renames = &'static [(&'static str, &'static str)];
const DEPRECATED: [(&str, Renames); 1] = [(
    "provisioner_daemons",
    &[
        ("required", "provisioner_daemons_required"),
        ("stale_after", "provisioner_stale_after"),
    ],
)];

/// A workspace proxy declared in the configuration file (`[[workspace_proxies]]`): the
/// registry's own type, read straight from TOML.
pub use crate::registry::ProxySpec as ProxyFile;

/// The `[coder]` table: `url`, `token` and `refresh` are the settings `coder_url`,
/// `coder_token` and `coder_refresh`; `token_file` reads the token from a file.
const CODER: &str = "coder";
const CODER_SETTINGS: Renames = &[
    ("url", "coder_url"),
    ("token", "coder_token"),
    ("refresh", "coder_refresh"),
];

/// What a configuration file holds.
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    pub settings: Settings,
    pub workspace_proxies: Vec<ProxyFile>,
    pub coder: CoderFile,
    pub sections: super::sections::Sections,
}

/// The keys of `[coder]` that are not settings.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CoderFile {
    /// Coder proxy name → the probe region that checks it.
    pub proxy_regions: std::collections::BTreeMap<String, String>,
    /// An Owner's token for Coder's WebSocket echo, handed to probes over TLS only.
    pub websocket_token: Option<super::settings::Secret>,
}

/// Read and parse the file at `path`.
pub(super) fn read_file(
    path: &Path,
    deprecations: &mut Vec<Deprecation>,
) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("reading {}: {e}", path.display())))?;
    parse(&text, path, deprecations)
}

/// Parse the text of the file at `path`.
pub(super) fn parse(
    text: &str,
    path: &Path,
    deprecations: &mut Vec<Deprecation>,
) -> Result<FileConfig, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError::new("config", syntax_error(text, path, &e)))?;
    let workspace_proxies = match table.remove(WORKSPACE_PROXIES) {
        Some(v) => v
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new(WORKSPACE_PROXIES, e.message()))?,
        None => Vec::new(),
    };
    let sections = match table.remove(super::sections::SECTIONS) {
        Some(v) => super::sections::parse(v)?,
        None => super::sections::Sections::default(),
    };
    let mut old_names = lift_deprecated(&mut table, deprecations)?;
    let coder = lift_coder(&mut table, &mut old_names)?;
    let keys = Settings::keys();
    let mut settings = Settings::default();
    for (key, value) in table {
        let field = old_names.get(&key).cloned().unwrap_or_else(|| key.clone());
        if !keys.contains(&key) {
            return Err(ConfigError::new(
                &field,
                format!(
                    "unknown key in {} (expected one of {}, {WORKSPACE_PROXIES}, [{CODER}], [sections.<section>])",
                    path.display(),
                    keys.join(", ")
                ),
            ));
        }
        let one: Settings = toml::Table::from_iter([(key, value)])
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new(&field, e.message()))?;
        settings = settings.or(one);
    }
    Ok(FileConfig {
        settings,
        workspace_proxies,
        coder,
        sections,
    })
}

/// Move `[coder] url/token/refresh` to their settings, read `token_file`, and return the rest.
fn lift_coder(
    table: &mut toml::Table,
    old_names: &mut HashMap<String, String>,
) -> Result<CoderFile, ConfigError> {
    let Some(value) = table.remove(CODER) else {
        return Ok(CoderFile::default());
    };
    let toml::Value::Table(entries) = value else {
        return Err(ConfigError::new(
            CODER,
            format!("{value} is not a table (expected [{CODER}])"),
        ));
    };
    let mut coder = CoderFile::default();
    for (key, value) in entries {
        let at = format!("{CODER}.{key}");
        let new = match key.as_str() {
            "token_file" => {
                let toml::Value::String(path) = &value else {
                    return Err(ConfigError::new(
                        &at,
                        format!("{value} is not a path (expected a string)"),
                    ));
                };
                let token = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&at, format!("reading {path:?}: {e}")))?;
                ("coder_token", toml::Value::String(token.trim().to_owned()))
            }
            "proxy_regions" => {
                coder.proxy_regions = value.try_into().map_err(|e: toml::de::Error| {
                    ConfigError::new(
                        &at,
                        format!(
                            "{} (expected a table of proxy name = \"region\")",
                            e.message().trim()
                        ),
                    )
                })?;
                continue;
            }
            "websocket_token" => {
                coder.websocket_token = Some(value.try_into().map_err(|e: toml::de::Error| {
                    ConfigError::new(&at, format!("{} (expected a string)", e.message().trim()))
                })?);
                continue;
            }
            _ => match CODER_SETTINGS.iter().find(|(k, _)| *k == key) {
                Some(&(_, new)) => (new, value),
                None => {
                    return Err(ConfigError::new(
                        &at,
                        "unknown key (expected one of url, token, token_file, refresh, proxy_regions, websocket_token)",
                    ));
                }
            },
        };
        let (new, value) = new;
        if table.contains_key(new) || old_names.contains_key(new) {
            return Err(ConfigError::new(
                &at,
                format!(
                    "{new} is given twice (expected one of {new}, {CODER}.url/token/token_file/refresh)"
                ),
            ));
        }
        table.insert(new.to_owned(), value);
        old_names.insert(new.to_owned(), at);
    }
    Ok(coder)
}

/// Move the deprecated `[table] key`s to their keys; returns new key → old name, so that an
/// error names the key as written.
fn lift_deprecated(
    table: &mut toml::Table,
    deprecations: &mut Vec<Deprecation>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut old_names = HashMap::new();
    for (section, renames) in DEPRECATED {
        let Some(value) = table.remove(section) else {
            continue;
        };
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::new(
                section,
                format!("{value} is not a table (expected [{section}])"),
            ));
        };
        for (key, value) in entries {
            let old = format!("{section}.{key}");
            let Some(&(_, new)) = renames.iter().find(|(k, _)| *k == key) else {
                let expected: Vec<_> = renames.iter().map(|(k, _)| *k).collect();
                return Err(ConfigError::new(
                    &old,
                    format!("unknown key (expected one of {})", expected.join(", ")),
                ));
            };
            if table.contains_key(new) {
                return Err(ConfigError::new(
                    new,
                    format!("also given as the deprecated {old} (expected only {new})"),
                ));
            }
            deprecations.push(Deprecation {
                old: old.clone(),
                new: new.to_owned(),
            });
            table.insert(new.to_owned(), value);
            old_names.insert(new.to_owned(), old);
        }
    }
    Ok(old_names)
}

/// A TOML syntax error on one line: the file, the line and column, toml's message.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> String {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = e.message().trim().replace('\n', "; ");
    format!("{}:{line}:{column}: {message}", path.display())
}
