//! The Kafka side: one dedicated thread owns an rdkafka `BaseConsumer`.
//!
//! Why a thread and not a `StreamConsumer`: on assignment the rebalance
//! callback must read the stored positions from Postgres *before* assigning,
//! and that callback runs inside `poll`. On a plain thread it may block on the
//! database; on a tokio worker it could not.
//!
//! Ownership state (generations, planned positions, pending seeks) lives in
//! `assignment.rs`; this thread changes it only through its methods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::assignment::{Assignment, Envelope};
use crate::backoff::Backoff;
use crate::config::{Config, OffsetReset};
use crate::kafka;
use crate::message::SourceMessage;
use crate::metrics::Metrics;
use crate::route::{self, Route};
use crate::store::offsets;
use crate::types::{Offset, TopicPartition};

/// Requests from the pipeline to the consumer thread.
#[derive(Debug)]
pub enum Command {
    /// Seek to the stored position (`None`: no row yet, use auto.offset.reset).
    Seek(TopicPartition, Option<Offset>),
    /// Copy committed positions to Kafka (informational only).
    CommitToKafka(Vec<(TopicPartition, Offset)>),
}

/// Where to read a partition from: its stored position, else the reset policy.
fn seek_target(stored: Option<Offset>, reset: OffsetReset) -> rdkafka::Offset {
    match (stored, reset) {
        (Some(o), _) => rdkafka::Offset::Offset(o.0),
        (None, OffsetReset::Latest) => rdkafka::Offset::End,
        (None, _) => rdkafka::Offset::Beginning,
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

pub struct SinkContext {
    pool: PgPool,
    group: String,
    reset: OffsetReset,
    assignment: Assignment,
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
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl, cooperative);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::error!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
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
    /// Takes ownership of newly assigned partitions at their stored
    /// positions and points `tpl` there.
    fn assign(&self, tpl: &mut TopicPartitionList, cooperative: bool) {
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        let tps = partitions_of(tpl);
        let stored = self.read_offsets_blocking(&tps);
        let owned = self.assignment.assign(&tps, &stored, !cooperative);
        self.metrics.assigned_partitions.set(owned as i64);
        for tp in &tps {
            let target = seek_target(stored.get(tp).copied(), self.reset);
            let _ = tpl.set_partition_offset(&tp.topic, tp.partition, target);
        }
        tracing::info!(partitions = ?tps, "assigned; starting from offsets stored in Postgres");
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let tps = partitions_of(tpl);
        let owned = self.assignment.revoke(&tps);
        for tp in &tps {
            self.metrics.forget_partition(tp);
        }
        self.metrics.assigned_partitions.set(owned as i64);
        tracing::info!(partitions = ?tps, "revoked");
    }

    /// Reads stored positions, retrying while Postgres is unreachable: starting
    /// from a guessed position would break exactly-once, waiting does not.
    fn read_offsets_blocking(&self, tps: &[TopicPartition]) -> HashMap<TopicPartition, Offset> {
        let mut backoff = Backoff::database();
        loop {
            match self
                .rt
                .block_on(offsets::read(&self.pool, &self.group, tps))
            {
                Ok(m) => return m,
                Err(e) if !self.cancel.is_cancelled() => {
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = %e, "reading stored offsets failed; retrying");
                    std::thread::sleep(backoff.next_delay());
                }
                Err(_) => return HashMap::new(),
            }
        }
    }
}

pub struct ConsumerHandle {
    pub thread: std::thread::JoinHandle<()>,
    pub commands: std::sync::mpsc::Sender<Command>,
}

/// Starts the consumer thread. Messages flow into `out` (bounded: when the
/// pipeline falls behind, polling pauses — back-pressure without unbounded
/// memory).
pub fn spawn(
    cfg: &Config,
    routes: &[Route],
    pool: PgPool,
    assignment: Assignment,
    metrics: Metrics,
    out: mpsc::Sender<Envelope>,
    cancel: CancellationToken,
) -> KafkaResult<ConsumerHandle> {
    let ctx = SinkContext {
        pool,
        group: cfg.kafka.group_id.clone(),
        reset: cfg.kafka.auto_offset_reset,
        assignment: assignment.clone(),
        metrics: metrics.clone(),
        rt: tokio::runtime::Handle::current(),
        cancel: cancel.clone(),
    };
    let consumer: BaseConsumer<SinkContext> = kafka::client_config(cfg).create_with_context(ctx)?;
    let subscriptions = route::subscriptions(routes);
    let subs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    consumer.subscribe(&subs)?;
    let (tx, commands) = std::sync::mpsc::channel();
    let poller = Poller {
        consumer,
        assignment,
        metrics,
        out,
        commands,
        cancel,
        reset: cfg.kafka.auto_offset_reset,
        // Headers are copied out of librdkafka only if some column maps one.
        copy_headers: routes
            .iter()
            .any(|r| r.columns.as_ref().is_some_and(|m| m.maps_headers())),
        pending_seeks: Vec::new(),
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
    consumer: BaseConsumer<SinkContext>,
    assignment: Assignment,
    metrics: Metrics,
    out: mpsc::Sender<Envelope>,
    commands: std::sync::mpsc::Receiver<Command>,
    cancel: CancellationToken,
    reset: OffsetReset,
    /// Some typed route maps a Kafka header into a column.
    copy_headers: bool,
    pending_seeks: Vec<(TopicPartition, Option<Offset>)>,
}

/// Why forwarding a message stopped.
enum Forward {
    Sent,
    Dropped,
    /// The pipeline is gone: stop polling.
    Closed,
}

impl Poller {
    fn run(mut self) {
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        while !self.cancel.is_cancelled() {
            self.handle_commands();
            if last_lag.elapsed() > Duration::from_secs(5) {
                last_lag = Instant::now();
                self.update_lag();
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "kafka poll error (librdkafka retries)"),
                Some(Ok(m)) => {
                    let env = self.envelope(&m);
                    drop(m);
                    if let Some(env) = env {
                        if let Forward::Closed = self.forward(env) {
                            return;
                        }
                    }
                }
            }
        }
        self.leave_group();
    }

    fn handle_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Seek(tp, off) => self.pending_seeks.push((tp, off)),
                Command::CommitToKafka(positions) => {
                    let mut tpl = TopicPartitionList::new();
                    for (tp, o) in positions {
                        let _ = tpl.add_partition_offset(
                            &tp.topic,
                            tp.partition,
                            rdkafka::Offset::Offset(o.0),
                        );
                    }
                    let _ = self.consumer.commit(&tpl, CommitMode::Async);
                }
            }
        }
        let mut seeks = std::mem::take(&mut self.pending_seeks);
        seeks.retain(|(tp, off)| !self.seek(tp, *off));
        self.pending_seeks = seeks;
    }

    /// Returns true when the seek is done (or no longer needed).
    fn seek(&self, tp: &TopicPartition, off: Option<Offset>) -> bool {
        if !self.assignment.owns(tp) {
            return true;
        }
        let target = seek_target(off, self.reset);
        match self
            .consumer
            .seek(&tp.topic, tp.partition, target, Duration::from_secs(5))
        {
            Ok(()) => {
                self.assignment.finish_seek(tp);
                tracing::info!(%tp, offset = ?off, "seeked to stored position");
                true
            }
            Err(e) => {
                tracing::warn!(%tp, error = %e, "seek failed; will retry");
                false
            }
        }
    }

    /// The message as an owned envelope, or `None` if its partition does not
    /// admit messages now.
    fn envelope(&self, m: &BorrowedMessage<'_>) -> Option<Envelope> {
        let tp = TopicPartition::new(m.topic(), m.partition());
        let generation = self.assignment.stamp(&tp)?;
        let headers = match m.headers() {
            Some(hs) if self.copy_headers => hs
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            _ => Vec::new(),
        };
        Some(Envelope {
            msg: SourceMessage {
                tp,
                offset: Offset(m.offset()),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                timestamp: m.timestamp().to_millis(),
                headers,
            },
            generation,
        })
    }

    /// Waits for room in the pipeline's channel, staying responsive to shutdown.
    fn forward(&self, mut env: Envelope) -> Forward {
        loop {
            match self.out.try_send(env) {
                Ok(()) => return Forward::Sent,
                Err(mpsc::error::TrySendError::Full(e)) => {
                    if self.cancel.is_cancelled() {
                        return Forward::Dropped;
                    }
                    env = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Forward::Closed,
            }
        }
    }

    fn update_lag(&self) {
        for (tp, planned) in self.assignment.positions() {
            if let Ok((low, high)) =
                kafka::watermarks(&self.consumer, &tp, Duration::from_millis(500))
            {
                let pos = planned.map(|o| o.0).unwrap_or(low);
                self.metrics.set_lag(&tp, (high - pos).max(0));
            }
        }
    }

    /// Leaves the group now so partitions move to other replicas at once
    /// rather than after session.timeout.ms.
    fn leave_group(&self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.assignment.status().1 > 0 {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        tracing::info!("consumer closed");
    }
}
