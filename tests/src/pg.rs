//! PostgreSQL for end-to-end tests: a fresh database per test (dropped `WITH (FORCE)` when the
//! guard drops), and a TCP proxy in front of the server that a test can cut and restore.
//! When PostgreSQL cannot be reached the tests fail — unless `VANTAGE_SKIP_PG_TESTS=1`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The server the tests use.
pub fn server_url() -> String {
    std::env::var("VANTAGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether the database tests were explicitly told to skip.
pub fn skipped() -> bool {
    if std::env::var("VANTAGE_SKIP_PG_TESTS").as_deref() == Ok("1") {
        eprintln!("VANTAGE_SKIP_PG_TESTS=1: skipping a PostgreSQL test");
        return true;
    }
    false
}

/// A database of its own, dropped at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}): start it (pg_ctlcluster ... main start) or set VANTAGE_SKIP_PG_TESTS=1 to skip these tests explicitly",
                server_url()
            )
        });
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    /// The URL of this database, on `host:port` (the server, or a proxy in front of it).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    pub fn url(&self) -> String {
        let base = server_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
        format!("{root}/{}", self.name)
    }

    /// The server's address.
    pub fn server_addr() -> SocketAddr {
        "127.0.0.1:5432".parse().unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy that can be cut (every connection closed, new ones refused) and restored.
pub struct CutProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (o, c) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        CutProxy { addr, open, cut }
    }

    /// Close every connection and refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
