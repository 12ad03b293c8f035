//! The poll → batch → commit loop.
//!
//! Messages arrive from the consumer thread; a batch closes at
//! `batch.max_messages` or `batch.max_wait` after its first message; it is
//! prepared (the pure stages of `event`) and committed in one transaction
//! with its offsets (`commit.rs` here, `store::commit` in the database).
//! While a batch commits, the consumer thread keeps fetching into the
//! bounded channel, and the next batch is prepared, so fetching, preparing
//! and writing overlap. Writer schemas and the tables that follow them are
//! brought up to date before a batch is prepared (`schemas.rs`).
//!
//! Failure handling (`commit.rs`, `resync.rs`):
//! * fenced batch → nothing was written; re-read the stored positions of the
//!   batch's partitions and seek there (zombie or replay);
//! * database connection lost (restart, failover) → once it answers again,
//!   re-read every owned partition's position and seek those that differ:
//!   a standby promoted after losing the last commits holds older positions,
//!   and a partition that gets no new message would never hit the fence
//!   that reveals it;
//! * transient DB error → back off with jitter, then ask the stored offsets
//!   what happened (committed / not applied / fenced) and act on that;
//! * poison with `on_error = "stop"` or a fatal DB error → stop with an error.

mod commit;
mod resync;
pub mod schemas;
pub mod tables;
pub mod transactions;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::route::OnTableError;
use crate::config::route_set::RouteSet;
use crate::config::{Config, OnError, OutOfRangePolicy};
use crate::event::straddle::SnapshotPoints;
use crate::event::{self, PreparedBatch};
use crate::format::connect::ConnectCache;
use crate::format::SchemaSet;
use crate::kafka::assignment::{Assignment, Claim, Envelope};
use crate::kafka::consumer::Command;
use crate::kafka::message::DeadLetter;
use crate::kafka::message::SourceMessage;
use crate::ops::metrics::Metrics;
use crate::pipeline::schemas::{Schemas, SchemasError};
use crate::store::{BatchWriter, StoreError};
use crate::types::{Expected, Offset, TopicPartition};
use resync::{recv_notification, Watch};

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
    /// A table that follows its schema cannot take a new version (a column
    /// would be dropped or change type), or setup-time schema work failed.
    #[error("schema: {0}")]
    Schema(#[from] SchemasError),
    /// A table met while running cannot be created or evolved.
    #[error("tables: {0}")]
    Tables(#[from] tables::TablesError),
    #[error("tables still missing after creating them: {}", .0.join(", "))]
    TablesUnsettled(Vec<String>),
    #[error(transparent)]
    TransactionOverflow(#[from] transactions::Overflow),
}

/// A batch this small is prepared where it closes: sending it to a
/// blocking thread and back costs two thread wake-ups, more than preparing
/// it. Larger ones go to blocking threads: several lanes' batches are then
/// prepared in parallel, and no async thread is held for milliseconds.
const PREPARE_INLINE_UP_TO: usize = 64;

/// What a round of lanes' batches is prepared with, shared by its jobs.
#[derive(Clone)]
struct Inputs {
    routes: Arc<RouteSet>,
    schemas: Arc<SchemaSet>,
    /// Per write slot: the route's last batch was mostly no-ops.
    heavy: Arc<Vec<bool>>,
    snapshot_points: Option<Arc<SnapshotPoints>>,
}

impl Inputs {
    fn prepare(&self, messages: Vec<SourceMessage>) -> PreparedBatch {
        event::prepare_for_commit(
            &self.routes,
            messages,
            &self.schemas,
            &self.heavy,
            self.snapshot_points.as_deref(),
        )
    }
}

/// A lane's batch being prepared.
enum Job {
    Ready(Box<PreparedBatch>),
    Running(tokio::task::JoinHandle<PreparedBatch>),
}

impl Job {
    /// Runs `prepare` here when `inline`, else on a blocking thread.
    fn start(inline: bool, prepare: impl FnOnce() -> PreparedBatch + Send + 'static) -> Self {
        if inline {
            Job::Ready(Box::new(prepare()))
        } else {
            Job::Running(tokio::task::spawn_blocking(prepare))
        }
    }

    async fn finish(self) -> PreparedBatch {
        match self {
            Job::Ready(b) => *b,
            Job::Running(j) => j.await.expect("prepare does not panic"),
        }
    }
}

/// How often a batch is prepared again after creating the tables it met
/// (a schema changing while its table is shaped takes one more).
const MAX_TABLE_ROUNDS: usize = 3;

impl From<DeadLetter> for PipelineError {
    fn from(d: DeadLetter) -> Self {
        PipelineError::Poison {
            tp: d.tp,
            offset: d.offset,
            reason: d.reason.as_str(),
            error: d.error,
        }
    }
}

pub struct Pipeline {
    writer: BatchWriter,
    max_messages: usize,
    max_wait: Duration,
    close_when_idle: bool,
    /// Batches handed to the committers and not yet committed.
    in_flight: tokio::sync::watch::Sender<usize>,
    /// Commit lanes: disjoint partition sets committing in parallel, each on
    /// its own connection (`sink.commit_lanes`).
    lanes: usize,
    on_error: OnError,
    out_of_range: OutOfRangePolicy,
    commit_to_kafka: bool,
    assignment: Assignment,
    metrics: Metrics,
    commands: std::sync::mpsc::Sender<Command>,
    /// Writer schemas of schema'd routes; `None` without a registry.
    schemas: Option<Arc<Schemas>>,
    /// Connect schemas embedded in change events, met so far.
    connect: std::sync::Mutex<ConnectCache>,
    /// Source transactions held until whole (`transactions.rs`).
    admission: std::sync::Mutex<transactions::Admission>,
    /// The consistent point of the last Postgres snapshot read per
    /// partition, as of the last batch prepared; `None` with whole source
    /// transactions, which order straddling changes by their commit
    /// (`event::straddle`).
    snapshot_points: Option<std::sync::Mutex<Arc<SnapshotPoints>>>,
    /// Stops waits inside batch preparation (an unreachable registry).
    cancel: CancellationToken,
    /// Fault injection for tests: hold each prepared batch this long before
    /// committing (`KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS`), so a test can freeze
    /// the process while it holds a batch and check that the fence refuses it.
    fault_commit_delay: Option<Duration>,
}

impl Pipeline {
    pub fn new(
        cfg: &Config,
        writer: BatchWriter,
        assignment: Assignment,
        metrics: Metrics,
        commands: std::sync::mpsc::Sender<Command>,
        rewinds: transactions::recall::Inbox,
    ) -> Self {
        let admission = transactions::Admission::new(
            &cfg.sink.source_transactions,
            writer.routes(),
            metrics.source_transactions.clone(),
            rewinds,
            assignment.clone(),
        );
        Self {
            admission: std::sync::Mutex::new(admission),
            snapshot_points: (!cfg.sink.source_transactions.enabled).then(Default::default),
            writer,
            max_messages: cfg.batch.max_messages,
            max_wait: cfg.batch.max_wait,
            close_when_idle: cfg.batch.close_when_idle,
            in_flight: tokio::sync::watch::Sender::new(0),
            lanes: cfg.sink.commit_lanes.max(1),
            on_error: cfg.sink.on_error,
            out_of_range: cfg.kafka.on_offset_out_of_range,
            commit_to_kafka: cfg.sink.commit_to_kafka,
            assignment,
            metrics,
            commands,
            schemas: None,
            connect: Default::default(),
            cancel: CancellationToken::new(),
            fault_commit_delay: std::env::var("KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }
    }

    pub fn with_schemas(mut self, schemas: Option<Arc<Schemas>>) -> Self {
        self.schemas = schemas;
        self
    }

    fn group(&self) -> &str {
        self.writer.group()
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
        mut self,
        mut rx: mpsc::Receiver<Vec<Envelope>>,
        cancel: CancellationToken,
    ) -> Result<(), PipelineError> {
        self.cancel = cancel.clone();
        let this = Arc::new(self);
        // Fired when a committer stops on an error, so an idle accumulator
        // (no new messages) does not wait forever to notice.
        let committer_failed = CancellationToken::new();
        tracing::info!(commit_lanes = this.lanes, "committing");
        let (lanes, committers): (Vec<_>, Vec<_>) = (0..this.lanes)
            .map(|_| {
                let (tx, batches) = mpsc::channel::<Prepared>(1);
                (tx, this.spawn_committer(batches, committer_failed.clone()))
            })
            .unzip();
        let result = this
            .accumulate(&mut rx, &cancel, &committer_failed, &lanes)
            .await;
        drop(lanes);
        let mut committed = Ok(());
        for c in committers {
            let r = c.await.expect("committer does not panic");
            committed = committed.and(r);
        }
        // The caller closes the pool, which waits for every connection.
        this.writer.release_connections();
        result.and(committed)
    }

    /// One commit lane: takes its batches in order and commits each, on its
    /// own connection, before the next.
    fn spawn_committer(
        self: &Arc<Self>,
        mut batches: mpsc::Receiver<Prepared>,
        failed: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), PipelineError>> {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(p) = batches.recv().await {
                let result = this.commit_with_retry(&p.batch, &p.expected).await;
                this.in_flight.send_modify(|n| *n -= 1);
                if let Err(e) = result {
                    failed.cancel();
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    async fn accumulate(
        &self,
        rx: &mut mpsc::Receiver<Vec<Envelope>>,
        cancel: &CancellationToken,
        committer_failed: &CancellationToken,
        lanes: &[mpsc::Sender<Prepared>],
    ) -> Result<(), PipelineError> {
        let mut watch = Watch {
            listener: self.listen().await,
            resync_at: None,
            last_resync: None,
        };
        let mut buf: Vec<Envelope> = Vec::with_capacity(self.max_messages);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut in_flight = self.in_flight.subscribe();
        loop {
            // Nothing more queued and the database idle: waiting out
            // max_wait would only make the data older.
            let idle = self.close_when_idle
                && !buf.is_empty()
                && rx.is_empty()
                && *in_flight.borrow_and_update() == 0;
            if buf.len() < self.max_messages && !idle {
                let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        tracing::info!(abandoned = buf.len(), "stopping: uncommitted messages are re-read after restart");
                        return Ok(());
                    }
                    // run() reports the committer's error.
                    _ = committer_failed.cancelled() => return Ok(()),
                    chunk = rx.recv() => {
                        let Some(chunk) = chunk else { return Ok(()) };
                        self.take(chunk, rx, &mut buf, &mut deadline)?;
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {}
                    _ = tokio::time::sleep_until(watch.resync_at.unwrap_or_else(far)), if watch.resync_at.is_some() => {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => {}
                            _ = self.resync_due(&mut watch) => {}
                        }
                        continue;
                    }
                    n = recv_notification(&mut watch.listener) => {
                        self.on_notice(&mut watch, n).await;
                        continue;
                    }
                    // A commit finished: the batch may close now.
                    _ = in_flight.changed(), if self.close_when_idle && !buf.is_empty() => continue,
                }
            }
            deadline = None;
            if buf.is_empty() {
                continue;
            }
            if !self.close_batch(&mut buf, &mut deadline, lanes).await? {
                return Ok(()); // a committer stopped on an error; run() reports it
            }
        }
    }

    /// Takes the next batch from `buf`, prepares it and hands it to the
    /// committers. Room in every lane first, then prepare: a batch is
    /// prepared only when its committer takes it next, so per lane one batch
    /// commits, one waits and the next is still raw messages (not a third
    /// prepared batch held until the channel frees up). False when a
    /// committer stopped.
    async fn close_batch(
        &self,
        buf: &mut Vec<Envelope>,
        deadline: &mut Option<tokio::time::Instant>,
        lanes: &[mpsc::Sender<Prepared>],
    ) -> Result<bool, PipelineError> {
        let mut permits = Vec::with_capacity(lanes.len());
        for lane in lanes {
            match lane.reserve().await {
                Ok(p) => permits.push(Some(p)),
                Err(_) => return Ok(false),
            }
        }
        let batch = if self.admission.lock().expect("admission").whole_batches() {
            // Whole source transactions: never split at max_messages.
            std::mem::take(buf)
        } else {
            next_batch(buf, self.max_messages)
        };
        if !buf.is_empty() {
            *deadline = Some(tokio::time::Instant::now() + self.max_wait);
        }
        for (lane, p) in self.prepare(batch).await? {
            self.in_flight.send_modify(|n| *n += 1);
            permits[lane].take().expect("one batch per lane").send(p);
        }
        Ok(true)
    }

    /// Buffers `chunk` and whatever is already queued behind it (without
    /// waking per chunk); the first message of a batch starts its clock.
    fn take(
        &self,
        chunk: Vec<Envelope>,
        rx: &mut mpsc::Receiver<Vec<Envelope>>,
        buf: &mut Vec<Envelope>,
        deadline: &mut Option<tokio::time::Instant>,
    ) -> Result<(), PipelineError> {
        let was_empty = buf.is_empty();
        let mut admission = self.admission.lock().expect("admission");
        admission.admit(chunk, buf)?;
        while buf.len() < self.max_messages {
            let Ok(chunk) = rx.try_recv() else { break };
            admission.admit(chunk, buf)?;
        }
        if was_empty && !buf.is_empty() {
            *deadline = Some(tokio::time::Instant::now() + self.max_wait);
        }
        Ok(())
    }

    /// Admits the buffered messages still owned and current and prepares a
    /// batch per commit lane (partitions always map to the same lane, so
    /// each partition's batches commit in order).
    async fn prepare(&self, envs: Vec<Envelope>) -> Result<Vec<(usize, Prepared)>, PipelineError> {
        let envs = self.handle_out_of_range(envs).await;
        let lanes = self.split_lanes(envs);
        let admitted: Vec<(usize, Vec<SourceMessage>, Claim)> = lanes
            .into_iter()
            .enumerate()
            .map(|(lane, envs)| {
                let (messages, claim) = self.assignment.admit(envs);
                (lane, messages, claim)
            })
            .filter(|(_, m, c)| !m.is_empty() || c.advances_past_skipped())
            .collect();
        if admitted.is_empty() {
            return Ok(Vec::new());
        }
        let all = admitted.iter().flat_map(|(_, m, _)| m.iter());
        let Some(schemas) = self.schemas_for(all).await? else {
            return Ok(Vec::new()); // stopping while the registry was away
        };
        let out = self.prepare_lanes(admitted, schemas).await?;
        if let Some(d) = self.fault_commit_delay {
            tracing::warn!(?d, "fault injection: holding the batch before commit");
            tokio::time::sleep(d).await;
        }
        Ok(out)
    }

    /// Prepares each lane's batch. The lanes' batches are prepared in
    /// parallel (parse, hash, fold), and a document route's upserts encoded
    /// for COPY, off the commit path: while the committer builds them, the
    /// database waits (a small batch is prepared here: `Job`). A batch that
    /// meets tables the routes do not have yet is prepared again once they
    /// exist (`tables.rs`): its messages are kept for that when a route can
    /// meet new tables.
    async fn prepare_lanes(
        &self,
        mut pending: Vec<(usize, Vec<SourceMessage>, Claim)>,
        mut schemas: SchemaSet,
    ) -> Result<Vec<(usize, Prepared)>, PipelineError> {
        let mut out = Vec::with_capacity(pending.len());
        for round in 0.. {
            let inputs = self.inputs(&mut schemas);
            let dynamic = inputs.routes.configured().iter().any(|r| r.is_dynamic());
            let small =
                pending.iter().map(|(_, m, _)| m.len()).sum::<usize>() <= PREPARE_INLINE_UP_TO;
            let jobs: Vec<_> = pending
                .drain(..)
                .map(|(lane, messages, claim)| {
                    let copy = dynamic.then(|| messages.clone());
                    let inputs = inputs.clone();
                    let job = Job::start(small, move || inputs.prepare(messages));
                    (lane, claim, copy, job)
                })
                .collect();
            let mut demands = Vec::new();
            for (lane, claim, copy, job) in jobs {
                let batch = job.finish().await;
                self.connect
                    .lock()
                    .expect("connect lock")
                    .absorb(&batch.connect);
                match copy {
                    Some(messages) if !batch.demands.is_empty() => {
                        demands.extend(batch.demands);
                        pending.push((lane, messages, claim));
                    }
                    _ => out.push((lane, self.hand_over(batch, claim)?)),
                }
            }
            if pending.is_empty() {
                break;
            }
            if round == MAX_TABLE_ROUNDS {
                return Err(PipelineError::TablesUnsettled(
                    demands.iter().map(|d| d.table.to_string()).collect(),
                ));
            }
            let refusals =
                tables::resolve(self.writer.pool(), &self.writer, &demands, &self.cancel).await?;
            if self.cancel.is_cancelled() {
                return Ok(out);
            }
            for r in refusals {
                self.refuse(r, &mut pending);
            }
            pending.retain(|(_, m, c)| !m.is_empty() || c.advances_past_skipped());
        }
        Ok(out)
    }

    /// What this round's batches are prepared with.
    fn inputs(&self, schemas: &mut SchemaSet) -> Inputs {
        let routes = self.writer.routes();
        schemas.connect = self.connect.lock().expect("connect lock").clone();
        let heavy = (0..routes.all().len())
            .map(|i| self.writer.duplicate_heavy(i))
            .collect();
        Inputs {
            routes,
            schemas: Arc::new(schemas.clone()),
            heavy: Arc::new(heavy),
            snapshot_points: self
                .snapshot_points
                .as_ref()
                .map(|p| p.lock().expect("snapshot points").clone()),
        }
    }

    /// A table that cannot take its events: its messages become dead letters
    /// (`on_table_error = "dead_letter"`), or its partitions stop and leave
    /// the batch (`stop`), while the other tables go on.
    fn refuse(&self, r: tables::Refusal, pending: &mut [(usize, Vec<SourceMessage>, Claim)]) {
        let d = &r.demand;
        let policy = self.writer.routes().all()[d.route].on_table_error;
        if policy == OnTableError::DeadLetter {
            tracing::error!(table = %d.table, topic = %d.topic, problem = %r.problem, "table refused; its messages become dead letters (on_table_error = \"dead_letter\")");
            self.writer
                .update_routes(|set| set.refuse(d.route, d.table.clone(), r.problem.clone()));
            return;
        }
        for (_, messages, claim) in pending.iter_mut() {
            for (tp, generation) in claim.partitions_of(&d.topic) {
                if self.assignment.stall(tp, generation) {
                    self.metrics.set_stalled(tp, true);
                }
            }
            claim.forget_topic(&d.topic);
            messages.retain(|m| *m.tp.topic != *d.topic);
        }
        tracing::error!(
            table = %d.table, topic = %d.topic, problem = %r.problem,
            "table cannot take its change events; its partitions are stopped (on_table_error = \"stop\"). \
             Change the table, then restart the sink or replay the topic's partitions"
        );
    }

    /// The envelopes of each commit lane, in order. One lane takes the batch
    /// as it is: each move of every message was a share of the profile.
    fn split_lanes(&self, envs: Vec<Envelope>) -> Vec<Vec<Envelope>> {
        if self.lanes <= 1 {
            return vec![envs];
        }
        let mut lanes: Vec<Vec<Envelope>> = (0..self.lanes).map(|_| Vec::new()).collect();
        for e in envs {
            lanes[lane_of(e.tp(), self.lanes)].push(e);
        }
        lanes
    }

    /// A prepared batch becomes the committer's: its expected positions, and
    /// the next batch plans from its end.
    fn hand_over(&self, batch: PreparedBatch, claim: Claim) -> Result<Prepared, PipelineError> {
        if self.on_error == OnError::Stop {
            if let Some(d) = batch.dead_letters.first() {
                return Err(d.clone().into());
            }
        }
        // Batches are handed over one at a time, in offset order per
        // partition: the next one is prepared against these points.
        if let Some(points) = &self.snapshot_points {
            if !batch.straddles.points.is_empty() {
                let mut points = points.lock().expect("snapshot points");
                batch.straddles.absorb_into(Arc::make_mut(&mut points));
            }
        }
        let expected = claim.expected(&batch.ranges);
        self.assignment.advance(&claim, &expected);
        Ok(Prepared { batch, expected })
    }

    /// The writer schemas the messages name (after evolving the tables that
    /// follow their schema); `None` when stopped while the registry was away.
    async fn schemas_for<'m>(
        &self,
        messages: impl Iterator<Item = &'m SourceMessage>,
    ) -> Result<Option<SchemaSet>, PipelineError> {
        let Some(schemas) = &self.schemas else {
            return Ok(Some(SchemaSet::default()));
        };
        let routes = self.writer.routes();
        let (set, ids) = match schemas
            .for_batch(routes.configured(), messages, &self.metrics, &self.cancel)
            .await
        {
            Ok(found) => found,
            Err(SchemasError::Cancelled) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        schemas
            .evolve(self.writer.pool(), &self.writer, &set, &ids)
            .await?;
        Ok(Some(set))
    }
}

/// The next batch: at most `max` envelopes from the front of `buf`. What a
/// chunk brought beyond that stays in `buf`, in order, for the next batch.
fn next_batch(buf: &mut Vec<Envelope>, max: usize) -> Vec<Envelope> {
    // Room for a whole batch up front: growing it by doubling copied every
    // buffered message several times.
    let mut rest = Vec::with_capacity(max);
    if buf.len() > max {
        rest.extend(buf.drain(max..));
    }
    std::mem::replace(buf, rest)
}

/// The commit lane of a partition: stable, and consecutive partitions of a
/// topic spread over the lanes.
fn lane_of(tp: &TopicPartition, lanes: usize) -> usize {
    let topic = tp
        .topic
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    (topic as usize).wrapping_add(tp.partition as usize) % lanes.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::assignment::Polled;
    use crate::types::Offset;

    fn envs(offsets: std::ops::Range<i64>) -> Vec<Envelope> {
        let tp = TopicPartition::new("t", 0);
        offsets
            .map(|o| Envelope {
                item: Polled::Skipped {
                    tp: tp.clone(),
                    next: Offset(o),
                },
                generation: 1,
            })
            .collect()
    }

    fn offsets(envs: &[Envelope]) -> Vec<i64> {
        envs.iter()
            .map(|e| match e.item {
                Polled::Skipped { next, .. } => next.0,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn next_batch_takes_at_most_max_and_keeps_the_rest_in_order() {
        let mut buf = envs(0..600);
        let first = next_batch(&mut buf, 256);
        assert_eq!(offsets(&first), (0..256).collect::<Vec<_>>());
        assert_eq!(offsets(&buf), (256..600).collect::<Vec<_>>());
        let second = next_batch(&mut buf, 256);
        assert_eq!(offsets(&second), (256..512).collect::<Vec<_>>());
        let third = next_batch(&mut buf, 256);
        assert_eq!(offsets(&third), (512..600).collect::<Vec<_>>());
        assert!(buf.is_empty());
        assert!(buf.capacity() >= 256, "the next batch has its room already");
    }
}
