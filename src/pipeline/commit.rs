//! The committer's side of the pipeline: one prepared batch at a time per
//! lane, committed with its offsets; transient errors retried after the
//! stored offsets resolved the unknown outcome; fences handed to the resync.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Pipeline, PipelineError};
use crate::backoff::Backoff;
use crate::event::PreparedBatch;
use crate::kafka::consumer::Command;
use crate::store::fence::{resolve, Resolution};
use crate::store::waits;
use crate::store::{CommitOutcome, StoreError, TableCounts};
use crate::types::{Expected, TopicPartition};

/// A commit slower than this is looked into; then every
/// [`SLOW_COMMIT_REPORT`] while it lasts.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_secs(5);
const SLOW_COMMIT_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sets `commit_in_flight_seconds` back to 0 when the batch's commit
/// ends, however it ends.
struct InFlight<'a>(&'a prometheus::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

/// What one commit attempt found.
pub(super) enum Attempt {
    Done(CommitOutcome),
    /// An earlier attempt whose outcome was unknown had committed.
    AlreadyCommitted,
}

impl Pipeline {
    pub(super) async fn commit_with_retry(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
    ) -> Result<(), PipelineError> {
        let mut backoff = Backoff::database();
        // The batch is in flight from its first attempt until it commits:
        // retries against a full disk or a read-only database count.
        let first = tokio::time::Instant::now();
        let _in_flight = InFlight(&self.metrics.commit_in_flight);
        loop {
            let started = Instant::now();
            let result = self
                .watched(first, async {
                    if backoff.attempts() == 0 {
                        self.writer.commit(batch, expected).await.map(Attempt::Done)
                    } else {
                        self.retry_after_unknown_outcome(batch, expected).await
                    }
                })
                .await;
            match result {
                Ok(Attempt::AlreadyCommitted) => {
                    tracing::warn!("previous attempt had committed (outcome was unknown)");
                    // Counts per row are unknowable; the messages still count once.
                    self.metrics
                        .skipped
                        .with_label_values(&["outcome_unknown"])
                        .inc_by(batch.message_count());
                    self.metrics.messages_consumed.inc_by(batch.message_count());
                    self.record_ages(batch);
                    self.report_straddles(batch);
                    self.after_commit(expected);
                    return Ok(());
                }
                Ok(Attempt::Done(CommitOutcome::Committed(counts))) => {
                    self.record(batch, &counts, started.elapsed().as_secs_f64());
                    self.metrics.batch_partitions.observe(expected.len() as f64);
                    self.after_commit(expected);
                    return Ok(());
                }
                Ok(Attempt::Done(CommitOutcome::Fenced(tps))) => {
                    self.on_fenced(&tps, expected, started).await;
                    return Ok(());
                }
                Ok(Attempt::Done(CommitOutcome::Poison(d))) => return Err(d.into()),
                Err(StoreError::Transient(e)) => {
                    self.metrics.db_retries.inc();
                    let delay = backoff.next_delay();
                    let cause = match &e {
                        sqlx::Error::PoolTimedOut => {
                            waits::why_no_connection(self.writer.pool()).await
                        }
                        sqlx::Error::Database(db) if db.code().as_deref() == Some("53100") => {
                            waits::full_disk(self.writer.pool(), db.message()).await
                        }
                        _ => None,
                    };
                    self.metrics
                        .commit_in_flight
                        .set(first.elapsed().as_secs_f64());
                    tracing::warn!(error = %e, cause, attempt = backoff.attempts(), ?delay, "transient database error; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs one commit attempt; while it is slow, says what it waits for
    /// (a lock: the blocking session's pid, user and statement) in the log,
    /// `commit_in_flight_seconds` and `/readyz`.
    async fn watched<T>(
        &self,
        first: tokio::time::Instant,
        attempt: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(attempt);
        let started = tokio::time::Instant::now();
        let mut next = started + SLOW_COMMIT;
        let mut waited_on_lock = false;
        loop {
            tokio::select! {
                out = &mut attempt => return out,
                _ = tokio::time::sleep_until(next) => {}
            }
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .commit_in_flight
                .set(first.elapsed().as_secs_f64());
            match waits::lock_waits(self.writer.pool()).await {
                Ok(w) if !w.is_empty() => {
                    if !waited_on_lock {
                        self.metrics.commit_lock_waits.inc();
                        waited_on_lock = true;
                    }
                    tracing::warn!(seconds, "commit waiting on a lock: {}", w.join("; "));
                }
                Ok(_) => tracing::warn!(
                    seconds,
                    "commit slow, not waiting on a lock (the disk, the network, the server's load)"
                ),
                Err(e) => {
                    tracing::warn!(seconds, error = %e, "commit slow; what it waits for is unknown")
                }
            }
            next = tokio::time::Instant::now() + SLOW_COMMIT_REPORT;
        }
    }

    /// The previous attempt failed with an unknown outcome: the stored
    /// offsets tell whether it committed, and only if it did not is the batch
    /// written again.
    pub(super) async fn retry_after_unknown_outcome(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
    ) -> Result<Attempt, StoreError> {
        Ok(
            match resolve(self.writer.pool(), self.group(), expected).await? {
                Resolution::Committed => Attempt::AlreadyCommitted,
                Resolution::Fenced(tps) => Attempt::Done(CommitOutcome::Fenced(tps)),
                Resolution::NotApplied => Attempt::Done(self.writer.commit(batch, expected).await?),
            },
        )
    }

    pub(super) async fn on_fenced(
        &self,
        tps: &[TopicPartition],
        expected: &[Expected],
        started: Instant,
    ) {
        self.metrics.fenced_batches.inc();
        self.metrics
            .commit_duration
            .with_label_values(&["fenced"])
            .observe(started.elapsed().as_secs_f64());
        tracing::warn!(partitions = ?tps, "batch fenced: another owner or a replay moved the offsets; re-reading");
        let all: Vec<TopicPartition> = expected.iter().map(|e| e.tp.clone()).collect();
        self.resync(&all).await;
    }

    pub(super) fn record(&self, batch: &PreparedBatch, counts: &TableCounts, seconds: f64) {
        let mut dead: BTreeMap<&'static str, u64> = BTreeMap::new();
        // A row the database rejected was counted nowhere else.
        for d in batch.dead_letters.iter().chain(&counts.rejected) {
            *dead.entry(d.reason.as_str()).or_default() += 1;
        }
        let dead: Vec<(&'static str, u64)> = dead.into_iter().collect();
        self.metrics
            .record_batch(&batch.counts, counts, &dead, seconds);
        self.record_ages(batch);
        self.report_straddles(batch);
    }

    /// Counts the batch's changes that straddle a snapshot, and says what
    /// they mean once per partition and batch.
    fn report_straddles(&self, batch: &PreparedBatch) {
        let mut reported: Vec<&TopicPartition> = Vec::new();
        for s in &batch.straddles.found {
            self.metrics
                .snapshot_straddles
                .with_label_values(&[&*s.tp.topic])
                .inc();
            if reported.contains(&&s.tp) {
                continue;
            }
            reported.push(&s.tp);
            let in_batch = batch
                .straddles
                .found
                .iter()
                .filter(|o| o.tp == s.tp)
                .count();
            tracing::warn!(
                tp = %s.tp, offset = s.offset.0, lsn = s.lsn, consistent_point = s.point, changes = in_batch,
                "changes of a transaction open across the replication slot's creation: streamed after the \
                 initial snapshot, at LSNs below its consistent point. Where a row still holds its snapshot \
                 value the position guard refused them and the row is stale. Turn on \
                 [sink.source_transactions] and replay the topic (docs/cdc.md, \"What is not covered\")"
            );
        }
    }

    /// The age of the batch's events now that they are visible.
    pub(super) fn record_ages(&self, batch: &PreparedBatch) {
        let routes = batch.routes.clone().unwrap_or_else(|| self.writer.routes());
        let labels: Vec<String> = routes
            .configured()
            .iter()
            .map(|r| r.table.label())
            .collect();
        let times = labels
            .iter()
            .zip(&batch.event_times)
            .map(|(l, ts)| (l.as_str(), ts.as_slice()));
        self.metrics.record_ages(times, &batch.last_events);
    }

    pub(super) fn after_commit(&self, expected: &[Expected]) {
        // Positions already advanced when the batch was prepared.
        for e in expected {
            self.metrics.set_stored_offset(&e.tp, e.new_next.0);
        }
        if self.commit_to_kafka {
            let copied = expected
                .iter()
                .map(|e| (e.tp.clone(), e.new_next))
                .collect();
            let _ = self.commands.send(Command::CommitToKafka(copied));
        }
    }
}
