//! The token file (`--token-file`): `[[tokens]]` entries with a name, a role, the lower-case
//! hex SHA-256 of the secret (secrets are never stored) and, for probe tokens, the globs of
//! the vantage names they may claim. Lookups hash the presented secret and compare digests in
//! constant time. `vantaged token new` makes a secret and the entry to paste.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// What a token may do. `admin` may do everything; the others exactly their surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reports, `Watch`, vantages, settings (read), history, `/metrics`, the page's data.
    Reader,
    /// `ProbeService.Attach`, for the names its globs match.
    Probe,
    /// Provisioner daemon heartbeats.
    Provisioner,
    /// Everything, including settings changes, forget, registry writes and force.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Probe, Role::Provisioner, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Probe => "probe",
            Role::Provisioner => "provisioner",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what needs `needed`.
    pub fn satisfies(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a role (expected reader, probe, provisioner or admin)")
            })
    }
}

/// Who made a request: the token's name, role and vantage globs. Put into the request's
/// extensions by the authorization layer.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub vantages: Vec<glob::Pattern>,
}

impl Principal {
    /// Whether this token may attach as vantage `name`.
    pub fn may_claim(&self, name: &str) -> bool {
        self.role == Role::Admin || self.vantages.iter().any(|p| p.matches(name))
    }

    /// The globs, for messages: `["fra-*", "ams-*"]`.
    pub fn globs(&self) -> String {
        let list: Vec<String> = self
            .vantages
            .iter()
            .map(|p| format!("{:?}", p.as_str()))
            .collect();
        format!("[{}]", list.join(", "))
    }
}

/// One `[[tokens]]` entry as written in the file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vantages: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<Entry>,
}

/// The loaded tokens: digest → principal.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

fn bad(field: String, message: String) -> ConfigError {
    ConfigError { field, message }
}

/// The lower-case hex SHA-256 of `secret`'s UTF-8 bytes.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(field: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    let expected = "expected 64 lower-case hex digits, the SHA-256 of the secret";
    let ok = value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(bad(field.into(), format!("{value:?}: {expected}")));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in value.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).unwrap_or("00");
        out[i] = u8::from_str_radix(pair, 16)
            .map_err(|_| bad(field.into(), format!("{value:?}: {expected}")))?;
    }
    Ok(out)
}

fn principal(i: usize, e: Entry) -> Result<([u8; 32], Principal), ConfigError> {
    let at = |f: &str| format!("tokens[{i}].{f}");
    if e.name.trim().is_empty() {
        return Err(bad(at("name"), "must not be empty".into()));
    }
    let digest = parse_digest(&at("sha256"), &e.sha256)?;
    match (e.role, e.vantages.is_empty()) {
        (Role::Probe, true) => {
            return Err(bad(
                at("vantages"),
                "required for role probe (expected globs of the names it may claim, e.g. [\"fra-*\"])".into(),
            ));
        }
        (Role::Reader | Role::Provisioner | Role::Admin, false) => {
            return Err(bad(
                at("vantages"),
                format!(
                    "only probe tokens claim vantage names (this one is {})",
                    e.role
                ),
            ));
        }
        _ => {}
    }
    let vantages = e
        .vantages
        .iter()
        .map(|g| {
            glob::Pattern::new(g)
                .map_err(|err| bad(at("vantages"), format!("{g:?} is not a glob: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        digest,
        Principal {
            name: e.name,
            role: e.role,
            vantages,
        },
    ))
}

impl TokenSet {
    /// Parse the file's text; errors name `token_file`'s entry and field.
    pub fn parse(text: &str) -> Result<TokenSet, ConfigError> {
        let file: TokenFile =
            toml::from_str(text).map_err(|e| bad("token_file".into(), e.message().to_owned()))?;
        let mut entries: Vec<([u8; 32], Arc<Principal>)> = Vec::new();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let (digest, p) = principal(i, e)?;
            if let Some((_, other)) = entries.iter().find(|(_, o)| o.name == p.name) {
                return Err(bad(
                    format!("tokens[{i}].name"),
                    format!("{:?} is used twice (names must be unique)", other.name),
                ));
            }
            if entries.iter().any(|(d, _)| *d == digest) {
                return Err(bad(
                    format!("tokens[{i}].sha256"),
                    "the same secret as an earlier entry".into(),
                ));
            }
            entries.push((digest, Arc::new(p)));
        }
        Ok(TokenSet { entries })
    }

    pub fn load(path: &Path) -> Result<TokenSet, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(
                "token_file".into(),
                format!("reading {}: {e}", path.display()),
            )
        })?;
        TokenSet::parse(&text).map_err(|e| ConfigError {
            field: format!("token_file {}: {}", path.display(), e.field),
            message: e.message,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of `secret`. Every entry is compared, in constant time, so the time
    /// taken does not tell how much of a digest matched.
    pub fn lookup(&self, secret: &str) -> Option<Arc<Principal>> {
        let digest = Sha256::digest(secret.as_bytes());
        let mut found = None;
        for (d, p) in &self.entries {
            if bool::from(d.as_slice().ct_eq(digest.as_slice())) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// A new secret (32 random bytes, hex) and its `[[tokens]]` entry.
pub fn new_token(
    name: &str,
    role: Role,
    vantages: Vec<String>,
) -> Result<(String, String), ConfigError> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let file = TokenFile {
        tokens: vec![Entry {
            name: name.to_owned(),
            role,
            sha256: sha256_hex(&secret),
            vantages,
        }],
    };
    let entry = toml::to_string(&file).map_err(|e| bad("token".into(), e.to_string()))?;
    // What is printed must load.
    TokenSet::parse(&entry).map_err(|e| ConfigError {
        field: e
            .field
            .replace("tokens[0].vantages", "--vantage")
            .replace("tokens[0].", "--"),
        message: e.message,
    })?;
    Ok((secret, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[tokens]]
name = "ops"
role = "admin"
sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[tokens]]
name = "fra"
role = "probe"
sha256 = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"
vantages = ["fra-*"]
"#;

    #[test]
    fn lookup_by_the_secrets_digest() {
        let set = TokenSet::parse(FILE).unwrap();
        assert_eq!(set.len(), 2);
        // sha256("secret") and sha256("123").
        let ops = set.lookup("secret").unwrap();
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Admin));
        let fra = set.lookup("123").unwrap();
        assert!(fra.may_claim("fra-1") && !fra.may_claim("iad-1"));
        assert_eq!(fra.globs(), "[\"fra-*\"]");
        assert!(set.lookup("secrett").is_none() && set.lookup("").is_none());
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let cases = [
            (
                "[[tokens]]\nname=\"a\"\nrole=\"root\"\nsha256=\"x\"\n",
                "token_file",
                "root",
            ),
            (
                "[[tokens]]\nname=\"a\"\nrole=\"reader\"\nsha256=\"ABC\"\n",
                "tokens[0].sha256",
                "64 lower-case hex",
            ),
            (
                "[[tokens]]\nname=\"p\"\nrole=\"probe\"\nsha256=\"a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3\"\n",
                "tokens[0].vantages",
                "required for role probe",
            ),
            (
                "[[tokens]]\nname=\"a\"\nrole=\"reader\"\nsha256=\"a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3\"\ncolour=1\n",
                "token_file",
                "colour",
            ),
        ];
        for (text, field, needle) in cases {
            let e = TokenSet::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
        let twice = format!(
            "{FILE}\n[[tokens]]\nname=\"ops\"\nrole=\"reader\"\nsha256=\"{}\"\n",
            sha256_hex("x")
        );
        let e = TokenSet::parse(&twice).unwrap_err();
        assert_eq!(e.field, "tokens[2].name", "{e}");
    }

    #[test]
    fn a_new_token_round_trips() {
        let (secret, entry) = new_token("fra", Role::Probe, vec!["fra-*".into()]).unwrap();
        assert_eq!(secret.len(), 64);
        let set = TokenSet::parse(&entry).unwrap();
        let p = set.lookup(&secret).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("fra", Role::Probe));
        assert!(entry.contains(&sha256_hex(&secret)), "{entry}");
        assert!(
            !entry.contains(&secret),
            "the entry must not hold the secret"
        );
        let e = new_token("x", Role::Probe, vec![]).unwrap_err();
        assert_eq!(e.field, "--vantage", "{e}");
    }
}
