//! Creating and checking the tables routes write to.

use sqlx::{PgPool, Row};

use super::dialect::{check_distribution, distribute};
use crate::config::columns::{ColumnKind, ColumnSpec, SqlType};
use crate::config::route::{Route, RouteSpec};
use crate::types::{quote_ident, TableName};

/// Creates the document-shaped table of every route if missing. Serialized by
/// an advisory lock so replicas starting together do not race on the catalog.
pub async fn ensure_tables<C>(pool: &PgPool, routes: &[Route<C>]) -> Result<(), sqlx::Error> {
    // Typed tables belong to the user; only document tables are created.
    // Templated routes create theirs when they meet them (`store::replica`).
    // Existing tables need no DDL (and no CREATE right: `run` may be a
    // role with data rights only).
    let mut missing = Vec::new();
    for r in routes.iter().filter(|r| r.is_document() && !r.is_dynamic()) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(r.table.quoted())
            .fetch_one(pool)
            .await?;
        if !exists {
            missing.push(r);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kafka-pg-sink setup'))")
        .execute(&mut *tx)
        .await?;
    for r in missing {
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
               version         {}, \
               kafka_topic     text    NOT NULL, \
               kafka_partition integer NOT NULL, \
               kafka_offset    bigint  NOT NULL)",
            r.table.quoted(),
            r.version_sql_type()
        ))
        .execute(&mut *tx)
        .await?;
        // On Citus, sharded by key (the sink's own tables stay on the
        // coordinator: the offsets commit with the rows through 2PC).
        distribute(&mut tx, &r.table, "key", None).await?;
    }
    tx.commit().await
}

/// The problems that make route tables unusable, one line each.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("route tables are not usable:\n  - {}", .0.join("\n  - "))]
    Unusable(Vec<String>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Checks each route's table against the catalog and returns the routes
/// resolved: document tables have the columns the upsert writes and a unique
/// key; typed tables have every mapped column (writable), a unique index on
/// exactly the key, defaults for unmapped NOT NULL columns, an integer
/// version column — and each mapped column's SQL type is read here.
pub async fn resolve_routes(pool: &PgPool, specs: &[RouteSpec]) -> Result<Vec<Route>, SchemaError> {
    let mut problems = Vec::new();
    let mut routes = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.is_dynamic() {
            // Its tables are resolved as they are met (instances).
            let route = spec.clone().map_columns(|_| {
                Err(SchemaError::Unusable(vec![format!(
                    "route for {}: a table per source takes no `columns`",
                    spec.table
                )]))
            })?;
            routes.push(route);
            continue;
        }
        let rel: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(spec.table.quoted())
            .fetch_one(pool)
            .await?;
        let Some(oid) = rel else {
            problems.push(if spec.is_typed() {
                format!(
                    "table {} does not exist (routes with `columns` write into an existing table)",
                    spec.table
                )
            } else {
                format!(
                    "table {} does not exist (run `kafka-pg-sink setup`)",
                    spec.table
                )
            });
            continue;
        };
        let cols = table_columns(pool, oid).await?;
        let before = problems.len();
        let key: Vec<&str> = match &spec.columns {
            Some(map) => {
                check_typed(pool, oid, &spec.table, map, &cols, &mut problems).await?;
                map.key_columns().map(|c| c.name.as_str()).collect()
            }
            None => {
                check_document(pool, oid, &spec.table, &cols, &mut problems).await?;
                vec!["key"]
            }
        };
        let mut conn = pool.acquire().await?;
        problems.extend(check_distribution(&mut conn, &spec.table, &key).await?);
        if problems.len() > before {
            continue;
        }
        let resolved = spec.clone().map_columns(|map| {
            map.resolve(|name| {
                cols.iter()
                    .find(|c| c.name == name)
                    .map(|c| c.sql_type.clone())
            })
        });
        match resolved {
            Ok(r) => routes.push(r),
            Err(e) => problems.push(format!("table {}: {e}", spec.table)),
        }
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(SchemaError::Unusable(problems))
    }
}

async fn check_document(
    pool: &PgPool,
    oid: i64,
    table: &TableName,
    cols: &[TableColumn],
    problems: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    for c in DOCUMENT_COLUMNS {
        if !cols.iter().any(|x| x.name == c) {
            problems.push(format!("table {table} has no column `{c}`"));
        }
    }
    if !has_unique_index_on(pool, oid, &["key"]).await? {
        problems.push(format!(
            "table {table}: column `key` needs a unique constraint"
        ));
    }
    Ok(())
}

/// The columns a document table's upsert writes.
const DOCUMENT_COLUMNS: [&str; 7] = [
    "key",
    "event_hash",
    "payload",
    "version",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
];

/// Typed tables: every mapped column exists and can be written, the key
/// columns carry a unique index `ON CONFLICT` can use, unmapped NOT NULL
/// columns have defaults, the version column is an integer.
async fn check_typed(
    pool: &PgPool,
    oid: i64,
    table: &TableName,
    map: &ColumnSpec,
    cols: &[TableColumn],
    problems: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    for m in &map.columns {
        match cols.iter().find(|c| c.name == m.name) {
            None => problems.push(format!(
                "table {table} has no column {} (mapped in `columns`)",
                m.quoted()
            )),
            Some(c) if c.generated || c.identity_always => problems.push(format!(
                "table {table}: column {} is generated or GENERATED ALWAYS AS IDENTITY and cannot be written",
                m.quoted()
            )),
            Some(_) => {}
        }
    }
    for c in cols {
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
        if let Some(c) = cols.iter().find(|c| c.name == v.name) {
            let t = &c.sql_type.name;
            if !["smallint", "integer", "bigint"].contains(&t.as_str()) && !t.starts_with("numeric")
            {
                problems.push(format!(
                    "table {table}: version column {} is {t}; it must be an integer type",
                    v.quoted()
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
    sql_type: SqlType,
    not_null: bool,
    has_default: bool,
    generated: bool,
    identity_always: bool,
}

async fn table_columns(pool: &PgPool, oid: i64) -> Result<Vec<TableColumn>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                a.atthasdef OR a.attidentity <> '', a.attgenerated <> '', a.attidentity = 'a', \
                CASE WHEN coalesce(b.typname, t.typname) IN ('json', 'jsonb') THEN 'json' \
                     WHEN coalesce(b.typtype, t.typtype) = 'c' OR e.typtype = 'c' THEN 'structured' \
                     WHEN coalesce(b.typcategory, t.typcategory) = 'A' THEN 'array' \
                     ELSE 'scalar' END, \
                EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = '=' \
                          AND o.oprleft = coalesce(b.oid, t.oid) AND o.oprright = coalesce(b.oid, t.oid)) \
                OR (coalesce(b.typcategory, t.typcategory) = 'A' AND EXISTS ( \
                    SELECT 1 FROM pg_operator o WHERE o.oprname = '=' \
                      AND o.oprleft = e.oid AND o.oprright = e.oid)) \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype \
         LEFT JOIN pg_type e ON e.oid = coalesce(b.typelem, t.typelem) AND e.oid <> 0 \
         WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| TableColumn {
            name: r.get(0),
            sql_type: SqlType {
                name: r.get(1),
                kind: match r.get::<String, _>(6).as_str() {
                    "json" => ColumnKind::Json,
                    "structured" => ColumnKind::Structured,
                    "array" => ColumnKind::Array,
                    _ => ColumnKind::Scalar,
                },
                comparable: r.get(7),
            },
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
