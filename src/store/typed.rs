//! Statements for typed tables (routes with `columns`, see `columns.rs`).
//!
//! Rows travel as `{"column": value}` JSON objects, bound as one text array.
//! `jsonb_to_record` converts them to the column types read at startup, so
//! Postgres does every conversion with its own input rules. All identifiers
//! are quoted. Types come from `format_type()`, which quotes as needed.

use sqlx::PgConnection;

use super::{db_error_text, is_data_error, TableCounts};
use crate::batch::{RowDelete, RowUpsert};
use crate::columns::{ColumnMap, MappedColumn};
use crate::route::Route;

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

/// `to_jsonb(ROW(alias.c, …))` over the content columns: compares values the
/// way jsonb does (numbers numerically, everything else by its canonical
/// text), which works for every type, including those without `=` (json).
fn content_of(map: &ColumnMap, alias: &str) -> Option<String> {
    let cols = joined(map.content().map(|(_, c)| c), |c| {
        format!("{alias}.{}", c.quoted())
    });
    (!cols.is_empty()).then(|| format!("to_jsonb(ROW({cols}))"))
}

/// Upserts typed rows; a re-delivered event (same content) is a no-op.
pub(super) async fn upsert(
    conn: &mut PgConnection,
    route: &Route,
    map: &ColumnMap,
    rows: &[RowUpsert],
) -> Result<TableCounts, sqlx::Error> {
    let t = route.table.quoted();
    let sql = upsert_sql(route, map);
    let mut query = sqlx::query(&sql).bind(
        rows.iter()
            .map(|r| r.row.as_deref().unwrap_or("{}"))
            .collect::<Vec<_>>(),
    );
    if route.is_cdc() {
        query = query
            .bind(rows.iter().map(|r| r.key.0.as_str()).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| r.version.unwrap_or(i64::MIN))
                    .collect::<Vec<_>>(),
            )
            .bind(&t);
    }
    let row = query.fetch_one(&mut *conn).await?;
    Ok(TableCounts::of_upsert(rows.len(), &row))
}

/// The upsert statement: rows converted by `jsonb_to_record`, the content
/// (or, for change events, the position) guard, and the outcome counts.
fn upsert_sql(route: &Route, map: &ColumnMap) -> String {
    let t = route.table.quoted();
    let defs = joined(map.columns.iter(), |c| {
        format!("{} {}", c.quoted(), c.sql_type)
    });
    let cols = joined(map.columns.iter(), MappedColumn::quoted);
    let keys = joined(map.key_columns(), MappedColumn::quoted);
    let set = joined(
        map.columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !map.key.contains(i))
            .map(|(_, c)| c),
        |c| format!("{0} = EXCLUDED.{0}", c.quoted()),
    );
    let changed = match (content_of(map, "t"), content_of(map, "EXCLUDED")) {
        (Some(a), Some(b)) => format!("{a} IS DISTINCT FROM {b}"),
        _ => "FALSE".into(),
    };
    let version = map.version.map(|i| map.columns[i].quoted());
    let guard = match &version {
        // Change events: identified by their source position (see documents.rs).
        Some(v) if route.is_cdc() => format!("t.{v} IS NULL OR EXCLUDED.{v} > t.{v}"),
        Some(v) => format!("{changed} AND (t.{v} IS NULL OR EXCLUDED.{v} >= t.{v})"),
        None => changed,
    };
    let on_conflict = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {set} WHERE {guard}")
    };
    // Versioned no-ops are duplicates (same content stored) or stale; the
    // pre-statement snapshot (`cur`) tells which.
    let same = if version.is_some() {
        let on = joined_by(" AND ", map.key_columns(), |c| {
            format!("cur.{0} = i.{0}", c.quoted())
        });
        let same_content = match (content_of(map, "cur"), content_of(map, "i")) {
            _ if route.is_cdc() => {
                let v = version.as_deref().unwrap_or_default();
                format!("cur.{v} = i.{v}")
            }
            (Some(a), Some(b)) => format!("{a} IS NOT DISTINCT FROM {b}"),
            _ => "TRUE".into(),
        };
        format!("(SELECT count(*) FROM input i JOIN {t} cur ON {on} AND {same_content})")
    } else {
        "NULL::bigint".into()
    };
    // Change events: also the row key and position, for the markers.
    let (unnest, markers) = if route.is_cdc() {
        (
            "UNNEST($1::text[], $2::text[], $3::int8[]) AS u(doc, key, position)",
            format!(
                " WHERE {}",
                super::cdc::marker_filter("$4", "u.key", "u.position")
            ),
        )
    } else {
        ("UNNEST($1::text[]) AS u(doc)", String::new())
    };
    format!(
        "WITH input AS ( \
           SELECT r.* FROM {unnest}, \
             LATERAL jsonb_to_record(u.doc::jsonb) AS r({defs}){markers}), \
         applied AS ( \
           INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM input \
           ON CONFLICT ({keys}) {on_conflict} \
           RETURNING (xmax = 0) AS inserted) \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {same} FROM applied"
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
            "SELECT u.k AS kpgs_key, u.position, {} FROM UNNEST($1::text[], $2::int8[]) AS u(k, position)",
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
    let Some(doc) = row.row.as_deref() else {
        return Ok(db_error);
    };
    let Ok(serde_json::Value::Object(values)) = serde_json::from_str(doc) else {
        return Ok(db_error);
    };
    for c in &map.columns {
        let Some(value) = values.get(&c.name) else {
            continue;
        };
        let ty = &c.sql_type;
        let one = serde_json::json!({ c.name.clone(): value }).to_string();
        sqlx::query("SAVEPOINT kpgs_probe")
            .execute(&mut *conn)
            .await?;
        let probe = sqlx::query(&format!(
            "SELECT r.{0} IS NULL FROM jsonb_to_record($1::jsonb) AS r({0} {ty})",
            c.quoted()
        ))
        .bind(&one)
        .fetch_one(&mut *conn)
        .await;
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
                let mut shown = value.to_string();
                if shown.len() > 200 {
                    let cut = (0..=200)
                        .rev()
                        .find(|&i| shown.is_char_boundary(i))
                        .unwrap_or(0);
                    shown.truncate(cut);
                    shown.push('…');
                }
                return Ok(format!(
                    "column {} ({ty}) cannot take {shown}: {}",
                    c.quoted(),
                    db_error_text(&e)
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(db_error)
}
