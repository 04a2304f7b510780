//! The accept loop of the one listener: each TCP connection (`TCP_NODELAY`), optionally
//! through a TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]), is served by hyper's automatic
//! HTTP/1.1-or-HTTP/2 connection with upgrades (WebSocket, DERP), with an HTTP/1 header-read
//! timeout so a partial request does not hold a connection. An HTTP/2 connection's streams run
//! in the connection's own task ([`StreamsHere`]). The peer address is in every request's
//! extensions as axum's `ConnectInfo`. On stop, every connection is shut down gracefully and
//! the loop returns once all have ended.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

use super::{Counters, Refusal};

/// How long a client has to send a request's headers (HTTP/1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most streams an HTTP/2 client may have open on one connection (hyper's default, stated).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// What every connection shares.
struct Shared {
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
}

/// A stream's future, as hyper hands it over.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor of one connection: hyper gives it each HTTP/2 stream's future, and the
/// connection's own task polls them — every one that is ready — before it polls the
/// connection, so what the ready streams sent reaches h2 before it writes. With a task per
/// stream (hyper's Tokio executor) every stream was a task to schedule and wake on its own, and
/// the connection's task ran between them.
#[derive(Clone, Default)]
struct StreamsHere(Arc<std::sync::Mutex<Handed>>);

/// Streams handed over since the connection's task last looked, and how to wake that task.
#[derive(Default)]
struct Handed {
    streams: Vec<StreamFuture>,
    waker: Option<std::task::Waker>,
}

impl<F> hyper::rt::Executor<F> for StreamsHere
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let waker = match self.0.lock() {
            // The connection's task takes them on every poll, and a client may open no more
            // than MAX_STREAMS_PER_CONNECTION at once: beyond that (or if the lock was
            // poisoned) the stream gets a task of its own rather than wait.
            Ok(mut h) if h.streams.len() < MAX_STREAMS_PER_CONNECTION as usize => {
                // A stream that panics ends alone, as it did as a task of its own, not with
                // every other stream of its connection.
                let isolated = std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
                    if r.is_err() {
                        tracing::error!("an HTTP/2 stream's handler panicked; the stream ended");
                    }
                });
                h.streams.push(Box::pin(isolated));
                h.waker.take()
            }
            _ => {
                tokio::spawn(fut);
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl StreamsHere {
    /// Move the streams handed over into `into`; wake this task for the next ones.
    fn take(&self, into: &mut FuturesUnordered<StreamFuture>, cx: &std::task::Context<'_>) {
        if let Ok(mut h) = self.0.lock() {
            into.extend(h.streams.drain(..));
            if !h.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                h.waker = Some(cx.waker().clone());
            }
        }
    }
}

/// A connection's hyper builder: HTTP/1 with a header-read timeout, HTTP/2 with its streams in
/// the connection's task.
fn builder(exec: StreamsHere) -> auto::Builder<StreamsHere> {
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// Serve `router` on `listener` until `stop` turns true, then let connections finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        router,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        counters,
        stop: stop.clone(),
    });
    // Each connection holds a sender; when all are dropped, every connection has ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stopping => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            connection(&shared, tcp, peer).await;
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_ended.recv().await;
    Ok(())
}

async fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr) {
    let Some(acceptor) = &shared.tls else {
        return http(shared, tcp, peer).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => http(shared, tls, peer).await,
        Ok(Err(e)) => {
            shared.counters.count(Refusal::TlsHandshake);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared.counters.count(Refusal::TlsHandshake);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

async fn http<IO>(shared: &Shared, io: IO, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = shared
        .router
        .clone()
        .map_request(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
    let exec = StreamsHere::default();
    let builder = builder(exec.clone());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut streams: FuturesUnordered<StreamFuture> = FuturesUnordered::new();
    let mut stop = shared.stop.clone();
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let mut shutting_down = false;
    let ended = std::future::poll_fn(|cx| {
        if !shutting_down && stopping.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            conn.as_mut().graceful_shutdown();
        }
        exec.take(&mut streams, cx);
        // Every stream that is ready first, then the connection writes what they sent.
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::rt::Executor as _;

    use super::*;

    /// Streams handed to a connection's executor run in the task that drives the connection;
    /// one that panics ends alone; past the bound a stream gets a task of its own.
    #[tokio::test]
    async fn a_connections_streams_run_in_its_task_and_a_panic_ends_only_its_stream() {
        let exec = StreamsHere::default();
        let done = Arc::new(AtomicUsize::new(0));
        exec.execute(async { panic!("a handler's bug") });
        for _ in 0..3 {
            let done = done.clone();
            exec.execute(async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let mut streams = FuturesUnordered::new();
        std::future::poll_fn(|cx| {
            exec.take(&mut streams, cx);
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if streams.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            3,
            "the panic ended only its own stream"
        );

        // Nobody takes them: the first MAX_STREAMS_PER_CONNECTION wait, the next one runs.
        let spawned = Arc::new(AtomicUsize::new(0));
        for _ in 0..=MAX_STREAMS_PER_CONNECTION {
            let spawned = spawned.clone();
            exec.execute(async move {
                spawned.fetch_add(1, Ordering::SeqCst);
            });
        }
        vantage_testkit::eventually(Duration::from_secs(5), "the stream past the bound", || {
            let n = spawned.load(Ordering::SeqCst);
            async move { (n == 1).then_some(()) }
        })
        .await;
        let mut streams = FuturesUnordered::new();
        std::future::poll_fn(|cx| {
            exec.take(&mut streams, cx);
            Poll::Ready(())
        })
        .await;
        assert_eq!(streams.len(), MAX_STREAMS_PER_CONNECTION as usize);
    }
}
