//! Coder's ProvisionerDaemons section rules (`docs/coder-health.md#provisioner-daemons`), pure: staleness filter, Go
//! `x/mod/semver` version checks, provisioner API major version, with Coder's exact texts and
//! quirks (EPD01 text sits in `warnings`, section warnings repeat once per daemon, the EPD03 item
//! prints the server's major). vantage's one difference: EPD01 is raised only when provisioner
//! daemons are required (`docs/behaviour.md#difference-7`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use vantage_proto::Severity;
use vantage_proto::codes;
pub use vantage_proto::report::ProvisionerDaemon;
use vantage_proto::report::{
    Base, Message, ProvisionerDaemonItem, ProvisionerDaemonsReport, ReportedDaemon,
};

/// Coder's `proto.CurrentMajor`: the provisioner API major version the server speaks.
pub const CURRENT_API_MAJOR: u32 = 1;
/// A daemon without a heartbeat for longer than this is gone (Coder: 90 s).
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// What only Coder knows of a daemon (its key's name, status and jobs) is left empty.
fn to_report(d: &ProvisionerDaemon) -> ReportedDaemon {
    ReportedDaemon {
        daemon: d.clone(),
        key_name: None,
        status: None,
        current_job: None,
        previous_job: None,
    }
}

/// Whether a daemon last seen at `last_seen` is stale at `now`: never seen, or seen more than
/// `stale_after` ago (exactly `stale_after` ago is still fresh, as in Coder).
pub fn is_stale(
    last_seen: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> bool {
    let Some(seen) = last_seen else {
        return true;
    };
    match (now - seen).to_std() {
        Ok(age) => age > stale_after,
        // Seen in the future (clock skew): not stale.
        Err(_) => false,
    }
}

/// The ProvisionerDaemons section from the registry's daemons.
///
/// `server_version` is the server's build version (`v2.26.0+abc`), `api_major` its provisioner
/// API major ([`CURRENT_API_MAJOR`]), `required` whether an empty registry is an error (EPD01).
pub fn section(
    daemons: &[ProvisionerDaemon],
    now: DateTime<Utc>,
    server_version: &str,
    api_major: u32,
    required: bool,
    stale_after: Duration,
) -> ProvisionerDaemonsReport {
    let mut r = ProvisionerDaemonsReport::default();
    if let Some(error) = developer_error(server_version, api_major) {
        r.base.severity = Severity::Error;
        r.base.error = Some(error.to_owned());
        return r;
    }

    let mut recent: Vec<&ProvisionerDaemon> = daemons
        .iter()
        .filter(|d| !is_stale(d.last_seen_at, now, stale_after))
        .collect();
    recent.sort_by(|a, b| a.name.cmp(&b.name));

    for d in recent {
        let mut warnings = Vec::new();
        check_version(&mut r.base, &mut warnings, server_version, &d.version);
        check_api_version(&mut r.base, &mut warnings, api_major, &d.api_version);
        r.items.push(ProvisionerDaemonItem {
            provisioner_daemon: to_report(d),
            warnings,
        });
    }

    if r.items.is_empty() && required {
        r.base.severity = Severity::Error;
        r.base.warnings.push(Message::new(
            codes::EPD01,
            "No active provisioner daemons found!",
        ));
    }
    r
}

/// Coder's guards against a misconfigured server: an empty build version or a zero API major.
fn developer_error(server_version: &str, api_major: u32) -> Option<&'static str> {
    if server_version.is_empty() {
        return Some("Developer error: CurrentVersion is empty!");
    }
    if api_major == 0 {
        return Some("Developer error: CurrentAPIMajorVersion must be non-zero!");
    }
    None
}

/// A daemon's build version against the server's: invalid semver is an error, another
/// `vMAJOR.MINOR` a warning (EPD02). The section message goes to `base` (once per daemon, as in
/// Coder), the daemon's own to `warnings`.
fn check_version(
    base: &mut Base,
    warnings: &mut Vec<Message>,
    server_version: &str,
    version: &str,
) {
    if !is_valid_semver(version) {
        base.raise(Severity::Error);
        base.warnings.push(Message::new(
            codes::EUNKNOWN,
            "Some provisioner daemons report invalid version information.",
        ));
        warnings.push(Message::new(
            codes::EUNKNOWN,
            format!("Invalid version {}", go_quote(version)),
        ));
    } else if !versions_match(server_version, version) {
        base.raise(Severity::Warning);
        base.warnings.push(Message::new(
            codes::EPD02,
            "Some provisioner daemons report mismatched versions.",
        ));
        warnings.push(Message::new(
            codes::EPD02,
            format!("Mismatched version {}", go_quote(version)),
        ));
    }
}

/// A daemon's provisioner API version against the server's major: unparsable is an error,
/// another major a warning (EPD03). Messages go to `base` and `warnings` as in
/// [`check_version`].
fn check_api_version(
    base: &mut Base,
    warnings: &mut Vec<Message>,
    api_major: u32,
    api_version: &str,
) {
    match parse_api_version(api_version) {
        Err(e) => {
            base.raise(Severity::Error);
            base.warnings.push(Message::new(
                codes::EUNKNOWN,
                "Some provisioner daemons report invalid API version information.",
            ));
            warnings.push(Message::new(
                codes::EUNKNOWN,
                format!("Invalid API version: {e}"),
            ));
        }
        Ok((major, _)) if major != i64::from(api_major) => {
            base.raise(Severity::Warning);
            base.warnings.push(Message::new(
                codes::EPD03,
                "Some provisioner daemons report deprecated major API versions. Consider upgrading!",
            ));
            // Coder's quirk: the server's major, not the daemon's.
            warnings.push(Message::new(
                codes::EPD03,
                format!("Deprecated major API version {api_major}."),
            ));
        }
        Ok(_) => {}
    }
}

/// Coder's `buildinfo.VersionsMatch`: equal `vMAJOR.MINOR`, or either is a dev build
/// (contains `v0.0.0`).
pub fn versions_match(a: &str, b: &str) -> bool {
    if a.contains("v0.0.0") || b.contains("v0.0.0") {
        return true;
    }
    major_minor(a) == major_minor(b)
}

/// Coder's `apiversion.Parse`: exactly `<int>.<int>` (Go `strconv.Atoi`: optional sign,
/// decimal digits, 64-bit).
pub fn parse_api_version(v: &str) -> Result<(i64, i64), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() != 2 {
        return Err(format!("invalid version string: {v}"));
    }
    let major = go_atoi(parts[0]).ok_or_else(|| format!("invalid major version: {v}"))?;
    let minor = go_atoi(parts[1]).ok_or_else(|| format!("invalid minor version: {v}"))?;
    Ok((major, minor))
}

fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Go's `%q` for the strings that appear in these messages (close enough: `{:?}` escapes
/// quotes, backslashes and control characters alike).
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// The parts of a valid semantic version, as Go's `x/mod/semver` parses it.
struct Parsed<'a> {
    major: &'a str,
    minor: &'a str,
}

/// Go `x/mod/semver` parsing: `v` MAJOR [`.` MINOR [`.` PATCH [`-`pre] [`+`build]]], numbers
/// without leading zeros; the short forms `vMAJOR` and `vMAJOR.MINOR` take no suffix.
fn parse(v: &str) -> Option<Parsed<'_>> {
    let rest = v.strip_prefix('v')?;
    let (major, rest) = parse_int(rest)?;
    if rest.is_empty() {
        return Some(Parsed { major, minor: "0" });
    }
    let (minor, rest) = parse_int(rest.strip_prefix('.')?)?;
    if rest.is_empty() {
        return Some(Parsed { major, minor });
    }
    let (_patch, mut rest) = parse_int(rest.strip_prefix('.')?)?;
    if rest.starts_with('-') {
        rest = parse_prerelease(rest)?;
    }
    if rest.starts_with('+') {
        rest = parse_build(rest)?;
    }
    rest.is_empty().then_some(Parsed { major, minor })
}

fn parse_int(v: &str) -> Option<(&str, &str)> {
    let n = v.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || (v.starts_with('0') && n != 1) {
        return None;
    }
    Some(v.split_at(n))
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// A numeric identifier with a leading zero.
fn is_bad_num(v: &str) -> bool {
    v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit())
}

/// `-` dot-separated non-empty identifiers, numeric ones without leading zeros, up to a `+`.
fn parse_prerelease(v: &str) -> Option<&str> {
    let body = v.strip_prefix('-')?;
    let end = body.find('+').unwrap_or(body.len());
    let (pre, rest) = body.split_at(end);
    for ident in pre.split('.') {
        if ident.is_empty() || !ident.bytes().all(is_ident_char) || is_bad_num(ident) {
            return None;
        }
    }
    Some(rest)
}

/// `+` dot-separated non-empty identifiers (leading zeros allowed), to the end.
fn parse_build(v: &str) -> Option<&str> {
    let body = v.strip_prefix('+')?;
    for ident in body.split('.') {
        if ident.is_empty() || !ident.bytes().all(is_ident_char) {
            return None;
        }
    }
    Some("")
}

/// Go `semver.IsValid`.
pub fn is_valid_semver(v: &str) -> bool {
    parse(v).is_some()
}

/// Go `semver.MajorMinor`: `vMAJOR.MINOR` (`v2` → `v2.0`), or `""` for an invalid version.
pub fn major_minor(v: &str) -> String {
    match parse(v) {
        Some(p) => format!("v{}.{}", p.major, p.minor),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
