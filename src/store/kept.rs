//! The commit path's connections, kept between batches instead of going
//! back to the pool. sqlx pings a pooled connection when it is handed out
//! (`test_before_acquire`) and again when it comes back: two round trips
//! per batch, a fifth of a small batch's (docs/performance.md,
//! "Freshness"). A kept connection that was just used is handed out as it
//! is; if it died meanwhile (a restart, `pg_terminate_backend`), the commit
//! fails like one whose connection drops mid-transaction, and its retry
//! asks the stored positions what happened (`fence::resolve`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// A kept connection idle longer than this goes back to the pool, which
/// tests it before the next use: an idle connection is the one a restart or
/// a firewall's idle timeout may have closed.
const KEEP_IDLE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct KeptConnections {
    /// Most recently kept last; at most one per concurrent commit.
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
}

impl KeptConnections {
    /// A kept connection used within [`KEEP_IDLE`], else one from the pool.
    pub async fn acquire(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let (recent, stale) = {
            let mut idle = self.idle.lock().expect("kept connections lock");
            let now = Instant::now();
            let stale: Vec<_> = idle
                .extract_if(.., |(_, since)| now.duration_since(*since) > KEEP_IDLE)
                .collect();
            (idle.pop(), stale)
        };
        // Back to the pool, outside the lock.
        drop(stale);
        match recent {
            Some((conn, _)) => Ok(conn),
            None => pool.acquire().await,
        }
    }

    /// Keeps `conn`, whose last transaction ended cleanly (committed or
    /// rolled back), for the next batch.
    pub fn keep(&self, conn: PoolConnection<Postgres>) {
        self.idle
            .lock()
            .expect("kept connections lock")
            .push((conn, Instant::now()));
    }

    /// Hands every kept connection back to the pool (before it closes).
    pub fn release(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("kept connections lock"));
        drop(idle);
    }
}
