//! The rights `run`, `replay` and `verify` need, checked at startup so a
//! role without one stops at once with the GRANT that gives it, instead of
//! failing its first batch (docs/operations.md, "Least privilege"):
//! `SELECT, INSERT, UPDATE, DELETE` on the sink's tables and the route
//! tables, `USAGE` on the sink's sequences, `TEMPORARY` on the database (the
//! staging tables), and `CREATE` on the schema where a route creates its
//! tables from change events or schemas.

use sqlx::PgPool;

use crate::config::route::Route;
use crate::types::quote_ident;

/// One line per right the connected role lacks.
pub async fn missing(pool: &PgPool, routes: &[Route]) -> Result<Vec<String>, sqlx::Error> {
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?;
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c \
         WHERE c.relkind IN ('r', 'p') AND c.relname LIKE 'sink\\_%' \
           AND c.relnamespace = current_schema()::regnamespace",
    )
    .fetch_all(pool)
    .await?;
    tables.extend(
        routes
            .iter()
            .filter(|r| !r.is_dynamic())
            .map(|r| r.table.quoted()),
    );
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s on %s: GRANT %s ON %s TO %I', p, t, p, t, $2) \
         FROM unnest($1::text[]) t, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p \
         WHERE to_regclass(t) IS NOT NULL AND NOT has_table_privilege(to_regclass(t), p)",
    )
    .bind(&tables)
    .bind(&role)
    .fetch_all(pool)
    .await?;
    out.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT format('USAGE on sequence %s: GRANT USAGE ON SEQUENCE %s TO %I', \
                           s.oid::regclass, s.oid::regclass, $1) \
             FROM pg_class s WHERE s.relname LIKE 'sink\\_%' \
               AND s.relnamespace = current_schema()::regnamespace \
               AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE') END",
        )
        .bind(&role)
        .fetch_all(pool)
        .await?,
    );
    out.extend(missing_temp(pool, &role).await?);
    for schema in creating_schemas(routes) {
        // A schema that does not exist yet is created by the sink, which
        // needs CREATE on the database instead.
        let can: bool = sqlx::query_scalar(
            "SELECT COALESCE( \
               (SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n \
                WHERE n.nspname = $1), \
               has_database_privilege(current_database(), 'CREATE'))",
        )
        .bind(&schema)
        .fetch_one(pool)
        .await?;
        if !can {
            out.push(format!(
                "CREATE on schema {s} (a route creates its tables there): CREATE SCHEMA IF NOT \
                 EXISTS {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {}",
                quote_ident(&role),
                s = quote_ident(&schema)
            ));
        }
    }
    Ok(out)
}

/// TEMPORARY on the database: the staging tables.
async fn missing_temp(pool: &PgPool, role: &str) -> Result<Option<String>, sqlx::Error> {
    let temp: bool =
        sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'TEMP')")
            .fetch_one(pool)
            .await?;
    Ok((!temp).then(|| {
        format!(
            "TEMPORARY on the database (staging tables): GRANT TEMPORARY ON DATABASE <db> TO {}",
            quote_ident(role)
        )
    }))
}

/// The schemas routes create tables in while they run (change events and
/// registry schemas), where the schema is fixed.
fn creating_schemas(routes: &[Route]) -> Vec<String> {
    let mut out: Vec<String> = routes
        .iter()
        .filter(|r| r.is_dynamic())
        .filter_map(|r| match &r.template {
            Some(t) => t.fixed_schema().map(str::to_string),
            None => r.table.schema.clone(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
