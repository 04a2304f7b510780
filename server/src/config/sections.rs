//! The `[sections.<key>]` tables of the configuration file: one section's check interval and
//! timeout, over the global `interval` and the built-in timeouts. The keys are the report's
//! JSON section keys that have a probe check: `access_url`, `database`, `derp`, `websocket`,
//! `workspace_proxy` (`provisioner_daemons` has none: vantaged judges it from the registry).

use std::time::Duration;

use vantage_proto::Section;

use super::ConfigError;

/// The file's table of per-section settings.
pub(super) const SECTIONS: &str = "sections";
/// The longest timeout a section may have.
pub const MAX_SECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest interval (as the global `interval`).
pub const MIN_SECTION_INTERVAL: Duration = Duration::from_millis(10);

/// The sections a `[sections.<key>]` table may name.
const CHECKED: [Section; 5] = [
    Section::AccessUrl,
    Section::Database,
    Section::Derp,
    Section::Websocket,
    Section::WorkspaceProxy,
];

/// One section's settings; `None` is the default (the global interval, the built-in timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionTiming {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

/// Every `[sections.<key>]` table given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections(Vec<(Section, SectionTiming)>);

impl Sections {
    /// The settings of `section` (all `None` when not given).
    pub fn get(&self, section: Section) -> SectionTiming {
        self.0
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// Set one section's settings (tests, and `parse`).
    pub fn set(&mut self, section: Section, timing: SectionTiming) {
        self.0.retain(|(s, _)| *s != section);
        self.0.push((section, timing));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn expected_keys() -> String {
    CHECKED.map(Section::json_key).join(", ")
}

/// Read the `[sections]` table: each key a section, each value a table of `interval` and
/// `timeout` (humantime strings), validated.
pub(super) fn parse(value: toml::Value) -> Result<Sections, ConfigError> {
    let toml::Value::Table(entries) = value else {
        return Err(ConfigError::new(
            SECTIONS,
            format!("{value} is not a table (expected [{SECTIONS}.<section>] tables)"),
        ));
    };
    let mut sections = Sections::default();
    for (key, value) in entries {
        let at = format!("{SECTIONS}.{key}");
        let section = match CHECKED.iter().find(|s| s.json_key() == key) {
            Some(s) => *s,
            None if key == Section::ProvisionerDaemons.json_key() => {
                return Err(ConfigError::new(
                    &at,
                    format!(
                        "the provisioner_daemons section has no probe check, so no interval or timeout (expected one of {})",
                        expected_keys()
                    ),
                ));
            }
            None => {
                return Err(ConfigError::new(
                    &at,
                    format!("unknown section (expected one of {})", expected_keys()),
                ));
            }
        };
        sections.set(section, timing(&at, value)?);
    }
    Ok(sections)
}

/// One `[sections.<key>]` table.
fn timing(at: &str, value: toml::Value) -> Result<SectionTiming, ConfigError> {
    let toml::Value::Table(entries) = value else {
        return Err(ConfigError::new(
            at,
            format!("{value} is not a table (expected [{at}] with interval and timeout)"),
        ));
    };
    let mut timing = SectionTiming::default();
    for (key, value) in entries {
        let field = format!("{at}.{key}");
        if key != "interval" && key != "timeout" {
            return Err(ConfigError::new(
                &field,
                "unknown key (expected interval or timeout)",
            ));
        }
        let toml::Value::String(text) = &value else {
            return Err(ConfigError::new(
                &field,
                format!("{value} is not a duration (expected a string such as \"15s\")"),
            ));
        };
        let d = super::settings::parse_duration(text).map_err(|e| ConfigError::new(&field, e))?;
        match key.as_str() {
            "interval" => {
                if d < MIN_SECTION_INTERVAL {
                    return Err(ConfigError::new(
                        &field,
                        format!("{text:?} is too short (expected at least 10ms)"),
                    ));
                }
                timing.interval = Some(d);
            }
            _ => {
                if d.is_zero() || d > MAX_SECTION_TIMEOUT {
                    return Err(ConfigError::new(
                        &field,
                        format!("{text:?} is out of range (expected more than 0 and at most 5m)"),
                    ));
                }
                timing.timeout = Some(d);
            }
        }
    }
    Ok(timing)
}
