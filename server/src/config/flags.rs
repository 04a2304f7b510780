//! The command line: `--config`, every [`Settings`] flag, and the deprecated spellings of
//! before the flags, variables and TOML keys shared their names (hidden from `--help`, still
//! accepted, each recorded as a [`Deprecation`]).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::{Args, Parser};

use super::settings::{Settings, env_of, flag_of};
use super::{ConfigError, Deprecation};

/// Command-line flags (each with its `VANTAGE_*` variable).
#[derive(Debug, Default, Clone, Parser)]
#[command(
    name = "vantaged",
    version,
    about = "vantage server: deployment health from many vantage points",
    after_help = "Tokens for --token-file: vantaged token new --name NAME --role reader|probe|provisioner|admin [--vantage GLOB]..."
)]
pub struct Flags {
    /// TOML configuration file: its keys are the flags below, in snake_case.
    #[arg(long, env = "VANTAGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub deprecated: DeprecatedFlags,
}

/// The old negative switches (`--no-x`, `VANTAGE_NO_X`), as they were; and whether the old
/// `--stun-server` (now an alias of `--stun-servers`) was on the command line.
#[derive(Debug, Default, Clone, PartialEq, Args)]
pub struct DeprecatedFlags {
    /// Deprecated: `--embedded-relay false`.
    #[arg(long, env = "VANTAGE_NO_EMBEDDED_RELAY", hide = true)]
    pub no_embedded_relay: bool,
    /// Deprecated: `--server-checks-derp false`.
    #[arg(long, env = "VANTAGE_NO_SERVER_DERP", hide = true)]
    pub no_server_derp: bool,
    /// Deprecated: `--server-vantage false`.
    #[arg(long, env = "VANTAGE_NO_SERVER_VANTAGE", hide = true)]
    pub no_server_vantage: bool,
    /// `--stun-server` was given (set by [`Flags::try_parse_args`]).
    #[arg(skip)]
    pub stun_server: bool,
}

/// The old switch `--no-…` of each boolean whose default is `true`.
const NEGATIONS: [(&str, &str); 3] = [
    ("no_embedded_relay", "embedded_relay"),
    ("no_server_derp", "server_checks_derp"),
    ("no_server_vantage", "server_vantage"),
];

/// The old repeatable flag, now an alias of `--stun-servers`.
const STUN_SERVER: &str = "--stun-server";

impl Flags {
    /// Parse `args` (the program name first) and the environment, like
    /// [`Parser::try_parse_from`], noting whether the deprecated `--stun-server` was used.
    pub fn try_parse_args<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut flags = <Flags as Parser>::try_parse_from(&args)?;
        flags.deprecated.stun_server = args.iter().skip(1).any(|a| names(a, STUN_SERVER));
        Ok(flags)
    }

    /// The settings of the command line and the environment, the deprecated spellings folded
    /// into their settings and recorded in `deprecations`.
    pub(super) fn into_settings(
        self,
        deprecations: &mut Vec<Deprecation>,
    ) -> Result<Settings, ConfigError> {
        let Flags {
            settings: mut s,
            deprecated: d,
            ..
        } = self;
        let negated = [d.no_embedded_relay, d.no_server_derp, d.no_server_vantage];
        let targets = [
            &mut s.embedded_relay,
            &mut s.server_checks_derp,
            &mut s.server_vantage,
        ];
        for (((old, new), negated), value) in NEGATIONS.into_iter().zip(negated).zip(targets) {
            if negated {
                fold_negation(old, new, value, deprecations)?;
            }
        }
        if d.stun_server {
            deprecations.push(Deprecation {
                old: STUN_SERVER.to_owned(),
                new: flag_of("stun_servers"),
            });
        }
        Ok(s)
    }
}

/// `--no-x` given: `x` is `false`, unless the new name says `true`.
fn fold_negation(
    old: &str,
    new: &str,
    value: &mut Option<bool>,
    deprecations: &mut Vec<Deprecation>,
) -> Result<(), ConfigError> {
    let old_names = format!("{} / {}", flag_of(old), env_of(old));
    if *value == Some(true) {
        return Err(ConfigError::new(
            new,
            format!(
                "true (from {} / {}) contradicts the deprecated {old_names} (expected one of them)",
                flag_of(new),
                env_of(new)
            ),
        ));
    }
    *value = Some(false);
    deprecations.push(Deprecation {
        old: old_names,
        new: format!("{} false / {}=false", flag_of(new), env_of(new)),
    });
    Ok(())
}

/// Whether the argument `arg` is the flag `flag` (`--flag` or `--flag=value`).
fn names(arg: &OsStr, flag: &str) -> bool {
    arg.to_str()
        .and_then(|a| a.strip_prefix(flag))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
}
