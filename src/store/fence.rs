//! The fence: a commit moves each partition's stored position only from
//! where its committer believes it is (compare-and-set), so a zombie or a
//! committer overtaken by a replay writes nothing. And after an error whose
//! outcome is unknown, the stored positions tell whether the commit went
//! through — never a guess.
//!
//! The mapping check (`store/mappings.rs`) runs in the same round trip.

use std::collections::HashSet;

use sqlx::{PgConnection, PgPool, Row};

use super::mappings::MappingGuard;
use crate::types::{Expected, LastEvents, TopicPartition};

/// What the fence found: partitions someone else moved, or tables whose
/// mapping a promote replaced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fenced {
    /// Partitions whose stored position is not what this consumer expected
    /// (empty = we own them all).
    pub lost: Vec<TopicPartition>,
    /// Tables whose stored mapping differs from the one this writer runs
    /// (checked only when no partition was lost).
    pub replaced: Vec<String>,
}

/// The fence and the mapping check in one round trip (`sink_fence`, in
/// migrations/20261207000001_fence_function.sql): compare-and-set on every
/// partition, recording the timestamp of each partition's last event
/// (`last_event_at`); then, in a statement with a new snapshot, the
/// mappings of `guard`'s tables.
pub(super) async fn fence(
    conn: &mut PgConnection,
    group: &str,
    expected: &[Expected],
    last: &LastEvents,
    guard: &MappingGuard,
) -> Result<Fenced, sqlx::Error> {
    let row = bind_fence(
        sqlx::query(
            "SELECT moved_topics, moved_partitions, replaced_tables \
             FROM sink_fence($1, $2, $3, $4, $5, $6, $7, $8)",
        ),
        group,
        expected,
        last,
        guard,
    )
    .fetch_one(&mut *conn)
    .await?;
    let topics: Vec<String> = row.get(0);
    let partitions: Vec<i32> = row.get(1);
    let won: HashSet<TopicPartition> = topics
        .into_iter()
        .zip(partitions)
        .map(|(t, p)| TopicPartition::new(t, p))
        .collect();
    Ok(Fenced {
        lost: expected
            .iter()
            .filter(|e| !won.contains(&e.tp))
            .map(|e| e.tp.clone())
            .collect(),
        replaced: row.get(2),
    })
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `sink_fence`'s arguments, `$1` to `$8`, to `q`.
pub(super) fn bind_fence<'q>(
    q: PgQuery<'q>,
    group: &'q str,
    expected: &'q [Expected],
    last: &LastEvents,
    guard: &'q MappingGuard,
) -> PgQuery<'q> {
    // Sorted so concurrent committers lock offset rows in the same order.
    let mut exp: Vec<&Expected> = expected.iter().collect();
    exp.sort_by(|a, b| a.tp.cmp(&b.tp));
    let (tables, fingerprints) = guard.columns();
    q.bind(group)
        .bind(exp.iter().map(|e| e.tp.topic.as_ref()).collect::<Vec<_>>())
        .bind(exp.iter().map(|e| e.tp.partition).collect::<Vec<_>>())
        .bind(
            exp.iter()
                .map(|e| e.expected.map(|o| o.0))
                .collect::<Vec<_>>(),
        )
        .bind(exp.iter().map(|e| e.new_next.0).collect::<Vec<_>>())
        .bind(
            exp.iter()
                .map(|e| last.get(&e.tp).copied())
                .collect::<Vec<_>>(),
        )
        .bind(tables)
        .bind(fingerprints)
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
