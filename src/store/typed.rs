//! Statements for typed tables (routes with `columns`, see `config::columns`
//! and `event::row`).
//!
//! Rows travel as `{"column": value}` JSON objects, bound as one text array.
//! `jsonb_to_record` converts them to the column types read at startup, so
//! Postgres does every conversion with its own input rules. All identifiers
//! are quoted. Types come from `format_type()`, which quotes as needed.

use sqlx::PgConnection;

use super::stage::{Fresh, Stage};
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
fn content_of(map: &ColumnMap, alias: &str) -> Option<String> {
    let cols = joined(map.content().map(|(_, c)| c), |c| {
        if c.sql_type.comparable {
            format!("{alias}.{}", c.quoted())
        } else {
            format!("to_jsonb({alias}.{})", c.quoted())
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
    fresh: &mut Fresh,
    route: &Route,
    map: &ColumnMap,
    rows: &[RowUpsert],
) -> Result<TableCounts, sqlx::Error> {
    let t = route.table.quoted();
    let sql = upsert_sql(route, map);
    if let Some(stage) = stage_of(route, map) {
        let data = encode::typed_rows(route, rows);
        stage.fill(conn, fresh, &data).await?;
        let mut query = sqlx::query(&sql);
        if route.is_cdc() {
            query = query.bind(t);
        }
        let row = query.fetch_one(&mut *conn).await?;
        return Ok(TableCounts::of_upsert(rows.len(), &row));
    }
    let docs: Vec<&str> = rows
        .iter()
        .map(|r| r.row.as_deref().unwrap_or("{}"))
        .collect();
    let mut query = sqlx::query(&sql).bind(docs);
    if route.is_cdc() {
        let keys: Vec<&str> = rows.iter().map(|r| r.key.0.as_str()).collect();
        let positions = rows.iter().map(|r| r.version);
        query =
            super::versions::bind_all(query.bind(keys), route.version_is_wide(), positions).bind(t);
    }
    let row = query.fetch_one(&mut *conn).await?;
    Ok(TableCounts::of_upsert(rows.len(), &row))
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
fn upsert_sql(route: &Route, map: &ColumnMap) -> String {
    let t = route.table.quoted();
    let cols = joined(map.columns.iter(), MappedColumn::quoted);
    let keys = joined(map.key_columns(), MappedColumn::quoted);
    let on_conflict = on_conflict(route, map);
    let same = same_count(route, map);
    let input = input_sql(route, map);
    format!(
        "WITH input AS ({input}), \
         applied AS ( \
           INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM input \
           ON CONFLICT ({keys}) {on_conflict} \
           RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {same} FROM applied"
    )
}

/// The statement's input rows, with the markers' filter for change events.
fn input_sql(route: &Route, map: &ColumnMap) -> String {
    let target = if map.copyable() { "$1" } else { "$4" };
    if let Some(stage) = stage_of(route, map) {
        let stage = stage.name;
        return if route.is_cdc() {
            let filter = super::cdc::marker_filter(target, "s.kpgs_key", "s.kpgs_position");
            format!("SELECT s.* FROM {stage} s WHERE {filter}")
        } else {
            format!("SELECT * FROM {stage}")
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
fn on_conflict(route: &Route, map: &ColumnMap) -> String {
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
    let changed = match (content_of(map, "t"), content_of(map, "EXCLUDED")) {
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
/// stale; the pre-statement snapshot (`cur`) tells which.
fn same_count(route: &Route, map: &ColumnMap) -> String {
    let Some(v) = map.version.map(|i| map.columns[i].quoted()) else {
        return "NULL::bigint".into();
    };
    let on = joined_by(" AND ", map.key_columns(), |c| {
        format!("cur.{0} = i.{0}", c.quoted())
    });
    let same = match (content_of(map, "cur"), content_of(map, "i")) {
        _ if route.is_cdc() => format!("cur.{v} = i.{v}"),
        (Some(a), Some(b)) => format!("{a} IS NOT DISTINCT FROM {b}"),
        _ => "TRUE".into(),
    };
    // A scalar subquery: one index probe per row, never a hash join over the
    // whole table (see `documents::upsert_sql`); the key is unique.
    format!(
        "(SELECT count(*) FROM input i WHERE (SELECT {same} FROM {} cur WHERE {on}))",
        route.table.quoted()
    )
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
