//! The transport security layer: TLS on the one listener ([`tls`], with mutual TLS), tokens
//! with roles ([`tokens`]) checked by one middleware in front of every route ([`layer`]),
//! the accept loop that serves plaintext or TLS connections ([`accept`]), and the reloads of
//! the certificate and the token file (on change, or on SIGHUP) without dropping
//! connections. Every refusal is counted by reason ([`Counters`], shown in `/metrics`).
//!
//! Without a token file nothing is checked: the listener must then be loopback (or
//! `--insecure-no-auth` is on, which is logged as a warning every minute).

pub mod accept;
pub mod layer;
pub mod tls;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
pub use tokens::{Principal, Role, TokenSet};

/// How often the certificate and token files are looked at for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// How often `--insecure-no-auth` is logged while it is in effect.
pub const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Why a request or a connection was refused: the `reason` label of
/// `vantage_auth_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or an authorization that is not `Bearer <token>`.
    MissingToken,
    UnknownToken,
    /// A known token lacking the role the call needs.
    WrongRole,
    /// A probe token claiming a name its globs do not match.
    VantageName,
    /// The TLS handshake failed (e.g. no or an untrusted client certificate).
    TlsHandshake,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::MissingToken,
        Refusal::UnknownToken,
        Refusal::WrongRole,
        Refusal::VantageName,
        Refusal::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::WrongRole => "wrong_role",
            Refusal::VantageName => "vantage_name",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// Refusals counted by reason.
#[derive(Debug, Default)]
pub struct Counters {
    by_reason: [AtomicU64; 5],
}

impl Counters {
    pub fn count(&self, r: Refusal) {
        self.by_reason[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, r: Refusal) -> u64 {
        self.by_reason[r as usize].load(Ordering::Relaxed)
    }
}

/// The token file, reloadable: lookups read the current set.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    set: RwLock<Arc<TokenSet>>,
}

impl TokenStore {
    pub fn load(path: &Path) -> Result<TokenStore, ConfigError> {
        Ok(TokenStore {
            path: path.to_owned(),
            set: RwLock::new(Arc::new(TokenSet::load(path)?)),
        })
    }

    /// Read the file again; a bad file keeps the tokens loaded before.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let fresh = Arc::new(TokenSet::load(&self.path)?);
        let n = fresh.len();
        if let Ok(mut set) = self.set.write() {
            *set = fresh;
        }
        Ok(n)
    }

    pub fn lookup(&self, secret: &str) -> Option<Arc<Principal>> {
        let set = self.set.read().ok()?.clone();
        set.lookup(secret)
    }
}

/// TLS and tokens as configured.
pub struct Security {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub tokens: Option<Arc<TokenStore>>,
    pub counters: Arc<Counters>,
    cert: Option<Arc<tls::CertSlot>>,
}

impl Security {
    /// Read the certificate, key, client CAs and token file the configuration names.
    pub fn load(config: &Config) -> Result<Security, ConfigError> {
        let missing = |field: &str, message: &str| ConfigError {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        let cert = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(Arc::new(tls::CertSlot::load(c, k)?)),
            (Some(_), None) => {
                return Err(missing(
                    "tls_key",
                    "missing (expected the PEM private key of tls_cert)",
                ));
            }
            (None, Some(_)) => {
                return Err(missing(
                    "tls_cert",
                    "missing (expected the PEM certificate of tls_key)",
                ));
            }
            (None, None) => None,
        };
        let tls = match (&cert, &config.tls_client_ca) {
            (Some(slot), ca) => Some(tls::server_config(slot.clone(), ca.as_deref())?),
            (None, Some(_)) => {
                return Err(missing(
                    "tls_client_ca",
                    "needs tls_cert and tls_key (client certificates are checked in the TLS handshake)",
                ));
            }
            (None, None) => None,
        };
        let tokens = config
            .token_file
            .as_deref()
            .map(TokenStore::load)
            .transpose()?
            .map(Arc::new);
        Ok(Security {
            tls,
            tokens,
            counters: Arc::new(Counters::default()),
            cert,
        })
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `router` behind the authorization layer (with a token file), with the refusal
    /// counters in every request's extensions either way.
    pub fn guard(&self, router: axum::Router) -> axum::Router {
        let router = match &self.tokens {
            Some(tokens) => router.layer(axum::middleware::from_fn_with_state(
                layer::Auth {
                    tokens: tokens.clone(),
                    counters: self.counters.clone(),
                },
                layer::authorize,
            )),
            None => router,
        };
        router.layer(axum::Extension(self.counters.clone()))
    }

    /// Reload the certificate and the token file when they change or on SIGHUP, and warn
    /// every minute while `--insecure-no-auth` is in effect.
    pub fn spawn_background(&self, config: &Config, cancel: &CancellationToken) {
        let mut watched = Vec::new();
        if let Some(c) = &self.cert {
            watched.push(Watched::Cert(c.clone()));
        }
        if let Some(t) = &self.tokens {
            watched.push(Watched::Tokens(t.clone()));
        }
        if !watched.is_empty() {
            tokio::spawn(reload_loop(watched, cancel.clone()));
        }
        if config.insecure_no_auth && self.tokens.is_none() {
            tokio::spawn(every(INSECURE_WARNING_EVERY, cancel.clone(), || {
                tracing::warn!(
                    "--insecure-no-auth is on: every client that reaches the listener has full control"
                );
            }));
        }
    }
}

/// Something reloadable and the files it is made of.
enum Watched {
    Cert(Arc<tls::CertSlot>),
    Tokens(Arc<TokenStore>),
}

impl Watched {
    fn files(&self) -> Vec<&Path> {
        match self {
            Watched::Cert(c) => vec![&c.cert, &c.key],
            Watched::Tokens(t) => vec![&t.path],
        }
    }

    fn reload(&self) {
        match self {
            Watched::Cert(c) => match c.reload() {
                Ok(()) => tracing::info!(cert = %c.cert.display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; serving the previous one")
                }
            },
            Watched::Tokens(t) => match t.reload() {
                Ok(n) => {
                    tracing::info!(file = %t.path.display(), tokens = n, "token file reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "token file not reloaded; keeping the previous tokens")
                }
            },
        }
    }

    /// Modification times and lengths: what a change shows as.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

async fn reload_loop(watched: Vec<Watched>, cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be caught; reloading on file changes only");
            None
        }
    };
    let mut stamps: Vec<_> = watched.iter().map(Watched::stamp).collect();
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        for (w, old) in watched.iter().zip(stamps.iter_mut()) {
            let now = w.stamp();
            if all || now != *old {
                *old = now;
                w.reload();
            }
        }
    }
}

/// Call `f` now and then every `period` until `cancel`.
async fn every(period: Duration, cancel: CancellationToken, mut f: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_insecure_warning_repeats_every_minute() {
        let cancel = CancellationToken::new();
        let n = Arc::new(AtomicU64::new(0));
        let seen = n.clone();
        tokio::spawn(every(INSECURE_WARNING_EVERY, cancel.clone(), move || {
            seen.fetch_add(1, Ordering::Relaxed);
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(n.load(Ordering::Relaxed), 1, "at once");
        tokio::time::sleep(Duration::from_secs(60 * 3)).await;
        assert_eq!(n.load(Ordering::Relaxed), 4, "then once a minute");
        cancel.cancel();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(n.load(Ordering::Relaxed), 4, "not after it stops");
    }

    #[test]
    fn counters_count_by_reason() {
        let c = Counters::default();
        c.count(Refusal::WrongRole);
        c.count(Refusal::WrongRole);
        c.count(Refusal::TlsHandshake);
        let got: Vec<u64> = Refusal::ALL.iter().map(|r| c.get(*r)).collect();
        assert_eq!(got, [0, 0, 2, 0, 1]);
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let cfg = Config {
            tls_cert: Some("/c.pem".into()),
            ..Config::default()
        };
        assert_eq!(
            Security::load(&cfg).err().map(|e| e.field).as_deref(),
            Some("tls_key")
        );
        let cfg = Config {
            tls_client_ca: Some("/ca.pem".into()),
            ..Config::default()
        };
        assert_eq!(
            Security::load(&cfg).err().map(|e| e.field).as_deref(),
            Some("tls_client_ca")
        );
    }
}
