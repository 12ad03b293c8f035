//! Staging tables: a chunk of rows reaches Postgres with `COPY … FROM STDIN`
//! into a temporary table shaped like the statement's input, and one
//! set-based `INSERT … SELECT … ON CONFLICT` applies it. COPY is Postgres's
//! fastest way in: no array parameters to unnest, no JSON to parse for typed
//! rows (each field goes through its column type's input function), and the
//! upsert plans over a real relation.
//!
//! The temporary table lives as long as the connection (`ON COMMIT DELETE
//! ROWS` empties it at each commit); it is created on first use, so a new
//! connection after a failover or `pg_terminate_backend` just creates it
//! again. Its name carries a hash of its columns: a route whose table gained
//! a column gets a new stage.

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// A temporary staging table.
pub(super) struct Stage {
    /// Unquoted name (a hash: always a valid plain identifier).
    pub name: String,
    /// Column definitions, in COPY field order.
    columns: String,
}

impl Stage {
    /// A stage with these column definitions (`"a" integer, "b" text`).
    pub fn new(columns: String) -> Stage {
        let digest = Sha256::digest(columns.as_bytes());
        Stage {
            name: format!("kpgs_stage_{}", hex::encode(&digest[..8])),
            columns,
        }
    }

    /// Empties the stage (creating it on this connection if needed) and
    /// loads `data`, COPY text lines each ending in `\n`.
    pub async fn fill(&self, conn: &mut PgConnection, data: &[u8]) -> Result<(), sqlx::Error> {
        // One round trip: quiet the "already exists" notice, make sure the
        // table exists, drop the rows of an earlier chunk of this transaction.
        let setup = format!(
            "SET LOCAL client_min_messages = warning; \
             CREATE TEMP TABLE IF NOT EXISTS {0} ({1}) ON COMMIT DELETE ROWS; \
             DELETE FROM {0};",
            self.name, self.columns
        );
        // A plain string runs as a simple query: several statements allowed.
        sqlx::Executor::execute(&mut *conn, setup.as_str()).await?;
        let copy_sql = format!("COPY {} FROM STDIN", self.name);
        let mut copy = conn.copy_in_raw(&copy_sql).await?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("kafka-pg-sink: sending the chunk failed").await;
            return Err(e);
        }
        // A value the column type refuses fails here (a data error: the
        // caller bisects the chunk).
        copy.finish().await?;
        Ok(())
    }
}
