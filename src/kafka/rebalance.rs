//! The rebalance callback: on assignment the stored positions are read
//! from Postgres *before* librdkafka is told where to start (it runs inside
//! `poll`, on the consumer thread, where it may block on the database); on
//! revocation the partitions' generations end, so nothing fetched for them
//! enters a batch.

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::OffsetReset;
use crate::kafka::assignment::Assignment;
use crate::ops::metrics::Metrics;
use crate::store::offsets;
use crate::types::{Offset, TopicPartition};

/// Where to read a partition from: its stored position, else the reset policy.
pub(super) fn seek_target(stored: Option<Offset>, reset: OffsetReset) -> rdkafka::Offset {
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

/// Told, for each partition assigned, revoked or restarted, where it will
/// be read from next. Called on the consumer thread after the partition's generation
/// changed and before that thread delivers a message of the new one.
pub type RewindHook = std::sync::Arc<dyn Fn(&TopicPartition, ReadNext) + Send + Sync>;

/// Where a partition will be read from next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadNext {
    /// From this position (`None`: none stored; the reset policy decides).
    From(Option<Offset>),
    /// Not by this process: revoked.
    Elsewhere,
}

/// The consumer's context: what the rebalance callback needs.
pub struct SinkContext {
    pub(super) pool: PgPool,
    pub(super) group: String,
    pub(super) reset: OffsetReset,
    pub(super) assignment: Assignment,
    pub(super) metrics: Metrics,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) cancel: CancellationToken,
    pub(super) on_rewind: Option<RewindHook>,
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
        if let Some(hook) = &self.on_rewind {
            for tp in &tps {
                hook(tp, ReadNext::From(stored.get(tp).copied()));
            }
        }
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
        if let Some(hook) = &self.on_rewind {
            for tp in &tps {
                hook(tp, ReadNext::Elsewhere);
            }
        }
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
