//! The exactly-once transaction, top to bottom in the order of
//! docs/design.md §1:
//!
//! ```text
//! BEGIN
//!   fence: compare-and-set next_offset of every partition in the batch
//!          (0 rows for any partition => ROLLBACK, report Fenced)
//!   per route: delete re-inserted tombstoned keys,
//!              upsert previous states of keys that changed in the batch,
//!              upsert final states (no-op when the content is unchanged),
//!              delete tombstoned keys
//!   (document tables here; typed tables in `typed.rs`)
//!   dead letters
//! COMMIT
//! ```
//!
//! A statement that fails because of its data (SQLSTATE class 22/23) is rolled
//! back to a savepoint and bisected until the offending rows are isolated;
//! those become dead letters in the same transaction.

use std::sync::atomic::Ordering;

use sqlx::{PgConnection, PgPool, Row};

use super::{is_data_error, typed, StoreError};
use crate::batch::{DeadLetter, PoisonReason, PreparedBatch, RowDelete, RowUpsert};
use crate::config::{OnError, Route};
use crate::types::{Offset, TableName, TopicPartition};

/// The position a consumer believes it owns for one partition in the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub tp: TopicPartition,
    /// `None` when no row exists yet (first batch ever for the partition).
    pub expected: Option<Offset>,
    /// The batch end: last offset in the batch + 1.
    pub new_next: Offset,
}

/// Outcomes decided by the database.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub duplicate_in_table: u64,
    pub stale_in_table: u64,
    pub tombstone_noop: u64,
    /// Rows the database rejected, moved to dead letters.
    pub rejected: Vec<DeadLetter>,
}

impl TableCounts {
    fn absorb(&mut self, o: TableCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.duplicate_in_table += o.duplicate_in_table;
        self.stale_in_table += o.stale_in_table;
        self.tombstone_noop += o.tombstone_noop;
        self.rejected.extend(o.rejected);
    }
}

#[derive(Debug)]
pub enum CommitOutcome {
    Committed(TableCounts),
    /// Another owner (or a replay) moved these partitions: nothing was written.
    Fenced(Vec<TopicPartition>),
    /// `on_error = "stop"` and the batch holds a message the database rejects.
    Poison(DeadLetter),
}

/// Commits one prepared batch atomically with its offsets.
pub async fn commit_batch(
    pool: &PgPool,
    group: &str,
    routes: &[Route],
    batch: &PreparedBatch,
    expected: &[Expected],
    on_error: OnError,
) -> Result<CommitOutcome, StoreError> {
    let mut tx = pool.begin().await?;

    let fenced = fence(&mut tx, group, expected).await?;
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Ok(CommitOutcome::Fenced(fenced));
    }

    let mut counts = TableCounts::default();
    let mut uncounted_rejects: Vec<DeadLetter> = Vec::new();
    for (route, writes) in routes.iter().zip(&batch.writes) {
        // In order: tombstones of keys re-inserted later in the batch; round 1,
        // the previous state of keys that changed within the batch; round 2,
        // every final state; final tombstones. Messages behind the first two
        // steps are counted as superseded, so their row counts stay out of the
        // metrics. A row the database rejects in any step is a dead letter
        // (or stops the sink).
        let steps = [
            (Chunk::Deletes(&writes.pre_deletes), false),
            (Chunk::Upserts(&writes.previous), false),
            (Chunk::Upserts(&writes.upserts), true),
            (Chunk::Deletes(&writes.deletes), true),
        ];
        for (chunk, counted) in steps {
            if chunk.is_empty() {
                continue;
            }
            let mut step = TableCounts::default();
            let mut rejected = Vec::new();
            apply_isolating(&mut tx, route, chunk, &mut step, &mut rejected).await?;
            if on_error == OnError::Stop {
                if let Some(first) = rejected.into_iter().next() {
                    tx.rollback().await?;
                    return Ok(CommitOutcome::Poison(first));
                }
            } else if counted {
                counts.absorb(step);
                counts.rejected.extend(rejected);
            } else {
                uncounted_rejects.extend(rejected);
            }
        }
    }

    let dead: Vec<&DeadLetter> = batch
        .dead_letters
        .iter()
        .chain(&counts.rejected)
        .chain(&uncounted_rejects)
        .collect();
    if !dead.is_empty() {
        insert_dead_letters(&mut tx, group, &dead).await?;
    }

    tx.commit().await?;
    Ok(CommitOutcome::Committed(counts))
}

/// The fence: compare-and-set on every partition. Returns the partitions whose
/// stored position is not what this consumer expected (empty = we own them).
async fn fence(
    conn: &mut PgConnection,
    group: &str,
    expected: &[Expected],
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    // Sorted so concurrent committers lock offset rows in the same order.
    let mut exp: Vec<&Expected> = expected.iter().collect();
    exp.sort_by(|a, b| a.tp.cmp(&b.tp));
    let (existing, new): (Vec<&Expected>, Vec<&Expected>) =
        exp.into_iter().partition(|e| e.expected.is_some());

    let mut won: Vec<TopicPartition> = Vec::with_capacity(expected.len());
    if !existing.is_empty() {
        let rows = sqlx::query(
            "UPDATE sink_offsets o SET next_offset = u.new_next, updated_at = now() \
             FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[]) \
                  AS u(topic, partition, expected, new_next) \
             WHERE o.consumer_group = $1 AND o.topic = u.topic \
               AND o.partition = u.partition AND o.next_offset = u.expected \
             RETURNING o.topic, o.partition",
        )
        .bind(group)
        .bind(
            existing
                .iter()
                .map(|e| e.tp.topic.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(existing.iter().map(|e| e.tp.partition).collect::<Vec<_>>())
        .bind(
            existing
                .iter()
                .map(|e| e.expected.unwrap().0)
                .collect::<Vec<_>>(),
        )
        .bind(existing.iter().map(|e| e.new_next.0).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        won.extend(
            rows.iter()
                .map(|r| TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1))),
        );
    }
    if !new.is_empty() {
        let rows = sqlx::query(
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) \
             SELECT $1, u.topic, u.partition, u.new_next \
             FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS u(topic, partition, new_next) \
             ON CONFLICT (consumer_group, topic, partition) DO NOTHING \
             RETURNING topic, partition",
        )
        .bind(group)
        .bind(new.iter().map(|e| e.tp.topic.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|e| e.tp.partition).collect::<Vec<_>>())
        .bind(new.iter().map(|e| e.new_next.0).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        won.extend(
            rows.iter()
                .map(|r| TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1))),
        );
    }
    Ok(expected
        .iter()
        .filter(|e| !won.contains(&e.tp))
        .map(|e| e.tp.clone())
        .collect())
}

/// The rows of one statement: upserts or deletes of one route.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Upserts(&'a [RowUpsert]),
    Deletes(&'a [RowDelete]),
}

impl<'a> Chunk<'a> {
    fn len(&self) -> usize {
        match self {
            Chunk::Upserts(r) => r.len(),
            Chunk::Deletes(d) => d.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn halves(self) -> (Chunk<'a>, Chunk<'a>) {
        match self {
            Chunk::Upserts(r) => {
                let (a, b) = r.split_at(r.len() / 2);
                (Chunk::Upserts(a), Chunk::Upserts(b))
            }
            Chunk::Deletes(d) => {
                let (a, b) = d.split_at(d.len() / 2);
                (Chunk::Deletes(a), Chunk::Deletes(b))
            }
        }
    }
}

/// Applies `chunk`; on a data error bisects under savepoints so only the rows
/// the database rejects become dead letters. Order is kept: the first half is
/// applied before the second.
async fn apply_isolating(
    conn: &mut PgConnection,
    route: &Route,
    chunk: Chunk<'_>,
    counts: &mut TableCounts,
    rejected: &mut Vec<DeadLetter>,
) -> Result<(), StoreError> {
    // Explicit stack instead of recursion (async recursion needs boxing).
    let mut pending = vec![chunk];
    while let Some(chunk) = pending.pop() {
        sqlx::query("SAVEPOINT kpgs_write")
            .execute(&mut *conn)
            .await?;
        match apply(conn, route, chunk).await {
            Ok(c) => {
                sqlx::query("RELEASE SAVEPOINT kpgs_write")
                    .execute(&mut *conn)
                    .await?;
                counts.absorb(c);
            }
            Err(e) if is_data_error(&e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT kpgs_write")
                    .execute(&mut *conn)
                    .await?;
                if chunk.len() == 1 {
                    rejected.push(dead_letter_for(conn, route, chunk, &e).await?);
                } else {
                    let (a, b) = chunk.halves();
                    pending.push(b);
                    pending.push(a);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One statement for the whole chunk, by table shape.
async fn apply(
    conn: &mut PgConnection,
    route: &Route,
    chunk: Chunk<'_>,
) -> Result<TableCounts, sqlx::Error> {
    match (chunk, &route.columns) {
        (Chunk::Upserts(rows), None) => upsert_documents(conn, route, rows).await,
        (Chunk::Upserts(rows), Some(map)) => typed::upsert(conn, &route.table, map, rows).await,
        (Chunk::Deletes(keys), columns) => {
            let n = match columns {
                None => delete_documents(conn, &route.table, keys).await?,
                Some(map) => typed::delete(conn, &route.table, map, keys).await?,
            };
            Ok(TableCounts {
                deleted: n,
                tombstone_noop: keys.len() as u64 - n,
                ..Default::default()
            })
        }
    }
}

/// The dead letter for the single row of `chunk` that the database rejected.
async fn dead_letter_for(
    conn: &mut PgConnection,
    route: &Route,
    chunk: Chunk<'_>,
    e: &sqlx::Error,
) -> Result<DeadLetter, sqlx::Error> {
    Ok(match chunk {
        Chunk::Upserts([r]) => DeadLetter {
            tp: TopicPartition::new(r.topic.clone(), r.partition),
            offset: r.offset,
            key: Some(r.key.0.clone().into_bytes()),
            payload: Some(r.payload.clone().into_bytes()),
            reason: PoisonReason::Database,
            error: match &route.columns {
                Some(map) => typed::explain_rejection(conn, map, r, db_error_text(e)).await?,
                None => db_error_text(e),
            },
        },
        Chunk::Deletes([d]) => DeadLetter {
            tp: d.tp.clone(),
            offset: d.offset,
            key: Some(d.key.0.clone().into_bytes()),
            payload: None,
            reason: PoisonReason::Database,
            error: format!("tombstone key rejected: {}", db_error_text(e)),
        },
        _ => unreachable!("bisection stops at one row"),
    })
}

/// Upserts document rows: arrays bound once, unnested server side.
async fn upsert_documents(
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
) -> Result<TableCounts, sqlx::Error> {
    let t = route.table.quoted();
    let guard = if route.version.is_some() {
        "t.event_hash IS DISTINCT FROM EXCLUDED.event_hash \
         AND (t.version IS NULL OR EXCLUDED.version >= t.version)"
    } else {
        "t.event_hash IS DISTINCT FROM EXCLUDED.event_hash"
    };
    // When re-deliveries dominate (a replay, a producer retry storm), rows
    // already stored with the same hash are filtered out before the insert:
    // they then cost one index probe instead of a jsonb parse plus a
    // speculative insertion (measured: 2.1x faster for duplicates, 13% slower
    // for new rows, break-even near 20% duplicates). The last batch decides.
    // Either way the duplicate count is the same: rows filtered out, or rows
    // the guard turned into no-ops with the stored hash.
    let filter = route.duplicate_heavy.load(Ordering::Relaxed);
    let (input, same_hash) = if filter {
        (
            format!("SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM {t} cur WHERE cur.key = u.key AND cur.event_hash = u.event_hash)"),
            "(SELECT count(*) FROM u) - (SELECT count(*) FROM input)".to_string(),
        )
    } else if route.version.is_some() {
        // A versioned no-op is a duplicate (same hash stored) or stale (older
        // version); the pre-statement snapshot (`cur`) tells which.
        (
            "SELECT * FROM u".to_string(),
            format!("(SELECT count(*) FROM u JOIN {t} cur ON cur.key = u.key AND cur.event_hash = u.event_hash)"),
        )
    } else {
        ("SELECT * FROM u".to_string(), "NULL::bigint".to_string())
    };
    let sql = format!(
        "WITH u AS ( \
           SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::int8[], $5::text[], $6::int4[], $7::int8[]) \
             AS u(key, event_hash, payload, version, kafka_topic, kafka_partition, kafka_offset)), \
         input AS ({input}), \
         applied AS ( \
           INSERT INTO {t} AS t (key, event_hash, payload, version, kafka_topic, kafka_partition, kafka_offset) \
           SELECT key, event_hash, payload::jsonb, version, kafka_topic, kafka_partition, kafka_offset FROM input \
           ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, payload = EXCLUDED.payload, \
             version = EXCLUDED.version, kafka_topic = EXCLUDED.kafka_topic, \
             kafka_partition = EXCLUDED.kafka_partition, kafka_offset = EXCLUDED.kafka_offset \
           WHERE {guard} \
           RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {same_hash} FROM applied"
    );
    let row = sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.key.0.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.hash.0.to_vec()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.offset.0).collect::<Vec<_>>())
        .fetch_one(&mut *conn)
        .await?;
    let counts = upsert_counts(rows.len(), &row);
    route.duplicate_heavy.store(
        counts.duplicate_in_table * 5 >= rows.len() as u64,
        Ordering::Relaxed,
    );
    Ok(counts)
}

/// Reads `(inserted, updated, same-content-or-NULL)` of an upsert statement.
/// Rows neither inserted nor updated are duplicates, or, on versioned routes
/// when their content differs from the stored row, stale.
pub(super) fn upsert_counts(rows: usize, row: &sqlx::postgres::PgRow) -> TableCounts {
    let inserted = row.get::<i64, _>(0) as u64;
    let updated = row.get::<i64, _>(1) as u64;
    let noop = rows as u64 - inserted - updated;
    let duplicate = match row.get::<Option<i64>, _>(2) {
        Some(same) => (same as u64).min(noop),
        None => noop,
    };
    TableCounts {
        inserted,
        updated,
        duplicate_in_table: duplicate,
        stale_in_table: noop - duplicate,
        ..Default::default()
    }
}

async fn delete_documents(
    conn: &mut PgConnection,
    table: &TableName,
    keys: &[RowDelete],
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(&format!(
        "DELETE FROM {} WHERE key = ANY($1::text[])",
        table.quoted()
    ))
    .bind(keys.iter().map(|k| k.key.0.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

async fn insert_dead_letters(
    conn: &mut PgConnection,
    group: &str,
    dead: &[&DeadLetter],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sink_dead_letters \
           (consumer_group, topic, partition, kafka_offset, message_key, payload, reason, error) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::bytea[], $6::bytea[], $7::text[], $8::text[]) \
         ON CONFLICT (consumer_group, topic, partition, kafka_offset) DO NOTHING",
    )
    .bind(group)
    .bind(dead.iter().map(|d| d.tp.topic.as_str()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.tp.partition).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.offset.0).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.key.clone()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.payload.clone()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.error.replace('\0', "")).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) fn db_error_text(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!(
            "{} (SQLSTATE {})",
            db.message(),
            db.code().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// After an error whose outcome is unknown (e.g. the connection dropped during
/// COMMIT), the stored offsets tell what happened — never a guess.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Every partition is at the batch end: the commit went through.
    Committed,
    /// Every partition is where we expected: nothing was applied; retry.
    NotApplied,
    /// Someone else moved at least one partition.
    Fenced(Vec<TopicPartition>),
}

pub async fn resolve(
    pool: &PgPool,
    group: &str,
    expected: &[Expected],
) -> Result<Resolution, sqlx::Error> {
    let tps: Vec<TopicPartition> = expected.iter().map(|e| e.tp.clone()).collect();
    let stored = super::offsets::read(pool, group, &tps).await?;
    if expected
        .iter()
        .all(|e| stored.get(&e.tp) == Some(&e.new_next))
    {
        return Ok(Resolution::Committed);
    }
    let moved: Vec<TopicPartition> = expected
        .iter()
        .filter(|e| stored.get(&e.tp).copied() != e.expected)
        .map(|e| e.tp.clone())
        .collect();
    if moved.is_empty() {
        Ok(Resolution::NotApplied)
    } else {
        Ok(Resolution::Fenced(moved))
    }
}
