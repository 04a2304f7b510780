//! The accept loop of the one listener: each TCP connection (`TCP_NODELAY`), optionally
//! through a TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]), is served by hyper's automatic
//! HTTP/1.1-or-HTTP/2 connection with upgrades (WebSocket, DERP), with an HTTP/1 header-read
//! timeout so a partial request does not hold a connection. An HTTP/2 connection's streams run
//! in the connection's own task ([`StreamsHere`], [`Streams`]), and its streams that wait on the
//! aggregator's broadcast park on the connection's [`Gather`]. The peer address is in every request's
//! extensions as axum's `ConnectInfo`. On stop, every connection is shut down gracefully and
//! the loop returns once all have ended.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
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
use crate::gather::Gather;

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

/// Rounds of polling a connection's streams in one poll of its task, at most.
const STREAM_ROUNDS: usize = 16;

/// Wakes a connection's task for its streams, unless the task is polling them right now:
/// then it only notes the wake-up, and the task polls them again before it lets the
/// connection write.
#[derive(Default)]
struct StreamsWake {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for StreamsWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// The HTTP/2 streams of one connection, run in the connection's task.
struct Streams {
    exec: StreamsHere,
    gather: Arc<Gather>,
    running: FuturesUnordered<StreamFuture>,
    wake: Arc<StreamsWake>,
    waker: Waker,
}

impl Streams {
    fn new(gather: Arc<Gather>) -> Streams {
        let wake = Arc::new(StreamsWake::default());
        Streams {
            exec: StreamsHere::default(),
            gather,
            running: FuturesUnordered::new(),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    /// Poll every stream that is ready, and again those that became ready meanwhile, until
    /// none is (or [`STREAM_ROUNDS`] have passed: then the task wakes itself to go on). The
    /// streams parked on the connection's gathering point are woken here when their source
    /// sent something.
    ///
    /// A `FuturesUnordered` polled once stops after two of its futures woke themselves (h2
    /// wakes a stream that it gave room to send), so one pass handled a few of the streams
    /// that an event had woken, the connection wrote their frames, and the task ran again for
    /// the next few: six writes per event on a connection of 50 watchers.
    fn poll(&mut self, cx: &mut Context<'_>) {
        self.wake.task.register(cx.waker());
        self.wake.polling.store(true, Ordering::SeqCst);
        let mut streams_cx = Context::from_waker(&self.waker);
        for _ in 0..STREAM_ROUNDS {
            self.wake.woken.store(false, Ordering::SeqCst);
            self.exec.take(&mut self.running, cx);
            self.gather.poll_release(cx);
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(&mut streams_cx) {}
            self.gather.poll_release(cx);
            if !self.wake.woken.load(Ordering::SeqCst) {
                break;
            }
        }
        self.wake.polling.store(false, Ordering::SeqCst);
        if self.wake.woken.load(Ordering::SeqCst) {
            // Woken after the last round (or from another thread while it ran).
            cx.waker().wake_by_ref();
        }
    }
}

/// A connection's transport as h2 sees it: without vectored writes, so that h2 copies every
/// DATA frame under 1 KiB into its write buffer (with vectored writes it copies only those
/// under 256 bytes, and a larger one is written with the buffer before the next frame may be
/// buffered). A watch event is about that size, so the 50 watchers of a connection cost up to
/// 50 writes per event; copied, they cost one. hyper's HTTP/1 is told apart (see [`builder`]).
/// h2 still writes a frame of 1 KiB or more on its own, so `Watch` hands over small chunks.
struct Copied<IO>(IO);

impl<IO: AsyncRead + Unpin> AsyncRead for Copied<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Copied<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    /// hyper's HTTP/1 writes vectors when the transport does (see [`builder`]); h2 never
    /// asks for them.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// A connection's hyper builder: HTTP/1 with a header-read timeout and vectored writes when
/// the transport has them (`vectored`), HTTP/2 with its streams in the connection's task.
fn builder(exec: StreamsHere, vectored: bool) -> auto::Builder<StreamsHere> {
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // As the transport is, not as [`Copied`] shows it to h2: otherwise hyper's HTTP/1
        // copies every response body into its write buffer (a 3.5 MB report, per reader).
        .writev(vectored);
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
        // A plaintext connection's task holds only the plaintext connection's state: one
        // future for both kinds was 7 KiB, the plaintext one alone is 2.3 KiB, and every
        // connection keeps its task for its whole life.
        if let Some(acceptor) = shared.tls.clone() {
            tokio::spawn(async move {
                tls_connection(&shared, &acceptor, tcp, peer).await;
                drop(alive);
            });
        } else {
            tokio::spawn(async move {
                http(&shared, tcp, peer).await;
                drop(alive);
            });
        }
    }
    drop(listener);
    drop(alive);
    let _ = all_ended.recv().await;
    Ok(())
}

/// A connection over TLS: the handshake, then HTTP.
async fn tls_connection(
    shared: &Shared,
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
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
    // The streams of this connection that wait on the same source park here (`Watch`).
    let gather = Arc::new(Gather::default());
    let for_requests = gather.clone();
    let svc = shared
        .router
        .clone()
        .map_request(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(for_requests.clone());
            req
        });
    let mut streams = Streams::new(gather);
    let builder = builder(streams.exec.clone(), io.is_write_vectored());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(Copied(io)), TowerToHyperService::new(svc));
    tokio::pin!(conn);
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
        // Every stream that is ready, then the connection writes what they all sent.
        streams.poll(cx);
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

    /// A future that wakes itself `n` times before it ends, as a stream does that h2 gave room
    /// to send.
    struct WakesItself(usize, Arc<AtomicUsize>);

    impl Future for WakesItself {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                self.1.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One poll of a connection's streams runs every stream that became ready while it ran
    /// (a `FuturesUnordered` alone stops after two woke themselves), without waking the
    /// connection's task for them; a stream that never stops waking itself is bounded by
    /// `STREAM_ROUNDS`, and the task is woken to go on.
    #[test]
    fn one_poll_runs_the_streams_that_became_ready_meanwhile_in_bounded_rounds() {
        let mut streams = Streams::new(Arc::new(Gather::default()));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            streams.exec.execute(WakesItself(3, done.clone()));
        }
        let task = Arc::new(Counter::default());
        let waker = Waker::from(task.clone());
        streams.poll(&mut Context::from_waker(&waker));
        assert_eq!(
            done.load(Ordering::SeqCst),
            10,
            "every stream ran to its end"
        );
        assert!(streams.running.is_empty());
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            0,
            "nothing left to wake the task for"
        );

        // Handing a stream over wakes the task once.
        streams.exec.execute(WakesItself(usize::MAX, done.clone()));
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        streams.poll(&mut Context::from_waker(&waker));
        assert_eq!(streams.running.len(), 1);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            2,
            "the task woke itself to go on"
        );
    }

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
