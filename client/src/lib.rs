//! The typed vantage client (gRPC, bearer token, reconnecting watch) behind the `vantage` CLI.

pub mod history;
pub mod table;

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Status};
use vantage_proto::backoff::Backoff;
use vantage_proto::pb;
use vantage_proto::pb::health_service_client::HealthServiceClient;
use vantage_proto::transport::{Bearer, KeepAlive, Target, TargetError, TlsFiles};

/// First delay before a resuming watch reconnects; doubles up to [`WATCH_BACKOFF_MAX`].
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Largest message the client decodes: the bound on the report and the vantage list
/// (docs/behaviour.md, "Security and bad input": `max_vantages` × what one vantage adds).
pub const MAX_DECODE: usize = 256 << 20;

/// Why a call failed: could not connect (exit 3) or the server said no.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not reach the server at {url}: {source}")]
    Unreachable {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("invalid server URL {0:?} (expected e.g. http://127.0.0.1:7080)")]
    Url(String),
    #[error("invalid token: not a valid header value")]
    Token,
    /// A server URL or TLS file that cannot be used (exit 64).
    #[error(transparent)]
    Target(TargetError),
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

impl ClientError {
    /// Whether the server could not be reached at all (transport failure or unavailable).
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            // A connection the server broke off (e.g. at the TLS handshake, for want of a
            // client certificate) ends calls as cancelled, unavailable, or unknown with the
            // transport failure as the source (a status the server sent has none).
            ClientError::Status(s) => {
                matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
                    || (s.code() == tonic::Code::Unknown && std::error::Error::source(s).is_some())
            }
            _ => false,
        }
    }

    /// Whether the server refused the token: missing, unknown or lacking the role (exit 4).
    pub fn is_refused(&self) -> bool {
        matches!(self, ClientError::Status(s) if is_refusal(s))
    }

    /// Whether the command line was at fault: the URL, a TLS file or the token (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ClientError::Target(_) | ClientError::Url(_) | ClientError::Token
        )
    }
}

/// `UNAUTHENTICATED` or `PERMISSION_DENIED`.
pub fn is_refusal(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// The checked target of `url` with `files`; an unusable URL is [`ClientError::Url`].
pub fn target(url: &str, files: &TlsFiles) -> Result<Target, ClientError> {
    Target::new(url, files).map_err(|e| match e {
        TargetError::Url(u) => ClientError::Url(u),
        other => ClientError::Target(other),
    })
}

/// The first of `targets` that answers, tried in order; `unreachable` is told of each that
/// does not. When none answers, the last one's error (exit 3); any other error (a refused
/// token, say) ends the search.
pub async fn connect_first(
    targets: &[Target],
    token: Option<&str>,
    mut unreachable: impl FnMut(&ClientError),
) -> Result<(Target, Client), ClientError> {
    let mut last = None;
    for target in targets {
        match Client::connect_to(target, token).await {
            Ok(client) => return Ok((target.clone(), client)),
            Err(e) if e.is_unreachable() => {
                unreachable(&e);
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Url(String::new())))
}

/// A connected client.
#[derive(Clone)]
pub struct Client {
    health: HealthServiceClient<Channel>,
    registry: pb::registry_service_client::RegistryServiceClient<Channel>,
    token: Option<Bearer>,
    url: String,
}

impl Client {
    /// Connect to `url`: plaintext for a loopback `http://`, TLS for `https://` (see
    /// [`Client::connect_to`] for the TLS files and `--insecure-plaintext`).
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::connect_to(&target(url, &TlsFiles::default())?, token).await
    }

    /// Connect to a checked target.
    pub async fn connect_to(target: &Target, token: Option<&str>) -> Result<Client, ClientError> {
        let url = target.url();
        let channel = target
            .connect(KeepAlive::WhileBusy)
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.to_owned(),
                source,
            })?;
        let token = token
            .map(|t| Bearer::new(t).map_err(|_| ClientError::Token))
            .transpose()?;
        Ok(Client {
            registry: pb::registry_service_client::RegistryServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_DECODE),
            health: HealthServiceClient::new(channel).max_decoding_message_size(MAX_DECODE),
            token,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            t.authorize(&mut r);
        }
        r
    }

    pub async fn report(&self, force: bool) -> Result<pb::Report, ClientError> {
        let mut c = self.health.clone();
        Ok(c.get_report(self.request(pb::GetReportRequest { force }))
            .await?
            .into_inner())
    }

    pub async fn settings(&self) -> Result<pb::Settings, ClientError> {
        let mut c = self.health.clone();
        Ok(c.get_settings(self.request(pb::GetSettingsRequest {}))
            .await?
            .into_inner())
    }

    pub async fn update_settings(
        &self,
        dismissed: Vec<String>,
    ) -> Result<pb::Settings, ClientError> {
        let mut c = self.health.clone();
        let req = pb::Settings {
            dismissed_healthchecks: dismissed,
            dismissals: Vec::new(),
        };
        Ok(c.update_settings(self.request(req)).await?.into_inner())
    }

    /// Like [`Client::update_settings`], with end times and reasons for some sections.
    pub async fn update_settings_with(
        &self,
        dismissed: Vec<String>,
        dismissals: Vec<pb::Dismissal>,
    ) -> Result<pb::Settings, ClientError> {
        let mut c = self.health.clone();
        let req = pb::Settings {
            dismissed_healthchecks: dismissed,
            dismissals,
        };
        Ok(c.update_settings(self.request(req)).await?.into_inner())
    }

    pub async fn vantages(&self) -> Result<Vec<pb::Vantage>, ClientError> {
        let mut c = self.health.clone();
        Ok(c.list_vantages(self.request(pb::ListVantagesRequest {}))
            .await?
            .into_inner()
            .vantages)
    }

    /// Section transitions and check outcomes (`section` `None`: all; `since` `None`: all kept).
    pub async fn history(
        &self,
        section: Option<vantage_proto::Section>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<pb::History, ClientError> {
        let mut c = self.health.clone();
        let req = pb::GetHistoryRequest {
            section: section.map_or(0, |s| pb::Section::from(s) as i32),
            since: since.map(vantage_proto::convert::timestamp),
        };
        Ok(c.get_history(self.request(req)).await?.into_inner())
    }

    /// Forget a stale, disconnected vantage; with `force` a live one too.
    pub async fn forget(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut c = self.health.clone();
        c.forget_vantage(self.request(pb::ForgetVantageRequest {
            name: name.to_owned(),
            force,
        }))
        .await?;
        Ok(())
    }

    pub async fn provisioner_heartbeat(
        &self,
        req: pb::ProvisionerHeartbeatRequest,
    ) -> Result<pb::ProvisionerHeartbeatResponse, ClientError> {
        let mut c = self.registry.clone();
        Ok(c.provisioner_heartbeat(self.request(req))
            .await?
            .into_inner())
    }

    /// One watch stream (no reconnect).
    pub async fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> Result<impl Stream<Item = Result<pb::WatchEvent, Status>> + use<>, ClientError> {
        let mut c = self.health.clone();
        Ok(c.watch(self.request(req)).await?.into_inner())
    }
}

/// What a resuming watch yields.
#[derive(Debug)]
pub enum WatchItem {
    Event(pb::WatchEvent),
    /// The server refused the token (the watch ends).
    Refused(String),
    /// The stream broke; reconnecting after the given delay, resuming from `since`.
    Reconnecting {
        error: String,
        since: u64,
        delay: Duration,
    },
}

/// A watch that reconnects with backoff and resumes from the last revision it saw.
pub fn watch_resuming(
    url: String,
    token: Option<String>,
    req: pb::WatchRequest,
) -> impl Stream<Item = WatchItem> {
    watch_resuming_to(
        target(&url, &TlsFiles::default()).map_err(|e| e.to_string()),
        token,
        req,
    )
}

/// [`watch_resuming`] to a checked target; it ends with [`WatchItem::Refused`] when the
/// server refuses the token.
pub fn watch_resuming_to(
    target: Result<Target, String>,
    token: Option<String>,
    mut req: pb::WatchRequest,
) -> impl Stream<Item = WatchItem> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
        loop {
            let connected = match &target {
                Ok(t) => Client::connect_to(t, token.as_deref())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            let error = match connected {
                Err(e) => e,
                Ok(client) => match client.watch(req.clone()).await {
                    Err(e) if e.is_refused() => {
                        let _ = tx.send(WatchItem::Refused(e.to_string())).await;
                        return;
                    }
                    Err(e) => e.to_string(),
                    Ok(stream) => {
                        backoff.reset();
                        let mut stream = std::pin::pin!(stream);
                        let mut err = "the server ended the stream".to_owned();
                        while let Some(item) = stream.next().await {
                            match item {
                                Ok(ev) => {
                                    if ev.epoch != req.since_epoch
                                        || ev.revision > req.since_revision
                                    {
                                        req.since_revision = ev.revision;
                                        req.since_epoch = ev.epoch.clone();
                                    }
                                    if tx.send(WatchItem::Event(ev)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(s) if is_refusal(&s) => {
                                    let _ =
                                        tx.send(WatchItem::Refused(s.message().to_owned())).await;
                                    return;
                                }
                                Err(s) => {
                                    err = s.message().to_owned();
                                    break;
                                }
                            }
                        }
                        err
                    }
                },
            };
            let delay = backoff.next_delay();
            let item = WatchItem::Reconnecting {
                error,
                since: req.since_revision,
                delay,
            };
            if tx.send(item).await.is_err() {
                return;
            }
            tokio::time::sleep(delay).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_resuming_watch_backs_off_doubling_up_to_its_cap() {
        let req = pb::WatchRequest {
            since_revision: 7,
            ..Default::default()
        };
        let start = tokio::time::Instant::now();
        let items: Vec<WatchItem> = watch_resuming("not a url".into(), None, req)
            .take(9)
            .collect()
            .await;
        let mut slept = Duration::ZERO;
        let mut delays = Vec::new();
        for item in items {
            let WatchItem::Reconnecting {
                error,
                since,
                delay,
            } = item
            else {
                panic!("no event without a server: {item:?}");
            };
            assert!(error.starts_with("invalid server URL"), "{error}");
            assert_eq!(since, 7);
            delays.push(delay);
            slept += delay;
        }
        let ms = Duration::from_millis;
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000].map(ms)
        );
        // Each item is sent before its sleep: the last one's delay has not elapsed.
        assert_eq!(start.elapsed(), slept - ms(10_000));
    }
}
