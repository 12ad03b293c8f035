//! Staging tables: a chunk of rows reaches Postgres with `COPY … FROM STDIN`
//! into a temporary table shaped like the statement's input, and one
//! set-based `INSERT … SELECT … ON CONFLICT` applies it. COPY is Postgres's
//! fastest way in: no array parameters to unnest, no JSON to parse for typed
//! rows (each field goes through its column type's input function), and the
//! upsert plans over a real relation.
//!
//! A small chunk — the usual one when events trickle in — skips COPY's two
//! round trips: its rows are bound to the applying statement as one array
//! of the stage's row type (`unnest($n::text[]::stage[])`). Each row is a
//! record literal, and its fields go through the same input functions, with
//! the same type modifiers, that COPY would call; only the round trips
//! differ (docs/performance.md, "Freshness").
//!
//! The temporary table lives as long as the connection; it is created on
//! first use, so a new connection after a failover or `pg_terminate_backend`
//! just creates it again. Its name carries a hash of its columns: a route
//! whose table gained a column gets a new stage.
//!
//! A stage is empty whenever no transaction is open: a transaction that
//! filled one empties it before its COMMIT ([`Stages::empty_sql`]), and one
//! that rolls back takes its rows with it. Not `ON COMMIT DELETE ROWS`:
//! Postgres then truncates every such table of the session at every commit
//! that touched a temporary object — each one-statement commit, which calls
//! a temporary function and reads its stage — and each truncation rewrites
//! catalog rows, so the commit flushes WAL it would not have: measured, a
//! read-only transaction cost 1.0 ms with one such table against 0.44 ms
//! without, 3.4 ms with ten and 13 ms with fifty (one per table shape a
//! sink replicating a database writes; docs/performance.md, "Freshness").

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::event::copy_text;

/// Quiets the "already exists" notice of `CREATE … IF NOT EXISTS` for the
/// rest of the transaction.
const QUIET: &str = "SET LOCAL client_min_messages = warning;";

/// Chunks up to this many bytes of COPY text are bound rather than copied:
/// COPY costs two round trips however small the chunk, a bound array one
/// parse on the server; large chunks keep COPY's streaming.
pub(super) const BIND_MAX_BYTES: usize = 64 * 1024;

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

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
        format!("{};", self.create_statement())
    }

    /// Makes `data`, COPY text lines each ending in `\n`, readable by the
    /// statement that applies it: bound, when the chunk is small, `bind` is
    /// allowed and the stage exists already (its row type is the array's
    /// element type); else copied into the stage ([`fill`](Self::fill)).
    pub async fn load(
        &self,
        conn: &mut PgConnection,
        stages: &mut Stages,
        data: &[u8],
        bind: bool,
    ) -> Result<Loaded, sqlx::Error> {
        if bind && stages.has(&self.name) {
            if let Some(loaded) = self.bound(data) {
                return Ok(loaded);
            }
        }
        self.fill(conn, stages, data).await?;
        Ok(Loaded {
            name: self.name.clone(),
            records: None,
        })
    }

    /// `data`, COPY text lines each ending in `\n`, as one bound array of
    /// the stage's row type; `None` when the chunk is too large to bind or
    /// holds what a record literal cannot (COPY then takes it).
    pub fn bound(&self, data: &[u8]) -> Option<Loaded> {
        if data.len() > BIND_MAX_BYTES {
            return None;
        }
        Some(Loaded {
            name: self.name.clone(),
            records: Some(record_literals(data)?),
        })
    }

    /// The statement creating the stage if this connection has none yet
    /// (its "already exists" notice is for the caller to quiet).
    pub fn create_statement(&self) -> String {
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({})",
            self.name, self.columns
        )
    }

    /// Loads `data`, COPY text lines each ending in `\n`, into the stage,
    /// empty afterwards but for them. A stage `stages` lists as fresh exists
    /// and is empty already; any other is created if needed and emptied
    /// first (one round trip). Either way `stages` has it emptied before
    /// the transaction commits.
    async fn fill(
        &self,
        conn: &mut PgConnection,
        stages: &mut Stages,
        data: &[u8],
    ) -> Result<(), sqlx::Error> {
        stages.filling(&self.name);
        if !stages.take(&self.name) {
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

/// One transaction's stages: the fresh ones, created at its start (with
/// `BEGIN`, in one round trip) and not filled yet — empty, as every stage
/// is between transactions, so their first fill skips the setup round
/// trip — and the ones it filled, to empty before it commits.
#[derive(Debug, Default)]
pub(super) struct Stages {
    fresh: Vec<String>,
    filled: Vec<String>,
}

impl Stages {
    /// The `BEGIN` that creates `stages`, and those stages as fresh.
    pub fn begin(stages: impl IntoIterator<Item = Stage>) -> (String, Stages) {
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
        (
            sql,
            Stages {
                fresh: names,
                filled: Vec::new(),
            },
        )
    }

    /// Whether `name` is fresh (and stays so: a bound chunk leaves its
    /// stage empty).
    fn has(&self, name: &str) -> bool {
        self.fresh.iter().any(|n| n == name)
    }

    /// Whether `name` was fresh; it no longer is.
    fn take(&mut self, name: &str) -> bool {
        match self.fresh.iter().position(|n| n == name) {
            Some(i) => {
                self.fresh.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// `name` gets rows in this transaction (noted before they are sent:
    /// emptying a stage whose COPY failed costs nothing).
    fn filling(&mut self, name: &str) {
        if !self.filled.iter().any(|n| n == name) {
            self.filled.push(name.to_owned());
        }
    }

    /// The statement that empties the stages this transaction filled, to
    /// run after their last reader and before COMMIT; `None` when it filled
    /// none (the usual small commit: bound rows only). `TRUNCATE` rather
    /// than `DELETE`: no autovacuum reaches a temporary table, and deleted
    /// rows would stay in it for the connection's life.
    pub fn empty_sql(&self) -> Option<String> {
        (!self.filled.is_empty()).then(|| format!("TRUNCATE {}", self.filled.join(", ")))
    }

    /// Runs [`empty_sql`](Self::empty_sql), if there is one, on `conn`.
    pub async fn empty(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if let Some(sql) = self.empty_sql() {
            sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
        }
        Ok(())
    }
}

/// One route's upserts as one statement over bound rows, for the
/// function of a one-statement commit (`single.rs`).
pub(super) struct BoundUpsert {
    /// Creates the stage whose row type the rows are read as.
    pub stage: String,
    /// One statement: the change events' target as `$1`, the rows as `$2`;
    /// selects the counts of `TableCounts::of_upsert`.
    pub sql: String,
    pub target: Option<String>,
    /// One record literal of the stage's row type per row.
    pub records: Vec<String>,
}

/// A chunk ready for the statement that applies it.
pub(super) struct Loaded {
    /// The stage's name: the table the rows were copied into, or the row
    /// type of the bound array.
    name: String,
    /// Bound rows: one record literal per row.
    records: Option<Vec<String>>,
}

impl Loaded {
    /// The rows as a FROM item (to be aliased); `param` numbers the bound
    /// array's placeholder (`$param`) in the statement.
    ///
    /// Bound rows are read together with the stage table, which is empty
    /// then (fresh, and never filled in this transaction): the statement
    /// must depend on the table, not only on its row type. When the
    /// transaction that created the stage rolls back, the table and its
    /// type go; a cached plan that named only the type is not invalidated
    /// and fails on the next use ("cache lookup failed for type"), while one
    /// that reads the table is re-planned against the new one.
    pub fn source_sql(&self, param: usize) -> String {
        match self.records {
            Some(_) => format!(
                "(SELECT * FROM unnest(${param}::text[]::{0}[]) UNION ALL SELECT * FROM {0})",
                self.name
            ),
            None => self.name.clone(),
        }
    }

    /// The bound rows' record literals (empty for rows copied in).
    pub fn into_records(self) -> Vec<String> {
        self.records.unwrap_or_default()
    }

    /// Binds the rows, if they travel bound: after the statement's other
    /// parameters, as [`source_sql`](Self::source_sql) numbered them.
    pub fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        match self.records {
            Some(records) => q.bind(records),
            None => q,
        }
    }
}

/// COPY text lines as record literals, field for field: NULL becomes an
/// empty field, any other field its text as `copy_text::split_line` reads
/// it back, quoted. `None` if `data` is not UTF-8 or a field holds a NUL,
/// which no text value holds (COPY then reports what is wrong with it).
fn record_literals(data: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(data).ok()?;
    let lines = text.strip_suffix('\n').unwrap_or(text);
    if lines.is_empty() {
        return Some(Vec::new());
    }
    lines
        .split('\n')
        .map(|line| {
            let mut record = String::with_capacity(line.len() + 8);
            record.push('(');
            for (i, field) in copy_text::split_line(line).into_iter().enumerate() {
                if i > 0 {
                    record.push(',');
                }
                match field {
                    Some(f) if f.contains('\0') => return None,
                    Some(f) => copy_text::push_quoted(&mut record, &f),
                    None => {}
                }
            }
            record.push(')');
            Some(record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_creates_each_stage_once_and_each_is_fresh_for_one_fill() {
        let a = || Stage::new("\"a\" text".into());
        let b = Stage::new("\"b\" integer".into());
        let b_name = b.name.clone();
        let (sql, mut fresh) = Stages::begin([a(), b, a()]);
        assert!(sql.starts_with("BEGIN;"), "{sql}");
        assert_eq!(sql.matches("CREATE TEMP TABLE IF NOT EXISTS").count(), 2);
        assert_eq!(sql.matches(QUIET).count(), 1, "{sql}");
        assert_eq!(Stages::begin([]).0, "BEGIN;");
        assert!(sql.contains(&format!("{} (\"a\" text)", a().name)), "{sql}");
        assert!(fresh.take(&a().name));
        assert!(!fresh.take(&a().name), "a second fill must empty the stage");
        assert!(fresh.take(&b_name));
        assert!(!Stages::default().take(&a().name));
    }

    #[test]
    fn a_transaction_empties_each_stage_it_filled_once() {
        let (a, b) = (
            Stage::new("\"a\" text".into()),
            Stage::new("\"b\" int".into()),
        );
        let (_, mut stages) = Stages::begin([Stage::new("\"a\" text".into())]);
        assert_eq!(stages.empty_sql(), None, "created, bound to, never filled");
        stages.filling(&a.name);
        stages.filling(&b.name);
        stages.filling(&a.name);
        assert_eq!(
            stages.empty_sql().unwrap(),
            format!("TRUNCATE {}, {}", a.name, b.name)
        );
        assert!(
            !a.create_statement().contains("ON COMMIT"),
            "{}",
            a.create_statement()
        );
    }

    #[test]
    fn copy_lines_become_record_literals_field_for_field() {
        let data = b"1\tplain\t\\N\n2\ttab\\there \"q\" \\\\x\t\n3\tcr\\rlf\\n\t\\\\N\n";
        let records = record_literals(data).unwrap();
        assert_eq!(
            records,
            [
                r#"("1","plain",)"#,
                "(\"2\",\"tab\there \\\"q\\\" \\\\x\",\"\")",
                "(\"3\",\"cr\rlf\n\",\"\\\\N\")",
            ]
        );
        assert_eq!(record_literals(b"").unwrap(), Vec::<String>::new());
        assert_eq!(record_literals(b"a\0b\n"), None, "a NUL goes by COPY");
        assert_eq!(record_literals(&[0xff, b'\n']), None, "no UTF-8: by COPY");
    }
}
