//! The sink's own tables, versioned by sqlx migrations (`migrations/`).
//!
//! `setup` (as the tables' owner) applies what is pending. A binary whose
//! migrations are all applied changes nothing — no DDL, no lock — so `run`,
//! `replay` and `verify` work as a role with only data rights
//! (docs/operations.md, "Least privilege"). A database migrated by a newer
//! binary than this one is refused, naming both versions: this binary does
//! not know what the newer schema means.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum SchemaVersionError {
    #[error(
        "the database's sink tables are at schema version {database}, newer than this binary \
         knows (up to {binary}): run a kafka-pg-sink built with migration {database} or later"
    )]
    Newer { database: i64, binary: i64 },
    #[error(
        "the database's sink tables need migration(s) {pending:?} and the role `{role}` may not \
         apply them ({source}): run `kafka-pg-sink setup` once as the tables' owner"
    )]
    NeedsSetup {
        pending: Vec<i64>,
        role: String,
        source: MigrateError,
    },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The newest migration this binary knows.
pub fn binary_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies the pending migrations, if any (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), SchemaVersionError> {
    let applied = applied_versions(pool).await?;
    let binary = binary_version();
    if let Some(&database) = applied.iter().filter(|v| **v > binary).max() {
        return Err(SchemaVersionError::Newer { database, binary });
    }
    let pending: Vec<i64> = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(source) if is_permission_denied(&source) => {
            let role: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(pool)
                .await?;
            Err(SchemaVersionError::NeedsSetup {
                pending,
                role,
                source,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The migrations the database has applied (none before the first setup).
async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
}

fn is_permission_denied(e: &MigrateError) -> bool {
    let (MigrateError::Execute(sqlx::Error::Database(db))
    | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _)) = e
    else {
        return false;
    };
    db.code().as_deref() == Some("42501")
}
