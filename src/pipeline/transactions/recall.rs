//! Partitions read again: what the gate must forget, and what earlier
//! processes applied, read back from the transaction topic.
//!
//! On every assignment, revocation and seek the gate drops what it held of
//! the partition and, read again here, forgets the transactions whose END
//! it will read again:
//! released perhaps, but never committed (the batch holding them was
//! dropped with the old generation), so their changes are gated again
//! instead of passing as re-sends, in parts.
//!
//! The gate tells a connector's re-sends from transactions it has not seen
//! whole by the ids it released. A process that takes over — a standby
//! after the active member died, a restart — starts with none. Below the
//! transaction topic's stored position every END belongs to a transaction
//! released by some earlier process (an END is passed only with its
//! transaction or after it), so reading back the markers just below that
//! position gives the gate its predecessor's memory, before the
//! partition's first message is fetched.
//!
//! Without it, a takeover inside a connector's re-send region saw a
//! transaction the crash had cut short (its first changes standing before
//! the re-sends in a partition) and took it for a re-send: it was applied
//! in parts (`tests/cdc_transactions.rs`, the replica taking over).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, TopicPartitionList};

use super::{marker_in, may_carry_markers, Marker};
use crate::config::Config;
use crate::kafka::client;
use crate::kafka::rebalance::{ReadNext, RewindHook};
use crate::types::{Offset, TopicPartition};

/// A partition to be read again from `next`, with the transactions whose
/// ENDs below it were recalled.
#[derive(Debug)]
pub struct Rewind {
    pub tp: TopicPartition,
    pub next: ReadNext,
    pub recalled: Vec<(String, Offset)>,
}

/// Rewinds waiting for the gate, in the order they happened.
pub type Inbox = Arc<Mutex<Vec<Rewind>>>;

/// A read-back longer than this goes on without the rest.
const READ_BACK_FOR: Duration = Duration::from_secs(30);
/// Nothing fetched for this long: the rest below the position is not
/// there to read (records deleted, transaction control records).
const IDLE: Duration = Duration::from_secs(2);

/// The rebalance hook: every partition assigned or revoked is a rewind
/// for the gate; for a transaction topic assigned at a stored position it
/// recalls the transactions its last `recall_markers` markers ended.
/// `None` when source transactions are off.
pub fn hook(cfg: &Config, inbox: Inbox) -> Option<RewindHook> {
    let markers = cfg.sink.source_transactions.recall_markers;
    if !cfg.sink.source_transactions.enabled {
        return None;
    }
    let mut client = client::client_config(cfg);
    // Assigned, never subscribed: this reader joins no group.
    client.set("group.id", format!("{}.recall", cfg.kafka.group_id));
    Some(Arc::new(move |tp: &TopicPartition, next: ReadNext| {
        let recalled = match next {
            ReadNext::From(Some(at)) if markers > 0 && at.0 > 0 && may_carry_markers(&tp.topic) => {
                recall(&client, tp, at, markers)
            }
            _ => Vec::new(),
        };
        inbox.lock().expect("rewinds").push(Rewind {
            tp: tp.clone(),
            next,
            recalled,
        });
    }))
}

/// The ENDs among the last `markers` messages of `tp` before `at`, logged.
fn recall(
    client: &ClientConfig,
    tp: &TopicPartition,
    at: Offset,
    markers: u64,
) -> Vec<(String, Offset)> {
    let started = Instant::now();
    match read_back(client, tp, at, markers) {
        Ok((read, ids)) => {
            tracing::info!(
                topic = %tp.topic,
                partition = tp.partition,
                position = at.0,
                markers = read,
                transactions = ids.len(),
                took = ?started.elapsed(),
                "recalled the source transactions applied before the stored position"
            );
            ids
        }
        Err(e) => {
            tracing::warn!(
                topic = %tp.topic,
                error = %e,
                "recalling the source transactions applied before the stored position failed: \
                 a connector's re-sends of them are told apart from the partitions' order only"
            );
            Vec::new()
        }
    }
}

/// The ids of the ENDs among the last `markers` messages before `at`, and
/// how many messages were read.
fn read_back(
    client: &ClientConfig,
    tp: &TopicPartition,
    at: Offset,
    markers: u64,
) -> Result<(u64, Vec<(String, Offset)>), KafkaError> {
    let consumer: BaseConsumer = client.create()?;
    let (low, _) = consumer.fetch_watermarks(&tp.topic, tp.partition, client::METADATA_TIMEOUT)?;
    let from = low.max(at.0.saturating_sub(i64::try_from(markers).unwrap_or(i64::MAX)));
    let (mut read, mut ids) = (0, Vec::new());
    if from >= at.0 {
        return Ok((read, ids));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < READ_BACK_FOR {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading markers back");
                continue;
            }
            None if last.elapsed() >= IDLE && read > 0 => return Ok((read, ids)),
            None => continue,
        };
        last = Instant::now();
        if m.offset() >= at.0 {
            return Ok((read, ids));
        }
        read += 1;
        if let Some(Marker {
            id, end: Some(_), ..
        }) = m.payload().and_then(|v| marker_in(&tp.topic, v))
        {
            ids.push((id, Offset(m.offset())));
        }
        if m.offset() + 1 >= at.0 {
            return Ok((read, ids));
        }
    }
    tracing::warn!(
        topic = %tp.topic,
        read,
        position = at.0,
        "reading markers back took too long: recalled what was read"
    );
    Ok((read, ids))
}
