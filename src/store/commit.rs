//! The exactly-once transaction, top to bottom in the order of
//! docs/design.md:
//!
//! ```text
//! BEGIN
//!   fence: compare-and-set next_offset of every partition in the batch
//!          (0 rows for any partition => ROLLBACK, report Fenced), then the
//!          mapping check — one call of `sink_fence`, one round trip
//!   per route: delete re-inserted tombstoned keys,
//!              upsert previous states of keys that changed in the batch,
//!              upsert final states (no-op when the content is unchanged),
//!              delete tombstoned keys
//!   (statements per table shape in `documents.rs` and `typed.rs`)
//!   dead letters
//! COMMIT
//! ```
//!
//! A first attempt that is one route's small upserts and nothing else goes
//! as one statement instead (`single.rs`), in the same order.
//!
//! A statement that fails because of its data (SQLSTATE class 22/23) aborts
//! the first attempt, which runs without savepoints. The second attempt runs
//! each statement under a savepoint and bisects a failing one until the
//! offending rows are isolated; those become dead letters in the same
//! transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::{PgConnection, PgPool};

use super::dead_letters::insert_dead_letters;
use super::dialect::Dialect;
use super::fence::fence;
use super::kept::KeptConnections;
use super::mappings::MappingGuard;
use super::single::{self, Called, Single};
use super::stage::{Stage, Stages};
use super::{cdc, db_error_text, documents, is_data_error, typed, StoreError, TableCounts};
use crate::config::route::Route;
use crate::config::route_set::RouteSet;
use crate::config::OnError;
use crate::event::{PreparedBatch, RouteWrites, RowDelete, RowTruncate, RowUpsert};
use crate::kafka::message::{DeadLetter, PoisonReason};
use crate::types::{Expected, TopicPartition};

#[derive(Debug)]
pub enum CommitOutcome {
    Committed(TableCounts),
    /// Another owner (or a replay) moved these partitions: nothing was written.
    Fenced(Vec<TopicPartition>),
    /// `on_error = "stop"` and the batch holds a message the database rejects.
    Poison(DeadLetter),
}

/// Commits prepared batches of one consumer group into the routes' tables.
pub struct BatchWriter {
    pool: PgPool,
    group: String,
    /// Replaced as a whole when a route evolves or a templated route meets
    /// a new table; a batch commits with the routes it was prepared with.
    routes: RwLock<Arc<RouteSet>>,
    on_error: OnError,
    /// Per route: the last batch was mostly re-deliveries, so the next
    /// document upsert filters stored duplicates first (`documents::upsert`).
    /// Per write slot; replaced by a longer copy when instances are added
    /// (a commit holding the old one loses at most one hint).
    duplicate_heavy: RwLock<Arc<Vec<AtomicBool>>>,
    /// The route mappings this writer runs, checked by the fence
    /// (`store/mappings.rs`: a promote fences writers of the old mapping).
    guard: MappingGuard,
    dialect: Dialect,
    /// Connections of recent commits, reused without the pool's pings.
    kept: KeptConnections,
    /// Foreign keys checked at commit (`SET CONSTRAINTS ALL DEFERRED`):
    /// whole source transactions arrive in table order, not statement order.
    deferred: bool,
}

/// The hint of a slot added after the flags were copied.
static NO_HINT: AtomicBool = AtomicBool::new(false);

/// What the steps of one batch wrote and rejected.
#[derive(Default)]
struct Written {
    /// Outcomes of the final steps (upserts, deletes), one per message.
    counts: TableCounts,
    /// Rows rejected in the steps whose messages count as superseded.
    uncounted_rejects: Vec<DeadLetter>,
}

/// A route and its index (the index keys per-route state).
#[derive(Clone, Copy)]
struct RouteAt<'a> {
    route: &'a Route,
    /// Whether the route's last batch was mostly no-ops (documents).
    heavy: &'a AtomicBool,
}

/// A commit attempt once its transaction has begun.
struct Begun {
    started: std::time::Instant,
    isolation: Isolation,
    /// The routes the staging tables were created for.
    set: Arc<RouteSet>,
}

/// How the statements of one commit attempt meet a data error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: the error aborts the transaction (the attempt is
    /// rolled back and repeated with `Savepoints`).
    None,
    /// Each statement under a savepoint, bisected to isolate refused rows.
    Savepoints,
}

/// One step of a route's writes, in transaction order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    PreDeletes,
    Previous,
    Upserts,
    Deletes,
}

impl BatchWriter {
    pub fn new(pool: PgPool, group: &str, routes: Vec<Route>, on_error: OnError) -> Self {
        let duplicate_heavy = RwLock::new(Arc::new(
            routes.iter().map(|_| AtomicBool::new(false)).collect(),
        ));
        let routes = RouteSet::new(routes);
        Self {
            pool,
            group: group.to_string(),
            routes: RwLock::new(Arc::new(routes)),
            on_error,
            duplicate_heavy,
            guard: MappingGuard::default(),
            kept: KeptConnections::default(),
            dialect: Dialect::Postgres,
            deferred: false,
        }
    }

    /// The same writer, checking deferrable constraints at commit.
    pub fn with_deferred_constraints(mut self, deferred: bool) -> Self {
        self.deferred = deferred;
        self
    }

    /// The same writer, for a database of `dialect` (`Dialect::detect`).
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The same writer, refusing to commit once a promote replaced the
    /// mapping of a table it writes ([`StoreError::MappingReplaced`]).
    pub fn with_guard(mut self, guard: MappingGuard) -> Self {
        self.guard = guard;
        self
    }

    /// The current routes.
    pub fn routes(&self) -> Arc<RouteSet> {
        self.routes.read().expect("routes lock").clone()
    }

    /// Replaces route `i` (a table that evolved with its schema).
    pub fn set_route(&self, i: usize, route: Route) {
        self.update_routes(|set| set.replace(i, route));
    }

    /// Changes the routes: later batches are prepared with the new set.
    pub fn update_routes<T>(&self, change: impl FnOnce(&mut RouteSet) -> T) -> T {
        let mut routes = self.routes.write().expect("routes lock");
        let mut next = (**routes).clone();
        let out = change(&mut next);
        let slots = next.all().len();
        *routes = Arc::new(next);
        let mut heavy = self.duplicate_heavy.write().expect("heavy lock");
        if heavy.len() < slots {
            let grown = (0..slots)
                .map(|i| AtomicBool::new(heavy.get(i).is_some_and(|h| h.load(Ordering::Relaxed))))
                .collect();
            *heavy = Arc::new(grown);
        }
        out
    }

    /// The routes `batch` was prepared with (the current ones if it does
    /// not say).
    fn routes_of(&self, batch: &PreparedBatch) -> Arc<RouteSet> {
        batch.routes.clone().unwrap_or_else(|| self.routes())
    }

    fn heavy_flags(&self) -> Arc<Vec<AtomicBool>> {
        self.duplicate_heavy.read().expect("heavy lock").clone()
    }

    /// Hands the connections kept between commits back to the pool.
    pub fn release_connections(&self) {
        self.kept.release();
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether route `i`'s next document upsert runs the duplicate
    /// pre-filter (its last batch was mostly no-ops).
    pub fn duplicate_heavy(&self, i: usize) -> bool {
        self.heavy_flags()
            .get(i)
            .is_some_and(|h| h.load(Ordering::Relaxed))
    }

    /// Forces the duplicate pre-filter of route `i` on or off for the next
    /// batch (tests: both plans must give the same result).
    pub fn set_duplicate_heavy(&self, i: usize, on: bool) {
        self.heavy_flags()[i].store(on, Ordering::Relaxed);
    }

    /// Commits one prepared batch atomically with its offsets.
    ///
    /// The batch is first applied without savepoints. A statement the
    /// database refuses because of its data then aborts the transaction;
    /// it is rolled back and the batch applied again with each statement
    /// under a savepoint, bisected to isolate the refused rows. Clean
    /// batches — nearly all — save two round trips and a subtransaction
    /// per statement.
    pub async fn commit(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
    ) -> Result<CommitOutcome, StoreError> {
        if let Some(outcome) = self.commit_as(batch, expected, Isolation::None).await? {
            return Ok(outcome);
        }
        tracing::debug!("a statement hit a data error; applying the batch again, isolating rows");
        let outcome = self
            .commit_as(batch, expected, Isolation::Savepoints)
            .await?;
        Ok(outcome.expect("isolating commits handle data errors"))
    }

    /// One attempt of [`commit`](Self::commit). `None`: with
    /// [`Isolation::None`], a statement hit a data error and the
    /// transaction was rolled back.
    async fn commit_as(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
        isolation: Isolation,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        let started = std::time::Instant::now();
        let set = self.routes_of(batch);
        let routes = set.all();
        if isolation == Isolation::None && !self.dialect.is_citus() && !self.deferred {
            let heavy = self.heavy_flags();
            if let Some(single) = single::plan(batch, routes, &heavy) {
                return self
                    .commit_single(single, batch, expected, &heavy, started)
                    .await;
            }
        }
        let used = batch
            .writes
            .iter()
            .zip(routes.iter())
            .filter(|(w, _)| !w.upserts.is_empty() || !w.previous.is_empty())
            .filter_map(|(_, route)| stage_of(route));
        let (mut begin, stages) = Stages::begin(used);
        begin.push_str(self.dialect.begin_settings());
        if self.deferred {
            begin.push_str("SET CONSTRAINTS ALL DEFERRED;");
        }
        let mut conn = self.kept.acquire(&self.pool).await?;
        // When a statement after the `BEGIN` fails (a read-only database
        // refuses `CREATE TEMP TABLE`), the connection is left inside an
        // aborted transaction sqlx does not know it opened: rolled back here,
        // it goes back to the pool clean instead of failing every later
        // batch with "current transaction is aborted".
        let ended = match sqlx::Connection::begin_with(&mut *conn, begin).await {
            Ok(tx) => {
                let at = Begun {
                    started,
                    isolation,
                    set,
                };
                Ok(self.commit_in(tx, stages, batch, expected, at).await)
            }
            Err(e) => Err(e),
        };
        let failed = match ended {
            Ok(outcome) => {
                // A transaction that ended cleanly leaves the connection
                // fit for the next batch; after an error it goes back to
                // the pool, which tests it.
                if outcome.is_ok() {
                    self.kept.keep(conn);
                }
                return outcome;
            }
            Err(e) => e,
        };
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        Err(failed.into())
    }

    /// [`commit_as`](Self::commit_as) for a batch that commits in one
    /// statement (`single.rs`). `None`: a data error rolled it back.
    async fn commit_single(
        &self,
        single: Single<'_>,
        batch: &PreparedBatch,
        expected: &[Expected],
        heavy: &[AtomicBool],
        started: std::time::Instant,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        let (slot, route, rows) = (single.slot, single.route, single.rows);
        let mut conn = self.kept.acquire(&self.pool).await?;
        let called =
            single::call(&mut conn, &self.group, expected, batch, &self.guard, single).await?;
        // Whatever the call ended with, its transaction is over.
        self.kept.keep(conn);
        Ok(match called {
            Called::Committed(mut counts) => {
                if route.columns.is_none() {
                    documents::note_no_ops(heavy.get(slot).unwrap_or(&NO_HINT), &counts, rows);
                }
                counts.by_table.insert(
                    route.table.label(),
                    [counts.inserted, counts.updated, counts.deleted],
                );
                tracing::debug!(
                    messages = batch.message_count(),
                    partitions = expected.len(),
                    commit_ms = started.elapsed().as_secs_f64() * 1e3,
                    "batch committed in one statement"
                );
                Some(CommitOutcome::Committed(counts))
            }
            Called::Fenced(lost) => Some(CommitOutcome::Fenced(lost)),
            Called::MappingReplaced(tables) => return Err(StoreError::MappingReplaced(tables)),
            Called::DataError => None,
        })
    }

    /// The rest of [`commit_as`](Self::commit_as), inside the transaction.
    async fn commit_in(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        mut stages: Stages,
        batch: &PreparedBatch,
        expected: &[Expected],
        Begun {
            started,
            isolation,
            set,
        }: Begun,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        let routes = set.all();
        let heavy = self.heavy_flags();
        let fenced = fence(
            &mut tx,
            &self.group,
            expected,
            &batch.last_events,
            &self.guard,
        )
        .await?;
        if !fenced.lost.is_empty() {
            tx.rollback().await?;
            return Ok(Some(CommitOutcome::Fenced(fenced.lost)));
        }
        if !fenced.replaced.is_empty() {
            tx.rollback().await?;
            return Err(StoreError::MappingReplaced(fenced.replaced));
        }
        let fenced_at = started.elapsed();
        let mut written = Written::default();
        for (i, writes) in batch.writes.iter().enumerate() {
            let at = RouteAt {
                route: &routes[i],
                heavy: heavy.get(i).unwrap_or(&NO_HINT),
            };
            match self
                .write_route(&mut tx, &mut stages, at, writes, isolation, &mut written)
                .await
            {
                Ok(None) => {}
                Ok(Some(poison)) => {
                    tx.rollback().await?;
                    return Ok(Some(CommitOutcome::Poison(poison)));
                }
                Err(StoreError::Fatal(e)) if isolation == Isolation::None && is_data_error(&e) => {
                    tx.rollback().await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        self.close_writes(&mut tx, batch, &written, &stages).await?;
        let written_at = started.elapsed();
        tx.commit().await?;
        // Where a commit's time goes (KAFKA_PG_SINK_LOG=kafka_pg_sink::store=debug).
        tracing::debug!(
            messages = batch.message_count(),
            partitions = expected.len(),
            fence_ms = fenced_at.as_secs_f64() * 1e3,
            write_ms = (written_at - fenced_at).as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - written_at).as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(Some(CommitOutcome::Committed(written.counts)))
    }

    /// The last statements before COMMIT: the batch's dead letters, the
    /// stages it filled emptied, and `synchronous_commit = off` for a batch
    /// that changed no row.
    async fn close_writes(
        &self,
        conn: &mut PgConnection,
        batch: &PreparedBatch,
        written: &Written,
        stages: &Stages,
    ) -> Result<(), StoreError> {
        stages.empty(conn).await?;
        let dead: Vec<&DeadLetter> = batch
            .dead_letters
            .iter()
            .chain(&written.counts.rejected)
            .chain(&written.uncounted_rejects)
            .collect();
        if !dead.is_empty() {
            insert_dead_letters(conn, &self.group, &dead).await?;
        }
        if only_positions_moved(batch, written) {
            // Nothing but positions changed: if a crash or failover loses
            // this commit, the same messages are read again and are the
            // same no-ops, so waiting for the WAL flush buys nothing. A
            // later commit that writes rows flushes the WAL past this one,
            // so positions never come back ahead of rows.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Applies a prepared batch's route writes on `conn` with the statements
    /// of [`commit`](Self::commit), but without fence, mapping check, dead
    /// letters or transaction control: `verify` folds a log range into
    /// temporary copies of the tables this way, many batches in one
    /// transaction. Rows the database rejects are returned in `rejected`.
    pub async fn apply_unfenced(
        &self,
        conn: &mut PgConnection,
        batch: &PreparedBatch,
    ) -> Result<TableCounts, StoreError> {
        let mut written = Written::default();
        let set = self.routes_of(batch);
        let routes = set.all();
        let heavy = self.heavy_flags();
        // No stage was created with this transaction's BEGIN.
        let mut stages = Stages::default();
        for (i, writes) in batch.writes.iter().enumerate() {
            let at = RouteAt {
                route: &routes[i],
                heavy: heavy.get(i).unwrap_or(&NO_HINT),
            };
            self.write_route(
                conn,
                &mut stages,
                at,
                writes,
                Isolation::Savepoints,
                &mut written,
            )
            .await?;
        }
        // The caller's transaction may commit: every stage empty again.
        stages.empty(conn).await?;
        written.counts.rejected.extend(written.uncounted_rejects);
        Ok(written.counts)
    }

    /// Applies one route's writes in order: tombstones of keys re-inserted
    /// later in the batch; round 1, the previous state of keys that changed
    /// within the batch; round 2, every final state; final tombstones.
    /// Messages behind the first two steps are counted as superseded, so those
    /// steps' rows stay out of the counts — except rows round 1 created: round
    /// 2 then updates a row that did not exist before the batch, which counts
    /// as an insert (`rows_inserted_total` counts new rows). A row the
    /// database rejects in any step is a dead letter, or, with
    /// `on_error = "stop"`, returned so the batch is abandoned.
    async fn write_route(
        &self,
        conn: &mut PgConnection,
        stages: &mut Stages,
        at: RouteAt<'_>,
        writes: &RouteWrites,
        isolation: Isolation,
        written: &mut Written,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let mut created_in_round_1 = 0;
        for (step, chunk) in [
            (Step::PreDeletes, Chunk::Deletes(&writes.pre_deletes)),
            (Step::Previous, Chunk::Upserts(&writes.previous, None)),
            (
                Step::Upserts,
                Chunk::Upserts(&writes.upserts, writes.upserts_copy.as_deref()),
            ),
            (Step::Deletes, Chunk::Deletes(&writes.deletes)),
        ] {
            if chunk.is_empty() {
                continue;
            }
            let mut counts = TableCounts::default();
            let mut rejected = Vec::new();
            if isolation == Isolation::None {
                counts = self.apply(conn, stages, at, chunk).await?;
            } else {
                self.apply_isolating(conn, stages, at, chunk, &mut counts, &mut rejected)
                    .await?;
            }
            if self.on_error == OnError::Stop && !rejected.is_empty() {
                return Ok(rejected.into_iter().next());
            }
            match step {
                Step::PreDeletes => written.uncounted_rejects.extend(rejected),
                Step::Previous => {
                    created_in_round_1 = counts.inserted;
                    written.uncounted_rejects.extend(rejected);
                }
                Step::Upserts | Step::Deletes => {
                    let created = created_in_round_1.min(counts.updated);
                    counts.updated -= created;
                    counts.inserted += created;
                    created_in_round_1 = 0;
                    counts.by_table.insert(
                        at.route.table.label(),
                        [counts.inserted, counts.updated, counts.deleted],
                    );
                    written.counts.absorb(counts);
                    written.counts.rejected.extend(rejected);
                }
            }
        }
        if let Some(t) = &writes.truncate {
            written.counts.truncated_rows += truncate(conn, at.route, t).await?;
        }
        Ok(None)
    }

    /// Applies `chunk`; on a data error bisects under savepoints so only the
    /// rows the database rejects become dead letters. Order is kept: the
    /// first half is applied before the second.
    async fn apply_isolating(
        &self,
        conn: &mut PgConnection,
        stages: &mut Stages,
        at: RouteAt<'_>,
        chunk: Chunk<'_>,
        counts: &mut TableCounts,
        rejected: &mut Vec<DeadLetter>,
    ) -> Result<(), StoreError> {
        // Explicit stack instead of recursion (async recursion needs boxing).
        let mut pending = vec![chunk];
        while let Some(chunk) = pending.pop() {
            sqlx::query("SAVEPOINT kpgs_write")
                .execute(&mut *conn)
                .await?;
            match self.apply(conn, stages, at, chunk).await {
                Ok(c) => {
                    sqlx::query("RELEASE SAVEPOINT kpgs_write")
                        .execute(&mut *conn)
                        .await?;
                    counts.absorb(c);
                }
                Err(e) if is_data_error(&e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT kpgs_write")
                        .execute(&mut *conn)
                        .await?;
                    if chunk.len() == 1 {
                        rejected.push(dead_letter_for(conn, at.route, chunk, &e).await?);
                    } else {
                        let (a, b) = chunk.halves();
                        pending.push(b);
                        pending.push(a);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One statement for the whole chunk, by table shape.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        stages: &mut Stages,
        at: RouteAt<'_>,
        chunk: Chunk<'_>,
    ) -> Result<TableCounts, sqlx::Error> {
        let route = at.route;
        match (chunk, &route.columns) {
            (Chunk::Upserts(rows, copy), None) => {
                documents::upsert(conn, stages, route, rows, copy, at.heavy, self.dialect).await
            }
            (Chunk::Upserts(rows, _), Some(map)) => {
                typed::upsert(conn, stages, route, map, rows, self.dialect).await
            }
            (Chunk::Deletes(keys), None) => documents::delete(conn, route, keys).await,
            (Chunk::Deletes(keys), Some(map)) => typed::delete(conn, route, map, keys).await,
        }
    }
}

/// Whether a commit changes only stored positions: no dead letter, no
/// delete or truncate (they leave markers), no round-1 upsert (it may change
/// a row that round 2 changes back), and final upserts that inserted and
/// updated nothing — a batch of duplicates and stale re-deliveries.
fn only_positions_moved(batch: &PreparedBatch, written: &Written) -> bool {
    let c = &written.counts;
    batch.dead_letters.is_empty()
        && c.rejected.is_empty()
        && written.uncounted_rejects.is_empty()
        && c.inserted == 0
        && c.updated == 0
        && c.deleted == 0
        && c.truncated_rows == 0
        && batch.writes.iter().all(|w| {
            w.pre_deletes.is_empty()
                && w.previous.is_empty()
                && w.deletes.is_empty()
                && w.truncate.is_none()
        })
}

/// The staging table `route`'s upserts travel through, if any.
fn stage_of(route: &Route) -> Option<Stage> {
    match &route.columns {
        None => Some(documents::stage(route)),
        Some(map) => typed::stage_of(route, map),
    }
}

/// A truncate change event, after the route's other writes of the batch.
async fn truncate(
    conn: &mut PgConnection,
    route: &Route,
    t: &RowTruncate,
) -> Result<u64, StoreError> {
    let version = match &route.columns {
        Some(map) => typed::version_column(map).unwrap_or_else(|| "NULL::bigint".into()),
        None => "t.version".into(),
    };
    Ok(cdc::truncate(conn, &route.table.quoted(), &version, t).await?)
}

/// The rows of one statement: upserts (with their COPY text, when it was
/// encoded with the batch) or deletes of one route.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Upserts(&'a [RowUpsert], Option<&'a [u8]>),
    Deletes(&'a [RowDelete]),
}

impl<'a> Chunk<'a> {
    fn len(&self) -> usize {
        match self {
            Chunk::Upserts(r, _) => r.len(),
            Chunk::Deletes(d) => d.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn halves(self) -> (Chunk<'a>, Chunk<'a>) {
        match self {
            Chunk::Upserts(r, _) => {
                let (a, b) = r.split_at(r.len() / 2);
                (Chunk::Upserts(a, None), Chunk::Upserts(b, None))
            }
            Chunk::Deletes(d) => {
                let (a, b) = d.split_at(d.len() / 2);
                (Chunk::Deletes(a), Chunk::Deletes(b))
            }
        }
    }
}

/// The dead letter for the single row of `chunk` that the database rejected.
async fn dead_letter_for(
    conn: &mut PgConnection,
    route: &Route,
    chunk: Chunk<'_>,
    e: &sqlx::Error,
) -> Result<DeadLetter, sqlx::Error> {
    Ok(match chunk {
        Chunk::Upserts([r], _) => DeadLetter {
            tp: r.tp.clone(),
            offset: r.offset,
            key: Some(r.key.0.clone().into_bytes()),
            payload: Some(r.payload.clone().into_bytes()),
            reason: PoisonReason::Database,
            error: match &route.columns {
                Some(map) => typed::explain_rejection(conn, map, r, db_error_text(e)).await?,
                None => db_error_text(e),
            },
        },
        Chunk::Deletes([d]) => DeadLetter {
            tp: d.tp.clone(),
            offset: d.offset,
            key: Some(d.key.0.clone().into_bytes()),
            payload: None,
            reason: PoisonReason::Database,
            error: format!("tombstone key rejected: {}", db_error_text(e)),
        },
        _ => unreachable!("bisection stops at one row"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EventHash, Offset, RowKey};

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    fn upsert(key: &str) -> RowUpsert {
        RowUpsert {
            key: RowKey(key.into()),
            hash: EventHash([0; 32]),
            payload: "{}".into(),
            row: None,
            version: None,
            tp: tp(),
            offset: Offset(1),
        }
    }

    fn delete(key: &str) -> RowDelete {
        RowDelete {
            key: RowKey(key.into()),
            version: None,
            tp: tp(),
            offset: Offset(2),
        }
    }

    fn dead_letter() -> DeadLetter {
        DeadLetter {
            tp: tp(),
            offset: Offset(3),
            key: None,
            payload: None,
            reason: PoisonReason::InvalidJson,
            error: "not JSON".into(),
        }
    }

    /// A batch of re-delivered upserts that the table already holds.
    fn duplicates() -> (PreparedBatch, Written) {
        let batch = PreparedBatch {
            writes: vec![RouteWrites {
                upserts: vec![upsert("a"), upsert("b")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut written = Written::default();
        written.counts.duplicate_in_table = 2;
        (batch, written)
    }

    #[test]
    fn only_a_batch_that_changed_no_row_skips_the_flush() {
        let (batch, written) = duplicates();
        assert!(only_positions_moved(&batch, &written));
        assert!(only_positions_moved(
            &PreparedBatch::default(),
            &Written::default()
        ));

        let changed: [fn(&mut PreparedBatch, &mut Written); 10] = [
            |_, w| w.counts.inserted = 1,
            |_, w| w.counts.updated = 1,
            |_, w| w.counts.deleted = 1,
            |_, w| w.counts.truncated_rows = 1,
            |_, w| w.counts.rejected.push(dead_letter()),
            |_, w| w.uncounted_rejects.push(dead_letter()),
            |b, _| b.dead_letters.push(dead_letter()),
            |b, _| b.writes[0].previous.push(upsert("a")),
            |b, _| b.writes[0].pre_deletes.push(delete("a")),
            |b, _| b.writes[0].deletes.push(delete("c")),
        ];
        for (i, change) in changed.into_iter().enumerate() {
            let (mut batch, mut written) = duplicates();
            change(&mut batch, &mut written);
            assert!(!only_positions_moved(&batch, &written), "change {i}");
        }
        let (mut batch, written) = duplicates();
        batch.writes[0].truncate = Some(RowTruncate {
            position: 7,
            tp: tp(),
            offset: Offset(4),
        });
        assert!(!only_positions_moved(&batch, &written));
    }
}
