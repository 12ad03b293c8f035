//! Stored consumer positions (`sink_offsets`): read on assignment and after a
//! fence, rewritten by `replay`. A NOTIFY on [`REPLAY_CHANNEL`] tells running
//! sinks of the group to re-read their positions.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool, Row};

use crate::config::OutOfRangePolicy;
use crate::types::{Offset, TopicPartition};

/// LISTEN/NOTIFY channel; the payload is the consumer group.
pub const REPLAY_CHANNEL: &str = "kafka_pg_sink_offsets";

/// `(topic, partition, next_offset)` row → position.
fn position(r: &sqlx::postgres::PgRow) -> (TopicPartition, Offset) {
    (
        TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1)),
        Offset(r.get::<i64, _>(2)),
    )
}

/// Stored next offsets of the given partitions (absent = never committed).
pub async fn read(
    pool: &PgPool,
    group: &str,
    tps: &[TopicPartition],
) -> Result<HashMap<TopicPartition, Offset>, sqlx::Error> {
    if tps.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT o.topic, o.partition, o.next_offset FROM sink_offsets o \
         JOIN UNNEST($2::text[], $3::int4[]) AS u(topic, partition) \
           ON o.topic = u.topic AND o.partition = u.partition \
         WHERE o.consumer_group = $1",
    )
    .bind(group)
    .bind(tps.iter().map(|t| t.topic.as_ref()).collect::<Vec<_>>())
    .bind(tps.iter().map(|t| t.partition).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(position).collect())
}

/// Every stored position of a group, sorted.
pub async fn read_group(
    pool: &PgPool,
    group: &str,
) -> Result<Vec<(TopicPartition, Offset)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT topic, partition, next_offset FROM sink_offsets \
         WHERE consumer_group = $1 ORDER BY topic, partition",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(position).collect())
}

/// How old each partition's last committed event is (seconds, by the
/// database's clock), for partitions whose commits recorded it.
pub async fn event_ages(
    pool: &PgPool,
    group: &str,
) -> Result<std::collections::HashMap<TopicPartition, f64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT topic, partition, extract(epoch FROM clock_timestamp() - last_event_at)::float8 \
         FROM sink_offsets WHERE consumer_group = $1 AND last_event_at IS NOT NULL",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tp = TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1));
            (tp, r.get::<f64, _>(2))
        })
        .collect())
}

/// Rewrites positions in one transaction and notifies running sinks. Running
/// consumers' next compare-and-set fails, they re-read and seek: replay works
/// without a restart, and idempotent writes make it converge.
pub async fn rewrite(
    pool: &PgPool,
    group: &str,
    positions: &[(TopicPartition, Offset)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let topics: Vec<&str> = positions.iter().map(|(t, _)| t.topic.as_ref()).collect();
    let partitions: Vec<i32> = positions.iter().map(|(t, _)| t.partition).collect();
    let offsets: Vec<i64> = positions.iter().map(|(_, o)| o.0).collect();
    overwrite_positions(&mut tx, group, &topics, &partitions, &offsets).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REPLAY_CHANNEL)
        .bind(group)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Sets `group`'s positions (parallel slices), inside the caller's
/// transaction, marked as a replay for the audit triggers: outside a replay,
/// next_offset only ever moves forward.
pub(crate) async fn overwrite_positions(
    conn: &mut PgConnection,
    group: &str,
    topics: &[&str],
    partitions: &[i32],
    offsets: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('kafka_pg_sink.replay', 'on', true)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[]) \
         ON CONFLICT (consumer_group, topic, partition) \
         DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now(), last_event_at = NULL",
    )
    .bind(group)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A move of a stored position that fell outside the partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReset {
    pub tp: TopicPartition,
    /// The position that could not be resumed (stored, or planned if the
    /// partition had no row yet).
    pub from: Offset,
    pub to: Offset,
    pub log_start: Offset,
    pub log_end: Offset,
    pub policy: &'static str,
    /// Records between `from` and `to` that exist(ed) and were never read.
    pub lost: i64,
}

impl OffsetReset {
    /// Where `position`, outside the log `[log_start, log_end]`, goes under
    /// `policy` (`None` for `fail`), and how many records are never read.
    pub fn plan(
        tp: &TopicPartition,
        position: Offset,
        log_start: Offset,
        log_end: Offset,
        policy: OutOfRangePolicy,
    ) -> Option<OffsetReset> {
        let to = match policy {
            OutOfRangePolicy::Fail => return None,
            OutOfRangePolicy::Earliest => log_start,
            OutOfRangePolicy::Latest => log_end,
        };
        // Below the start, [position, to) existed and was deleted or skipped;
        // beyond the end (a new log), only the new log's [log_start, to) is.
        let lost = if position < log_start {
            to.0 - position.0
        } else {
            to.0 - log_start.0
        };
        Some(OffsetReset {
            tp: tp.clone(),
            from: position,
            to,
            log_start,
            log_end,
            policy: policy.as_str(),
            lost: lost.max(0),
        })
    }
}

/// Moves a position that fell out of the log, by compare-and-set against
/// what the caller planned from (`None`: no row yet), and records the move in
/// `sink_offset_resets` in the same transaction. Returns false when someone
/// else moved the position meanwhile (nothing is written).
pub async fn reset(
    pool: &PgPool,
    group: &str,
    planned: Option<Offset>,
    r: &OffsetReset,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The move may go backwards (a recreated topic): like a replay.
    sqlx::query("SELECT set_config('kafka_pg_sink.replay', 'on', true)")
        .execute(&mut *tx)
        .await?;
    let moved = match planned {
        Some(p) => sqlx::query(
            "UPDATE sink_offsets SET next_offset = $5, updated_at = now(), last_event_at = NULL \
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
        )
        .bind(group)
        .bind(r.tp.topic.as_ref())
        .bind(r.tp.partition)
        .bind(p.0)
        .bind(r.to.0),
        None => sqlx::query(
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(r.tp.topic.as_ref())
        .bind(r.tp.partition)
        .bind(r.to.0),
    }
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO sink_offset_resets \
           (consumer_group, topic, partition, from_offset, to_offset, log_start, log_end, policy, lost) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(group)
    .bind(r.tp.topic.as_ref())
    .bind(r.tp.partition)
    .bind(r.from.0)
    .bind(r.to.0)
    .bind(r.log_start.0)
    .bind(r.log_end.0)
    .bind(r.policy)
    .bind(r.lost)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_records_are_counted_per_policy() {
        let tp = TopicPartition::new("t", 0);
        let plan = |pos, policy| {
            OffsetReset::plan(&tp, Offset(pos), Offset(100), Offset(150), policy)
                .map(|r| (r.to.0, r.lost))
        };
        // Retention deleted 40..100 unread.
        assert_eq!(plan(40, OutOfRangePolicy::Earliest), Some((100, 60)));
        assert_eq!(plan(40, OutOfRangePolicy::Latest), Some((150, 110)));
        assert_eq!(plan(40, OutOfRangePolicy::Fail), None);
        // Recreated topic: the old position 900 is beyond the new log.
        assert_eq!(plan(900, OutOfRangePolicy::Earliest), Some((100, 0)));
        assert_eq!(plan(900, OutOfRangePolicy::Latest), Some((150, 50)));
    }
}
