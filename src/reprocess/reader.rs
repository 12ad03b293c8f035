//! Reads fixed offset ranges of partitions, outside any consumer group.
//!
//! `verify` must not disturb the sink: this client is assigned partitions
//! explicitly (no group membership, no rebalance), never commits, and runs
//! under a group id of its own. It stops each partition at the end of its
//! range — at a record at or beyond it, or when librdkafka's position passed
//! it without a record (transaction markers, compacted offsets) — and hands
//! messages over in chunks through a bounded channel, so memory holds at
//! most two chunks whatever the range's size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::client::client_config;
use crate::kafka::message::SourceMessage;
use crate::types::{Offset, TopicPartition};

/// The records of `tp` in `[from, to)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub tp: TopicPartition,
    pub from: Offset,
    pub to: Offset,
}

impl Range {
    pub fn len(&self) -> i64 {
        (self.to.0 - self.from.0).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("creating the Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("reading {tp} at {at}: the position is outside the partition's log (retention or a recreated topic)")]
    OutOfRange { tp: TopicPartition, at: Offset },
    #[error("{tp}: no progress for {secs} s at offset {at} before reaching {to}")]
    Stuck {
        tp: TopicPartition,
        at: Offset,
        to: Offset,
        secs: u64,
    },
}

/// Messages in chunks, in offset order per partition; `Err` ends the stream.
pub type Chunk = Result<Vec<SourceMessage>, ReadError>;

/// How long a partition may deliver nothing before the read fails.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Starts the reader thread. `done` counts offsets covered so far (progress).
pub fn spawn(
    cfg: &Config,
    ranges: Vec<Range>,
    chunk: usize,
    copy_headers: bool,
    done: Arc<AtomicI64>,
    out: mpsc::Sender<Chunk>,
    cancel: CancellationToken,
) -> std::thread::JoinHandle<()> {
    let mut client = client_config(cfg);
    // Never the sink's group: nothing is joined or committed under this id.
    client.set(
        "group.id",
        format!("{}.verify.{}", cfg.kafka.group_id, std::process::id()),
    );
    std::thread::Builder::new()
        .name("verify-reader".into())
        .spawn(move || {
            let result = client
                .create::<BaseConsumer>()
                .map_err(ReadError::Client)
                .and_then(|c| {
                    let mut r = RangeReader::new(c, &ranges, chunk, copy_headers, done, &out);
                    r.run(&cancel)
                });
            if let Err(e) = result {
                let _ = out.blocking_send(Err(e));
            }
        })
        .expect("spawn reader thread")
}

/// Per partition: where the range ends, where reading stands.
struct Pending {
    to: Offset,
    at: Offset,
    since: Instant,
}

struct RangeReader<'a> {
    consumer: BaseConsumer,
    pending: HashMap<TopicPartition, Pending>,
    buf: Vec<SourceMessage>,
    chunk: usize,
    copy_headers: bool,
    done: Arc<AtomicI64>,
    out: &'a mpsc::Sender<Chunk>,
}

impl<'a> RangeReader<'a> {
    fn new(
        consumer: BaseConsumer,
        ranges: &[Range],
        chunk: usize,
        copy_headers: bool,
        done: Arc<AtomicI64>,
        out: &'a mpsc::Sender<Chunk>,
    ) -> Self {
        let pending = ranges
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let p = Pending {
                    to: r.to,
                    at: r.from,
                    since: Instant::now(),
                };
                (r.tp.clone(), p)
            })
            .collect();
        Self {
            consumer,
            pending,
            buf: Vec::with_capacity(chunk),
            chunk: chunk.max(1),
            copy_headers,
            done,
            out,
        }
    }

    fn run(&mut self, cancel: &CancellationToken) -> Result<(), ReadError> {
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in &self.pending {
            tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(p.at.0))
                .map_err(ReadError::Client)?;
        }
        self.consumer.assign(&tpl).map_err(ReadError::Client)?;
        while !self.pending.is_empty() && !cancel.is_cancelled() {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let m = owned(&m, self.copy_headers);
                    self.take(m)
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    let (tp, p) = self.pending.iter().next().expect("non-empty");
                    return Err(ReadError::OutOfRange {
                        tp: tp.clone(),
                        at: p.at,
                    });
                }
                Some(Err(e)) => tracing::warn!(error = %e, "kafka poll error (librdkafka retries)"),
                None => self.after_idle_poll()?,
            }
            if self.buf.len() >= self.chunk && !self.flush() {
                return Ok(());
            }
        }
        self.flush();
        Ok(())
    }

    /// Keeps a record of a pending range; closes the range at its end.
    fn take(&mut self, m: SourceMessage) {
        let Some(p) = self.pending.get_mut(&m.tp) else {
            return;
        };
        if m.offset >= p.to {
            return self.close(&m.tp);
        }
        self.done
            .fetch_add(m.offset.next().0 - p.at.0, Ordering::Relaxed);
        p.at = m.offset.next();
        p.since = Instant::now();
        let end = p.to;
        let tp = m.tp.clone();
        let next = m.offset.next();
        self.buf.push(m);
        if next >= end {
            self.close(&tp);
        }
    }

    fn close(&mut self, tp: &TopicPartition) {
        if let Some(p) = self.pending.remove(tp) {
            self.done.fetch_add(p.to.0 - p.at.0, Ordering::Relaxed);
            let mut one = TopicPartitionList::new();
            let _ = one.add_partition(&tp.topic, tp.partition);
            let _ = self.consumer.pause(&one);
        }
    }

    /// Nothing arrived: hand over what is buffered (progress), and close
    /// ranges whose position passed their end without a record.
    fn after_idle_poll(&mut self) -> Result<(), ReadError> {
        if !self.buf.is_empty() && !self.flush() {
            self.pending.clear();
            return Ok(());
        }
        let Ok(positions) = self.consumer.position() else {
            return Ok(());
        };
        for e in positions.elements() {
            let tp = TopicPartition::new(e.topic(), e.partition());
            let (rdkafka::Offset::Offset(pos), Some(p)) = (e.offset(), self.pending.get(&tp))
            else {
                continue;
            };
            if pos >= p.to.0 {
                self.close(&tp);
            }
        }
        if let Some((tp, p)) = self
            .pending
            .iter()
            .find(|(_, p)| p.since.elapsed() > STALL_LIMIT)
        {
            return Err(ReadError::Stuck {
                tp: tp.clone(),
                at: p.at,
                to: p.to,
                secs: STALL_LIMIT.as_secs(),
            });
        }
        Ok(())
    }

    /// Sends the buffered chunk; false when the receiver is gone.
    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.out.blocking_send(Ok(chunk)).is_ok()
    }
}

/// The message copied out of librdkafka's buffer.
fn owned(m: &BorrowedMessage<'_>, copy_headers: bool) -> SourceMessage {
    let headers = match m.headers() {
        Some(hs) if copy_headers => hs
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect(),
        _ => Vec::new(),
    };
    SourceMessage {
        tp: TopicPartition::new(m.topic(), m.partition()),
        offset: Offset(m.offset()),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        timestamp: m.timestamp().to_millis(),
        headers,
        source_commit: None,
    }
}
