//! The accept loop of the one listener: each TCP connection (`TCP_NODELAY`), optionally
//! through a TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]), is served by hyper's automatic
//! HTTP/1.1-or-HTTP/2 connection with upgrades (WebSocket, DERP), with an HTTP/1 header-read
//! timeout so a partial request does not hold a connection. The peer address is in every
//! request's extensions as axum's `ConnectInfo`. On stop, every connection is shut down
//! gracefully and the loop returns once all have ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// What every connection shares.
struct Shared {
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Arc<Counters>,
    builder: auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
}

/// Serve `router` on `listener` until `stop` turns true, then let connections finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        router,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        counters,
        builder,
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
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
