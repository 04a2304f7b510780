//! Coder's ProvisionerDaemons section rules (`docs/coder-health.md#provisioner-daemons`), pure: staleness filter, Go
//! `x/mod/semver` version checks, provisioner API major version, with Coder's exact texts and
//! quirks (EPD01 text sits in `warnings`, section warnings repeat once per daemon, the EPD03 item
//! prints the server's major). vantage's one difference: EPD01 is raised only when provisioner
//! daemons are required (`docs/behaviour.md#difference-7`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use vantage_proto::Severity;
use vantage_proto::codes;
use vantage_proto::report::{
    Base, Message, ProvisionerDaemon, ProvisionerDaemonItem, ProvisionerDaemonsReport,
};

/// Coder's `proto.CurrentMajor`: the provisioner API major version the server speaks.
pub const CURRENT_API_MAJOR: u32 = 1;
/// A daemon without a heartbeat for longer than this is gone (Coder: 90 s).
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// One provisioner daemon as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInput {
    pub id: String,
    pub organization_id: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    /// `None`: never connected.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub provisioners: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

impl DaemonInput {
    fn to_report(&self) -> ProvisionerDaemon {
        ProvisionerDaemon {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            key_id: self.key_id.clone(),
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            name: self.name.clone(),
            version: self.version.clone(),
            api_version: self.api_version.clone(),
            provisioners: self.provisioners.clone(),
            tags: self.tags.clone(),
            key_name: None,
            status: None,
            current_job: None,
            previous_job: None,
        }
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
    daemons: &[DaemonInput],
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

    let mut recent: Vec<&DaemonInput> = daemons
        .iter()
        .filter(|d| !is_stale(d.last_seen_at, now, stale_after))
        .collect();
    recent.sort_by(|a, b| a.name.cmp(&b.name));

    for d in recent {
        let mut warnings = Vec::new();
        check_version(&mut r.base, &mut warnings, server_version, &d.version);
        check_api_version(&mut r.base, &mut warnings, api_major, &d.api_version);
        r.items.push(ProvisionerDaemonItem {
            provisioner_daemon: d.to_report(),
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
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn semver_validity_mirrors_go() {
        let cases: &[(&str, bool)] = &[
            ("v1", true),
            ("v1.2", true),
            ("v1.2.3", true),
            ("v0.0.0", true),
            ("v2.26.0+abc1234", true),
            ("v0.0.0-devel+abc", true),
            ("v1.2.3-pre.1+build.001", true),
            ("v1.2.3-alpha-beta", true),
            ("v1.2.3-0", true),
            ("v1.2.3-0a", true),
            ("v1.2.3+0001", true),
            ("", false),
            ("v", false),
            ("1.2.3", false),
            ("2.26.0", false),
            ("V1.2.3", false),
            ("v01.2.3", false),
            ("v1.02.3", false),
            ("v1.2.03", false),
            ("v1.2-pre", false),
            ("v1-pre", false),
            ("v1+build", false),
            ("v1.2.3-", false),
            ("v1.2.3-01", false),
            ("v1.2.3-a..b", false),
            ("v1.2.3-a_b", false),
            ("v1.2.3+", false),
            ("v1.2.3+a..b", false),
            ("v1.2.3.4", false),
            ("v1.2.", false),
            ("v1.", false),
            ("v-1.2.3", false),
            (" v1.2.3", false),
            ("v1.2.3 ", false),
        ];
        for (v, want) in cases {
            assert_eq!(is_valid_semver(v), *want, "{v:?}");
        }
    }

    #[test]
    fn major_minor_mirrors_go() {
        let cases: &[(&str, &str)] = &[
            ("v1", "v1.0"),
            ("v1.2", "v1.2"),
            ("v1.2.3", "v1.2"),
            ("v2.26.0+abc", "v2.26"),
            ("v0.0.0-devel+abc", "v0.0"),
            ("2.26.0", ""),
            ("", ""),
        ];
        for (v, want) in cases {
            assert_eq!(major_minor(v), *want, "{v:?}");
        }
    }

    #[test]
    fn versions_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("v2.26.0", "v2.26.1", true),
            ("v2.26.0+abc", "v2.26.9-rc.1", true),
            ("v2.26.0", "v2.25.0", false),
            ("v2.26.0", "v3.26.0", false),
            ("v0.0.0-devel+abc", "v1.0.0", true),
            ("v2.26.0", "v0.0.0-devel+abc", true),
            ("v2", "v2.0.5", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(versions_match(a, b), *want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn api_version_parse_table() {
        type Want = Result<(i64, i64), &'static str>;
        let cases: &[(&str, Want)] = &[
            ("1.9", Ok((1, 9))),
            ("2.0", Ok((2, 0))),
            ("+1.-2", Ok((1, -2))),
            ("x.y", Err("invalid major version: x.y")),
            ("1.y", Err("invalid minor version: 1.y")),
            ("1", Err("invalid version string: 1")),
            ("1.2.3", Err("invalid version string: 1.2.3")),
            ("", Err("invalid version string: ")),
            (".1", Err("invalid major version: .1")),
            ("1 .2", Err("invalid major version: 1 .2")),
            (
                "99999999999999999999.1",
                Err("invalid major version: 99999999999999999999.1"),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                parse_api_version(v),
                want.map_err(ToOwned::to_owned),
                "{v:?}"
            );
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).expect("valid")
    }

    fn daemon(name: &str, version: &str, api: &str) -> DaemonInput {
        DaemonInput {
            id: format!("id-{name}"),
            organization_id: "00000000-0000-0000-0000-000000000000".into(),
            key_id: "00000000-0000-0000-0000-000000000000".into(),
            created_at: now() - TimeDelta::hours(1),
            last_seen_at: Some(now() - TimeDelta::seconds(10)),
            name: name.into(),
            version: version.into(),
            api_version: api.into(),
            provisioners: vec!["terraform".into()],
            tags: BTreeMap::from([("scope".into(), "organization".into())]),
        }
    }

    fn m(code: &str, text: &str) -> Message {
        Message::new(code, text)
    }

    const SERVER: &str = "v2.26.0+abc1234";
    const INVALID_VERSION: &str = "Some provisioner daemons report invalid version information.";
    const MISMATCH: &str = "Some provisioner daemons report mismatched versions.";
    const INVALID_API: &str = "Some provisioner daemons report invalid API version information.";
    const DEPRECATED: &str =
        "Some provisioner daemons report deprecated major API versions. Consider upgrading!";

    #[test]
    fn section_table() {
        struct Case {
            name: &'static str,
            daemons: Vec<DaemonInput>,
            server: &'static str,
            api_major: u32,
            required: bool,
            severity: Severity,
            error: Option<&'static str>,
            warnings: Vec<Message>,
            /// (name, item warnings) in order.
            items: Vec<(&'static str, Vec<Message>)>,
        }
        let stale_at = |mut d: DaemonInput, age: TimeDelta| {
            d.last_seen_at = Some(now() - age);
            d
        };
        let cases = vec![
            Case {
                name: "empty registry, not required: ok",
                daemons: vec![],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![],
            },
            Case {
                name: "empty registry, required: EPD01 error, text in warnings",
                daemons: vec![],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Error,
                error: None,
                warnings: vec![m("EPD01", "No active provisioner daemons found!")],
                items: vec![],
            },
            Case {
                name: "matching daemon: ok",
                daemons: vec![daemon("a", "v2.26.0", "1.9")],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "patch differs: still a match",
                daemons: vec![daemon("a", "v2.26.1", "1.9")],
                server: "v2.26.0",
                api_major: 1,
                required: false,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "minor differs: EPD02",
                daemons: vec![daemon("a", "v2.25.0", "1.9")],
                server: "v2.26.0",
                api_major: 1,
                required: false,
                severity: Severity::Warning,
                error: None,
                warnings: vec![m("EPD02", MISMATCH)],
                items: vec![("a", vec![m("EPD02", "Mismatched version \"v2.25.0\"")])],
            },
            Case {
                name: "dev daemon build always matches",
                daemons: vec![daemon("a", "v0.0.0-devel+abc", "1.9")],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "dev server build always matches",
                daemons: vec![daemon("a", "v1.0.0", "1.9")],
                server: "v0.0.0-devel+abc",
                api_major: 1,
                required: false,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "version without v: EUNKNOWN error, text in warnings",
                daemons: vec![daemon("a", "2.26.0", "1.9")],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Error,
                error: None,
                warnings: vec![m("EUNKNOWN", INVALID_VERSION)],
                items: vec![("a", vec![m("EUNKNOWN", "Invalid version \"2.26.0\"")])],
            },
            Case {
                name: "API 2.0: EPD03, item prints the server's major",
                daemons: vec![daemon("a", "v2.26.0", "2.0")],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Warning,
                error: None,
                warnings: vec![m("EPD03", DEPRECATED)],
                items: vec![("a", vec![m("EPD03", "Deprecated major API version 1.")])],
            },
            Case {
                name: "API x.y: EUNKNOWN error",
                daemons: vec![daemon("a", "v2.26.0", "x.y")],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Error,
                error: None,
                warnings: vec![m("EUNKNOWN", INVALID_API)],
                items: vec![(
                    "a",
                    vec![m(
                        "EUNKNOWN",
                        "Invalid API version: invalid major version: x.y",
                    )],
                )],
            },
            Case {
                name: "mismatch and deprecated API on one daemon, severity only rises",
                daemons: vec![daemon("a", "v2.25.0", "0.5"), daemon("b", "bad", "1.0")],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Error,
                error: None,
                warnings: vec![
                    m("EPD02", MISMATCH),
                    m("EPD03", DEPRECATED),
                    m("EUNKNOWN", INVALID_VERSION),
                ],
                items: vec![
                    (
                        "a",
                        vec![
                            m("EPD02", "Mismatched version \"v2.25.0\""),
                            m("EPD03", "Deprecated major API version 1."),
                        ],
                    ),
                    ("b", vec![m("EUNKNOWN", "Invalid version \"bad\"")]),
                ],
            },
            Case {
                name: "section warnings repeat once per daemon; items sorted by name",
                daemons: vec![
                    daemon("zeta", "v2.24.0", "1.1"),
                    daemon("alpha", "v2.25.0", "1.1"),
                ],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Warning,
                error: None,
                warnings: vec![m("EPD02", MISMATCH), m("EPD02", MISMATCH)],
                items: vec![
                    ("alpha", vec![m("EPD02", "Mismatched version \"v2.25.0\"")]),
                    ("zeta", vec![m("EPD02", "Mismatched version \"v2.24.0\"")]),
                ],
            },
            Case {
                name: "seen exactly 90 s ago: included",
                daemons: vec![stale_at(
                    daemon("a", "v2.26.0", "1.9"),
                    TimeDelta::seconds(90),
                )],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "seen 90 s + 1 ns ago: stale, excluded (EPD01 when required)",
                daemons: vec![stale_at(
                    daemon("a", "v2.26.0", "1.9"),
                    TimeDelta::seconds(90) + TimeDelta::nanoseconds(1),
                )],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Error,
                error: None,
                warnings: vec![m("EPD01", "No active provisioner daemons found!")],
                items: vec![],
            },
            Case {
                name: "stale bad daemon does not count, fresh one does",
                daemons: vec![
                    stale_at(daemon("old", "bad", "x"), TimeDelta::minutes(5)),
                    daemon("new", "v2.26.3", "1.2"),
                ],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("new", vec![])],
            },
            Case {
                name: "never seen: excluded; not required so ok",
                daemons: vec![DaemonInput {
                    last_seen_at: None,
                    ..daemon("a", "v2.26.0", "1.9")
                }],
                server: SERVER,
                api_major: 1,
                required: false,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![],
            },
            Case {
                name: "seen in the future (clock skew): fresh",
                daemons: vec![stale_at(
                    daemon("a", "v2.26.0", "1.9"),
                    TimeDelta::seconds(-30),
                )],
                server: SERVER,
                api_major: 1,
                required: true,
                severity: Severity::Ok,
                error: None,
                warnings: vec![],
                items: vec![("a", vec![])],
            },
            Case {
                name: "empty server version: developer error",
                daemons: vec![daemon("a", "v2.26.0", "1.9")],
                server: "",
                api_major: 1,
                required: true,
                severity: Severity::Error,
                error: Some("Developer error: CurrentVersion is empty!"),
                warnings: vec![],
                items: vec![],
            },
            Case {
                name: "zero API major: developer error",
                daemons: vec![daemon("a", "v2.26.0", "1.9")],
                server: SERVER,
                api_major: 0,
                required: true,
                severity: Severity::Error,
                error: Some("Developer error: CurrentAPIMajorVersion must be non-zero!"),
                warnings: vec![],
                items: vec![],
            },
        ];
        for c in cases {
            let r = section(
                &c.daemons,
                now(),
                c.server,
                c.api_major,
                c.required,
                STALE_AFTER,
            );
            assert_eq!(r.base.severity, c.severity, "{}", c.name);
            assert_eq!(r.base.error.as_deref(), c.error, "{}", c.name);
            assert_eq!(r.base.warnings, c.warnings, "{}", c.name);
            let items: Vec<(&str, Vec<Message>)> = r
                .items
                .iter()
                .map(|i| (i.provisioner_daemon.name.as_str(), i.warnings.clone()))
                .collect();
            let want: Vec<(&str, Vec<Message>)> = c.items;
            assert_eq!(items, want, "{}", c.name);
        }
    }

    #[test]
    fn item_carries_the_daemon_and_json_shape() {
        let d = daemon("a", "v2.26.0", "1.9");
        let r = section(
            std::slice::from_ref(&d),
            now(),
            SERVER,
            1,
            false,
            STALE_AFTER,
        );
        let item = &r.items[0].provisioner_daemon;
        assert_eq!(item.id, d.id);
        assert_eq!(item.last_seen_at, d.last_seen_at);
        assert_eq!(item.tags, d.tags);
        let json = serde_json::to_value(&r).expect("serialises");
        assert_eq!(json["items"][0]["warnings"], serde_json::json!([]));
        assert_eq!(
            json["items"][0]["provisioner_daemon"]["key_name"],
            serde_json::Value::Null
        );
        assert_eq!(json["warnings"], serde_json::json!([]));
        assert!(json.get("error").is_none());
        assert!(
            json.get("healthy").is_none(),
            "ProvisionerDaemons has no healthy"
        );
        let empty = section(&[], now(), SERVER, 1, false, STALE_AFTER);
        assert_eq!(
            serde_json::to_value(&empty).expect("serialises")["items"],
            serde_json::json!([])
        );
    }
}
