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

/// Which tablespace and relation a "could not extend file" error (53100,
/// a full disk) is about, from the file path in its message:
/// `base/<db>/<filenode>` (the default tablespace) or
/// `pg_tblspc/<tablespace oid>/<version>/<db>/<filenode>`. `None` when the
/// message names no such path or the lookup fails.
pub async fn full_disk(pool: &PgPool, message: &str) -> Option<String> {
    let (tablespace, filenode) = filenode_of(message)?;
    let query = sqlx::query_as::<_, (String, Option<String>)>(
        "SELECT coalesce((SELECT spcname::text FROM pg_tablespace WHERE oid = $1), 'pg_default'), \
                pg_filenode_relation($1, $2)::regclass::text",
    )
    .bind(tablespace)
    .bind(filenode)
    .fetch_one(pool);
    let (space, relation) = tokio::time::timeout(Duration::from_secs(3), query)
        .await
        .ok()?
        .ok()?;
    Some(format!(
        "tablespace {space} is full (writing {}): free space there or move the table",
        relation
            .as_deref()
            .unwrap_or("a relation of another database")
    ))
}

/// `(tablespace oid, filenode)` of the quoted path in a Postgres file
/// error; the default tablespace is oid 0 for `pg_filenode_relation`.
fn filenode_of(message: &str) -> Option<(sqlx::postgres::types::Oid, sqlx::postgres::types::Oid)> {
    use sqlx::postgres::types::Oid;
    let path = message.split('"').nth(1)?;
    let parts: Vec<&str> = path.split('/').collect();
    // A segment past the first GB is `<filenode>.<n>`.
    let node = |s: &str| s.split('.').next()?.parse::<u32>().ok().map(Oid);
    match parts.as_slice() {
        ["base", _, file] => Some((Oid(0), node(file)?)),
        ["pg_tblspc", space, _, _, file] => Some((Oid(space.parse().ok()?), node(file)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::types::Oid;

    #[test]
    fn file_errors_name_their_tablespace_and_filenode() {
        let m = r#"could not extend file "pg_tblspc/200865/PG_15_202209061/200864/200977": No space left on device"#;
        assert_eq!(filenode_of(m), Some((Oid(200865), Oid(200977))));
        let m = r#"could not extend file "base/16384/16390.2": No space left on device"#;
        assert_eq!(filenode_of(m), Some((Oid(0), Oid(16390))));
        assert_eq!(filenode_of("no space left"), None);
    }
}
