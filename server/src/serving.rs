//! The listeners and the shutdown: the main listener and the optional plaintext health
//! listener serve until the shutdown signal; then the drain (NOT_SERVING, `/readyz` 503,
//! everything still served), then every stream ends and the listeners close, all within the
//! grace period.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{ServeError, api};

type Serving = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// How shutdown goes (`--drain`, `--shutdown-grace`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shutdown {
    /// How long to keep serving NOT_SERVING before ending the streams.
    pub(crate) drain: Duration,
    /// The longest shutdown takes, drain included.
    pub(crate) grace: Duration,
}

/// The listeners, serving until told to stop: the main one and the plaintext health one.
pub(crate) struct Server {
    serving: Serving,
    health: Serving,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Serve `router` on `listener` (TLS when `security` says so), with `TCP_NODELAY`: DERP
    /// packets, acks and watch events are small and latency-bound. `health`: the plaintext
    /// health listener and its router, when configured.
    pub(crate) fn start(
        listener: TcpListener,
        router: axum::Router,
        security: &crate::security::Security,
        health: Option<(TcpListener, axum::Router)>,
    ) -> Server {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let serving = crate::security::accept::serve(
            listener,
            router,
            security.tls.clone(),
            security.counters.clone(),
            stop_rx.clone(),
        );
        let health: Serving = match health {
            Some((listener, router)) => Box::pin(crate::security::accept::serve(
                listener,
                router,
                None,
                security.counters.clone(),
                stop_rx,
            )),
            None => {
                let mut stop_rx = stop_rx;
                Box::pin(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                    Ok(())
                })
            }
        };
        Server {
            serving: Box::pin(serving),
            health,
            stop,
        }
    }

    /// Serve until `shutdown`; then NOT_SERVING on every health service and `/readyz` 503,
    /// keep serving for the drain, then end every stream (status OK) and close the listeners,
    /// cutting what is still open when the grace period ends.
    pub(crate) async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
        health: &api::grpc::health::HealthReporter,
        cancel: &CancellationToken,
        timing: Shutdown,
    ) -> Result<(), ServeError> {
        tokio::select! {
            r = &mut self.serving => return r.map_err(ServeError::Io),
            r = &mut self.health => return r.map_err(ServeError::Io),
            () = shutdown => {}
        }
        let deadline = tokio::time::Instant::now() + timing.grace;
        tracing::info!(drain = ?timing.drain, grace = ?timing.grace, "shutting down: NOT_SERVING, draining");
        health.not_serving();
        tokio::select! {
            r = &mut self.serving => return r.map_err(ServeError::Io),
            r = &mut self.health => return r.map_err(ServeError::Io),
            () = tokio::time::sleep(timing.drain) => {}
        }
        tracing::info!("drained: ending the streams and closing the listeners");
        cancel.cancel();
        let _ = self.stop.send(true);
        let both = async {
            let (main, health) = tokio::join!(self.serving, self.health);
            main.and(health)
        };
        match tokio::time::timeout_at(deadline, both).await {
            Ok(r) => r.map_err(ServeError::Io),
            Err(_) => {
                tracing::warn!(
                    "connections still open at the end of the grace period; stopping anyway"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    /// A listener that stops accepting when told; its connections then take `linger` to
    /// finish (`None`: a stream that never ends).
    fn listener(stop: &tokio::sync::watch::Sender<bool>, linger: Option<Duration>) -> Serving {
        let mut rx = stop.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
            match linger {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            Ok(())
        })
    }

    fn server(linger: Option<Duration>) -> Server {
        let (stop, _) = tokio::sync::watch::channel(false);
        Server {
            serving: listener(&stop, linger),
            health: listener(&stop, Some(Duration::ZERO)),
            stop,
        }
    }

    const TIMING: Shutdown = Shutdown {
        drain: Duration::from_secs(5),
        grace: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn not_serving_first_then_the_drain_then_the_streams_end() {
        let (reporter, _) = api::grpc::health::health_service(CancellationToken::new());
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let signal = tokio::time::sleep(Duration::from_secs(1));
        let run =
            server(Some(Duration::from_millis(300))).run_until(signal, &reporter, &cancel, TIMING);
        let observe = async {
            tokio::time::sleep(Duration::from_millis(999)).await;
            assert!(!reporter.is_draining(), "serving until the signal");
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert!(reporter.is_draining(), "NOT_SERVING at once");
            assert!(!cancel.is_cancelled(), "the streams go on during the drain");
            tokio::time::sleep_until(start + Duration::from_millis(5_999)).await;
            assert!(!cancel.is_cancelled(), "the streams go on during the drain");
            cancel.cancelled().await;
            assert_eq!(
                start.elapsed(),
                Duration::from_secs(6),
                "drain after the signal"
            );
        };
        let (result, ()) = tokio::join!(run, observe);
        result.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(6_300),
            "done once the connections finished"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_still_open_at_the_end_of_the_grace_is_cut() {
        let (reporter, _) = api::grpc::health::health_service(CancellationToken::new());
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let signal = tokio::time::sleep(Duration::from_secs(1));
        server(None)
            .run_until(signal, &reporter, &cancel, TIMING)
            .await
            .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(11),
            "the grace counts from the signal"
        );
        assert!(cancel.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_that_fails_ends_serving_with_its_error() {
        let (reporter, _) = api::grpc::health::health_service(CancellationToken::new());
        let cancel = CancellationToken::new();
        let (stop, _) = tokio::sync::watch::channel(false);
        let server = Server {
            serving: listener(&stop, None),
            health: Box::pin(async { Err(std::io::Error::other("accept broke")) }),
            stop,
        };
        let r = server
            .run_until(std::future::pending(), &reporter, &cancel, TIMING)
            .await;
        assert!(matches!(r, Err(ServeError::Io(e)) if e.to_string() == "accept broke"));
    }
}
