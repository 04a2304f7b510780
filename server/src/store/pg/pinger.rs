//! The Database check's pinger.

use super::*;

/// The Database check's pinger: take a pooled connection and run `SELECT 1`, bounded by the
/// query timeout. Builds its pool lazily, so it works (and fails with EDB01) even when the
/// database is down at start.
#[derive(Clone)]
pub struct PgPinger {
    pub(super) pool: Pool,
    pub(super) timeout: Duration,
}

impl PgPinger {
    /// A pinger for `url` (the `database_url` setting); connects on the first ping.
    pub fn new(url: &str, options: &PgOptions) -> Result<PgPinger, StoreError> {
        let config = pg_config(url, options)?;
        Ok(PgPinger {
            pool: pool(config, options)?,
            timeout: options.query_timeout,
        })
    }
}

impl fmt::Debug for PgPinger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPinger").finish_non_exhaustive()
    }
}

impl Pinger for PgPinger {
    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        Box::pin(async move {
            let work = async {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| PingError::Unavailable(Failure::from(e).0))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| PingError::Query(pg_text(&e)))?;
                Ok(())
            };
            match tokio::time::timeout(self.timeout, work).await {
                Ok(r) => r,
                Err(_) => {
                    // As for the store: the timed-out connection is not reused.
                    self.pool.retain(|_, _| false);
                    Err(PingError::Timeout(self.timeout))
                }
            }
        })
    }
}
