//! Typed tables that follow a registry schema (`create_table = true`).
//!
//! At setup the route's columns are derived from the latest value schema of
//! the topic's subject (`<topic>-value`, the default subject naming): each
//! field a column, nested records flattened (`format::columns`). A missing
//! table is created with those columns and the route's `key` as primary key.
//!
//! With `evolve = "add_columns"`, every schema version seen later (at setup
//! and whenever a message names a schema id not seen before) is compared with
//! the table: a field that has no column yet becomes a nullable column
//! (`ALTER TABLE … ADD COLUMN`), so older messages, which lack it, still fit.
//! A version that would need a column dropped or its type changed is refused:
//! the table is never narrowed, and the sink stops with a message naming the
//! column, rather than writing rows that no longer mean what they did.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};

use crate::config::columns::ColumnSpec;
use crate::config::route::{Evolve, RouteSpec, RowKeySource};
use crate::format::{self, Schema};
use crate::types::quote_ident;

/// Why a schema cannot shape the route's table.
#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    #[error("table {table}: {problem}")]
    Refused { table: String, problem: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The columns a schema gives: column name → JSON pointer.
pub fn columns_of(schema: &Schema) -> BTreeMap<String, String> {
    format::columns(schema)
        .into_iter()
        .map(|c| (c.name, c.pointer))
        .collect()
}

/// The route's column mapping from `columns` (name → pointer), validated
/// like configured `columns` (the key must name mapped columns).
pub fn mapping(
    spec: &RouteSpec,
    columns: &BTreeMap<String, String>,
    schema_id: u32,
) -> Result<ColumnSpec, DerivedError> {
    let refused = |problem: String| DerivedError::Refused {
        table: spec.table.to_string(),
        problem,
    };
    let RowKeySource::Columns(key) = &spec.key else {
        return Err(refused(
            "a schema-derived table needs `key` to name columns".into(),
        ));
    };
    let mut problems = Vec::new();
    let map = ColumnSpec::from_config(
        "route",
        columns,
        key,
        spec.version.as_deref(),
        spec.is_cdc(),
        &mut problems,
    );
    match map {
        Some(m) if problems.is_empty() => Ok(m),
        _ => Err(refused(format!(
            "schema {schema_id} does not fit the route: {}",
            problems.join("; ")
        ))),
    }
}

/// Creates the table if it is missing, or adds the columns `schema` has and
/// the table lacks (`evolve = "add_columns"`). Refuses type changes, and
/// added fields when the route does not evolve. Serialized by an advisory
/// lock, so replicas starting together do not race. Returns the schema's
/// columns.
pub async fn shape_table(
    pool: &PgPool,
    spec: &RouteSpec,
    schema: &Schema,
) -> Result<BTreeMap<String, String>, DerivedError> {
    let columns = columns_of(schema);
    let map = mapping(spec, &columns, schema.id())?;
    let derived = format::columns(schema);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kafka-pg-sink setup'))")
        .execute(&mut *tx)
        .await?;
    let t = spec.table.quoted();
    let existing: Vec<(String, i64)> = sqlx::query(
        "SELECT attname::text, atttypid::bigint FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
    )
    .bind(&t)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    if existing.is_empty() {
        create(&mut tx, spec, &map, &derived).await?;
    } else {
        for c in &derived {
            match existing.iter().find(|(name, _)| *name == c.name) {
                Some((_, oid)) => same_type(&mut tx, spec, c, *oid).await?,
                None if spec.evolve == Evolve::AddColumns => {
                    sqlx::query(&format!(
                        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {}",
                        quote_ident(&c.name),
                        c.pg_type
                    ))
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(table = %spec.table, column = %c.name, r#type = %c.pg_type, schema_id = schema.id(), "added a column for a new schema field");
                }
                None => {
                    return Err(DerivedError::Refused {
                        table: spec.table.to_string(),
                        problem: format!(
                            "schema {} has field {} (column {}) that the table lacks; \
                             set evolve = \"add_columns\" or add the column",
                            schema.id(),
                            c.pointer,
                            quote_ident(&c.name)
                        ),
                    })
                }
            }
        }
    }
    tx.commit().await?;
    Ok(columns)
}

async fn create(
    tx: &mut sqlx::PgConnection,
    spec: &RouteSpec,
    map: &ColumnSpec,
    derived: &[format::ColumnSpec],
) -> Result<(), DerivedError> {
    if let Some(s) = &spec.table.schema {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
            .execute(&mut *tx)
            .await?;
    }
    let key: Vec<String> = map.key_columns().map(|c| c.quoted()).collect();
    let cols: Vec<String> = derived
        .iter()
        .map(|c| {
            let is_key = map.key_columns().any(|k| k.name == c.name);
            let null = if is_key || !c.nullable {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {}{null}", quote_ident(&c.name), c.pg_type)
        })
        .collect();
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        spec.table.quoted(),
        cols.join(", "),
        key.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    tracing::info!(table = %spec.table, columns = cols.len(), "created the table from the schema");
    Ok(())
}

/// A field's derived type must be the column's type (typmods aside).
async fn same_type(
    tx: &mut sqlx::PgConnection,
    spec: &RouteSpec,
    c: &format::ColumnSpec,
    column_oid: i64,
) -> Result<(), DerivedError> {
    let (wanted, have): (i64, String) =
        sqlx::query_as("SELECT $1::regtype::oid::bigint, format_type($2::oid, NULL)")
            .bind(&c.pg_type)
            .bind(column_oid)
            .fetch_one(&mut *tx)
            .await?;
    if wanted == column_oid {
        return Ok(());
    }
    Err(DerivedError::Refused {
        table: spec.table.to_string(),
        problem: format!(
            "field {} would change column {} from {have} to {}; \
             tables are only ever widened by new columns",
            c.pointer,
            quote_ident(&c.name),
            c.pg_type
        ),
    })
}
