//! Statements for typed tables (routes with `columns`, see `config::columns`
//! and `event::row`).
//!
//! Rows travel as `{"column": value}` JSON objects, bound as one text array.
//! `jsonb_to_record` converts them to the column types read at startup, so
//! Postgres does every conversion with its own input rules. All identifiers
//! are quoted. Types come from `format_type()`, which quotes as needed.

use sqlx::PgConnection;

use sqlx::Row;

use super::dialect::Dialect;
use super::stage::{BoundUpsert, Stage, Stages, BIND_MAX_BYTES};
use super::{db_error_text, is_data_error, TableCounts};
use crate::config::columns::{ColumnMap, ColumnSource, MappedColumn};
use crate::config::route::Route;
use crate::event::{copy_text, encode};
use crate::event::{RowDelete, RowUpsert};

fn joined<'a>(
    cols: impl Iterator<Item = &'a MappedColumn>,
    f: impl Fn(&MappedColumn) -> String,
) -> String {
    joined_by(", ", cols, f)
}

fn joined_by<'a>(
    sep: &str,
    cols: impl Iterator<Item = &'a MappedColumn>,
    f: impl Fn(&MappedColumn) -> String,
) -> String {
    cols.map(f).collect::<Vec<_>>().join(sep)
}

/// The content columns of `alias` as a row to compare with another:
/// `(alias.a, alias.b, …)`. A row comparison uses each type's `=` (numbers
/// numerically: `1.0 = 1`); a column whose type has no `=` (json, xml,
/// point…) is compared as `to_jsonb(…)`, by its canonical JSON.
/// On Citus, where functions in an `ON CONFLICT` guard must be immutable
/// (`to_jsonb` is stable), json is compared as `::jsonb` (the same
/// canonical form) and the others by their text.
fn content_of(map: &ColumnMap, alias: &str, dialect: Dialect) -> Option<String> {
    let cols = joined(map.content().map(|(_, c)| c), |c| {
        let col = format!("{alias}.{}", c.quoted());
        match (c.sql_type.comparable, dialect) {
            (true, _) => col,
            (false, Dialect::Postgres) => format!("to_jsonb({col})"),
            (false, Dialect::Citus) if c.sql_type.name == "json" => format!("{col}::jsonb"),
            (false, Dialect::Citus) => format!("{col}::text"),
        }
    });
    (!cols.is_empty()).then(|| format!("ROW({cols})"))
}

/// Upserts typed rows; a re-delivered event (same content) is a no-op.
/// Rows travel by COPY into a staging table with the column types
/// (`stage.rs`); routes with composite columns send JSON that
/// `jsonb_to_record` converts instead.
pub(super) async fn upsert(
    conn: &mut PgConnection,
    stages: &mut Stages,
    route: &Route,
    map: &ColumnMap,
    rows: &[RowUpsert],
    dialect: Dialect,
) -> Result<TableCounts, sqlx::Error> {
    // On Citus the same-content count cannot read the table inside the
    // upsert (it would see the rows the upsert wrote): it runs first, from
    // the stage table.
    let separate = dialect.is_citus() && map.version.is_some();
    let loaded = match stage_of(route, map) {
        Some(stage) => {
            let data = encode::typed_rows(route, rows);
            Some(stage.load(conn, stages, &data, !dialect.is_citus()).await?)
        }
        None => None,
    };
    let from = loaded
        .as_ref()
        .map(|l| l.source_sql(input_params(route, map) + 1));
    let same = if separate {
        let sql = same_count_sql(route, map, dialect, from.as_deref());
        let q = bind_key_values(bind_input(sqlx::query(&sql), route, map, rows), map, rows);
        Some(q.fetch_one(&mut *conn).await?.get::<i64, _>(0))
    } else {
        None
    };
    let sql = upsert_sql(route, map, dialect, !separate, from.as_deref());
    let mut q = bind_input(sqlx::query(&sql), route, map, rows);
    if let Some(loaded) = loaded {
        q = loaded.bind(q);
    }
    let row = q.fetch_one(&mut *conn).await?;
    Ok(match same {
        Some(same) => TableCounts::of_upsert_with(rows.len(), &row, Some(same)),
        None => TableCounts::of_upsert(rows.len(), &row),
    })
}

/// [`upsert`] as one statement over bound rows, reading the change events'
/// target as `$1` and the rows as `$2` (`single.rs`). `None` for routes
/// whose rows travel as JSON (composite columns) or rows too many to bind.
pub(super) fn bound_upsert(
    route: &Route,
    map: &ColumnMap,
    rows: &[RowUpsert],
) -> Option<BoundUpsert> {
    // Each row's line is projected already: their lengths bound the chunk
    // from below, so a batch too large to bind is not encoded twice (here,
    // then for COPY on the long way).
    let lines: usize = rows
        .iter()
        .map(|r| r.row.as_ref().map_or(0, String::len) + 1)
        .sum();
    if !map.copyable() || lines > BIND_MAX_BYTES {
        return None;
    }
    let stage = stage_of(route, map)?;
    let loaded = stage.bound(&encode::typed_rows(route, rows))?;
    Some(BoundUpsert {
        sql: upsert_sql(
            route,
            map,
            Dialect::Postgres,
            true,
            Some(&loaded.source_sql(2)),
        ),
        stage: stage.create_statement(),
        target: route.is_cdc().then(|| route.table.quoted()),
        records: loaded.into_records(),
    })
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds what [`input_sql`] reads: for staged rows the target (change
/// events' markers); else the rows as JSON, and for change events their
/// keys, positions and the target.
fn bind_input<'q>(
    q: PgQuery<'q>,
    route: &Route,
    map: &ColumnMap,
    rows: &'q [RowUpsert],
) -> PgQuery<'q> {
    let t = route.table.quoted();
    if map.copyable() {
        return if route.is_cdc() { q.bind(t) } else { q };
    }
    let docs: Vec<&str> = rows
        .iter()
        .map(|r| r.row.as_deref().unwrap_or("{}"))
        .collect();
    let q = q.bind(docs);
    if !route.is_cdc() {
        return q;
    }
    let keys: Vec<&str> = rows.iter().map(|r| r.key.0.as_str()).collect();
    let positions = rows.iter().map(|r| r.version);
    super::versions::bind_all(q.bind(keys), route.version_is_wide(), positions).bind(t)
}

/// Binds, per key column, the rows' values of it as text (from the row
/// keys' JSON arrays): [`same_count_sql`]'s filter, which lets Citus prune
/// the read to the shards holding the batch's keys.
fn bind_key_values<'q>(q: PgQuery<'q>, map: &ColumnMap, rows: &[RowUpsert]) -> PgQuery<'q> {
    let parsed: Vec<Vec<serde_json::Value>> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.key.0).unwrap_or_default())
        .collect();
    (0..map.key.len()).fold(q, |q, n| {
        let values: Vec<Option<String>> = parsed
            .iter()
            .map(|k| match k.get(n) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(v.to_string()),
            })
            .collect();
        q.bind(values)
    })
}

/// The staging table of a typed route: its mapped columns with their types,
/// then (change events) the row key and position the markers are checked by.
/// None for routes COPY cannot load (`ColumnMap::copyable`): their rows
/// travel as JSON.
pub(super) fn stage_of(route: &Route, map: &ColumnMap) -> Option<Stage> {
    if !map.copyable() {
        return None;
    }
    let mut cols = joined(map.columns.iter(), |c| {
        format!("{} {}", c.quoted(), c.sql_type)
    });
    if route.is_cdc() {
        cols.push_str(", kpgs_key text, kpgs_position ");
        cols.push_str(route.version_sql_type());
    }
    Some(Stage::new(cols))
}

/// The upsert statement: the rows (staged, or converted by
/// `jsonb_to_record`), the content (or, for change events, the position)
/// guard, and the outcome counts.
fn upsert_sql(
    route: &Route,
    map: &ColumnMap,
    dialect: Dialect,
    with_same: bool,
    staged: Option<&str>,
) -> String {
    let t = route.table.quoted();
    let cols = joined(map.columns.iter(), MappedColumn::quoted);
    let keys = joined(map.key_columns(), MappedColumn::quoted);
    let on_conflict = on_conflict(route, map, dialect);
    // The count joins the written keys.
    let (same, returned) = match with_same.then(|| same_count(route, map)).flatten() {
        Some(same) => (same, format!(", {keys}")),
        None => ("NULL::bigint".into(), String::new()),
    };
    let input = input_sql(route, map, staged);
    format!(
        "WITH input AS ({input}), \
         applied AS ( \
           INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM input \
           ON CONFLICT ({keys}) {on_conflict} \
           RETURNING (xmax = 0) AS inserted{returned}) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {same} FROM applied"
    )
}

/// The statement's input rows, with the markers' filter for change events:
/// the staged rows (`staged`: the stage's FROM item, `Loaded::source_sql`),
/// or the rows bound as JSON.
fn input_sql(route: &Route, map: &ColumnMap, staged: Option<&str>) -> String {
    let target = if map.copyable() { "$1" } else { "$4" };
    if let Some(stage) = staged {
        return if route.is_cdc() {
            let filter = super::cdc::marker_filter(target, "s.kpgs_key", "s.kpgs_position");
            format!("SELECT s.* FROM {stage} s WHERE {filter}")
        } else {
            format!("SELECT * FROM {stage} s")
        };
    }
    let defs = joined(map.columns.iter(), |c| {
        format!("{} {}", c.quoted(), c.sql_type)
    });
    let (unnest, markers) = if route.is_cdc() {
        (
            format!(
                "UNNEST($1::text[], $2::text[], $3::{}[]) AS u(doc, key, position)",
                route.version_sql_type()
            ),
            format!(
                " WHERE {}",
                super::cdc::marker_filter(target, "u.key", "u.position")
            ),
        )
    } else {
        ("UNNEST($1::text[]) AS u(doc)".to_string(), String::new())
    };
    format!("SELECT r.* FROM {unnest}, LATERAL jsonb_to_record(u.doc::jsonb) AS r({defs}){markers}")
}

/// `ON CONFLICT … DO UPDATE … WHERE guard`: content changed (and version not
/// older), or, for change events, a newer source position.
fn on_conflict(route: &Route, map: &ColumnMap, dialect: Dialect) -> String {
    let set = joined(
        map.columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !map.key.contains(i))
            .map(|(_, c)| c),
        |c| format!("{0} = EXCLUDED.{0}", c.quoted()),
    );
    if set.is_empty() {
        return "DO NOTHING".to_string();
    }
    let changed = match (
        content_of(map, "t", dialect),
        content_of(map, "EXCLUDED", dialect),
    ) {
        (Some(a), Some(b)) => format!("{a} IS DISTINCT FROM {b}"),
        _ => "FALSE".into(),
    };
    let guard = match map.version.map(|i| map.columns[i].quoted()) {
        Some(v) if route.is_cdc() => format!("t.{v} IS NULL OR EXCLUDED.{v} > t.{v}"),
        Some(v) => format!("{changed} AND (t.{v} IS NULL OR EXCLUDED.{v} >= t.{v})"),
        None => changed,
    };
    format!("DO UPDATE SET {set} WHERE {guard}")
}

/// Versioned no-ops are duplicates (same content — or position — stored) or
/// stale; the pre-statement snapshot (`cur`) tells which. `None` without a
/// version: every no-op is a duplicate.
fn same_count(route: &Route, map: &ColumnMap) -> Option<String> {
    let v = map.version.map(|i| map.columns[i].quoted())?;
    let on = joined_by(" AND ", map.key_columns(), |c| {
        format!("cur.{0} = i.{0}", c.quoted())
    });
    let same = same_test(route, map, &v, Dialect::Postgres);
    let first = map.key_columns().next().expect("a key column").quoted();
    let written = joined_by(" AND ", map.key_columns(), |c| {
        format!("a.{0} = i.{0}", c.quoted())
    });
    // Only rows the upsert did not write can be duplicates, and in a stream
    // of new keys it writes most: they are matched to `applied` by a hash
    // join and skip the probe, which the CASE keeps above that join (a
    // filter on `i` alone would run for every row, below it). The probe is a
    // scalar subquery: one index lookup per remaining row, never a hash join
    // over the whole table (see `documents::upsert_sql`); the key is unique.
    Some(format!(
        "(SELECT count(*) FROM input i LEFT JOIN applied a ON {written} \
          WHERE CASE WHEN a.{first} IS NULL \
                     THEN (SELECT {same} FROM {} cur WHERE {on}) END)",
        route.table.quoted()
    ))
}

/// Whether the stored row `cur` holds what input row `i` would write.
fn same_test(route: &Route, map: &ColumnMap, v: &str, dialect: Dialect) -> String {
    match (
        content_of(map, "cur", dialect),
        content_of(map, "i", dialect),
    ) {
        _ if route.is_cdc() => format!("cur.{v} = i.{v}"),
        (Some(a), Some(b)) => format!("{a} IS NOT DISTINCT FROM {b}"),
        _ => "TRUE".into(),
    }
}

/// [`same_count`] as a statement of its own, for Citus: a join against the
/// stored rows of the batch's keys (`= ANY` per key column, bound by
/// [`bind_key_values`] after the input's parameters, prunes to their
/// shards), run before the upsert.
fn same_count_sql(
    route: &Route,
    map: &ColumnMap,
    dialect: Dialect,
    staged: Option<&str>,
) -> String {
    let v = map
        .version
        .map(|i| map.columns[i].quoted())
        .unwrap_or_default();
    let same = same_test(route, map, &v, dialect);
    let on = joined_by(" AND ", map.key_columns(), |c| {
        format!("cur.{0} = i.{0}", c.quoted())
    });
    let first = input_params(route, map) + 1;
    let prune = map
        .key_columns()
        .enumerate()
        .map(|(n, c)| {
            let t = &c.sql_type;
            format!("s.{} = ANY(${}::text[]::{t}[])", c.quoted(), first + n)
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "WITH input AS MATERIALIZED ({}) \
         SELECT count(*) FROM input i JOIN (SELECT * FROM {} s WHERE {prune}) cur ON {on} \
         WHERE {same}",
        input_sql(route, map, staged),
        route.table.quoted()
    )
}

/// How many parameters [`bind_input`] binds.
fn input_params(route: &Route, map: &ColumnMap) -> usize {
    match (map.copyable(), route.is_cdc()) {
        (true, false) => 0,
        (true, true) => 1,
        (false, false) => 1,
        (false, true) => 4,
    }
}

/// Deletes typed rows by key. Key values travel in their text form and are
/// cast to the key column types. Change events delete only rows not newer
/// than the delete and leave a marker (`store::cdc`).
pub(super) async fn delete(
    conn: &mut PgConnection,
    route: &Route,
    map: &ColumnMap,
    keys: &[RowDelete],
) -> Result<TableCounts, sqlx::Error> {
    let t = route.table.quoted();
    let casts: Vec<String> = map
        .key_columns()
        .enumerate()
        .map(|(n, c)| format!("(u.k::jsonb->>{n})::{} AS {}", c.sql_type, c.quoted()))
        .collect();
    let on = joined_by(" AND ", map.key_columns(), |c| {
        format!("t.{0} = d.{0}", c.quoted())
    });
    if let (true, Some(v)) = (route.is_cdc(), map.version) {
        let rows = format!(
            "SELECT u.k AS kpgs_key, u.position, {} FROM UNNEST($1::text[], $2::numeric[]) AS u(k, position)",
            casts.join(", ")
        );
        let version = format!("t.{}", map.columns[v].quoted());
        let sql = super::cdc::delete_sql(&t, &rows, &on, &version, "d.kpgs_key");
        return super::cdc::delete(conn, &sql, &t, keys).await;
    }
    let sql = format!(
        "DELETE FROM {t} t USING (SELECT {} FROM UNNEST($1::text[]) AS u(k)) d WHERE {on}",
        casts.join(", ")
    );
    let r = sqlx::query(&sql)
        .bind(keys.iter().map(|d| d.key.0.as_str()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok(TableCounts::of_deletes(keys.len(), r.rows_affected()))
}

/// The SQL expression of a typed route's position (version) column.
pub(super) fn version_column(map: &ColumnMap) -> Option<String> {
    map.version
        .map(|v| format!("t.{}", map.columns[v].quoted()))
}

/// Explains why the database rejected one row: converts each column on its
/// own (under a savepoint) and names the first column that fails, with its
/// value. Constraint violations (NOT NULL, CHECK, foreign keys) convert fine
/// and keep the database's own message, which names the column or constraint.
pub(super) async fn explain_rejection(
    conn: &mut PgConnection,
    map: &ColumnMap,
    row: &RowUpsert,
    db_error: String,
) -> Result<String, sqlx::Error> {
    let Some(text) = row.row.as_deref() else {
        return Ok(db_error);
    };
    let inputs = column_inputs(map, text, &row.payload);
    for (c, (input, shown)) in map.columns.iter().zip(inputs) {
        let Some(input) = input else { continue };
        let ty = &c.sql_type;
        sqlx::query("SAVEPOINT kpgs_probe")
            .execute(&mut *conn)
            .await?;
        let probe = probe_sql(map, c);
        let probe = sqlx::query(&probe).bind(&input).fetch_one(&mut *conn).await;
        match probe {
            Ok(_) => {
                sqlx::query("RELEASE SAVEPOINT kpgs_probe")
                    .execute(&mut *conn)
                    .await?;
            }
            Err(e) if is_data_error(&e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT kpgs_probe")
                    .execute(&mut *conn)
                    .await?;
                return Ok(format!(
                    "column {} ({ty}) cannot take {}: {}",
                    c.quoted(),
                    shorten(shown),
                    db_error_text(&e)
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(db_error)
}

/// What one column received, and how to show the value: for COPY rows the
/// field text (shown as the JSON the pointer found in the payload, when it
/// did), for JSON rows `{"column": value}` and the value.
fn column_inputs(map: &ColumnMap, text: &str, payload: &str) -> Vec<(Option<String>, String)> {
    if !map.copyable() {
        let values: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).unwrap_or_default();
        return map
            .columns
            .iter()
            .map(|c| match values.get(&c.name) {
                Some(v) => (
                    Some(serde_json::json!({ c.name.clone(): v }).to_string()),
                    v.to_string(),
                ),
                None => (None, String::new()),
            })
            .collect();
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(payload).ok();
    map.columns
        .iter()
        .zip(copy_text::split_line(text))
        .map(|(c, field)| {
            let from_payload = match (&c.source, &parsed) {
                (ColumnSource::Pointer(p), Some(v)) => p.get(v).map(ToString::to_string),
                _ => None,
            };
            let shown = from_payload.or_else(|| field.clone()).unwrap_or_default();
            (field, shown)
        })
        .collect()
}

/// A statement that converts one column's input as the upsert would.
fn probe_sql(map: &ColumnMap, c: &MappedColumn) -> String {
    if map.copyable() {
        format!("SELECT $1::{} IS NULL", c.sql_type)
    } else {
        format!(
            "SELECT r.{0} IS NULL FROM jsonb_to_record($1::jsonb) AS r({0} {1})",
            c.quoted(),
            c.sql_type
        )
    }
}

fn shorten(mut shown: String) -> String {
    if shown.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}
