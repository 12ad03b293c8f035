//! The Kafka side: one dedicated thread owns an rdkafka `BaseConsumer`.
//!
//! Why a thread and not a `StreamConsumer`: on assignment the rebalance
//! callback must read the stored positions from Postgres *before* assigning,
//! and that callback runs inside `poll`. On a plain thread it may block on the
//! database; on a tokio worker it could not.
//!
//! Every partition carries a *generation*, bumped on assignment and on every
//! seek. Messages are stamped with the generation current when they were
//! polled, and the pipeline drops messages of an older generation: after a
//! fence or a replay nothing fetched before the seek can slip into a batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::SourceMessage;
use crate::config::{Config, Route};
use crate::metrics::Metrics;
use crate::store::offsets;
use crate::types::{Offset, TopicPartition};

/// What the pipeline knows about a partition it owns.
#[derive(Clone, Debug)]
pub struct PartState {
    pub generation: u64,
    /// Next offset to commit from: the stored position plus what this process
    /// has committed since. `None`: no row in `sink_offsets` yet.
    pub planned: Option<Offset>,
    /// A seek was requested and has not happened yet: drop everything.
    pub seeking: bool,
}

/// State shared between the consumer thread and the pipeline.
#[derive(Default)]
pub struct Assignment {
    pub parts: HashMap<TopicPartition, PartState>,
    next_generation: u64,
    /// Set once the first assignment happened (readiness).
    pub joined: bool,
}

impl Assignment {
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

pub type SharedAssignment = Arc<Mutex<Assignment>>;

/// A polled message with the generation of its partition at poll time.
pub struct Envelope {
    pub msg: SourceMessage,
    pub generation: u64,
}

/// Requests from the pipeline to the consumer thread.
pub enum Command {
    /// Reposition a partition (after a fence or a replay).
    Seek(TopicPartition, Option<Offset>),
    /// Copy committed positions to Kafka (informational only).
    CommitToKafka(Vec<(TopicPartition, Offset)>),
}

pub struct SinkContext {
    pool: PgPool,
    group: String,
    reset_earliest: bool,
    assignment: SharedAssignment,
    metrics: Metrics,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let tps: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition()))
                    .collect();
                let stored = self.read_offsets_blocking(&tps);
                {
                    let mut a = self.assignment.lock().unwrap();
                    if !cooperative {
                        a.parts.clear();
                    }
                    for tp in &tps {
                        let generation = a.bump();
                        a.parts.insert(
                            tp.clone(),
                            PartState {
                                generation,
                                planned: stored.get(tp).copied(),
                                seeking: false,
                            },
                        );
                    }
                    a.joined = true;
                    self.metrics.assigned_partitions.set(a.parts.len() as i64);
                }
                for tp in &tps {
                    let off = self.start_offset(stored.get(tp).copied());
                    let _ = tpl.set_partition_offset(&tp.topic, tp.partition, off);
                }
                tracing::info!(partitions = ?tps, "assigned; starting from offsets stored in Postgres");
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let tps: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition()))
                    .collect();
                {
                    let mut a = self.assignment.lock().unwrap();
                    for tp in &tps {
                        a.parts.remove(tp);
                        let labels = [tp.topic.as_str(), &tp.partition.to_string()];
                        let _ = self.metrics.lag.remove_label_values(&labels);
                        let _ = self.metrics.stored_offset.remove_label_values(&labels);
                    }
                    self.metrics.assigned_partitions.set(a.parts.len() as i64);
                }
                tracing::info!(partitions = ?tps, "revoked");
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Informational copy only: Postgres holds the real positions.
            tracing::debug!(error = %e, "copying offsets to Kafka failed");
        }
    }
}

impl SinkContext {
    /// Reads stored positions, retrying while Postgres is unreachable: starting
    /// from a guessed position would break exactly-once, waiting does not.
    fn read_offsets_blocking(&self, tps: &[TopicPartition]) -> HashMap<TopicPartition, Offset> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .rt
                .block_on(offsets::read(&self.pool, &self.group, tps))
            {
                Ok(m) => return m,
                Err(e) if !self.cancel.is_cancelled() => {
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = %e, "reading stored offsets failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(_) => return HashMap::new(),
            }
        }
    }

    fn start_offset(&self, stored: Option<Offset>) -> rdkafka::Offset {
        match stored {
            Some(o) => rdkafka::Offset::Offset(o.0),
            None if self.reset_earliest => rdkafka::Offset::Beginning,
            None => rdkafka::Offset::End,
        }
    }
}

/// Builds the librdkafka configuration: user properties first, then the
/// settings exactly-once depends on (Kafka never decides our position).
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "100")
        // A small prefetch queue keeps RSS low (4 MB instead of 64 MB). With
        // a small queue it fills often, and librdkafka then postpones the
        // next fetch by fetch.queue.backoff.ms (default 1 s): replays stalled
        // for ~0.4 s every ~100k messages. 10 ms keeps the queue fed.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &cfg.kafka.auto_offset_reset)
        .set("enable.partition.eof", "false");
    c
}

pub struct ConsumerHandle {
    pub thread: std::thread::JoinHandle<()>,
    pub commands: std::sync::mpsc::Sender<Command>,
}

/// Starts the consumer thread. Messages flow into `out` (bounded: when the
/// pipeline falls behind, polling pauses — back-pressure without unbounded
/// memory).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: &Config,
    routes: &[Route],
    pool: PgPool,
    assignment: SharedAssignment,
    metrics: Metrics,
    out: mpsc::Sender<Envelope>,
    cancel: CancellationToken,
) -> KafkaResult<ConsumerHandle> {
    let ctx = SinkContext {
        pool,
        group: cfg.kafka.group_id.clone(),
        reset_earliest: cfg.kafka.auto_offset_reset == "earliest",
        assignment: assignment.clone(),
        metrics: metrics.clone(),
        rt: tokio::runtime::Handle::current(),
        cancel: cancel.clone(),
    };
    let consumer: BaseConsumer<SinkContext> = client_config(cfg).create_with_context(ctx)?;
    let subscriptions = crate::admin::subscriptions(routes);
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;
    let reset_earliest = cfg.kafka.auto_offset_reset == "earliest";
    // Headers are copied out of librdkafka only if some column maps one.
    let copy_headers = routes
        .iter()
        .any(|r| r.columns.as_ref().is_some_and(|m| m.maps_headers()));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            poll_loop(
                consumer,
                assignment,
                metrics,
                out,
                rx,
                cancel,
                PollSettings {
                    reset_earliest,
                    copy_headers,
                },
            )
        })
        .expect("spawn consumer thread");
    Ok(ConsumerHandle {
        thread,
        commands: tx,
    })
}

/// What the poll loop needs from the configuration.
struct PollSettings {
    /// `auto.offset.reset = earliest`: where a seek without a stored offset goes.
    reset_earliest: bool,
    /// Some typed route maps a Kafka header into a column.
    copy_headers: bool,
}

fn poll_loop(
    consumer: BaseConsumer<SinkContext>,
    assignment: SharedAssignment,
    metrics: Metrics,
    out: mpsc::Sender<Envelope>,
    commands: std::sync::mpsc::Receiver<Command>,
    cancel: CancellationToken,
    settings: PollSettings,
) {
    let PollSettings {
        reset_earliest,
        copy_headers,
    } = settings;
    let mut pending_seeks: Vec<(TopicPartition, Option<Offset>)> = Vec::new();
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    while !cancel.is_cancelled() {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Seek(tp, off) => pending_seeks.push((tp, off)),
                Command::CommitToKafka(positions) => {
                    let mut tpl = TopicPartitionList::new();
                    for (tp, o) in positions {
                        let _ = tpl.add_partition_offset(
                            &tp.topic,
                            tp.partition,
                            rdkafka::Offset::Offset(o.0),
                        );
                    }
                    let _ = consumer.commit(&tpl, CommitMode::Async);
                }
            }
        }
        pending_seeks
            .retain(|(tp, off)| !do_seek(&consumer, &assignment, tp, *off, reset_earliest));

        if last_lag.elapsed() > Duration::from_secs(5) {
            last_lag = Instant::now();
            update_lag(&consumer, &assignment, &metrics);
        }

        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "kafka poll error (librdkafka retries)"),
            Some(Ok(m)) => {
                let tp = TopicPartition::new(m.topic(), m.partition());
                let generation = {
                    let a = assignment.lock().unwrap();
                    match a.parts.get(&tp) {
                        Some(s) if !s.seeking => Some(s.generation),
                        _ => None,
                    }
                };
                let Some(generation) = generation else {
                    continue;
                };
                let env = Envelope {
                    msg: SourceMessage {
                        tp,
                        offset: Offset(m.offset()),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        timestamp: m.timestamp().to_millis(),
                        headers: m
                            .headers()
                            .filter(|_| copy_headers)
                            .map(|hs| {
                                hs.iter()
                                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                    generation,
                };
                drop(m);
                // Wait for room, but stay responsive to shutdown.
                let mut env = Some(env);
                while let Some(e) = env.take() {
                    match out.try_send(e) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(e)) => {
                            if cancel.is_cancelled() {
                                break;
                            }
                            env = Some(e);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        }
    }
    // Leave the group now so partitions move to other replicas at once
    // rather than after session.timeout.ms.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && assignment.lock().unwrap().parts.values().len() > 0 {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("consumer closed");
}

/// Returns true when the seek is done (or no longer needed).
fn do_seek(
    consumer: &BaseConsumer<SinkContext>,
    assignment: &SharedAssignment,
    tp: &TopicPartition,
    off: Option<Offset>,
    reset_earliest: bool,
) -> bool {
    let target = match off {
        Some(o) => rdkafka::Offset::Offset(o.0),
        None if reset_earliest => rdkafka::Offset::Beginning,
        None => rdkafka::Offset::End,
    };
    if !assignment.lock().unwrap().parts.contains_key(tp) {
        return true;
    }
    match consumer.seek(&tp.topic, tp.partition, target, Duration::from_secs(5)) {
        Ok(()) => {
            let mut a = assignment.lock().unwrap();
            let generation = a.bump();
            if let Some(s) = a.parts.get_mut(tp) {
                s.generation = generation;
                s.seeking = false;
            }
            tracing::info!(%tp, offset = ?off, "seeked to stored position");
            true
        }
        Err(e) => {
            tracing::warn!(%tp, error = %e, "seek failed; will retry");
            false
        }
    }
}

fn update_lag(
    consumer: &BaseConsumer<SinkContext>,
    assignment: &SharedAssignment,
    metrics: &Metrics,
) {
    let parts: Vec<(TopicPartition, Option<Offset>)> = {
        let a = assignment.lock().unwrap();
        a.parts
            .iter()
            .map(|(tp, s)| (tp.clone(), s.planned))
            .collect()
    };
    for (tp, planned) in parts {
        if let Ok((low, high)) =
            consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_millis(500))
        {
            let pos = planned.map(|o| o.0).unwrap_or(low);
            metrics
                .lag
                .with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()])
                .set((high - pos).max(0));
        }
    }
}
