//! The fence: a commit moves each partition's stored position only from
//! where its committer believes it is (compare-and-set), so a zombie or a
//! committer overtaken by a replay writes nothing. And after an error whose
//! outcome is unknown, the stored positions tell whether the commit went
//! through — never a guess.

use sqlx::{PgConnection, PgPool, Row};

use crate::types::{Expected, LastEvents, TopicPartition};

/// The fence: compare-and-set on every partition, recording the timestamp
/// of each partition's last event (`last_event_at`). Returns the partitions
/// whose stored position is not what this consumer expected (empty = we own
/// them).
pub(super) async fn fence(
    conn: &mut PgConnection,
    group: &str,
    expected: &[Expected],
    last: &LastEvents,
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    // Sorted so concurrent committers lock offset rows in the same order.
    let mut exp: Vec<&Expected> = expected.iter().collect();
    exp.sort_by(|a, b| a.tp.cmp(&b.tp));
    let (existing, new): (Vec<&Expected>, Vec<&Expected>) =
        exp.into_iter().partition(|e| e.expected.is_some());
    let mut won = advance_existing(conn, group, &existing, last).await?;
    won.extend(insert_first(conn, group, &new, last).await?);
    Ok(expected
        .iter()
        .filter(|e| !won.contains(&e.tp))
        .map(|e| e.tp.clone())
        .collect())
}

fn topic_partition(r: &sqlx::postgres::PgRow) -> TopicPartition {
    TopicPartition::new(r.get::<String, _>(0), r.get::<i32, _>(1))
}

/// Moves stored positions that are exactly where this consumer expects them.
async fn advance_existing(
    conn: &mut PgConnection,
    group: &str,
    existing: &[&Expected],
    last: &LastEvents,
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    if existing.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE sink_offsets o SET next_offset = u.new_next, updated_at = now(), \
           last_event_at = coalesce(to_timestamp(u.last_ms / 1000.0), o.last_event_at) \
         FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[], $6::int8[]) \
              AS u(topic, partition, expected, new_next, last_ms) \
         WHERE o.consumer_group = $1 AND o.topic = u.topic \
           AND o.partition = u.partition AND o.next_offset = u.expected \
         RETURNING o.topic, o.partition",
    )
    .bind(group)
    .bind(
        existing
            .iter()
            .map(|e| e.tp.topic.as_ref())
            .collect::<Vec<_>>(),
    )
    .bind(existing.iter().map(|e| e.tp.partition).collect::<Vec<_>>())
    .bind(
        existing
            .iter()
            .map(|e| e.expected.map_or(-1, |o| o.0))
            .collect::<Vec<_>>(),
    )
    .bind(existing.iter().map(|e| e.new_next.0).collect::<Vec<_>>())
    .bind(last_of(existing, last))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(topic_partition).collect())
}

fn last_of(rows: &[&Expected], last: &LastEvents) -> Vec<Option<i64>> {
    rows.iter().map(|e| last.get(&e.tp).copied()).collect()
}

/// First batch of a partition: the row must not exist yet.
async fn insert_first(
    conn: &mut PgConnection,
    group: &str,
    new: &[&Expected],
    last: &LastEvents,
) -> Result<Vec<TopicPartition>, sqlx::Error> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset, last_event_at) \
         SELECT $1, u.topic, u.partition, u.new_next, to_timestamp(u.last_ms / 1000.0) \
         FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[]) \
              AS u(topic, partition, new_next, last_ms) \
         ON CONFLICT (consumer_group, topic, partition) DO NOTHING \
         RETURNING topic, partition",
    )
    .bind(group)
    .bind(new.iter().map(|e| e.tp.topic.as_ref()).collect::<Vec<_>>())
    .bind(new.iter().map(|e| e.tp.partition).collect::<Vec<_>>())
    .bind(new.iter().map(|e| e.new_next.0).collect::<Vec<_>>())
    .bind(last_of(new, last))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(topic_partition).collect())
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
