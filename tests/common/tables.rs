//! Comparing a replicated table with its source, column by column, in one
//! rendering (UTC, Postgres's own text output), so "identical" means every
//! value prints the same.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};

/// A table's columns with their types as `format_type` prints them.
pub async fn column_types(pool: &PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The primary key columns of a table.
pub async fn primary_key(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Rows of `table` keyed by the text of its primary key: each value of
/// `exprs` (SQL over the table's columns, e.g. `"col"` or `hstore_to_jsonb(hs)`)
/// as text, NULL as `None`.
pub async fn rows_as_text(
    pool: &PgPool,
    table: &str,
    key: &[String],
    exprs: &[String],
) -> BTreeMap<String, Vec<Option<String>>> {
    try_rows_as_text(pool, table, key, exprs)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`rows_as_text`], or the error (a table or column not there yet).
pub async fn try_rows_as_text(
    pool: &PgPool,
    table: &str,
    key: &[String],
    exprs: &[String],
) -> Result<BTreeMap<String, Vec<Option<String>>>, String> {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let key_expr = key
        .iter()
        .map(|k| format!("{}::text", quote(k)))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    let cols = exprs
        .iter()
        .map(|e| format!("({e})::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {key_expr}, ARRAY[{cols}]::text[] FROM {table}");
    Ok(sqlx::query(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| format!("{sql}: {e}"))?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<Vec<Option<String>>, _>(1)))
        .collect())
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Asserts that `target` holds the rows of `source`, compared through
/// `exprs[i] = (source expression, target expression, column name)`.
pub async fn assert_same_rows(
    source: (&PgPool, &str),
    target: (&PgPool, &str),
    key: &[String],
    exprs: &[(String, String, String)],
) {
    let src = rows_as_text(
        source.0,
        source.1,
        key,
        &exprs.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
    )
    .await;
    let dst = rows_as_text(
        target.0,
        target.1,
        key,
        &exprs.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
    )
    .await;
    let src_keys: Vec<&String> = src.keys().collect();
    let dst_keys: Vec<&String> = dst.keys().collect();
    assert_eq!(src_keys, dst_keys, "{}: the same keys", target.1);
    for (k, s) in &src {
        let d = &dst[k];
        for (i, (sv, dv)) in s.iter().zip(d).enumerate() {
            assert_eq!(
                sv, dv,
                "{} key {k}, column {}: source {:?}, target {:?}",
                target.1, exprs[i].2, sv, dv
            );
        }
    }
}
