//! Kafka client settings and broker metadata shared by the consumer and the
//! admin commands.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;

use crate::config::route::Route;
use crate::config::Config;
use crate::types::TopicPartition;

/// Timeout of one metadata or watermark request.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the librdkafka configuration: user properties first, then the
/// settings exactly-once depends on (Kafka never decides our position).
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "100")
        // A small prefetch queue keeps RSS low. The limit counts payload
        // bytes only and a fetch overshoots it; librdkafka's per-message
        // bookkeeping and the fetch buffers the queued messages pin cost
        // several times that: at 4 MB, heaptrack saw 75 MB of librdkafka heap
        // at the peak. 1 MB: peak RSS 135-165 -> 82-107 MB, same throughput
        // (the broker refills it faster than a batch commits). With a small
        // queue it fills often, and librdkafka then postpones the next fetch
        // by fetch.queue.backoff.ms (default 1 s): replays stalled for ~0.4 s
        // every ~100k messages. 10 ms keeps the queue fed.
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.queue.backoff.ms", "10")
        // Partitions added to a topic are noticed at the next metadata
        // refresh (librdkafka's default is 5 minutes).
        .set("topic.metadata.refresh.interval.ms", "30000")
        // Once the first metadata names the brokers, librdkafka 2.12 drops
        // the bootstrap connection; a request in flight on it is retried on
        // a new connection, which waits out a "sparse connect" interval of
        // reconnect.backoff.ms / 2 (50 ms by default, at least 11). That
        // wait hit five `replay` starts in six: positions were rewritten
        // 99-123 ms after the process started, now 63-86 ms. Reconnects
        // after a failure still back off exponentially, up to
        // reconnect.backoff.max.ms.
        .set("reconnect.backoff.ms", "20");
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Where to start without a stored position is decided by the sink
        // (kafka.auto_offset_reset, as a logical seek target); librdkafka's
        // own reset would silently jump over a position that fell out of
        // the log. "error" makes it report that instead
        // (kafka.on_offset_out_of_range decides).
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false");
    c
}

/// All partitions of the topics the routes consume, from broker metadata
/// (internal `__` topics excluded), sorted.
pub fn routed_partitions<C: ConsumerContext, R>(
    consumer: &BaseConsumer<C>,
    routes: &[Route<R>],
) -> KafkaResult<Vec<TopicPartition>> {
    let md = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
    let mut out = Vec::new();
    for t in md.topics() {
        if t.name().starts_with("__") || !routes.iter().any(|r| r.topic.matches(t.name())) {
            continue;
        }
        for p in t.partitions() {
            out.push(TopicPartition::new(t.name(), p.id()));
        }
    }
    out.sort();
    Ok(out)
}

/// `(low, high)` of each partition in `tps`, in that order, from two
/// ListOffsets requests (earliest, latest) for all of them. Asking per
/// partition (`fetch_watermarks`) costs two requests and a wait each: a
/// second or more for a topic of a few hundred partitions.
pub fn log_bounds<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tps: &[TopicPartition],
    timeout: Duration,
) -> KafkaResult<Vec<(i64, i64)>> {
    log_bounds_each(consumer, tps, timeout)
        .into_iter()
        .collect()
}

/// [`log_bounds`] with each partition's own error: one partition the
/// broker cannot answer for does not hide the others. A request that fails
/// as a whole is every partition's error.
pub fn log_bounds_each<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tps: &[TopicPartition],
    timeout: Duration,
) -> Vec<KafkaResult<(i64, i64)>> {
    if tps.is_empty() {
        return Vec::new();
    }
    // ListOffsets reads the timestamps -2 and -1 as "earliest" and "latest".
    let ask = |at: rdkafka::Offset| {
        let mut tpl = TopicPartitionList::with_capacity(tps.len());
        for tp in tps {
            tpl.add_partition_offset(&tp.topic, tp.partition, at)?;
        }
        consumer.offsets_for_times(tpl, timeout)
    };
    match ask(rdkafka::Offset::Beginning).and_then(|low| Ok((low, ask(rdkafka::Offset::End)?))) {
        Ok((low, high)) => tps
            .iter()
            .map(|tp| Ok((listed(&low, tp)?, listed(&high, tp)?)))
            .collect(),
        Err(e) => tps.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// The offset a ListOffsets answer holds for `tp`, or its error.
fn listed(answer: &TopicPartitionList, tp: &TopicPartition) -> KafkaResult<i64> {
    let missing = || KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition);
    let e = answer
        .find_partition(&tp.topic, tp.partition)
        .ok_or_else(missing)?;
    e.error()?;
    match e.offset() {
        rdkafka::Offset::Offset(o) => Ok(o),
        _ => Err(missing()),
    }
}
