//! Statements for document tables (routes without `columns`): `key`,
//! `event_hash`, `payload jsonb`, `version` and the source position. Upserts
//! travel by COPY into a staging table (`stage.rs`); deletes bind arrays
//! unnested server side.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgConnection;

use super::dialect::Dialect;
use super::stage::{BoundUpsert, Stage, Stages};
use super::TableCounts;
use crate::config::route::Route;
use crate::event::encode;
use crate::event::{RowDelete, RowUpsert};

/// Upserts document rows; a re-delivered event (same hash) is a no-op.
///
/// When no-ops dominate (a replay, a producer retry storm), the keys, hashes
/// and versions are checked against the table first and only rows the
/// upsert would change are staged and upserted: a duplicate (same hash
/// stored) or, on a versioned route, a stale event (a newer version stored)
/// then costs one index probe and ~50 bytes on the wire, instead of its
/// payload's COPY, a jsonb parse and a speculative insertion. That costs one
/// more round trip for batches with new rows, so it is used when the route's
/// last batch was at least 20% no-ops (`duplicate_heavy`, updated here).
/// Either way the counts are the same: rows filtered out, or rows the guard
/// turned into no-ops.
pub(super) async fn upsert(
    conn: &mut PgConnection,
    stages: &mut Stages,
    route: &Route,
    rows: &[RowUpsert],
    copy: Option<&[u8]>,
    duplicate_heavy: &AtomicBool,
    dialect: Dialect,
) -> Result<TableCounts, sqlx::Error> {
    let prefilter = prefilters(route, duplicate_heavy.load(Ordering::Relaxed));
    let (kept, stale) = if prefilter {
        changing(conn, route, rows, dialect).await?
    } else {
        (rows.iter().collect(), 0)
    };
    let mut counts = TableCounts::default();
    if !kept.is_empty() {
        let encoded;
        let data = match copy {
            Some(data) if kept.len() == rows.len() => data,
            _ => {
                encoded = encode::document_rows(&kept);
                &encoded
            }
        };
        counts = upsert_kept(conn, stages, route, &kept, data, dialect).await?;
    }
    counts.duplicate_in_table += (rows.len() - kept.len()) as u64 - stale;
    counts.stale_in_table += stale;
    tracing::debug!(
        route = %route.table,
        prefilter,
        rows = rows.len(),
        kept = kept.len(),
        duplicates = counts.duplicate_in_table,
        stale = counts.stale_in_table,
        "document upsert"
    );
    note_no_ops(duplicate_heavy, &counts, rows.len());
    Ok(counts)
}

/// Whether the upsert filters stored duplicates first: after a batch of
/// mostly no-ops. Change events are filtered by delete/truncate markers;
/// the pre-filter would count those as duplicates, so it is not used there.
fn prefilters(route: &Route, duplicate_heavy: bool) -> bool {
    duplicate_heavy && !route.is_cdc()
}

/// Records whether an upsert of `rows` rows was mostly no-ops: the next
/// one then runs the pre-filter.
pub(super) fn note_no_ops(duplicate_heavy: &AtomicBool, counts: &TableCounts, rows: usize) {
    let no_ops = counts.duplicate_in_table + counts.stale_in_table;
    duplicate_heavy.store(no_ops * 5 >= rows as u64, Ordering::Relaxed);
}

/// [`upsert`] as one statement over bound rows, reading the change events'
/// target as `$1` and the rows as `$2` (`single.rs`). `None` when the
/// pre-filter runs first or the rows are too many to bind.
pub(super) fn bound_upsert(
    route: &Route,
    rows: &[RowUpsert],
    copy: Option<&[u8]>,
    duplicate_heavy: bool,
) -> Option<BoundUpsert> {
    if prefilters(route, duplicate_heavy) {
        return None;
    }
    let encoded;
    let data = match copy {
        Some(data) => data,
        None => {
            encoded = encode::document_rows(&rows.iter().collect::<Vec<_>>());
            &encoded
        }
    };
    let stage = stage(route);
    let loaded = stage.bound(data)?;
    Some(BoundUpsert {
        sql: upsert_sql(route, true, &loaded.source_sql(2)),
        stage: stage.create_statement(),
        target: route.is_cdc().then(|| route.table.quoted()),
        records: loaded.into_records(),
    })
}

/// Stages the rows `upsert` kept (`data`, their COPY text) and upserts
/// them, counting the outcomes.
async fn upsert_kept(
    conn: &mut PgConnection,
    stages: &mut Stages,
    route: &Route,
    kept: &[&RowUpsert],
    data: &[u8],
    dialect: Dialect,
) -> Result<TableCounts, sqlx::Error> {
    let loaded = stage(route)
        .load(conn, stages, data, !dialect.is_citus())
        .await?;
    // After the change events' target (`$1`), if any.
    let from = loaded.source_sql(usize::from(route.is_cdc()) + 1);
    // On Citus the same-content count cannot read the table inside the
    // upsert (it would see the rows the upsert wrote): it runs first.
    let separate = dialect.is_citus() && route.version.is_some();
    let same = if separate {
        let sql = same_count_sql(route);
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        if route.is_cdc() {
            q = q.bind(route.table.quoted());
        }
        let keys: Vec<&str> = kept.iter().map(|r| r.key.0.as_str()).collect();
        Some(q.bind(keys).fetch_one(&mut *conn).await?)
    } else {
        None
    };
    let sql = upsert_sql(route, !separate, &from);
    let mut query = sqlx::query(&sql);
    if route.is_cdc() {
        query = query.bind(route.table.quoted());
    }
    let row = loaded.bind(query).fetch_one(&mut *conn).await?;
    Ok(match same {
        Some(same) => TableCounts::of_upsert_with(kept.len(), &row, Some(same)),
        None => TableCounts::of_upsert(kept.len(), &row),
    })
}

/// The rows the upsert would change, in order, and the number of stale ones
/// left out. Each row is classified by one probe of the stored row: `d` same
/// hash (a duplicate), `s` a newer version stored (versioned routes: the
/// upsert's guard refuses it, and counts it stale), `k` or no stored row:
/// kept. `OFFSET 0` keeps the subquery from being inlined, which would run
/// the probe again in the WHERE clause.
async fn changing<'r>(
    conn: &mut PgConnection,
    route: &Route,
    rows: &'r [RowUpsert],
    dialect: Dialect,
) -> Result<(Vec<&'r RowUpsert>, u64), sqlx::Error> {
    let found = prefilter(conn, route, rows, dialect).await?;
    let mut kept = Vec::with_capacity(found.len());
    let mut stale = 0;
    for (i, class) in found {
        match class.as_deref() {
            Some("s") => stale += 1,
            _ => kept.push(&rows[i as usize - 1]),
        }
    }
    Ok((kept, stale))
}

/// Runs the pre-filter of [`changing`] over `rows`: the 1-based index and
/// class (`s` stale, `k` or none kept) of each row not stored with the same
/// hash. Public so the bench can time this very statement, bound as the
/// sink binds it, alone as the replay's ceiling.
pub async fn prefilter(
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
    dialect: Dialect,
) -> Result<Vec<(i64, Option<String>)>, sqlx::Error> {
    let keys: Vec<&str> = rows.iter().map(|r| r.key.0.as_str()).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash.0[..]).collect();
    let sql = match dialect {
        Dialect::Postgres => prefilter_sql(route),
        Dialect::Citus => prefilter_join_sql(route),
    };
    let q = sqlx::query(&sql).bind(keys).bind(hashes);
    let rows =
        super::versions::bind_all(q, route.version_is_wide(), rows.iter().map(|r| r.version))
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|r| Ok((sqlx::Row::try_get(r, 0)?, sqlx::Row::try_get(r, 1)?)))
        .collect()
}

/// The statement of [`prefilter`]: keys, hashes and versions in, the index
/// and class of each row not stored with the same hash out.
fn prefilter_sql(route: &Route) -> String {
    // The guard's version test, negated: `t.version IS NULL OR
    // EXCLUDED.version >= t.version` is not true.
    let stale = if route.version.is_some() {
        "WHEN cur.version IS NOT NULL AND (u.version IS NULL OR u.version < cur.version) THEN 's' "
    } else {
        ""
    };
    format!(
        "SELECT i, class FROM ( \
           SELECT u.i, (SELECT CASE WHEN cur.event_hash = u.event_hash THEN 'd' {stale}ELSE 'k' END \
                        FROM {} cur WHERE cur.key = u.key) AS class \
           FROM UNNEST($1::text[], $2::bytea[], $3::{}[]) WITH ORDINALITY AS u(key, event_hash, version, i) \
           OFFSET 0) c \
         WHERE class IS DISTINCT FROM 'd'",
        route.table.quoted(),
        route.version_sql_type()
    )
}

/// [`prefilter_sql`] for Citus, which cannot run correlated subqueries
/// over a set-returning function: a left join against the stored rows of
/// the batch's keys (`= ANY` prunes to their shards). Absent rows come out
/// as `k` instead of none: both are kept.
fn prefilter_join_sql(route: &Route) -> String {
    let stale = if route.version.is_some() {
        "WHEN cur.version IS NOT NULL AND (u.version IS NULL OR u.version < cur.version) THEN 's' "
    } else {
        ""
    };
    format!(
        "SELECT u.i, CASE WHEN cur.event_hash = u.event_hash THEN 'd' {stale}ELSE 'k' END \
         FROM UNNEST($1::text[], $2::bytea[], $3::{}[]) WITH ORDINALITY AS u(key, event_hash, version, i) \
         LEFT JOIN (SELECT key, event_hash, version FROM {} WHERE key = ANY($1::text[])) cur \
           ON cur.key = u.key \
         WHERE cur.event_hash IS DISTINCT FROM u.event_hash ORDER BY u.i",
        route.version_sql_type(),
        route.table.quoted()
    )
}

/// [`upsert_sql`]'s same-content count as a statement of its own, run
/// before the upsert on Citus (`$1` the target for change events' markers,
/// then the batch's keys).
fn same_count_sql(route: &Route) -> String {
    let (markers, keys, col) = if route.is_cdc() {
        let filter = super::cdc::marker_filter("$1", "u.key", "u.version");
        (format!(" WHERE {filter}"), "$2", "version")
    } else {
        (String::new(), "$1", "event_hash")
    };
    format!(
        "WITH input AS MATERIALIZED (SELECT * FROM {}{markers}) \
         SELECT count(*) FROM input i \
         JOIN (SELECT key, {col} FROM {} WHERE key = ANY({keys}::text[])) cur ON cur.key = i.key \
         WHERE cur.{col} = i.{col}",
        stage(route).name,
        route.table.quoted()
    )
}

/// The stored `col` of the row with `alias.key`, as a scalar subquery:
/// Postgres runs it as one index probe per row. A join (NOT EXISTS, JOIN)
/// lets the planner pick a hash join that reads the whole table for every
/// batch (measured: 93 ms per 10,000-row replay batch on a 225k-row table,
/// growing with the table; 25 ms as probes).
fn stored_of(route: &Route, col: &str, alias: &str) -> String {
    format!(
        "(SELECT cur.{col} FROM {} cur WHERE cur.key = {alias}.key)",
        route.table.quoted()
    )
}

/// The staging table of document rows. The payload stays text here: it is
/// parsed into jsonb only for the rows the upsert keeps (the duplicate
/// pre-filter skips that parse for re-deliveries).
pub(super) fn stage(route: &Route) -> Stage {
    Stage::new(format!(
        "key text COLLATE \"C\", event_hash bytea, payload text, version {}, \
         kafka_topic text, kafka_partition integer, kafka_offset bigint",
        route.version_sql_type()
    ))
}

/// The upsert of the staged rows (`from`: the stage's FROM item,
/// `Loaded::source_sql`).
fn upsert_sql(route: &Route, with_same: bool, from: &str) -> String {
    let t = route.table.quoted();
    let guard = if route.is_cdc() {
        // A change is identified by its source position: only a newer one
        // applies, even with the same content (it moves the position on).
        "t.version IS NULL OR EXCLUDED.version > t.version"
    } else if route.version.is_some() {
        "t.event_hash IS DISTINCT FROM EXCLUDED.event_hash \
         AND (t.version IS NULL OR EXCLUDED.version >= t.version)"
    } else {
        "t.event_hash IS DISTINCT FROM EXCLUDED.event_hash"
    };
    let (input, same_hash) = counted_input(route, with_same);
    // The count joins the written keys.
    let returned = if same_hash.is_some() { ", key" } else { "" };
    let same_hash = same_hash.unwrap_or_else(|| "NULL::bigint".into());
    format!(
        "WITH u AS (SELECT * FROM {from} s), \
         input AS ({input}), \
         applied AS ( \
           INSERT INTO {t} AS t (key, event_hash, payload, version, kafka_topic, kafka_partition, kafka_offset) \
           SELECT key, event_hash, payload::jsonb, version, kafka_topic, kafka_partition, kafka_offset FROM input \
           ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, payload = EXCLUDED.payload, \
             version = EXCLUDED.version, kafka_topic = EXCLUDED.kafka_topic, \
             kafka_partition = EXCLUDED.kafka_partition, kafka_offset = EXCLUDED.kafka_offset \
           WHERE {guard} \
           RETURNING (xmax = 0) AS inserted{returned}) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {same_hash} FROM applied"
    )
}

/// The upsert's input rows (change events: past their markers) and the
/// count of its no-ops that are re-sends or duplicates (`None`: not
/// counted).
fn counted_input(route: &Route, with_same: bool) -> (String, Option<String>) {
    let stored = |col: &str, alias: &str| stored_of(route, col, alias);
    let markers = if route.is_cdc() {
        format!(
            " WHERE {}",
            super::cdc::marker_filter("$1", "u.key", "u.version")
        )
    } else {
        String::new()
    };
    // Only rows the upsert did not write can be re-sends or duplicates: the
    // written ones are matched to `applied` by a hash join, and the CASE
    // keeps the lookup of the stored row above that join (a filter on the
    // input alone runs for every row, below it).
    let unwritten = |alias: &str, test: String| {
        format!(
            "(SELECT count(*) FROM {alias} LEFT JOIN applied a ON a.key = {alias}.key \
              WHERE CASE WHEN a.key IS NULL THEN {test} END)"
        )
    };
    if !with_same {
        (format!("SELECT * FROM u{markers}"), None)
    } else if route.is_cdc() {
        // A no-op change is a re-send (same position stored) or stale.
        (
            format!("SELECT * FROM u{markers}"),
            Some(unwritten(
                "input",
                format!("{} = input.version", stored("version", "input")),
            )),
        )
    } else if route.version.is_some() {
        // A versioned no-op is a duplicate (same hash stored) or stale (older
        // version); the pre-statement snapshot (`cur`) tells which.
        (
            "SELECT * FROM u".to_string(),
            Some(unwritten(
                "u",
                format!("{} = u.event_hash", stored("event_hash", "u")),
            )),
        )
    } else {
        ("SELECT * FROM u".to_string(), None)
    }
}

/// Deletes document rows by key. Change events delete only rows not newer
/// than the delete and leave a marker (`store::cdc`).
pub(super) async fn delete(
    conn: &mut PgConnection,
    route: &Route,
    keys: &[RowDelete],
) -> Result<TableCounts, sqlx::Error> {
    let t = route.table.quoted();
    if route.is_cdc() {
        let rows = "SELECT * FROM UNNEST($1::text[], $2::numeric[]) AS d(key, position)";
        let sql = super::cdc::delete_sql(&t, rows, "t.key = d.key", "t.version", "d.key");
        return super::cdc::delete(conn, &sql, &t, keys).await;
    }
    let r = sqlx::query(&format!("DELETE FROM {t} WHERE key = ANY($1::text[])"))
        .bind(keys.iter().map(|k| k.key.0.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok(TableCounts::of_deletes(keys.len(), r.rows_affected()))
}
