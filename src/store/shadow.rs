//! Rebuilds into shadow tables: the registry (`sink_rebuilds`) and the two
//! transactions that end a rebuild, `promote` (`promote.rs`) and [`abort`]. The protocol
//! and its failure cases are in docs/reprocessing.md.
//!
//! A rebuild is an ordinary sink run under its own consumer group (its own
//! rows in `sink_offsets`) writing the shadow table, so it is exactly-once
//! and resumable like any sink. Promote is one transaction: lock the
//! positions of both groups, rename live → retired and shadow → live, hand
//! the rebuild's positions to the live group, record the new mapping,
//! NOTIFY. Abort drops the shadow and the rebuild's rows; the live table is
//! never touched.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};

use super::mappings::{canonical_table, MAPPINGS_CHANNEL, RETIRED};
use crate::config::fingerprint::Fingerprint;
use crate::types::{Offset, TableName, TopicPartition};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    Running,
    Promoted,
    Aborted,
}

impl RebuildState {
    fn parse(s: &str) -> RebuildState {
        match s {
            "promoted" => RebuildState::Promoted,
            "aborted" => RebuildState::Aborted,
            _ => RebuildState::Running,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RebuildState::Running => "running",
            RebuildState::Promoted => "promoted",
            RebuildState::Aborted => "aborted",
        }
    }
}

/// What a rebuild is: which live table and group it rebuilds, into which
/// shadow, under which group, with which mapping.
#[derive(Clone, Debug)]
pub struct RebuildSpec {
    pub live_group: String,
    pub rebuild_group: String,
    /// Schema-qualified (see `mappings::canonical_table`).
    pub live: TableName,
    /// In the live table's schema.
    pub shadow: TableName,
    pub fingerprint: Fingerprint,
}

/// The consumer group of a rebuild of `live_group` into `shadow`.
pub fn rebuild_group(live_group: &str, shadow: &TableName) -> String {
    format!("{live_group}.rebuild.{}", shadow.name)
}

/// A registry row.
#[derive(Clone, Debug)]
pub struct Rebuild {
    pub consumer_group: String,
    pub live_table: String,
    pub shadow_table: String,
    pub fingerprint: String,
    pub state: RebuildState,
    pub retired_table: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("no rebuild group `{0}` is registered (start one with `kafka-pg-sink rebuild`)")]
    Unknown(String),
    #[error("the rebuild into {shadow} is {state}; only a running rebuild can be {action}")]
    NotRunning {
        shadow: String,
        state: &'static str,
        action: &'static str,
    },
    #[error(
        "the rebuild into {shadow} was started with mapping {was}; this configuration maps {now}. \
         Run `kafka-pg-sink abort` for it to start over with the new mapping"
    )]
    MappingChanged {
        shadow: String,
        was: String,
        now: String,
    },
    #[error("the rebuild into {shadow} rebuilds {was}, not {now}")]
    OtherLiveTable {
        shadow: String,
        was: String,
        now: String,
    },
    #[error("live table {0} does not exist")]
    NoLiveTable(String),
    #[error("shadow table {0} already holds rows; a new rebuild starts from an empty table (drop or truncate it)")]
    ShadowNotEmpty(String),
    #[error("shadow table {0} is missing although the rebuild stored positions; `abort` it and start again")]
    ShadowMissing(String),
    #[error("the rebuild is {lag} messages behind the live group (--max-lag {limit}); wait until it has caught up")]
    Lagging { lag: i64, limit: i64 },
    #[error("table {0} already exists; drop it or choose another name with --retire-as")]
    RetiredExists(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub(super) async fn lock_registry(
    conn: &mut PgConnection,
    rebuild_group: &str,
) -> Result<Option<Rebuild>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT consumer_group, live_table, shadow_table, fingerprint, state, retired_table \
         FROM sink_rebuilds WHERE rebuild_group = $1 FOR UPDATE",
    )
    .bind(rebuild_group)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| Rebuild {
        consumer_group: r.get(0),
        live_table: r.get(1),
        shadow_table: r.get(2),
        fingerprint: r.get(3),
        state: RebuildState::parse(r.get::<&str, _>(4)),
        retired_table: r.get(5),
    }))
}

/// The registry row of a rebuild group, if any.
pub async fn status(pool: &PgPool, rebuild_group: &str) -> Result<Option<Rebuild>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    lock_registry(&mut conn, rebuild_group).await
}

/// How [`register`] found the rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new rebuild; `previous` says how an earlier one of that name ended.
    Started { previous: Option<RebuildState> },
    /// The running rebuild continues from its stored positions.
    Resumed,
}

/// Starts a rebuild or resumes the running one. A fresh start creates the
/// shadow table (`LIKE` the live table, indexes, defaults and constraints
/// included) unless it exists empty, clears what an earlier, finished
/// rebuild of the same name left, and records the mapping the shadow is
/// built with. Resuming checks that the mapping did not change: a shadow
/// holding rows of two mappings would be wrong.
pub async fn register(pool: &PgPool, spec: &RebuildSpec) -> Result<Registered, ShadowError> {
    let mut tx = pool.begin().await?;
    let shadow = spec.shadow.quoted();
    let existing = lock_registry(&mut tx, &spec.rebuild_group).await?;
    let shadow_exists = canonical_table(&mut tx, &spec.shadow).await?.is_some();
    let registered = match existing {
        Some(r) if r.state == RebuildState::Running => {
            if r.fingerprint != spec.fingerprint.0 {
                return Err(ShadowError::MappingChanged {
                    shadow,
                    was: short(&r.fingerprint).into(),
                    now: spec.fingerprint.short().into(),
                });
            }
            if r.live_table != spec.live.quoted() {
                return Err(ShadowError::OtherLiveTable {
                    shadow,
                    was: r.live_table,
                    now: spec.live.quoted(),
                });
            }
            if !shadow_exists && has_positions(&mut tx, &spec.rebuild_group).await? {
                return Err(ShadowError::ShadowMissing(shadow));
            }
            Registered::Resumed
        }
        other => Registered::Started {
            previous: other.map(|r| r.state),
        },
    };
    if registered != Registered::Resumed {
        start_fresh(&mut tx, spec, shadow_exists).await?;
    }
    if !shadow_exists {
        create_shadow(&mut tx, spec).await?;
    }
    set_mapping(&mut tx, &spec.rebuild_group, &shadow, &spec.fingerprint.0).await?;
    tx.commit().await?;
    Ok(registered)
}

pub(super) fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

async fn has_positions(conn: &mut PgConnection, group: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sink_offsets WHERE consumer_group = $1)")
        .bind(group)
        .fetch_one(&mut *conn)
        .await
}

async fn start_fresh(
    conn: &mut PgConnection,
    spec: &RebuildSpec,
    shadow_exists: bool,
) -> Result<(), ShadowError> {
    if canonical_table(conn, &spec.live).await?.is_none() {
        return Err(ShadowError::NoLiveTable(spec.live.quoted()));
    }
    if shadow_exists {
        let rows: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {})",
            spec.shadow.quoted()
        ))
        .fetch_one(&mut *conn)
        .await?;
        if rows {
            return Err(ShadowError::ShadowNotEmpty(spec.shadow.quoted()));
        }
    }
    for sql in [
        "DELETE FROM sink_offsets WHERE consumer_group = $1",
        "DELETE FROM sink_dead_letters WHERE consumer_group = $1",
    ] {
        sqlx::query(sql)
            .bind(&spec.rebuild_group)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO sink_rebuilds (rebuild_group, consumer_group, live_table, shadow_table, fingerprint, state) \
         VALUES ($1, $2, $3, $4, $5, 'running') \
         ON CONFLICT (rebuild_group) DO UPDATE SET consumer_group = EXCLUDED.consumer_group, \
           live_table = EXCLUDED.live_table, shadow_table = EXCLUDED.shadow_table, \
           fingerprint = EXCLUDED.fingerprint, state = 'running', retired_table = NULL, \
           positions = NULL, started_at = now(), finished_at = NULL",
    )
    .bind(&spec.rebuild_group)
    .bind(&spec.live_group)
    .bind(spec.live.quoted())
    .bind(spec.shadow.quoted())
    .bind(&spec.fingerprint.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The shadow as a copy of the live table's definition (columns, defaults,
/// constraints, indexes — not rows, triggers, foreign keys or grants). A
/// typed route whose new mapping needs another column fails route
/// resolution afterwards, naming it; the operator adds it and runs again.
/// On Citus the shadow is sharded like the live table and beside it, so a
/// promote swaps two distributed tables.
async fn create_shadow(conn: &mut PgConnection, spec: &RebuildSpec) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
        spec.shadow.quoted(),
        spec.live.quoted()
    ))
    .execute(&mut *conn)
    .await?;
    if let Some(column) = super::dialect::distribution_column(conn, &spec.live).await? {
        super::dialect::distribute(conn, &spec.shadow, &column, Some(&spec.live)).await?;
    }
    Ok(())
}

pub(super) async fn set_mapping(
    conn: &mut PgConnection,
    group: &str,
    table: &str,
    fingerprint: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sink_route_mappings (consumer_group, table_name, fingerprint) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer_group, table_name) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, updated_at = now()",
    )
    .bind(group)
    .bind(table)
    .bind(fingerprint)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn notify(
    conn: &mut PgConnection,
    channel: &str,
    group: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(group)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) type Positions = BTreeMap<TopicPartition, Offset>;

pub(super) async fn finish(
    conn: &mut PgConnection,
    rebuild_group: &str,
    state: &str,
    retired_table: Option<&str>,
    positions_json: Option<String>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sink_rebuilds SET state = $2, retired_table = $3, positions = $4::jsonb, finished_at = now() \
         WHERE rebuild_group = $1",
    )
    .bind(rebuild_group)
    .bind(state)
    .bind(retired_table)
    .bind(positions_json)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Aborts a running rebuild: drops the shadow table, the rebuild group's
/// positions and dead letters, retires its mapping (a rebuild process still
/// running stops at its next commit or at the NOTIFY). The live table, its
/// group and its mapping are not touched. Returns false if it was already
/// aborted.
pub async fn abort(pool: &PgPool, rebuild_group: &str) -> Result<bool, ShadowError> {
    let mut tx = pool.begin().await?;
    let r = lock_registry(&mut tx, rebuild_group)
        .await?
        .ok_or_else(|| ShadowError::Unknown(rebuild_group.to_string()))?;
    match r.state {
        RebuildState::Aborted => return Ok(false),
        RebuildState::Promoted => {
            return Err(ShadowError::NotRunning {
                shadow: r.shadow_table,
                state: r.state.as_str(),
                action: "aborted",
            })
        }
        RebuildState::Running => {}
    }
    // The rebuild's positions first, as promote does: its in-flight commit
    // finishes before the table goes.
    sqlx::query(
        "SELECT 1 FROM sink_offsets WHERE consumer_group = $1 ORDER BY topic, partition FOR UPDATE",
    )
    .bind(rebuild_group)
    .execute(&mut *tx)
    .await?;
    let shadow = TableName::parse(&r.shadow_table).expect("the registry stores quoted names");
    sqlx::query(&format!("DROP TABLE IF EXISTS {}", shadow.quoted()))
        .execute(&mut *tx)
        .await?;
    for sql in [
        "DELETE FROM sink_offsets WHERE consumer_group = $1",
        "DELETE FROM sink_dead_letters WHERE consumer_group = $1",
    ] {
        sqlx::query(sql)
            .bind(rebuild_group)
            .execute(&mut *tx)
            .await?;
    }
    set_mapping(&mut tx, rebuild_group, &r.shadow_table, RETIRED).await?;
    finish(&mut tx, rebuild_group, "aborted", None, None).await?;
    notify(&mut tx, MAPPINGS_CHANNEL, rebuild_group).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_groups_are_named_after_the_shadow() {
        let shadow = TableName::parse("public.orders_v2").unwrap();
        assert_eq!(rebuild_group("g", &shadow), "g.rebuild.orders_v2");
    }
}
