//! One active member per consumer group while source transactions are
//! applied whole: a transaction's changes span partitions, so one process
//! must read them all. The active member holds a session advisory lock;
//! the others stand by, polling it, and take over when its session ends
//! (exit, kill, lost connection).
//!
//! Two members can overlap for a moment (the active one lost its session
//! but still runs until its watchdog notices): the group then splits the
//! partitions, each gate misses the other's changes or ENDs and holds
//! them — a stall, never part of a transaction applied — until the old
//! member stops.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often a standby retries the lock and the active member checks it.
const POLL: Duration = Duration::from_secs(2);

/// The lock held by the active member, on its own connection.
pub struct ActiveMember {
    conn: PgConnection,
}

impl ActiveMember {
    /// Waits until this process is the group's active member; `None` when
    /// cancelled first.
    pub async fn acquire(
        pool: &PgPool,
        group: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ActiveMember>, sqlx::Error> {
        // Detached: the lock lives exactly as long as this connection.
        let mut conn = pool.acquire().await?.detach();
        let mut logged = false;
        loop {
            let got: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext('kafka-pg-sink transactions ' || $1))",
            )
            .bind(group)
            .fetch_one(&mut conn)
            .await?;
            if got {
                tracing::info!(group, "active member for whole source transactions");
                return Ok(Some(ActiveMember { conn }));
            }
            if !logged {
                tracing::info!(
                    group,
                    "standing by: another member applies this group's source transactions"
                );
                logged = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Checks the lock's session until `cancel`; when it is lost, cancels
    /// the run (so a standby can take over) and returns true.
    pub async fn watch(mut self, cancel: CancellationToken) -> bool {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = self.conn.close().await;
                    return false;
                }
                _ = tokio::time::sleep(POLL) => {}
            }
            if let Err(e) = self.conn.ping().await {
                tracing::error!(
                    error = %e,
                    "lost the session holding the active-member lock: stopping so a standby \
                     takes over"
                );
                cancel.cancel();
                return true;
            }
        }
    }
}
