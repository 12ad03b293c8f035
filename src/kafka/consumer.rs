//! The Kafka side: one dedicated thread owns an rdkafka `BaseConsumer`.
//!
//! Why a thread and not a `StreamConsumer`: on assignment the rebalance
//! callback must read the stored positions from Postgres *before* assigning,
//! and that callback runs inside `poll`. On a plain thread it may block on the
//! database; on a tokio worker it could not.
//!
//! The callback is `rebalance.rs`. Ownership state (generations, planned
//! positions, pending seeks) lives in `assignment.rs`; this thread changes
//! it only through its methods.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::route::{self, Route};
use crate::config::{Config, OffsetReset};
use crate::kafka::assignment::{Assignment, Envelope, Generation, Polled};
use crate::kafka::client;
use crate::kafka::lag::LagUpdates;
use crate::kafka::message::SourceMessage;
use crate::kafka::rebalance::{seek_target, ReadNext, RewindHook, SinkContext};
use crate::ops::metrics::Metrics;
use crate::types::{Offset, TopicPartition};

/// Requests from the pipeline to the consumer thread.
#[derive(Debug)]
pub enum Command {
    /// Seek to the stored position (`None`: no row yet, use auto.offset.reset).
    Seek(TopicPartition, Option<Offset>),
    /// Copy committed positions to Kafka (informational only).
    CommitToKafka(Vec<(TopicPartition, Offset)>),
}

pub struct ConsumerHandle {
    pub thread: std::thread::JoinHandle<()>,
    pub commands: std::sync::mpsc::Sender<Command>,
}

/// Where assigned partitions start: the database holding their stored
/// positions, and who else must hear them first.
pub struct StoredPositions {
    pub pool: PgPool,
    pub on_rewind: Option<RewindHook>,
}

/// Starts the consumer thread. Messages flow into `out` in chunks of up to
/// [`CHUNK`] (bounded: when the pipeline falls behind, polling pauses —
/// back-pressure without unbounded memory).
pub fn spawn(
    cfg: &Config,
    routes: &[Route],
    positions: StoredPositions,
    assignment: Assignment,
    metrics: Metrics,
    out: mpsc::Sender<Vec<Envelope>>,
    cancel: CancellationToken,
) -> KafkaResult<ConsumerHandle> {
    let StoredPositions { pool, on_rewind } = positions;
    let ctx = SinkContext {
        pool,
        group: cfg.kafka.group_id.clone(),
        reset: cfg.kafka.auto_offset_reset,
        assignment: assignment.clone(),
        metrics: metrics.clone(),
        rt: tokio::runtime::Handle::current(),
        cancel: cancel.clone(),
        on_rewind,
    };
    let consumer: Arc<BaseConsumer<SinkContext>> =
        Arc::new(client::client_config(cfg).create_with_context(ctx)?);
    let subscriptions = route::subscriptions(routes);
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;
    let (tx, commands) = std::sync::mpsc::channel();
    let poller = Poller {
        lag: Some(LagUpdates::spawn(
            consumer.clone(),
            assignment.clone(),
            metrics.clone(),
        )),
        consumer,
        assignment,
        metrics,
        out,
        chunk: Vec::with_capacity(CHUNK),
        commands,
        cancel,
        reset: cfg.kafka.auto_offset_reset,
        // Headers are copied out of librdkafka only if some column maps one.
        copy_headers: routes
            .iter()
            .any(|r| r.columns.as_ref().is_some_and(|m| m.maps_headers())),
        pending_seeks: Vec::new(),
        to_kafka: FxHashMap::default(),
        copied_to_kafka_at: Instant::now(),
        tracked: FxHashMap::default(),
        last_gap_check: Instant::now(),
        topic_names: Default::default(),
    };
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || poller.run())
        .expect("spawn consumer thread");
    Ok(ConsumerHandle {
        thread,
        commands: tx,
    })
}

/// The consumer thread's state.
struct Poller {
    /// Stopped before the consumer leaves the group, or first when this
    /// state drops (fields drop in order): the consumer is released here.
    lag: Option<LagUpdates>,
    /// Shared with the lag thread only.
    consumer: Arc<BaseConsumer<SinkContext>>,
    assignment: Assignment,
    metrics: Metrics,
    out: mpsc::Sender<Vec<Envelope>>,
    /// Envelopes not yet handed over, in delivery order.
    chunk: Vec<Envelope>,
    commands: std::sync::mpsc::Receiver<Command>,
    cancel: CancellationToken,
    reset: OffsetReset,
    /// Some typed route maps a Kafka header into a column.
    copy_headers: bool,
    pending_seeks: Vec<(TopicPartition, Option<Offset>)>,
    /// Committed positions not yet copied to Kafka, the latest per partition.
    to_kafka: FxHashMap<TopicPartition, Offset>,
    copied_to_kafka_at: Instant,
    /// Per partition, what this thread has forwarded in the current generation.
    tracked: FxHashMap<TopicPartition, Tracked>,
    last_gap_check: Instant,
    topic_names: std::cell::RefCell<Vec<std::sync::Arc<str>>>,
}

/// What the poller knows of one partition's delivery, per generation.
struct Tracked {
    generation: Generation,
    /// The offset after the last record delivered (or the start position);
    /// `None` while a logical start (`earliest`/`latest`) delivered nothing.
    next: Option<Offset>,
    /// librdkafka's position seen at the previous idle check, if beyond `next`.
    seen: Option<Offset>,
    /// An out-of-range position was already reported for this generation.
    reported_out_of_range: bool,
}

/// Envelopes per hand-over. One channel send per message (with its atomics
/// and the receiver's wake-ups) was a visible share of both threads; a chunk
/// is handed over when full or as soon as librdkafka's queue runs dry, so it
/// adds no latency.
pub const CHUNK: usize = 256;

/// The longest an idle poll waits. Commands (a replay's seeks, a fence's
/// rewind) are taken between polls, so this is their latency on a quiet
/// topic: at 100 ms it was a visible share of a replay's start.
const IDLE_POLL: Duration = Duration::from_millis(25);

/// Committed positions are copied to Kafka at most this often. The copy is
/// informational (lag tools read it; the positions live in Postgres), and
/// one OffsetCommit per batch cost the broker ~50 µs of CPU per event at
/// 2,000 events/s in batches of four: a fifth of its load, on the cores the
/// sink and Postgres share.
const KAFKA_COPY_INTERVAL: Duration = Duration::from_secs(1);

/// How often idle partitions are checked for skipped records.
const GAP_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Why forwarding a message stopped.
enum Forward {
    Sent,
    Dropped,
    /// The pipeline is gone: stop polling.
    Closed,
}

impl Poller {
    fn run(mut self) {
        let mut polls: u32 = 0;
        let mut idle = true;
        loop {
            // While messages flow, the cancellation token (a mutex) is read
            // every 64th poll: once per message it was a visible share of
            // this thread.
            polls = polls.wrapping_add(1);
            if (idle || polls % 64 == 1) && self.cancel.is_cancelled() {
                break;
            }
            self.handle_commands(idle);
            // Wait for messages only with nothing held back; otherwise an
            // empty queue hands the chunk over at once.
            let wait = if self.chunk.is_empty() {
                IDLE_POLL
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(wait);
            idle = polled.is_none();
            let forwarded = match polled {
                None if !self.chunk.is_empty() => self.flush(),
                None => self.after_idle_poll(),
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    self.report_out_of_range()
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error (librdkafka retries)");
                    Forward::Sent
                }
                Some(Ok(m)) => {
                    let env = self.envelope(&m);
                    drop(m);
                    match env {
                        Some(env) => {
                            self.delivered(&env);
                            self.forward(env)
                        }
                        None => Forward::Dropped,
                    }
                }
            };
            if let Forward::Closed = forwarded {
                return;
            }
        }
        self.leave_group();
    }

    /// Takes the pipeline's requests; `idle` (the last poll found nothing)
    /// also lets positions held back for Kafka go once their interval is up.
    fn handle_commands(&mut self, idle: bool) {
        let mut copied = false;
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Seek(tp, off) => self.pending_seeks.push((tp, off)),
                Command::CommitToKafka(positions) => {
                    self.to_kafka.extend(positions);
                    copied = true;
                }
            }
        }
        if copied || idle {
            self.copy_to_kafka(false);
        }
        for (tp, off) in std::mem::take(&mut self.pending_seeks) {
            if !self.seek(&tp, off) {
                self.pending_seeks.push((tp, off));
            }
        }
    }

    /// Returns true when the seek is done (or no longer needed).
    fn seek(&mut self, tp: &TopicPartition, off: Option<Offset>) -> bool {
        if !self.assignment.owns(tp) {
            return true;
        }
        let target = seek_target(off, self.reset);
        let result = if self.fetch_stopped(tp) {
            self.restart_fetch(tp, target)
        } else {
            self.consumer
                .seek(&tp.topic, tp.partition, target, Duration::from_secs(5))
        };
        match result {
            Ok(()) => {
                self.tracked.remove(tp);
                self.assignment.finish_seek(tp);
                self.metrics.set_stalled(tp, false);
                tracing::info!(%tp, offset = ?off, "seeked to stored position");
                true
            }
            Err(e) => {
                tracing::warn!(%tp, error = %e, "seek failed; will retry");
                false
            }
        }
    }

    /// librdkafka stops fetching a partition whose position was out of range
    /// (`auto.offset.reset = error`); such a partition cannot be sought.
    fn fetch_stopped(&self, tp: &TopicPartition) -> bool {
        self.tracked
            .get(tp)
            .is_some_and(|t| t.reported_out_of_range)
    }

    /// Restarts fetching a stopped partition at `target` by assigning it
    /// again. The eager protocol only replaces the assignment as a whole, so
    /// every other partition restarts at its planned position with a new
    /// generation: what was in flight is dropped and fetched again.
    fn restart_fetch(&self, tp: &TopicPartition, target: rdkafka::Offset) -> KafkaResult<()> {
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(&tp.topic, tp.partition, target)?;
        if let RebalanceProtocol::Cooperative = self.consumer.rebalance_protocol() {
            self.consumer.incremental_unassign(&one)?;
            return self.consumer.incremental_assign(&one);
        }
        let others: Vec<(TopicPartition, Option<Offset>)> = self
            .assignment
            .positions()
            .into_iter()
            .filter(|(other, _)| other != tp)
            .collect();
        for (other, planned) in &others {
            one.add_partition_offset(
                &other.topic,
                other.partition,
                seek_target(*planned, self.reset),
            )?;
        }
        self.consumer.assign(&one)?;
        for (other, planned) in &others {
            self.assignment.finish_seek(other);
            // Read again from where it was planned: the gate of source
            // transactions forgets what it will read again.
            if let Some(hook) = &self.consumer.context().on_rewind {
                hook(other, ReadNext::From(*planned));
            }
        }
        Ok(())
    }

    /// The message as an owned envelope, or `None` if its partition does not
    /// admit messages now.
    fn envelope(&self, m: &BorrowedMessage<'_>) -> Option<Envelope> {
        let tp = TopicPartition::new(self.topic_name(m.topic()), m.partition());
        let generation = self.assignment.stamp(&tp)?;
        // Asked only when needed: librdkafka parses a message's headers on
        // the first request (0.7% of a replay's profile).
        let headers = match self.copy_headers.then(|| m.headers()).flatten() {
            Some(hs) => hs
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            None => Vec::new(),
        };
        let offset = Offset(m.offset());
        Some(Envelope::message(
            SourceMessage {
                tp,
                offset,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                timestamp: m.timestamp().to_millis(),
                headers,
                source_commit: None,
            },
            generation,
        ))
    }

    /// The shared name of a topic this consumer reads (one allocation per
    /// topic, not per message).
    fn topic_name(&self, topic: &str) -> std::sync::Arc<str> {
        let mut names = self.topic_names.borrow_mut();
        if let Some(t) = names.iter().find(|t| ***t == *topic) {
            return t.clone();
        }
        let t: std::sync::Arc<str> = topic.into();
        names.push(t.clone());
        t
    }

    /// Records that a message was delivered: the partition's next record is
    /// the one after it.
    fn delivered(&mut self, env: &Envelope) {
        if let Polled::Message(m) = &env.item {
            let t = Tracked {
                generation: env.generation,
                next: Some(m.offset.next()),
                seen: None,
                reported_out_of_range: false,
            };
            // In place: no key clone per message once the partition is known.
            match self.tracked.get_mut(&m.tp) {
                Some(cur) => *cur = t,
                None => {
                    self.tracked.insert(m.tp.clone(), t);
                }
            }
        }
    }

    /// The tracking of `tp` for its current generation `generation`, started
    /// at the planned position if the generation is new.
    fn tracked(&mut self, tp: &TopicPartition, generation: Generation) -> &mut Tracked {
        let fresh = self
            .tracked
            .get(tp)
            .is_none_or(|t| t.generation != generation);
        if fresh {
            let next = self.assignment.planned(tp).flatten();
            self.tracked.insert(
                tp.clone(),
                Tracked {
                    generation,
                    next,
                    seen: None,
                    reported_out_of_range: false,
                },
            );
        }
        self.tracked.get_mut(tp).expect("inserted above")
    }

    /// librdkafka's queue is empty: a partition whose position moved beyond
    /// the last delivered record without delivering anything skipped records
    /// (transaction markers, aborted transactions, compacted offsets). After
    /// two idle checks agree, the pipeline may store that position.
    fn after_idle_poll(&mut self) -> Forward {
        if self.last_gap_check.elapsed() < GAP_CHECK_INTERVAL {
            return Forward::Sent;
        }
        self.last_gap_check = Instant::now();
        let Ok(positions) = self.consumer.position() else {
            return Forward::Sent;
        };
        for e in positions.elements() {
            let rdkafka::Offset::Offset(p) = e.offset() else {
                continue;
            };
            let tp = TopicPartition::new(e.topic(), e.partition());
            let Some(generation) = self.assignment.stamp(&tp) else {
                continue;
            };
            let t = self.tracked(&tp, generation);
            let Some(next) = t.next else { continue };
            let position = Offset(p);
            if position <= next {
                t.seen = None;
                continue;
            }
            if t.seen != Some(position) {
                t.seen = Some(position);
                continue;
            }
            t.next = Some(position);
            t.seen = None;
            self.metrics
                .offsets_skipped
                .with_label_values(&[tp.topic.as_ref()])
                .inc_by((position.0 - next.0) as u64);
            let env = Envelope {
                item: Polled::Skipped { tp, next: position },
                generation,
            };
            if let Forward::Closed = self.forward(env) {
                return Forward::Closed;
            }
        }
        Forward::Sent
    }

    /// librdkafka found a fetch position outside a partition's log and, with
    /// `auto.offset.reset = error`, stopped fetching it. The error does not
    /// name the partition (rust-rdkafka drops it), so every owned partition's
    /// planned position is compared with its log's range.
    fn report_out_of_range(&mut self) -> Forward {
        let positions = self.assignment.positions();
        let tps: Vec<TopicPartition> = positions.iter().map(|(tp, _)| tp.clone()).collect();
        let bounds = client::log_bounds_each(&self.consumer, &tps, client::METADATA_TIMEOUT);
        for ((tp, planned), bounds) in positions.into_iter().zip(bounds) {
            let (Some(position), Some(generation)) = (planned, self.assignment.stamp(&tp)) else {
                continue;
            };
            let Ok((low, high)) = bounds else {
                continue;
            };
            if (low..=high).contains(&position.0) {
                continue;
            }
            let t = self.tracked(&tp, generation);
            if std::mem::replace(&mut t.reported_out_of_range, true) {
                continue;
            }
            let env = Envelope {
                item: Polled::OutOfRange {
                    tp,
                    position,
                    low: Offset(low),
                    high: Offset(high),
                },
                generation,
            };
            if let Forward::Closed = self.forward(env) {
                return Forward::Closed;
            }
        }
        Forward::Sent
    }

    /// Adds `env` to the chunk, handing the chunk over once it is full.
    fn forward(&mut self, env: Envelope) -> Forward {
        self.chunk.push(env);
        if self.chunk.len() < CHUNK {
            return Forward::Sent;
        }
        self.flush()
    }

    /// Hands the chunk over, waiting for room in the pipeline's channel while
    /// staying responsive to shutdown.
    fn flush(&mut self) -> Forward {
        let mut chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        loop {
            match self.out.try_send(chunk) {
                Ok(()) => return Forward::Sent,
                Err(mpsc::error::TrySendError::Full(c)) => {
                    if self.cancel.is_cancelled() {
                        return Forward::Dropped;
                    }
                    chunk = c;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Forward::Closed,
            }
        }
    }

    /// Copies the held-back positions to Kafka, at most once per
    /// [`KAFKA_COPY_INTERVAL`] unless `now`.
    fn copy_to_kafka(&mut self, now: bool) {
        if self.to_kafka.is_empty()
            || !now && self.copied_to_kafka_at.elapsed() < KAFKA_COPY_INTERVAL
        {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, o) in self.to_kafka.drain() {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(o.0));
        }
        let _ = self.consumer.commit(&tpl, CommitMode::Async);
        self.copied_to_kafka_at = Instant::now();
    }

    /// Leaves the group now so partitions move to other replicas at once
    /// rather than after session.timeout.ms.
    fn leave_group(&mut self) {
        drop(self.lag.take());
        // Before the partitions go: a commit for a revoked partition is refused.
        self.handle_commands(false);
        self.copy_to_kafka(true);
        self.consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.assignment.status().1 > 0 {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        tracing::info!("consumer closed");
    }
}
