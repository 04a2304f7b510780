//! The notification listener: one dedicated connection that `LISTEN`s on the store's channels
//! and forwards each `NOTIFY` as a [`Notice`]. When the connection drops (or stops answering a
//! periodic `SELECT 1`) it reconnects with backoff and, once listening again, sends
//! [`Notice::Reconnected`] so receivers re-read what they may have missed.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use vantage_proto::backoff::Backoff;

use crate::store::{CHANNEL_EVENTS, CHANNEL_OBSERVATIONS, CHANNEL_SETTINGS, Notice};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle listening connection is checked.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Start the listener; the receiver resolves once the first `LISTEN` is in place (or failed,
/// in which case the task has stopped). It runs until `stop` is cancelled.
pub(super) fn spawn(
    config: tokio_postgres::Config,
    connect_timeout: Duration,
    query_timeout: Duration,
    notices: broadcast::Sender<Notice>,
    stop: CancellationToken,
) -> oneshot::Receiver<Result<(), String>> {
    let (ready_tx, ready) = oneshot::channel();
    let task = Listener {
        config,
        connect_timeout,
        query_timeout,
        notices,
        stop,
    };
    tokio::spawn(task.run(ready_tx));
    ready
}

struct Listener {
    config: tokio_postgres::Config,
    connect_timeout: Duration,
    query_timeout: Duration,
    notices: broadcast::Sender<Notice>,
    stop: CancellationToken,
}

/// How a listening session ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Listener {
    async fn run(self, ready: oneshot::Sender<Result<(), String>>) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            let ended = tokio::select! {
                _ = self.stop.cancelled() => return,
                ended = self.session(&mut ready, &mut backoff) => ended,
            };
            let delay = match ended {
                Ended::Stopped => return,
                Ended::Lost(e) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "store notifications: connection lost");
                    delay
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Connect, listen, and forward notifications until the connection is lost.
    async fn session(
        &self,
        ready: &mut Option<oneshot::Sender<Result<(), String>>>,
        backoff: &mut Backoff,
    ) -> Ended {
        let (client, mut connection) =
            match tokio::time::timeout(self.connect_timeout, self.config.connect(NoTls)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Ended::Lost(format!("connecting: {}", super::pg_text(&e))),
                Err(_) => return Ended::Lost("connecting: timed out".into()),
            };
        let notices = self.notices.clone();
        let mut driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let notice = match n.channel() {
                            c if c == CHANNEL_OBSERVATIONS => n
                                .payload()
                                .parse()
                                .map_or(Notice::Reconnected, Notice::Observations),
                            c if c == CHANNEL_EVENTS => n
                                .payload()
                                .parse()
                                .map_or(Notice::Reconnected, Notice::Events),
                            c if c == CHANNEL_SETTINGS => Notice::Settings,
                            _ => continue,
                        };
                        // No receiver is fine.
                        let _ = notices.send(notice);
                    }
                    Ok(_) => {}
                    Err(e) => return super::pg_text(&e),
                }
            }
            "the server closed the connection".to_owned()
        });
        let listen = format!(
            "LISTEN {CHANNEL_OBSERVATIONS}; LISTEN {CHANNEL_EVENTS}; LISTEN {CHANNEL_SETTINGS};"
        );
        match tokio::time::timeout(self.query_timeout, client.batch_execute(&listen)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                driver.abort();
                return Ended::Lost(format!("listening: {}", super::pg_text(&e)));
            }
            Err(_) => {
                driver.abort();
                return Ended::Lost("listening: timed out".into());
            }
        }
        backoff.reset();
        match ready.take() {
            Some(tx) => {
                let _ = tx.send(Ok(()));
            }
            None => {
                tracing::info!("store notifications: listening again");
                let _ = self.notices.send(Notice::Reconnected);
            }
        }
        let ended = loop {
            tokio::select! {
                _ = self.stop.cancelled() => break Ended::Stopped,
                r = &mut driver => {
                    break Ended::Lost(r.unwrap_or_else(|e| format!("connection task: {e}")));
                }
                _ = tokio::time::sleep(HEARTBEAT) => {
                    match tokio::time::timeout(self.query_timeout, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Ended::Lost(format!("heartbeat: {}", super::pg_text(&e))),
                        Err(_) => break Ended::Lost("heartbeat: timed out".into()),
                    }
                }
            }
        };
        driver.abort();
        ended
    }
}
