//! Delivery to each Alertmanager: one task per URL behind a small bounded queue, `POST
//! /api/v2/alerts` in batches of at most [`MAX_BATCH`], a timeout on every request, and
//! retries with [`Backoff`] until the next batch supersedes the failed one. The counters say
//! what became of every alert handed over: sent, failed (per failed attempt) or dropped
//! (the queue was full, or every retry failed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vantage_proto::backoff::Backoff;

use super::tracker::Postable;
use crate::config::{AlertAuth, AlertingConfig};

/// Most alerts in one request (as Prometheus sends).
pub const MAX_BATCH: usize = 64;
/// Batches waiting for one Alertmanager; a full queue drops (and counts) the new batch.
pub const QUEUE: usize = 4;
/// Deadline of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one batch before it is dropped (a newer batch ends the retries earlier).
pub const MAX_ATTEMPTS: u32 = 5;

/// What became of the alerts handed to one Alertmanager.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// One Alertmanager's queue and figures.
pub struct Target {
    /// The URL as configured (never carries credentials: the config refuses them).
    pub url: String,
    pub counters: Arc<Counters>,
    tx: mpsc::Sender<Arc<Vec<Postable>>>,
}

impl Target {
    /// Hand over a batch without waiting: a full queue drops it (counted).
    pub fn offer(&self, batch: Arc<Vec<Postable>>) {
        let n = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Why the sender could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("alertmanager_ca_file {path:?}: {message}")]
    CaFile { path: String, message: String },
    #[error("the Alertmanager HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The HTTP client every Alertmanager is posted with (the CA file, if any, read now).
pub fn client(config: &AlertingConfig) -> Result<reqwest::Client, SetupError> {
    let mut b = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("vantaged/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| SetupError::CaFile {
            path: path.clone(),
            message: format!("{e} (expected a readable PEM file)"),
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| SetupError::CaFile {
            path: path.clone(),
            message: format!("{e} (expected a PEM certificate)"),
        })?;
        b = b.add_root_certificate(cert);
    }
    Ok(b.build()?)
}

/// Start one delivery task per Alertmanager.
pub fn start(
    config: &AlertingConfig,
    client: &reqwest::Client,
    cancel: &CancellationToken,
) -> Vec<Target> {
    config
        .alertmanager_urls
        .iter()
        .map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let counters = Arc::new(Counters::default());
            let endpoint = format!("{}/api/v2/alerts", url.as_str().trim_end_matches('/'));
            tokio::spawn(deliver(Delivery {
                client: client.clone(),
                endpoint,
                auth: config.auth.clone(),
                counters: counters.clone(),
                rx,
                cancel: cancel.clone(),
            }));
            Target {
                url: url.to_string(),
                counters,
                tx,
            }
        })
        .collect()
}

struct Delivery {
    client: reqwest::Client,
    endpoint: String,
    auth: AlertAuth,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Arc<Vec<Postable>>>,
    cancel: CancellationToken,
}

async fn deliver(mut d: Delivery) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).jitter(0.2);
    loop {
        let batch = tokio::select! {
            b = d.rx.recv() => match b { Some(b) => b, None => return },
            () = d.cancel.cancelled() => return,
        };
        for chunk in batch.chunks(MAX_BATCH) {
            if !d.send_with_retries(chunk, &mut backoff).await {
                break;
            }
        }
    }
}

impl Delivery {
    /// `false` when the rest of the batch should be left (superseded, given up or stopping).
    async fn send_with_retries(&mut self, chunk: &[Postable], backoff: &mut Backoff) -> bool {
        let n = chunk.len() as u64;
        for attempt in 1..=MAX_ATTEMPTS {
            match self.post(chunk).await {
                Ok(()) => {
                    self.counters.sent.fetch_add(n, Ordering::Relaxed);
                    backoff.reset();
                    return true;
                }
                Err(why) => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(alertmanager = %self.endpoint, attempt, error = %why, "sending alerts");
                }
            }
            // A newer batch carries the same alerts, fresher: no point retrying this one.
            if !self.rx.is_empty() || attempt == MAX_ATTEMPTS {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.cancel.cancelled() => return false,
            }
        }
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        false
    }

    async fn post(&self, chunk: &[Postable]) -> Result<(), String> {
        let mut req = self.client.post(&self.endpoint).json(chunk);
        req = match &self.auth {
            AlertAuth::None => req,
            AlertAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
            AlertAuth::Bearer(token) => req.bearer_auth(token.expose()),
        };
        let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(format!("{status}: {}", body.trim()))
    }
}
