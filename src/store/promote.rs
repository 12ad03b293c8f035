//! Promote: the transaction that ends a rebuild by putting its shadow table
//! in the live table's place. It locks the positions of both groups, renames
//! live → retired and shadow → live, hands the rebuild's positions to the
//! live group, records the new mapping and notifies running sinks — all or
//! nothing. The protocol and its failure cases are in docs/reprocessing.md.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};

use super::mappings::{canonical_table, MAPPINGS_CHANNEL, RETIRED};
use super::offsets::REPLAY_CHANNEL;
use super::shadow::{
    finish, lock_registry, notify, set_mapping, Positions, Rebuild, RebuildState, ShadowError,
};
use crate::types::{Offset, TableName, TopicPartition};

/// What `promote` is asked to do.
#[derive(Clone, Debug)]
pub struct PromoteRequest {
    pub rebuild_group: String,
    /// Every partition of the route's topics with its log start offset
    /// (where the rebuild began a partition it has not stored yet).
    pub partitions: Vec<(TopicPartition, Offset)>,
    /// Bare name for the old live table, in its schema (default `<live>_retired`).
    pub retire_as: Option<String>,
    /// Refuse when the rebuild is further behind the live group than this.
    pub max_lag: Option<i64>,
    /// Plan and check only; change nothing.
    pub dry_run: bool,
}

/// One partition's hand-over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PositionMove {
    pub topic: String,
    pub partition: i32,
    pub live: Option<i64>,
    pub rebuild: Option<i64>,
    /// What the live group continues from: the rebuild's position, or the
    /// log start where the rebuild stored none (it began there).
    pub next: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PromoteReport {
    pub live_table: String,
    pub shadow_table: String,
    pub retired_table: String,
    pub fingerprint: String,
    pub positions: Vec<PositionMove>,
    /// Messages the live group had applied beyond the rebuild's positions:
    /// the live sink applies them again, with the new mapping, after the swap.
    pub lag: i64,
    pub promoted: bool,
}

/// Plans the hand-over of positions (pure): per partition the rebuild's
/// stored position, else the log start; lag = messages the live group is
/// ahead.
pub fn plan_positions(
    partitions: &[(TopicPartition, Offset)],
    live: &BTreeMap<TopicPartition, Offset>,
    rebuild: &BTreeMap<TopicPartition, Offset>,
) -> (Vec<PositionMove>, i64) {
    let mut lag = 0;
    let moves = partitions
        .iter()
        .map(|(tp, start)| {
            let next = rebuild.get(tp).copied().unwrap_or(*start);
            let l = live.get(tp).copied();
            lag += l.map_or(0, |l| (l.0 - next.0).max(0));
            PositionMove {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                live: l.map(|o| o.0),
                rebuild: rebuild.get(tp).map(|o| o.0),
                next: next.0,
            }
        })
        .collect();
    (moves, lag)
}

/// Promotes a running rebuild in one transaction (see module docs).
pub async fn promote(pool: &PgPool, req: &PromoteRequest) -> Result<PromoteReport, ShadowError> {
    let mut tx = pool.begin().await?;
    let r = lock_registry(&mut tx, &req.rebuild_group)
        .await?
        .ok_or_else(|| ShadowError::Unknown(req.rebuild_group.clone()))?;
    if r.state != RebuildState::Running {
        return Err(ShadowError::NotRunning {
            shadow: r.shadow_table,
            state: r.state.as_str(),
            action: "promoted",
        });
    }
    let live = TableName::parse(&r.live_table).expect("the registry stores quoted names");
    let retired = TableName {
        schema: live.schema.clone(),
        name: req
            .retire_as
            .clone()
            .unwrap_or_else(|| format!("{}_retired", live.name)),
    };
    // Lock both groups' positions first: a live commit holding them finishes
    // before anything here changes; one arriving later waits and then meets
    // the new positions and the new mapping (store/mappings.rs).
    let (live_pos, rebuild_pos) = lock_positions(&mut tx, &r, req).await?;
    let (positions, lag) = plan_positions(&req.partitions, &live_pos, &rebuild_pos);
    if let Some(limit) = req.max_lag.filter(|l| lag > *l) {
        return Err(ShadowError::Lagging { lag, limit });
    }
    let report = PromoteReport {
        live_table: r.live_table.clone(),
        shadow_table: r.shadow_table.clone(),
        retired_table: retired.quoted(),
        fingerprint: r.fingerprint.clone(),
        positions,
        lag,
        promoted: !req.dry_run,
    };
    if req.dry_run {
        tx.rollback().await?;
        return Ok(report);
    }
    swap_tables(&mut tx, &r, &live, &retired).await?;
    hand_over_positions(
        &mut tx,
        &r.consumer_group,
        &req.rebuild_group,
        &report.positions,
    )
    .await?;
    move_dead_letters(&mut tx, &r.consumer_group, req, &retired).await?;
    set_mapping(&mut tx, &r.consumer_group, &r.live_table, &r.fingerprint).await?;
    set_mapping(&mut tx, &req.rebuild_group, &r.shadow_table, RETIRED).await?;
    let positions = serde_json::to_string(&report.positions).expect("positions serialize");
    finish(
        &mut tx,
        &req.rebuild_group,
        "promoted",
        Some(&report.retired_table),
        Some(positions),
    )
    .await?;
    notify(&mut tx, REPLAY_CHANNEL, &r.consumer_group).await?;
    notify(&mut tx, MAPPINGS_CHANNEL, &r.consumer_group).await?;
    notify(&mut tx, MAPPINGS_CHANNEL, &req.rebuild_group).await?;
    tx.commit().await?;
    Ok(report)
}

/// Locks (FOR UPDATE, in key order) the live group's positions on the
/// route's topics and all of the rebuild group's, and returns them.
async fn lock_positions(
    conn: &mut PgConnection,
    r: &Rebuild,
    req: &PromoteRequest,
) -> Result<(Positions, Positions), sqlx::Error> {
    let topics: BTreeSet<&str> = req.partitions.iter().map(|(tp, _)| &*tp.topic).collect();
    let rows = sqlx::query(
        "SELECT consumer_group, topic, partition, next_offset FROM sink_offsets \
         WHERE (consumer_group = $1 AND topic = ANY($3)) OR consumer_group = $2 \
         ORDER BY consumer_group, topic, partition FOR UPDATE",
    )
    .bind(&r.consumer_group)
    .bind(&req.rebuild_group)
    .bind(topics.into_iter().collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let (mut live, mut rebuild) = (Positions::new(), Positions::new());
    for row in &rows {
        let tp = TopicPartition::new(row.get::<String, _>(1), row.get::<i32, _>(2));
        let at = Offset(row.get(3));
        if row.get::<String, _>(0) == r.consumer_group {
            live.insert(tp, at);
        } else {
            rebuild.insert(tp, at);
        }
    }
    Ok((live, rebuild))
}

/// live → retired, shadow → live (names only: the new live table keeps the
/// shadow's indexes, whose names still say where they were built).
async fn swap_tables(
    conn: &mut PgConnection,
    r: &Rebuild,
    live: &TableName,
    retired: &TableName,
) -> Result<(), ShadowError> {
    if canonical_table(conn, retired).await?.is_some() {
        return Err(ShadowError::RetiredExists(retired.quoted()));
    }
    let shadow = TableName::parse(&r.shadow_table).expect("the registry stores quoted names");
    if canonical_table(conn, &shadow).await?.is_none() {
        return Err(ShadowError::ShadowMissing(r.shadow_table.clone()));
    }
    for (from, to) in [(live, &retired.name), (&shadow, &live.name)] {
        sqlx::query(&format!(
            "ALTER TABLE {} RENAME TO {}",
            from.quoted(),
            crate::types::quote_ident(to)
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The live group continues where the rebuild stopped; the rebuild group's
/// positions are gone. Marked as a replay: positions may move backwards.
async fn hand_over_positions(
    conn: &mut PgConnection,
    live_group: &str,
    rebuild_group: &str,
    moves: &[PositionMove],
) -> Result<(), sqlx::Error> {
    let topics: Vec<&str> = moves.iter().map(|m| m.topic.as_str()).collect();
    let partitions: Vec<i32> = moves.iter().map(|m| m.partition).collect();
    let offsets: Vec<i64> = moves.iter().map(|m| m.next).collect();
    super::offsets::overwrite_positions(conn, live_group, &topics, &partitions, &offsets).await?;
    sqlx::query("DELETE FROM sink_offsets WHERE consumer_group = $1")
        .bind(rebuild_group)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The live group's dead letters of the route's topics belonged to the old
/// mapping: they move to `<group>.retired.<retired table>`; the rebuild's
/// become the live group's (what a fresh run with the new mapping has).
async fn move_dead_letters(
    conn: &mut PgConnection,
    live_group: &str,
    req: &PromoteRequest,
    retired: &TableName,
) -> Result<(), sqlx::Error> {
    let topics: Vec<&str> = req
        .partitions
        .iter()
        .map(|(tp, _)| &*tp.topic)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let label = format!("{live_group}.retired.{}", retired.name);
    // Leftovers of an earlier table of that name, dropped since.
    sqlx::query("DELETE FROM sink_dead_letters WHERE consumer_group = $1 AND topic = ANY($2)")
        .bind(&label)
        .bind(&topics)
        .execute(&mut *conn)
        .await?;
    for (from, to) in [
        (live_group, label.as_str()),
        (&req.rebuild_group, live_group),
    ] {
        sqlx::query(
            "UPDATE sink_dead_letters SET consumer_group = $2 WHERE consumer_group = $1 AND topic = ANY($3)",
        )
        .bind(from)
        .bind(to)
        .bind(&topics)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hand_over_from_the_rebuild_or_the_log_start() {
        let tp = |p| TopicPartition::new("t", p);
        let parts = vec![(tp(0), Offset(0)), (tp(1), Offset(5)), (tp(2), Offset(0))];
        let live = BTreeMap::from([
            (tp(0), Offset(100)),
            (tp(1), Offset(40)),
            (tp(2), Offset(7)),
        ]);
        let rebuild = BTreeMap::from([(tp(0), Offset(90)), (tp(2), Offset(9))]);
        let (moves, lag) = plan_positions(&parts, &live, &rebuild);
        let next: Vec<i64> = moves.iter().map(|m| m.next).collect();
        assert_eq!(next, vec![90, 5, 9]);
        // 10 on p0, 35 on p1 (the rebuild has not read p1 at all), 0 on p2.
        assert_eq!(lag, 45);
        assert_eq!(moves[1].rebuild, None);
    }
}
