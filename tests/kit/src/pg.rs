//! PostgreSQL for tests: a fresh database per test ([`TestDb`], dropped `WITH (FORCE)` when it
//! goes) and a TCP proxy in front of the server that can add latency, cut connections and
//! refuse new ones ([`CutProxy`]).
//!
//! The server is `VANTAGE_TEST_DATABASE_URL` (default [`DEFAULT_ADMIN_URL`]). When it cannot be
//! reached the tests fail, unless `VANTAGE_SKIP_PG_TESTS=1` says to skip them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::net::loopback_listener;

/// The server the tests use unless `VANTAGE_TEST_DATABASE_URL` names another.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("VANTAGE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn admin() -> Result<tokio_postgres::Client, String> {
    let url = admin_url();
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })?;
    tokio::spawn(conn);
    Ok(client)
}

/// A fresh database `t_<random>`, dropped `WITH (FORCE)` when this goes.
pub struct TestDb {
    name: String,
    url: Url,
}

impl TestDb {
    /// Create a database, or `None` when PostgreSQL is unreachable and
    /// `VANTAGE_SKIP_PG_TESTS=1` says that is fine. Otherwise an unreachable server fails the
    /// test. See [`test_db!`](crate::test_db) for the usual way to call it.
    pub async fn create() -> Option<TestDb> {
        let client = match admin().await {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("VANTAGE_SKIP_PG_TESTS").as_deref() == Ok("1") {
                    eprintln!(
                        "skipped: PostgreSQL is unreachable ({e}) and VANTAGE_SKIP_PG_TESTS=1"
                    );
                    return None;
                }
                panic!(
                    "PostgreSQL is unreachable at {} ({e}). Start it (e.g. `pg_ctlcluster \
                     --skip-systemctl-redirect 15 main start`), point VANTAGE_TEST_DATABASE_URL \
                     at one, or set VANTAGE_SKIP_PG_TESTS=1 to skip these tests",
                    admin_url()
                );
            }
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let mut url = Url::parse(&admin_url()).expect("VANTAGE_TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Some(TestDb { name, url })
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// The database's URL through another port on 127.0.0.1 (a [`CutProxy`], a closed port).
    pub fn url_via(&self, port: u16) -> String {
        let mut url = self.url.clone();
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(port)).expect("port");
        url.to_string()
    }

    /// Where the server listens (what a [`CutProxy`] forwards to).
    pub fn server_addr(&self) -> SocketAddr {
        let host = self.url.host_str().unwrap_or("127.0.0.1");
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        format!("{host}:{}", self.url.port().unwrap_or(5432))
            .parse()
            .expect("the test server is addressed by IP")
    }

    /// A plain connection to the database, for looking behind the code under test's back.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = admin().await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("dropping test database {}: {e}", self.name);
        }
    }
}

/// A fresh [`TestDb`], or return from the (async) test when PostgreSQL is unreachable and
/// `VANTAGE_SKIP_PG_TESTS=1` allows skipping: `let db = test_db!();`.
#[macro_export]
macro_rules! test_db {
    () => {
        match $crate::TestDb::create().await {
            Some(db) => db,
            None => return,
        }
    };
}

struct ProxyState {
    upstream: SocketAddr,
    latency: Duration,
    refusing: AtomicBool,
    cut: Mutex<CancellationToken>,
    /// While `true`, nothing is forwarded and new connections are held unanswered.
    stalled: tokio::sync::watch::Sender<bool>,
}

/// A TCP proxy on 127.0.0.1 (a port of its own) to `upstream`, usually PostgreSQL. An outage
/// is `refuse(true)` then `cut()`; `refuse(false)` ends it. A stall (`stall(true)` …
/// `stall(false)`) black-holes the open connections and holds new ones unanswered.
pub struct CutProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// Forward to `upstream`, delaying each chunk by `latency` in each direction.
    pub async fn start(upstream: SocketAddr, latency: Duration) -> CutProxy {
        let (listener, addr) = loopback_listener().await;
        let state = Arc::new(ProxyState {
            upstream,
            latency,
            refusing: AtomicBool::new(false),
            cut: Mutex::new(CancellationToken::new()),
            stalled: tokio::sync::watch::channel(false).0,
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if s.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let token = s.cut.lock().expect("lock").clone();
                let (upstream, latency) = (s.upstream, s.latency);
                let stalled = s.stalled.subscribe();
                tokio::spawn(async move {
                    // A stalled proxy accepts and answers nothing until the stall ends.
                    let mut wait = stalled.clone();
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = wait.wait_for(|s| !*s) => {}
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // A connection open when a stall begins is black-holed for good: what
                    // either side sends is dropped, and it is never closed (a peer that froze).
                    let frozen = Arc::new(AtomicBool::new(false));
                    let freeze = {
                        let (frozen, mut stalled) = (frozen.clone(), stalled);
                        async move {
                            let _ = stalled.wait_for(|s| *s).await;
                            frozen.store(true, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = pump(cr, sw, latency, frozen.clone()) => {}
                        _ = pump(sr, cw, latency, frozen) => {}
                        _ = freeze => {}
                    }
                });
            }
        });
        CutProxy {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Close every open connection (new ones are still accepted unless refusing).
    pub fn cut(&self) {
        let mut t = self.state.cut.lock().expect("lock");
        t.cancel();
        *t = CancellationToken::new();
    }

    /// Refuse (accept and close at once) new connections, or stop refusing.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    /// Freeze (or thaw) the database: connections open when the stall begins are black-holed
    /// for good (nothing forwarded, never closed, as with a peer that froze), new ones are
    /// accepted and left unanswered until the thaw, after which new connections work.
    pub fn stall(&self, on: bool) {
        self.state.stalled.send_replace(on);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
