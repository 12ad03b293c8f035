//! PostgreSQL: the one transaction per batch (`commit`), stored offsets and
//! replay (`offsets`), table setup (`schema`), and error classification.

pub mod commit;
pub mod offsets;
pub mod schema;
mod typed;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::PostgresConfig;

pub use commit::{commit_batch, CommitOutcome, Expected, TableCounts};

/// Errors of the store, classified so callers can decide to retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection lost, server restarting, serialization failure, deadlock…:
    /// the batch may be retried after re-reading offsets.
    #[error("transient database error: {0}")]
    Transient(#[source] sqlx::Error),
    /// Anything else (permissions, missing table, bad SQL): not retried.
    #[error("database error: {0}")]
    Fatal(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            StoreError::Transient(e)
        } else {
            StoreError::Fatal(e)
        }
    }
}

/// Whether an error is worth retrying: I/O, pool exhaustion, and SQLSTATEs of
/// connection loss (08), serialization/deadlock (40), operator intervention
/// (57P0x: admin shutdown, crash shutdown, cannot connect now), too many
/// connections (53300).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("57P")
                || code == "53300"
                || code == "55006"
        }
        _ => false,
    }
}

/// Whether a statement failed because of the data in it (class 22 data
/// exception, class 23 integrity constraint): such rows are dead-lettered.
/// 21000 is "ON CONFLICT DO UPDATE command cannot affect row a second time":
/// two spellings of one typed key (`"07"` and `7` in an integer column) in a
/// statement; bisection applies them one after the other.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c == "21000"))
}

/// Connects a pool. The password may come from a file (Docker/K8s secrets).
pub async fn connect(cfg: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    let mut opts = PgConnectOptions::from_str(&cfg.url)?.application_name("kafka-pg-sink");
    if let Some(f) = &cfg.password_file {
        let pw = std::fs::read_to_string(f).map_err(|e| {
            sqlx::Error::Configuration(format!("postgres.password_file {f}: {e}").into())
        })?;
        opts = opts.password(pw.trim_end_matches(['\n', '\r']));
    }
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // A connection killed by pg_terminate_backend or a restart is noticed
        // here rather than by the next commit.
        .test_before_acquire(true)
        .connect_with(opts)
        .await
}

/// Applies the bookkeeping migrations (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
