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

/// Quiets the "already exists" notice of `CREATE … IF NOT EXISTS` for the
/// rest of the transaction.
const QUIET: &str = "SET LOCAL client_min_messages = warning;";

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

    /// Creates the stage on this connection if needed (after [`QUIET`]).
    fn create_sql(&self) -> String {
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS;",
            self.name, self.columns
        )
    }

    /// Loads `data`, COPY text lines each ending in `\n`, into the stage,
    /// empty afterwards but for them. A stage `fresh` lists exists and is
    /// empty already; any other is created if needed and emptied first (one
    /// round trip).
    pub async fn fill(
        &self,
        conn: &mut PgConnection,
        fresh: &mut Fresh,
        data: &[u8],
    ) -> Result<(), sqlx::Error> {
        if !fresh.take(&self.name) {
            let setup = format!("{QUIET} {} DELETE FROM {};", self.create_sql(), self.name);
            // A plain string runs as a simple query: several statements allowed.
            sqlx::Executor::execute(&mut *conn, setup.as_str()).await?;
        }
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

/// Stages a transaction created at its start (with `BEGIN`, in one round
/// trip) and has not filled yet: `ON COMMIT DELETE ROWS` left them empty,
/// so their first fill skips the setup round trip.
#[derive(Debug, Default)]
pub(super) struct Fresh(Vec<String>);

impl Fresh {
    /// The `BEGIN` that creates `stages`, and those stages as fresh.
    pub fn begin(stages: impl IntoIterator<Item = Stage>) -> (String, Fresh) {
        let mut sql = String::from("BEGIN;");
        let mut names = Vec::new();
        for s in stages {
            if !names.contains(&s.name) {
                if names.is_empty() {
                    sql.push(' ');
                    sql.push_str(QUIET);
                }
                sql.push(' ');
                sql.push_str(&s.create_sql());
                names.push(s.name);
            }
        }
        (sql, Fresh(names))
    }

    /// Whether `name` was fresh; it no longer is.
    fn take(&mut self, name: &str) -> bool {
        match self.0.iter().position(|n| n == name) {
            Some(i) => {
                self.0.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_creates_each_stage_once_and_each_is_fresh_for_one_fill() {
        let a = || Stage::new("\"a\" text".into());
        let b = Stage::new("\"b\" integer".into());
        let b_name = b.name.clone();
        let (sql, mut fresh) = Fresh::begin([a(), b, a()]);
        assert!(sql.starts_with("BEGIN;"), "{sql}");
        assert_eq!(sql.matches("CREATE TEMP TABLE IF NOT EXISTS").count(), 2);
        assert_eq!(sql.matches(QUIET).count(), 1, "{sql}");
        assert_eq!(Fresh::begin([]).0, "BEGIN;");
        assert!(sql.contains(&format!("{} (\"a\" text)", a().name)), "{sql}");
        assert!(fresh.take(&a().name));
        assert!(!fresh.take(&a().name), "a second fill must empty the stage");
        assert!(fresh.take(&b_name));
        assert!(!Fresh::default().take(&a().name));
    }
}
