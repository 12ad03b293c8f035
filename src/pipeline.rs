//! The poll → batch → commit loop.
//!
//! Messages arrive from the consumer thread; a batch closes at
//! `batch.max_messages` or `batch.max_wait` after its first message; it is
//! prepared (pure, `batch.rs`) and committed in one transaction with its
//! offsets (`store::commit`). While a batch commits, the consumer thread keeps
//! fetching into the bounded channel, so fetching and writing overlap.
//!
//! Failure handling:
//! * fenced batch → nothing was written; re-read the stored positions of the
//!   batch's partitions and seek there (zombie or replay);
//! * transient DB error → back off with jitter, then ask the stored offsets
//!   what happened (committed / not applied / fenced) and act on that;
//! * poison with `on_error = "stop"` or a fatal DB error → stop with an error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, PreparedBatch, SourceMessage};
use crate::config::{Config, OnError, Route};
use crate::consumer::{Command, Envelope, SharedAssignment};
use crate::metrics::Metrics;
use crate::store::commit::{resolve, Resolution};
use crate::store::offsets::{self, REPLAY_CHANNEL};
use crate::store::{commit_batch, CommitOutcome, Expected, StoreError, TableCounts};
use crate::types::{Offset, TopicPartition};

/// A prepared batch on its way to the committer.
struct Prepared {
    batch: PreparedBatch,
    expected: Vec<Expected>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("poison message at {tp} offset {offset} ({reason}): {error} — on_error = \"stop\"")]
    Poison {
        tp: TopicPartition,
        offset: Offset,
        reason: &'static str,
        error: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Pipeline {
    pub pool: PgPool,
    pub group: String,
    pub routes: Vec<Route>,
    pub max_messages: usize,
    pub max_wait: Duration,
    pub on_error: OnError,
    pub commit_to_kafka: bool,
    pub assignment: SharedAssignment,
    pub metrics: Metrics,
    pub commands: std::sync::mpsc::Sender<Command>,
    /// Fault injection for tests: hold each prepared batch this long before
    /// committing (`KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS`), so a test can freeze
    /// the process while it holds a batch and check that the fence refuses it.
    pub fault_commit_delay: Option<Duration>,
}

impl Pipeline {
    pub fn new(
        cfg: &Config,
        routes: Vec<Route>,
        pool: PgPool,
        assignment: SharedAssignment,
        metrics: Metrics,
        commands: std::sync::mpsc::Sender<Command>,
    ) -> Self {
        Self {
            pool,
            group: cfg.kafka.group_id.clone(),
            routes,
            max_messages: cfg.batch.max_messages,
            max_wait: cfg.batch.max_wait,
            on_error: cfg.sink.on_error,
            commit_to_kafka: cfg.sink.commit_to_kafka,
            assignment,
            metrics,
            commands,
            fault_commit_delay: std::env::var("KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }
    }

    /// Runs until `cancel` fires (then the buffered, uncommitted messages are
    /// abandoned — they are re-read from the stored offsets on restart — and
    /// the batch already handed to the committer is finished) or a
    /// non-retryable error happens.
    ///
    /// Preparing (parse, hash, fold) overlaps with committing: the committer
    /// task takes one batch at a time from a channel of capacity one, while
    /// this loop accumulates and prepares the next. Positions advance
    /// optimistically when a batch is handed over; a fence resets them.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Envelope>,
        cancel: CancellationToken,
    ) -> Result<(), PipelineError> {
        let this = std::sync::Arc::new(self);
        let (to_committer, mut batches) = mpsc::channel::<Prepared>(1);
        // Fired when the committer stops on an error, so an idle accumulator
        // (no new messages) does not wait forever to notice.
        let committer_failed = CancellationToken::new();
        let committer = {
            let this = this.clone();
            let failed = committer_failed.clone();
            tokio::spawn(async move {
                while let Some(p) = batches.recv().await {
                    if let Err(e) = this.commit_with_retry(&p.batch, &p.expected).await {
                        failed.cancel();
                        return Err(e);
                    }
                }
                Ok::<(), PipelineError>(())
            })
        };
        let result = this
            .accumulate(&mut rx, &cancel, &committer_failed, &to_committer)
            .await;
        drop(to_committer);
        let committed = committer.await.expect("committer does not panic");
        result.and(committed)
    }

    async fn accumulate(
        &self,
        rx: &mut mpsc::Receiver<Envelope>,
        cancel: &CancellationToken,
        committer_failed: &CancellationToken,
        to_committer: &mpsc::Sender<Prepared>,
    ) -> Result<(), PipelineError> {
        let mut listener = self.listen().await;
        let mut buf: Vec<Envelope> = Vec::with_capacity(self.max_messages);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let flush_now = buf.len() >= self.max_messages;
            if !flush_now {
                let sleep_until = deadline
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        tracing::info!(abandoned = buf.len(), "stopping: uncommitted messages are re-read after restart");
                        return Ok(());
                    }
                    // run() reports the committer's error.
                    _ = committer_failed.cancelled() => return Ok(()),
                    env = rx.recv() => match env {
                        Some(env) => {
                            if buf.is_empty() {
                                deadline = Some(tokio::time::Instant::now() + self.max_wait);
                            }
                            buf.push(env);
                            // Drain what is already queued without waking per message.
                            while buf.len() < self.max_messages {
                                match rx.try_recv() {
                                    Ok(e) => buf.push(e),
                                    Err(_) => break,
                                }
                            }
                            continue;
                        }
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {}
                    n = recv_notification(&mut listener) => {
                        if n.as_deref() == Some(self.group.as_str()) {
                            tracing::info!("offsets rewritten (replay): re-reading positions");
                            self.resync_all().await;
                        }
                        continue;
                    }
                }
            }
            if buf.is_empty() {
                deadline = None;
                continue;
            }
            let envs = std::mem::take(&mut buf);
            deadline = None;
            if let Some(p) = self.prepare(envs).await? {
                if to_committer.send(p).await.is_err() {
                    // The committer stopped on an error; run() reports it.
                    return Ok(());
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(REPLAY_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; replays are noticed at the next fence");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; replays are noticed at the next fence");
                None
            }
        }
    }

    /// Filters stale messages and prepares one batch for the committer.
    async fn prepare(&self, envs: Vec<Envelope>) -> Result<Option<Prepared>, PipelineError> {
        // Keep only messages of the current generation at or after the
        // planned position; note the expected position of each partition.
        let (messages, plan) = {
            let a = self.assignment.lock().unwrap();
            let mut plan: BTreeMap<TopicPartition, (u64, Option<Offset>)> = BTreeMap::new();
            let mut messages: Vec<SourceMessage> = Vec::with_capacity(envs.len());
            for e in envs {
                let Some(s) = a.parts.get(&e.msg.tp) else {
                    continue;
                };
                if s.seeking || s.generation != e.generation {
                    continue;
                }
                if let Some(p) = s.planned {
                    if e.msg.offset < p {
                        continue;
                    }
                }
                plan.entry(e.msg.tp.clone())
                    .or_insert((s.generation, s.planned));
                messages.push(e.msg);
            }
            (messages, plan)
        };
        if messages.is_empty() {
            return Ok(None);
        }
        let routes = self.routes.clone();
        let batch = tokio::task::spawn_blocking(move || batch::prepare(&routes, messages))
            .await
            .expect("prepare does not panic");
        if self.on_error == OnError::Stop {
            if let Some(d) = batch.dead_letters.first() {
                return Err(PipelineError::Poison {
                    tp: d.tp.clone(),
                    offset: d.offset,
                    reason: d.reason.as_str(),
                    error: d.error.clone(),
                });
            }
        }
        let expected: Vec<Expected> = batch
            .ranges
            .iter()
            .map(|(tp, (_, last))| Expected {
                tp: tp.clone(),
                expected: plan[tp].1,
                new_next: last.next(),
            })
            .collect();
        // Optimistic: the next batch continues where this one ends.
        {
            let mut a = self.assignment.lock().unwrap();
            for e in &expected {
                if let Some(s) = a.parts.get_mut(&e.tp) {
                    if s.generation == plan[&e.tp].0 && !s.seeking {
                        s.planned = Some(e.new_next);
                    }
                }
            }
        }
        if let Some(d) = self.fault_commit_delay {
            tracing::warn!(?d, "fault injection: holding the batch before commit");
            tokio::time::sleep(d).await;
        }
        Ok(Some(Prepared { batch, expected }))
    }

    async fn commit_with_retry(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
    ) -> Result<(), PipelineError> {
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let result = if attempt == 0 {
                self.try_commit(batch, expected).await
            } else {
                // Unknown outcome of the previous attempt: ask the offsets.
                match resolve(&self.pool, &self.group, expected).await {
                    Ok(Resolution::Committed) => {
                        tracing::warn!("previous attempt had committed (outcome was unknown)");
                        self.metrics
                            .skipped
                            .with_label_values(&["outcome_unknown"])
                            .inc_by(batch.message_count());
                        self.metrics.messages_consumed.inc_by(batch.message_count());
                        self.after_commit(expected);
                        return Ok(());
                    }
                    Ok(Resolution::Fenced(tps)) => Ok(CommitOutcome::Fenced(tps)),
                    Ok(Resolution::NotApplied) => self.try_commit(batch, expected).await,
                    Err(e) => Err(StoreError::from(e)),
                }
            };
            match result {
                Ok(CommitOutcome::Committed(counts)) => {
                    self.record(batch, &counts, started.elapsed().as_secs_f64());
                    self.after_commit(expected);
                    return Ok(());
                }
                Ok(CommitOutcome::Fenced(tps)) => {
                    self.metrics.fenced_batches.inc();
                    self.metrics
                        .commit_duration
                        .with_label_values(&["fenced"])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::warn!(partitions = ?tps, "batch fenced: another owner or a replay moved the offsets; re-reading");
                    let all: Vec<TopicPartition> = expected.iter().map(|e| e.tp.clone()).collect();
                    self.resync(&all).await;
                    return Ok(());
                }
                Ok(CommitOutcome::Poison(d)) => {
                    return Err(PipelineError::Poison {
                        tp: d.tp,
                        offset: d.offset,
                        reason: d.reason.as_str(),
                        error: d.error,
                    })
                }
                Err(StoreError::Transient(e)) => {
                    attempt += 1;
                    self.metrics.db_retries.inc();
                    let backoff = backoff(attempt);
                    tracing::warn!(error = %e, attempt, ?backoff, "transient database error; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn try_commit(
        &self,
        batch: &PreparedBatch,
        expected: &[Expected],
    ) -> Result<CommitOutcome, StoreError> {
        commit_batch(
            &self.pool,
            &self.group,
            &self.routes,
            batch,
            expected,
            self.on_error,
        )
        .await
    }

    fn record(&self, batch: &PreparedBatch, counts: &TableCounts, seconds: f64) {
        let mut dead: BTreeMap<&'static str, u64> = BTreeMap::new();
        for d in batch.dead_letters.iter().chain(&counts.rejected) {
            *dead.entry(d.reason.as_str()).or_default() += 1;
        }
        // A row the database rejected was counted nowhere else.
        let dead: Vec<(&'static str, u64)> = dead.into_iter().collect();
        self.metrics
            .record_batch(&batch.counts, counts, &dead, seconds);
    }

    fn after_commit(&self, expected: &[Expected]) {
        // Positions already advanced when the batch was prepared.
        let mut copied = Vec::new();
        for e in expected {
            let labels = [e.tp.topic.as_str(), &e.tp.partition.to_string()];
            self.metrics
                .stored_offset
                .with_label_values(&labels)
                .set(e.new_next.0);
            copied.push((e.tp.clone(), e.new_next));
        }
        if self.commit_to_kafka {
            let _ = self.commands.send(Command::CommitToKafka(copied));
        }
    }

    /// Re-reads stored positions and seeks every given partition there.
    async fn resync(&self, tps: &[TopicPartition]) {
        let mut delay = Duration::from_millis(100);
        let stored = loop {
            match offsets::read(&self.pool, &self.group, tps).await {
                Ok(s) => break s,
                Err(e) => {
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = %e, "re-reading offsets failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut a = self.assignment.lock().unwrap();
        for tp in tps {
            if let Some(s) = a.parts.get_mut(tp) {
                s.planned = stored.get(tp).copied();
                s.seeking = true;
                let _ = self.commands.send(Command::Seek(tp.clone(), s.planned));
            }
        }
    }

    /// After a replay NOTIFY: seek partitions whose stored position differs
    /// from what this process planned.
    async fn resync_all(&self) {
        let owned: Vec<(TopicPartition, Option<Offset>)> = {
            let a = self.assignment.lock().unwrap();
            a.parts
                .iter()
                .map(|(tp, s)| (tp.clone(), s.planned))
                .collect()
        };
        let tps: Vec<TopicPartition> = owned.iter().map(|(tp, _)| tp.clone()).collect();
        let Ok(stored) = offsets::read(&self.pool, &self.group, &tps).await else {
            return; // the next commit's fence catches it
        };
        let changed: Vec<TopicPartition> = owned
            .into_iter()
            .filter(|(tp, planned)| stored.get(tp).copied() != *planned)
            .map(|(tp, _)| tp)
            .collect();
        if !changed.is_empty() {
            self.resync(&changed).await;
        }
    }
}

async fn recv_notification(listener: &mut Option<PgListener>) -> Option<String> {
    match listener {
        Some(l) => match l.try_recv().await {
            Ok(Some(n)) => Some(n.payload().to_string()),
            // Connection lost: PgListener reconnects on the next call.
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection error");
                tokio::time::sleep(Duration::from_secs(1)).await;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// Exponential backoff with full jitter, 100 ms → 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(6)).min(5000);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
}
