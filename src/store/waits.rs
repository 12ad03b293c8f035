//! What a slow commit is waiting for, as Postgres reports it: the sink's
//! sessions waiting on a lock, and the sessions holding it (a colleague's
//! `LOCK TABLE`, a long migration), so the log names the pid to look at.

use std::time::Duration;

use sqlx::PgPool;

/// The application name every sink connection carries (`store::connect`).
pub const APPLICATION: &str = "kafka-pg-sink";

/// One line per sink session of this database waiting on a lock: its pid,
/// for how long, and who blocks it. Empty when none waits on a lock (a slow
/// disk, a full one, the network). Bounded: a hung database answers nothing.
pub async fn lock_waits(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let query = sqlx::query_scalar(
        "SELECT format('pid %s has waited %s s for %s (%s), blocked by %s', w.pid, \
                round(extract(epoch FROM clock_timestamp() - w.state_change)::numeric, 1), \
                w.wait_event, w.wait_event_type, \
                coalesce((SELECT string_agg(format('pid %s (user %s, application %s, %s: %s)', \
                                  b.pid, b.usename, coalesce(nullif(b.application_name, ''), '-'), \
                                  b.state, left(b.query, 120)), '; ') \
                          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid))), \
                         'no session (a lock being granted)')) \
         FROM pg_stat_activity w \
         WHERE w.datname = current_database() AND w.application_name = $1 \
           AND w.pid <> pg_backend_pid() AND w.wait_event_type = 'Lock' \
         ORDER BY w.state_change",
    )
    .bind(APPLICATION)
    .fetch_all(pool);
    match tokio::time::timeout(Duration::from_secs(3), query).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// Why the pool hands out no connection, asked by opening one directly:
/// the pool retries connect errors (too many connections, a refused login,
/// a database gone read-only at startup) and reports only that it timed
/// out. `None` when a connection opens now.
pub async fn why_no_connection(pool: &PgPool) -> Option<String> {
    use sqlx::Connection;
    let opts = pool.connect_options();
    match tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect_with(&opts),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("opening a connection timed out".into()),
    }
}
