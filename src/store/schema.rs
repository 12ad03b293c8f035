//! Creating and checking the tables routes write to.

use sqlx::{PgPool, Row};

use crate::columns::ColumnMap;
use crate::config::Route;
use crate::types::{quote_ident, TableName};

/// Creates the document-shaped table of every route if missing. Serialized by
/// an advisory lock so replicas starting together do not race on the catalog.
pub async fn ensure_tables(pool: &PgPool, routes: &[Route]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kafka-pg-sink setup'))")
        .execute(&mut *tx)
        .await?;
    // Typed tables belong to the user; only document tables are created.
    for r in routes.iter().filter(|r| r.columns.is_none()) {
        if let Some(s) = &r.table.schema {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
                .execute(&mut *tx)
                .await?;
        }
        // No column depends on wall-clock time: replaying the same input leaves
        // the table byte-identical. The key uses the "C" collation: equality is
        // byte equality either way, and btree comparisons become memcmp instead
        // of locale-aware strcoll (the top Postgres symbol in the profile).
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} ( \
               key             text    COLLATE \"C\" PRIMARY KEY, \
               event_hash      bytea   NOT NULL, \
               payload         jsonb   NOT NULL, \
               version         bigint, \
               kafka_topic     text    NOT NULL, \
               kafka_partition integer NOT NULL, \
               kafka_offset    bigint  NOT NULL)",
            r.table.quoted()
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Verifies each route's table has the columns the upsert writes and a
/// unique constraint on its key; returns one message per problem. Typed
/// routes also learn their column types here (needed before any commit).
pub async fn check_tables(pool: &PgPool, routes: &mut [Route]) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();
    for r in routes.iter_mut() {
        let rel: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(r.table.quoted())
            .fetch_one(pool)
            .await?;
        let Some(oid) = rel else {
            problems.push(if r.columns.is_some() {
                format!(
                    "table {} does not exist (routes with `columns` write into an existing table)",
                    r.table
                )
            } else {
                format!(
                    "table {} does not exist (run `kafka-pg-sink setup`)",
                    r.table
                )
            });
            continue;
        };
        if let Some(map) = &mut r.columns {
            resolve_columns(pool, oid, &r.table, map, &mut problems).await?;
            continue;
        }
        let cols = table_columns(pool, oid).await?;
        for c in [
            "key",
            "event_hash",
            "payload",
            "version",
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
        ] {
            if !cols.iter().any(|x| x.name == c) {
                problems.push(format!("table {} has no column `{c}`", r.table));
            }
        }
        let unique = has_unique_index_on(pool, oid, &["key"]).await?;
        if !unique {
            problems.push(format!(
                "table {}: column `key` needs a unique constraint",
                r.table
            ));
        }
    }
    Ok(problems)
}

/// Typed tables: every mapped column exists and can be written, the key
/// columns carry a unique index `ON CONFLICT` can use, unmapped NOT NULL
/// columns have defaults, the version column is an integer; records each
/// mapped column's type.
async fn resolve_columns(
    pool: &PgPool,
    oid: i64,
    table: &TableName,
    map: &mut ColumnMap,
    problems: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    let cols = table_columns(pool, oid).await?;
    for m in &mut map.columns {
        match cols.iter().find(|c| c.name == m.name) {
            None => problems.push(format!(
                "table {table} has no column {} (mapped in `columns`)",
                quote_ident(&m.name)
            )),
            Some(c) if c.generated || c.identity_always => problems.push(format!(
                "table {table}: column {} is generated or GENERATED ALWAYS AS IDENTITY and cannot be written",
                quote_ident(&m.name)
            )),
            Some(c) => m.sql_type = Some(c.sql_type.clone()),
        }
    }
    for c in &cols {
        let mapped = map.columns.iter().any(|m| m.name == c.name);
        if !mapped && c.not_null && !c.has_default && !c.generated {
            problems.push(format!(
                "table {table}: column {} is NOT NULL without a default and not mapped, so every insert would fail",
                quote_ident(&c.name)
            ));
        }
    }
    if let Some(v) = map.version {
        let v = &map.columns[v];
        if let Some(t) = &v.sql_type {
            if !["smallint", "integer", "bigint"].contains(&t.as_str()) && !t.starts_with("numeric")
            {
                problems.push(format!(
                    "table {table}: version column {} is {t}; it must be an integer type",
                    quote_ident(&v.name)
                ));
            }
        }
    }
    let key: Vec<&str> = map.key_columns().map(|c| c.name.as_str()).collect();
    if !has_unique_index_on(pool, oid, &key).await? {
        problems.push(format!(
            "table {table}: key ({}) needs a primary key or unique index on exactly those columns \
             (no partial or expression index) for ON CONFLICT",
            key.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// Rows in `pg_attribute` order: name, type, NOT NULL, has default,
/// generated/identity ("always" identities cannot be written).
struct TableColumn {
    name: String,
    sql_type: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
    identity_always: bool,
}

async fn table_columns(pool: &PgPool, oid: i64) -> Result<Vec<TableColumn>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull, \
                atthasdef OR attidentity <> '', attgenerated <> '', attidentity = 'a' \
         FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| TableColumn {
            name: r.get(0),
            sql_type: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            generated: r.get(4),
            identity_always: r.get(5),
        })
        .collect())
}

/// Whether a non-partial unique index on plain columns (or the primary key)
/// covers exactly `key`, in any order: what `ON CONFLICT (key)` can infer.
async fn has_unique_index_on(pool: &PgPool, oid: i64, key: &[&str]) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
         FROM pg_index i \
         WHERE i.indrelid = $1::oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let mut key: Vec<&str> = key.to_vec();
    key.sort_unstable();
    Ok(rows.iter().any(|r| {
        let mut cols: Vec<String> = r.get(0);
        cols.sort_unstable();
        cols == key
    }))
}
