//! Stored consumer positions (`sink_offsets`): read on assignment and after a
//! fence, rewritten by `replay`. A NOTIFY on [`REPLAY_CHANNEL`] tells running
//! sinks of the group to re-read their positions.

use std::collections::HashMap;

use sqlx::{PgPool, Row};

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
    .bind(tps.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>())
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

/// Rewrites positions in one transaction and notifies running sinks. Running
/// consumers' next compare-and-set fails, they re-read and seek: replay works
/// without a restart, and idempotent writes make it converge.
pub async fn rewrite(
    pool: &PgPool,
    group: &str,
    positions: &[(TopicPartition, Offset)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Marks this transaction as a replay, for audit triggers: outside a
    // replay, next_offset only ever moves forward.
    sqlx::query("SELECT set_config('kafka_pg_sink.replay', 'on', true)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[]) \
         ON CONFLICT (consumer_group, topic, partition) \
         DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
    )
    .bind(group)
    .bind(
        positions
            .iter()
            .map(|(t, _)| t.topic.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        positions
            .iter()
            .map(|(t, _)| t.partition)
            .collect::<Vec<_>>(),
    )
    .bind(positions.iter().map(|(_, o)| o.0).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REPLAY_CHANNEL)
        .bind(group)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
