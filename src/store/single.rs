//! A small commit in one statement. When events trickle in, most batches
//! hold a few upserts of one route and nothing else; their transaction
//! spent four round trips (BEGIN, fence, upsert, COMMIT) on a few rows.
//! Such a batch goes as one call of a function sent outside any explicit
//! transaction: the call is its own transaction, and its answer comes back
//! once it committed (sqlx reads to `ReadyForQuery` before a `fetch_one`
//! returns). The function runs the statements of the long transaction in
//! the same order, each with a new snapshot: the fence
//! (`sink_fence_or_raise`, migrations/20261207000002), then the upsert.
//!
//! The function is a temporary one, `pg_temp.sink_fence_and_upsert_<hash
//! of its body>`, created on a connection the first time a call finds it
//! missing (that first call runs in an explicit transaction with the
//! creation): its upsert is static SQL, whose plan PL/pgSQL keeps for the
//! connection as a prepared statement would. (Handing the statement to one
//! shared function, which would run it with `EXECUTE`, planned it on every
//! call: measured slower than the four round trips, docs/performance.md.)
//!
//! Everything else takes the long way (`commit.rs`): several routes,
//! deletes, dead letters, a chunk too large to bind, the document
//! pre-filter, Citus, deferred constraints, and every second attempt,
//! which isolates rows under savepoints.

use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::fence::bind_fence;
use super::mappings::MappingGuard;
use super::stage::BoundUpsert;
use super::{documents, typed, TableCounts};
use crate::config::route::Route;
use crate::event::{PreparedBatch, RouteWrites};
use crate::types::{Expected, TopicPartition};

/// SQLSTATE of the function's refusal when a partition moved away.
const FENCED: &str = "KP001";
/// SQLSTATE of the function's refusal when a promote replaced a mapping.
const REPLACED: &str = "KP002";

/// SQLSTATEs of a call that finds no such function on its connection:
/// undefined_function, and invalid_schema_name before the connection's
/// first temporary object.
const MISSING: [&str; 2] = ["42883", "3F000"];

/// Dollar-quote tag of the function's body.
const BODY: &str = "$kpgs_body$";

/// A batch that can commit in one statement.
pub(super) struct Single<'a> {
    /// The write slot of its route.
    pub slot: usize,
    pub route: &'a Route,
    pub rows: usize,
    upsert: BoundUpsert,
}

/// How the call ended.
pub(super) enum Called {
    Committed(TableCounts),
    Fenced(Vec<TopicPartition>),
    MappingReplaced(Vec<String>),
    /// The database refused a row's data and rolled the call back: the
    /// batch goes the long way, which isolates the row.
    DataError,
}

/// `batch` as one statement, if it is one route's upserts and nothing
/// else, and those rows can be bound.
pub(super) fn plan<'a>(
    batch: &PreparedBatch,
    routes: &'a [Route],
    heavy: &[AtomicBool],
) -> Option<Single<'a>> {
    if !batch.dead_letters.is_empty() {
        return None;
    }
    let mut written = batch
        .writes
        .iter()
        .enumerate()
        .filter(|(_, w)| !is_empty(w));
    let (slot, writes) = written.next()?;
    if written.next().is_some() || !only_upserts(writes) {
        return None;
    }
    let route = routes.get(slot)?;
    let upsert = match &route.columns {
        Some(map) => typed::bound_upsert(route, map, &writes.upserts)?,
        None => documents::bound_upsert(
            route,
            &writes.upserts,
            writes.upserts_copy.as_deref(),
            heavy.get(slot).is_some_and(|h| h.load(Ordering::Relaxed)),
        )?,
    };
    // The body is dollar-quoted: a quoted identifier holding the tag
    // would end it.
    if upsert.sql.contains(BODY) || upsert.stage.contains(BODY) {
        return None;
    }
    Some(Single {
        slot,
        route,
        rows: writes.upserts.len(),
        upsert,
    })
}

fn is_empty(w: &RouteWrites) -> bool {
    w.upserts.is_empty() && only_upserts(w)
}

fn only_upserts(w: &RouteWrites) -> bool {
    w.pre_deletes.is_empty()
        && w.previous.is_empty()
        && w.deletes.is_empty()
        && w.truncate.is_none()
}

impl Single<'_> {
    /// The function's name: the same body, the same function.
    fn function(&self) -> String {
        let digest = Sha256::digest(format!("{}\n{}", self.upsert.stage, self.upsert.sql));
        format!(
            "pg_temp.sink_fence_and_upsert_{}",
            hex::encode(&digest[..8])
        )
    }

    /// Creates the function on this connection. Its arguments are the
    /// upsert's two (`$1`, `$2`) and then the fence's; `use_column` lets a
    /// table's column named like one of them mean the column.
    fn create_sql(&self, function: &str) -> String {
        format!(
            "CREATE OR REPLACE FUNCTION {function}(\
               p_target text, p_rows text[], p_group text, p_topics text[], \
               p_partitions int4[], p_expected int8[], p_new_next int8[], \
               p_last_ms int8[], p_tables text[], p_fingerprints text[], \
               OUT inserted int8, OUT updated int8, OUT same int8) \
             LANGUAGE plpgsql VOLATILE AS {BODY}\n\
             #variable_conflict use_column\n\
             BEGIN\n\
               PERFORM sink_fence_or_raise(p_group, p_topics, p_partitions, p_expected, \
                 p_new_next, p_last_ms, p_tables, p_fingerprints);\n\
               PERFORM set_config('client_min_messages', 'warning', true);\n\
               {stage};\n\
               {upsert}\n\
               INTO inserted, updated, same;\n\
               IF inserted = 0 AND updated = 0 THEN\n\
                 PERFORM set_config('synchronous_commit', 'off', true);\n\
               END IF;\n\
             END\n{BODY}",
            stage = self.upsert.stage,
            upsert = self.upsert.sql,
        )
    }
}

/// Commits `single` with the fence of `expected` and the mapping check of
/// `guard`, on a connection outside any transaction.
///
/// A commit that changed no row skips the WAL flush, as the long
/// transaction does (`synchronous_commit = off`, docs/guarantees.md).
pub(super) async fn call(
    conn: &mut PgConnection,
    group: &str,
    expected: &[Expected],
    batch: &PreparedBatch,
    guard: &MappingGuard,
    single: Single<'_>,
) -> Result<Called, sqlx::Error> {
    let function = single.function();
    let sql = format!(
        "SELECT inserted, updated, same FROM {function}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    );
    let u = &single.upsert;
    let run = || {
        let q = sqlx::query(&sql).bind(&u.target).bind(&u.records);
        bind_fence(q, group, expected, &batch.last_events, guard)
    };
    let mut result = run().fetch_one(&mut *conn).await;
    let missing = result.as_ref().err().and_then(code_and_detail);
    if missing.is_some_and(|(code, _)| MISSING.contains(&code)) {
        // Created and called in one explicit transaction: behind a pooler
        // that hands out server sessions per transaction, a function made
        // by one transaction need not be there for the next.
        let create = format!("BEGIN; {};", single.create_sql(&function));
        if let Err(e) = sqlx::Executor::execute(&mut *conn, create.as_str()).await {
            let _ = sqlx::Executor::execute(&mut *conn, "ROLLBACK").await;
            return Err(e);
        }
        result = run().fetch_one(&mut *conn).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        // A COMMIT that fails leaves the outcome unknown: the caller
        // resolves it from the stored positions.
        sqlx::Executor::execute(&mut *conn, end).await?;
    }
    let e = match result {
        Ok(row) => return Ok(Called::Committed(TableCounts::of_upsert(single.rows, &row))),
        Err(e) => e,
    };
    Ok(match code_and_detail(&e) {
        Some((FENCED, detail)) => Called::Fenced(lost_partitions(detail)?),
        Some((REPLACED, detail)) => Called::MappingReplaced(replaced_tables(detail)?),
        _ if super::is_data_error(&e) => Called::DataError,
        _ => return Err(e),
    })
}

/// The SQLSTATE and detail of a database error.
fn code_and_detail(e: &sqlx::Error) -> Option<(&str, &str)> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|pg| (pg.code(), pg.detail().unwrap_or_default())),
        _ => None,
    }
}

/// The lost partitions in the refusal's detail: `[["topic", 0], …]`.
fn lost_partitions(detail: &str) -> Result<Vec<TopicPartition>, sqlx::Error> {
    let pairs: Vec<(String, i32)> = parse_detail(detail)?;
    Ok(pairs
        .into_iter()
        .map(|(t, p)| TopicPartition::new(t, p))
        .collect())
}

/// The replaced tables in the refusal's detail: `["\"public\".\"t\"", …]`.
fn replaced_tables(detail: &str) -> Result<Vec<String>, sqlx::Error> {
    parse_detail(detail)
}

fn parse_detail<T: serde::de::DeserializeOwned>(detail: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(detail).map_err(|e| sqlx::Error::Decode(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_routes;
    use crate::event::prepare;
    use crate::kafka::message::SourceMessage;
    use crate::types::Offset;

    const DOCUMENTS: &str = "key = \"/id\"";
    const TYPED: &str = "key = \"id\"\n[route.columns]\nid = \"/id\"\npad = \"/pad\"";

    fn routes(body: &str) -> Vec<Route> {
        test_routes(&format!("topic = \"t\"\ntable = \"t\"\n{body}")).unwrap()
    }

    fn message(offset: i64, payload: Option<&str>) -> SourceMessage {
        SourceMessage {
            tp: TopicPartition::new("t", 0),
            offset: Offset(offset),
            key: Some(format!("k{offset}").into_bytes()),
            payload: payload.map(|p| p.as_bytes().to_vec()),
            timestamp: None,
            headers: Vec::new(),
            source_commit: None,
        }
    }

    fn upserts(n: i64, pad: usize) -> Vec<SourceMessage> {
        let pad = "x".repeat(pad);
        (0..n)
            .map(|i| message(i, Some(&format!(r#"{{"id":"k{i}","pad":"{pad}"}}"#))))
            .collect()
    }

    fn no_hints(n: usize) -> Vec<AtomicBool> {
        (0..n).map(|_| AtomicBool::new(false)).collect()
    }

    #[test]
    fn one_routes_small_upserts_go_as_one_statement() {
        for body in [DOCUMENTS, TYPED] {
            let routes = routes(body);
            let batch = prepare(&routes, upserts(3, 10));
            let single = plan(&batch, &routes, &no_hints(1)).expect(body);
            assert_eq!((single.slot, single.rows), (0, 3));
            assert_eq!(single.upsert.records.len(), 3);
            let function = single.function();
            assert!(function.starts_with("pg_temp.sink_fence_and_upsert_"));
            let create = single.create_sql(&function);
            for part in [
                "#variable_conflict use_column",
                "PERFORM sink_fence_or_raise(",
                "CREATE TEMP TABLE IF NOT EXISTS kpgs_stage_",
                "INTO inserted, updated, same;",
            ] {
                assert!(create.contains(part), "{part} in {create}");
            }
            // The same route, the same function: one per connection.
            let again = prepare(&routes, upserts(5, 20));
            assert_eq!(
                plan(&again, &routes, &no_hints(1)).unwrap().function(),
                function
            );
        }
    }

    #[test]
    fn anything_more_than_small_upserts_takes_the_long_way() {
        let routes = routes(DOCUMENTS);
        let heavy = [AtomicBool::new(true)];
        let small = prepare(&routes, upserts(3, 10));
        assert!(
            plan(&small, &routes, &heavy).is_none(),
            "the pre-filter reads first"
        );

        let large = prepare(&routes, upserts(40, 2_000));
        assert!(
            plan(&large, &routes, &no_hints(1)).is_none(),
            "over 64 KiB: COPY"
        );
        let typed = self::routes(TYPED);
        let large = prepare(&typed, upserts(40, 2_000));
        assert!(
            plan(&large, &typed, &no_hints(1)).is_none(),
            "typed over 64 KiB: COPY"
        );

        let mut with_delete = upserts(3, 10);
        with_delete.push(message(3, None));
        let batch = prepare(&routes, with_delete);
        assert!(plan(&batch, &routes, &no_hints(1)).is_none(), "a tombstone");

        let mut with_poison = upserts(3, 10);
        with_poison.push(message(3, Some("not json")));
        let batch = prepare(&routes, with_poison);
        assert!(!batch.dead_letters.is_empty());
        assert!(
            plan(&batch, &routes, &no_hints(1)).is_none(),
            "a dead letter"
        );

        assert!(plan(&prepare(&routes, Vec::new()), &routes, &no_hints(1)).is_none());
    }

    #[test]
    fn refusal_details_read_back() {
        assert_eq!(
            lost_partitions(r#"[["orders", 0], ["orders", 3]]"#).unwrap(),
            [
                TopicPartition::new("orders", 0),
                TopicPartition::new("orders", 3)
            ]
        );
        assert_eq!(
            replaced_tables(r#"["\"public\".\"events\""]"#).unwrap(),
            ["\"public\".\"events\""]
        );
        assert!(lost_partitions("not json").is_err());
    }
}
