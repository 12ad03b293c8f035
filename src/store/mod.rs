//! PostgreSQL: the one transaction per batch (`commit`), the statements per
//! table shape (`documents`, `typed`), stored offsets and replay (`offsets`),
//! table setup and route resolution (`schema`), error classification and the
//! outcome counts the statements report.

pub mod active;
pub mod cdc;
pub mod commit;
pub mod compare;
mod dead_letters;
pub mod derived;
pub mod dialect;
mod documents;
pub mod fence;
mod kept;
pub mod mappings;
pub mod migrations;
pub mod offsets;
pub mod privileges;
pub mod promote;
pub mod replica;
pub mod schema;
pub mod shadow;
mod single;
mod stage;
mod typed;
mod versions;
pub mod waits;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgPool, Row};

use crate::config::PostgresConfig;
use crate::kafka::message::DeadLetter;

pub use crate::types::Expected;
pub use commit::{BatchWriter, CommitOutcome};
pub use documents::prefilter;

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
    /// A promote replaced the mapping of these tables: this writer runs the
    /// old one and must not write them (`store/mappings.rs`). Nothing of the
    /// batch was written; live sinks reload their configuration.
    #[error("the route mapping of {} was replaced by `promote`; this writer runs another mapping", .0.join(", "))]
    MappingReplaced(Vec<String>),
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
/// connections (53300), lock not available (55006).
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
                // Insufficient resources: disk full, out of memory, too many
                // connections. Not the message's fault: wait until freed.
                || code.starts_with("53")
                || code == "55006"
                // A read-only database: a standby after a failover that has
                // not (yet) moved the address to the new primary.
                || code == "25006"
                // Citus: a COPY to a shard on a worker that went away.
                || code == "58030"
                || (code == "XX000" && is_lost_worker(db.as_ref()))
        }
        _ => false,
    }
}

/// A Citus coordinator reporting a worker connection that failed mid-
/// transaction (SQLSTATE XX000 from the routines that relay it). The fence
/// makes the retry safe; nothing of the failed transaction committed.
fn is_lost_worker(db: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
    db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|e| e.routine())
        .is_some_and(|r| matches!(r, "ReportResultError" | "MarkRemoteTransactionFailed"))
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

/// A database error as one line with its SQLSTATE (dead letters, logs).
pub fn db_error_text(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!(
            "{} (SQLSTATE {})",
            db.message(),
            db.code().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// Outcomes decided by the database.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub duplicate_in_table: u64,
    pub stale_in_table: u64,
    pub tombstone_noop: u64,
    /// Rows removed by truncate change events (not message outcomes).
    pub truncated_rows: u64,
    /// Rows the database rejected, moved to dead letters.
    pub rejected: Vec<DeadLetter>,
    /// Rows inserted, updated and deleted per table (quoted name).
    pub by_table: std::collections::BTreeMap<String, [u64; 3]>,
}

impl TableCounts {
    pub fn absorb(&mut self, o: TableCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.duplicate_in_table += o.duplicate_in_table;
        self.stale_in_table += o.stale_in_table;
        self.tombstone_noop += o.tombstone_noop;
        self.truncated_rows += o.truncated_rows;
        self.rejected.extend(o.rejected);
        for (table, n) in o.by_table {
            let mine = self.by_table.entry(table).or_default();
            for (a, b) in mine.iter_mut().zip(n) {
                *a += b;
            }
        }
    }

    /// Counts of a delete statement over `keys` keys that removed `deleted` rows.
    pub(crate) fn of_deletes(keys: usize, deleted: u64) -> Self {
        TableCounts {
            deleted,
            tombstone_noop: keys as u64 - deleted,
            ..Default::default()
        }
    }

    /// Reads `(inserted, updated, same-content-or-NULL)` of an upsert
    /// statement over `rows` rows. Rows neither inserted nor updated are
    /// duplicates, or, on versioned routes when their content differs from the
    /// stored row, stale.
    fn of_upsert(rows: usize, row: &PgRow) -> Self {
        Self::of_upsert_with(rows, row, row.get::<Option<i64>, _>(2))
    }

    /// [`of_upsert`](Self::of_upsert) with the same-content count `same`
    /// from a statement of its own (Citus).
    fn of_upsert_with(rows: usize, row: &PgRow, same: Option<i64>) -> Self {
        let inserted = row.get::<i64, _>(0) as u64;
        let updated = row.get::<i64, _>(1) as u64;
        let noop = rows as u64 - inserted - updated;
        let duplicate = match same {
            Some(same) => (same as u64).min(noop),
            None => noop,
        };
        TableCounts {
            inserted,
            updated,
            duplicate_in_table: duplicate,
            stale_in_table: noop - duplicate,
            ..Default::default()
        }
    }
}

/// Why connecting failed, with where to.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("postgres.password_file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("postgres.url: {0}")]
    Url(#[source] sqlx::Error),
    #[error("connecting to PostgreSQL at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("connecting to PostgreSQL at {addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// Connects a pool. The password may come from a file (Docker/K8s secrets).
/// One direct connection is made first, so an unreachable server is reported
/// at once with its address and cause (refused, unknown host, TLS,
/// authentication) instead of as a pool timeout.
pub async fn connect(cfg: &PostgresConfig) -> Result<PgPool, ConnectError> {
    let mut opts = PgConnectOptions::from_str(&cfg.url)
        .map_err(ConnectError::Url)?
        .application_name(waits::APPLICATION);
    if let Some(f) = &cfg.password_file {
        let pw = std::fs::read_to_string(f).map_err(|source| ConnectError::PasswordFile {
            path: f.clone(),
            source,
        })?;
        opts = opts.password(pw.trim_end_matches(['\n', '\r']));
    }
    let addr = format!("{}:{}", opts.get_host(), opts.get_port());
    match tokio::time::timeout(cfg.connect_timeout, opts.connect()).await {
        Ok(Ok(probe)) => {
            let _ = probe.close().await;
        }
        Ok(Err(source)) => return Err(ConnectError::Connect { addr, source }),
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                timeout: cfg.connect_timeout,
            })
        }
    }
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(cfg.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // A connection killed by pg_terminate_backend or a restart is noticed
        // here rather than by the next commit.
        .test_before_acquire(true)
        // The batch statements probe the key index once per row; their cost
        // estimates pass jit_above_cost, and compiling them cost ~90 ms per
        // 10,000-row batch for a ~30 ms statement (measured, Postgres 15).
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, "SET jit = off").await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| ConnectError::Connect { addr, source })
}

pub use migrations::migrate;
