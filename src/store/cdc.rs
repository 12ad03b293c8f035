//! Statements that keep change events (`envelope = "debezium"`) ordered by
//! their source position, whatever order Kafka delivers them in:
//!
//! * an upsert applies only over an older row (the route's version guard) and
//!   only if no delete or truncate of that key at the same or a later
//!   position is remembered (`marker_filter`);
//! * a delete removes the row only if it is not newer than the delete, and
//!   leaves a marker `(table, key, position)` in `sink_delete_markers`;
//! * a truncate removes every row older than its position and leaves a
//!   table-wide marker in `sink_truncate_markers`.
//!
//! So a re-sent insert after its delete, or a replay from earlier offsets,
//! never moves a row backwards. Delete markers are purged after
//! `sink.delete_marker_retention` (`purge_delete_markers`); an older change
//! re-sent after that could bring a row back until the log's own later
//! delete is read again.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};

use super::TableCounts;
use crate::event::{RowDelete, RowTruncate};

/// SQL condition: the row (`key`, `position` expressions) is not refused by a
/// delete or truncate marker of `target` (a bound text parameter).
pub(super) fn marker_filter(target: &str, key: &str, position: &str) -> String {
    // Scalar subqueries ((target, key) is unique): one index probe per row
    // rather than a possible hash join over every marker.
    format!(
        "coalesce((SELECT m.position FROM sink_delete_markers m \
           WHERE m.target = {target} AND m.key = {key}) < {position}, TRUE) \
         AND {position} > coalesce((SELECT tm.position FROM sink_truncate_markers tm \
           WHERE tm.target = {target}), -9223372036854775808)"
    )
}

/// A delete of change events. `rows` selects `d` with the key columns,
/// `key_text` (the marker key) and `position`; `on` joins `t` (the table) to
/// `d`; `version` is the table's position column. Counts: deleted, refused
/// (the row is newer than the delete).
pub(super) fn delete_sql(
    table: &str,
    rows: &str,
    on: &str,
    version: &str,
    key_text: &str,
) -> String {
    format!(
        "WITH d AS ({rows}), \
         newer AS (SELECT {key_text} AS k FROM d JOIN {table} t ON {on} AND {version} > d.position), \
         gone AS (DELETE FROM {table} t USING d WHERE {on} \
                    AND ({version} IS NULL OR {version} <= d.position) RETURNING 1), \
         marked AS (INSERT INTO sink_delete_markers AS m (target, key, position) \
                    SELECT $3, {key_text}, d.position FROM d \
                    WHERE {key_text} NOT IN (SELECT k FROM newer) \
                    ON CONFLICT (target, key) DO UPDATE \
                      SET position = GREATEST(m.position, EXCLUDED.position), deleted_at = now() \
                    RETURNING 1) \
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM newer), (SELECT count(*) FROM marked)"
    )
}

/// Runs a statement of `delete_sql` over `keys` (bound as `$1` key texts,
/// `$2` positions, `$3` the table).
pub(super) async fn delete(
    conn: &mut PgConnection,
    sql: &str,
    target: &str,
    keys: &[RowDelete],
) -> Result<TableCounts, sqlx::Error> {
    let q = sqlx::query(sql).bind(keys.iter().map(|d| d.key.0.as_str()).collect::<Vec<_>>());
    // A delete without a position removes the row whatever its position.
    let positions = keys
        .iter()
        .map(|d| Some(d.version.unwrap_or(crate::types::Version::MAX)));
    let row = super::versions::bind_all(q, true, positions)
        .bind(target)
        .fetch_one(&mut *conn)
        .await?;
    let deleted = row.get::<i64, _>(0) as u64;
    let refused = row.get::<i64, _>(1) as u64;
    Ok(TableCounts {
        deleted,
        stale_in_table: refused,
        tombstone_noop: keys.len() as u64 - deleted - refused,
        ..Default::default()
    })
}

/// Applies a truncate: rows older than its position go (rows without a
/// position too: they predate every change event), and later upserts with
/// an older position are refused. Returns the rows removed.
pub(super) async fn truncate(
    conn: &mut PgConnection,
    table: &str,
    version: &str,
    t: &RowTruncate,
) -> Result<u64, sqlx::Error> {
    let delete =
        format!("DELETE FROM {table} t WHERE {version} IS NULL OR {version} < $1::numeric");
    let removed = super::versions::bind_one(sqlx::query(&delete), t.position)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let mark = sqlx::query(
        "INSERT INTO sink_truncate_markers AS m (target, position) VALUES ($1, $2::numeric) \
         ON CONFLICT (target) DO UPDATE SET position = GREATEST(m.position, EXCLUDED.position), \
           truncated_at = now()",
    )
    .bind(table);
    super::versions::bind_one(mark, t.position)
        .execute(&mut *conn)
        .await?;
    Ok(removed)
}

/// Forgets delete markers older than `retention`; returns how many.
pub async fn purge_delete_markers(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM sink_delete_markers WHERE deleted_at < now() - $1::interval")
        .bind(format!("{} seconds", retention.as_secs()))
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
