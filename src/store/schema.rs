//! Creating and checking the tables routes write to.

use sqlx::{PgPool, Row};

use crate::config::Route;
use crate::types::quote_ident;

/// Creates the document-shaped table of every route if missing. Serialized by
/// an advisory lock so replicas starting together do not race on the catalog.
pub async fn ensure_tables(pool: &PgPool, routes: &[Route]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kafka-pg-sink setup'))")
        .execute(&mut *tx)
        .await?;
    for r in routes {
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
/// unique constraint on `key`; returns one message per problem.
pub async fn check_tables(pool: &PgPool, routes: &[Route]) -> Result<Vec<String>, sqlx::Error> {
    let mut problems = Vec::new();
    for r in routes {
        let rel: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(r.table.quoted())
            .fetch_one(pool)
            .await?;
        let Some(oid) = rel else {
            problems.push(format!(
                "table {} does not exist (run `kafka-pg-sink setup`)",
                r.table
            ));
            continue;
        };
        let cols: Vec<String> = sqlx::query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
        )
        .bind(oid)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
        for c in [
            "key",
            "event_hash",
            "payload",
            "version",
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
        ] {
            if !cols.iter().any(|x| x == c) {
                problems.push(format!("table {} has no column `{c}`", r.table));
            }
        }
        let unique: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
               ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::oid AND i.indisunique AND i.indnatts = 1 AND a.attname = 'key')",
        )
        .bind(oid)
        .fetch_one(pool)
        .await?;
        if !unique {
            problems.push(format!(
                "table {}: column `key` needs a unique constraint",
                r.table
            ));
        }
    }
    Ok(problems)
}
