//! Prometheus metrics (`kafka_pg_sink_*`). Every consumed message is counted
//! in exactly one outcome, so
//!
//! ```text
//! messages_consumed_total = rows_inserted_total + rows_updated_total
//!     + rows_deleted_total + sum(duplicates_total) + sum(dead_letters_total)
//!     + sum(messages_skipped_total)
//! ```
//!
//! holds at every scrape after a batch commits (tested). `messages_skipped_total`
//! holds outcomes that are neither writes nor duplicates: an older version
//! (`stale`), a message replaced by a later one with the same key in the same
//! batch (`superseded`), ignored or no-op tombstones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::event::BatchCounts;
use crate::store::TableCounts;
use crate::types::{LastEvents, TopicPartition};

const PREFIX: &str = "kafka_pg_sink_";

/// How old the data is: the age of events at commit, each partition's last
/// committed event, and how long a partition with lag has not advanced.
#[derive(Clone)]
pub struct Freshness {
    /// Seconds since a partition with lag last advanced.
    pub partition_stall: GaugeVec,
    /// Kafka timestamp of the last committed event per partition.
    pub last_event_timestamp: GaugeVec,
    /// Commit time minus Kafka timestamp, per route.
    pub event_age: HistogramVec,
    /// When each partition's stored position last moved (or was first seen).
    advanced: Arc<Mutex<HashMap<TopicPartition, (i64, Instant)>>>,
}

impl Freshness {
    fn new(f: &mut Families) -> Freshness {
        Freshness {
            partition_stall: f.float_gauge_vec("partition_stall_seconds", "Seconds since the partition's stored position last moved while it has lag (0 when caught up): a stuck partition grows here", &["topic", "partition"]),
            last_event_timestamp: f.float_gauge_vec("last_event_timestamp_seconds", "Kafka timestamp (Unix seconds) of the last event committed per partition", &["topic", "partition"]),
            event_age: f.histogram_vec(
                "event_age_seconds",
                "Age of events when their batch committed: commit time minus the Kafka message timestamp, per route",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
                &["route"],
            ),
            advanced: Default::default(),
        }
    }
}

/// Source transactions applied whole (`pipeline::transactions`).
#[derive(Clone)]
pub struct SourceTransactions {
    pub open: Gauge,
    pub held_events: Gauge,
    pub oldest_held: Gauge,
    pub released: IntCounter,
    pub split: IntCounter,
    /// Transactions at the front that never completed, taken for re-sends.
    pub presumed_resent: IntCounter,
    /// BEGIN/END markers read (in either mode: without it they only move
    /// their topic's position).
    pub markers: IntCounter,
}

impl SourceTransactions {
    fn new(f: &mut Families) -> SourceTransactions {
        SourceTransactions {
            open: f.float_gauge("source_transactions_open", "Source transactions with changes held, waiting for their END marker or their last changes"),
            held_events: f.float_gauge("source_transaction_held_events", "Changes and markers held until their source transaction is complete"),
            oldest_held: f.float_gauge("source_transaction_oldest_held_seconds", "How long the oldest held change has waited for its transaction"),
            released: f.counter("source_transactions_released_total", "Whole source transactions released to a batch (in commit order)"),
            split: f.counter("source_transactions_split_total", "Source transactions larger than max_buffered_events, applied in parts (readers could see part of them)"),
            presumed_resent: f.counter("source_transactions_presumed_resent_total", "Transactions whose END stayed incomplete at the front, taken for a connector's partial re-send and let through"),
            markers: f.counter("transaction_markers_total", "Debezium transaction BEGIN/END markers read"),
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Every registered family, including those without series yet.
    families: Arc<[String]>,
    pub messages_consumed: IntCounter,
    pub rows_inserted: IntCounter,
    pub rows_updated: IntCounter,
    pub rows_deleted: IntCounter,
    /// Per table: `rows_inserted/updated/deleted_total` by table.
    pub table_rows: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub skipped: IntCounterVec,
    pub batches: IntCounter,
    pub batch_size: Histogram,
    /// Partitions per committed batch: the commit's statements do not grow
    /// with it (one offsets statement for all of them).
    pub batch_partitions: Histogram,
    pub commit_duration: HistogramVec,
    /// How long the commit in flight has taken so far, once it is slow.
    pub commit_in_flight: Gauge,
    pub commit_lock_waits: IntCounter,
    pub fenced_batches: IntCounter,
    pub db_retries: IntCounter,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub lag: IntGaugeVec,
    pub stored_offset: IntGaugeVec,
    pub offsets_skipped: IntCounterVec,
    pub out_of_range: IntCounterVec,
    pub offsets_lost: IntCounterVec,
    pub partition_stalled: IntGaugeVec,
    pub freshness: Freshness,
    pub source_transactions: SourceTransactions,
    pub change_events: IntCounterVec,
    pub snapshot_straddles: IntCounterVec,
    pub rows_truncated: IntCounter,
    pub schema_registry_up: IntGauge,
    pub registry_errors: IntCounter,
    pub build_info: IntGaugeVec,
}

/// Registers each metric as it is created, so the list is written once.
struct Families {
    registry: Registry,
    names: Vec<String>,
}

impl Families {
    fn add<C: Collector + Clone + 'static>(&mut self, c: C) -> C {
        self.names
            .extend(c.desc().into_iter().map(|d| d.fq_name.clone()));
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(format!("{PREFIX}{name}"), help).expect("valid metric"))
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(
            IntCounterVec::new(Opts::new(format!("{PREFIX}{name}"), help), labels)
                .expect("valid metric"),
        )
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(
            IntGaugeVec::new(Opts::new(format!("{PREFIX}{name}"), help), labels)
                .expect("valid metric"),
        )
    }

    fn float_gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(format!("{PREFIX}{name}"), help).expect("valid metric"))
    }

    fn float_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let opts = Opts::new(format!("{PREFIX}{name}"), help);
        self.add(GaugeVec::new(opts, labels).expect("valid metric"))
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(format!("{PREFIX}{name}"), help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(format!("{PREFIX}{name}"), help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut f = Families {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let m = Metrics {
            messages_consumed: f.counter("messages_consumed_total", "Messages read from Kafka and committed in a batch"),
            rows_inserted: f.counter("rows_inserted_total", "Rows inserted (a key new to the table, counted once per batch)"),
            rows_updated: f.counter("rows_updated_total", "Rows updated (content changed)"),
            rows_deleted: f.counter("rows_deleted_total", "Rows deleted by tombstones"),
            table_rows: f.counter_vec("table_rows_total", "Rows inserted, updated or deleted, per table (the rows_*_total of one table)", &["table", "change"]),
            duplicates: f.counter_vec("duplicates_total", "Messages that were duplicates: within a batch (stage=batch) or of the stored row (stage=table)", &["stage"]),
            dead_letters: f.counter_vec("dead_letters_total", "Poison messages written to sink_dead_letters", &["reason"]),
            skipped: f.counter_vec("messages_skipped_total", "Messages with no effect that are not duplicates", &["reason"]),
            batches: f.counter("batches_total", "Batches committed"),
            batch_size: f.histogram("batch_size", "Messages per committed batch", &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0]),
            batch_partitions: f.histogram("batch_partitions", "Partitions per committed batch (their positions move in one statement)", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            commit_duration: f.histogram_vec(
                "commit_duration_seconds",
                "Duration of the batch transaction",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                &["result"],
            ),
            commit_in_flight: f.float_gauge("commit_in_flight_seconds", "Seconds the batch being committed has been in flight since its first attempt, retries included (a lock, a full disk, a read-only database); updated while an attempt is slow (past 5 s) and after each failed one; 0 otherwise"),
            commit_lock_waits: f.counter("commit_lock_waits_total", "Slow commits found waiting on a lock another session holds (the log names it)"),
            fenced_batches: f.counter("fenced_batches_total", "Batches refused by the offset compare-and-set (zombie or replay)"),
            db_retries: f.counter("db_retries_total", "Transient database errors retried"),
            rebalances: f.counter_vec("rebalances_total", "Consumer group rebalance events", &["kind"]),
            assigned_partitions: f.add(
                IntGauge::new(format!("{PREFIX}assigned_partitions"), "Partitions currently assigned to this process")
                    .expect("valid metric"),
            ),
            lag: f.gauge_vec("consumer_lag", "Broker high watermark minus the next offset to batch: the stored position, or past batches being committed", &["topic", "partition"]),
            stored_offset: f.gauge_vec("stored_offset", "Next offset stored in Postgres by this process", &["topic", "partition"]),
            offsets_skipped: f.counter_vec("offsets_skipped_total", "Offsets without a record to deliver that positions moved past: transaction markers, aborted transactions, compacted-away records", &["topic"]),
            out_of_range: f.counter_vec("offsets_out_of_range_total", "Stored positions found outside their partition's log, by the policy applied", &["policy"]),
            offsets_lost: f.counter_vec("offsets_lost_total", "Records never read because a position out of range was moved on (retention, recreated topic)", &["topic", "partition"]),
            partition_stalled: f.gauge_vec("partition_stalled", "1 while a partition is stopped: its stored position cannot be resumed (on_offset_out_of_range = fail), or its table cannot take its change events (on_table_error = stop)", &["topic", "partition"]),
            freshness: Freshness::new(&mut f),
            source_transactions: SourceTransactions::new(&mut f),
            change_events: f.counter_vec("change_events_total", "Debezium change events committed, by op (c create, r snapshot read, u update, d delete, t truncate)", &["op"]),
            rows_truncated: f.counter("rows_truncated_total", "Rows removed by truncate change events"),
            snapshot_straddles: f.counter_vec("snapshot_straddles_total", "Postgres changes streamed after an initial snapshot at an LSN below its consistent point (a transaction open across the slot's creation): the position guard refuses them where the row holds its snapshot value; [sink.source_transactions] orders them right", &["topic"]),
            schema_registry_up: f.add(
                IntGauge::new(format!("{PREFIX}schema_registry_up"), "1 while the schema registry answers (or none is used), 0 while batches wait for it")
                    .expect("valid metric"),
            ),
            registry_errors: f.counter("schema_registry_errors_total", "Schema registry requests that failed transiently and were retried"),
            build_info: f.gauge_vec("build_info", "Build information", &["version"]),
            registry: f.registry,
            families: f.names.into(),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.schema_registry_up.set(1);
        // Show zero-valued series so rate() works from the first scrape.
        for s in ["batch", "table"] {
            m.duplicates.with_label_values(&[s]);
        }
        m
    }

    /// Records one committed batch: every message lands in one outcome.
    pub fn record_batch(
        &self,
        b: &BatchCounts,
        t: &TableCounts,
        dead: &[(&'static str, u64)],
        seconds: f64,
    ) {
        self.messages_consumed.inc_by(b.consumed);
        self.rows_inserted.inc_by(t.inserted);
        self.rows_updated.inc_by(t.updated);
        self.rows_deleted.inc_by(t.deleted);
        for (table, n) in &t.by_table {
            for (change, n) in ["inserted", "updated", "deleted"].iter().zip(n) {
                if *n > 0 {
                    self.table_rows
                        .with_label_values(&[table.as_str(), change])
                        .inc_by(*n);
                }
            }
        }
        self.duplicates
            .with_label_values(&["batch"])
            .inc_by(b.duplicate_in_batch);
        self.duplicates
            .with_label_values(&["table"])
            .inc_by(t.duplicate_in_table);
        for (reason, n) in [
            ("superseded", b.superseded),
            ("stale", b.stale_in_batch + t.stale_in_table),
            ("tombstone_ignored", b.tombstone_ignored),
            ("tombstone_noop", t.tombstone_noop),
            ("truncate", b.truncates),
            ("truncate_ignored", b.truncates_ignored),
        ] {
            if n > 0 {
                self.skipped.with_label_values(&[reason]).inc_by(n);
            }
        }
        for (reason, n) in dead {
            self.dead_letters.with_label_values(&[reason]).inc_by(*n);
        }
        for (op, n) in ["c", "r", "u", "d", "t"].iter().zip(b.change_ops) {
            if n > 0 {
                self.change_events.with_label_values(&[op]).inc_by(n);
            }
        }
        self.rows_truncated.inc_by(t.truncated_rows);
        self.batches.inc();
        self.batch_size.observe(b.consumed as f64);
        self.commit_duration
            .with_label_values(&["committed"])
            .observe(seconds);
    }

    fn partition_labels(tp: &TopicPartition) -> [String; 2] {
        [tp.topic.to_string(), tp.partition.to_string()]
    }

    /// The partition's lag; with lag, also how long its stored position
    /// has not moved (`partition_stall_seconds`).
    pub fn set_lag(&self, tp: &TopicPartition, lag: i64) {
        let [t, p] = Self::partition_labels(tp);
        self.lag.with_label_values(&[t.as_str(), &p]).set(lag);
        let now = Instant::now();
        let since = {
            let mut advanced = self.freshness.advanced.lock().expect("advanced lock");
            advanced.entry(tp.clone()).or_insert((-1, now)).1
        };
        let stall = if lag > 0 {
            now.duration_since(since).as_secs_f64()
        } else {
            0.0
        };
        self.freshness
            .partition_stall
            .with_label_values(&[t.as_str(), &p])
            .set(stall);
    }

    pub fn set_stored_offset(&self, tp: &TopicPartition, next: i64) {
        let [t, p] = Self::partition_labels(tp);
        self.stored_offset
            .with_label_values(&[t.as_str(), &p])
            .set(next);
        let mut advanced = self.freshness.advanced.lock().expect("advanced lock");
        let entry = advanced.entry(tp.clone()).or_insert((next, Instant::now()));
        if entry.0 != next {
            *entry = (next, Instant::now());
        }
    }

    /// The ages of a committed batch's events: `times` (Kafka timestamps,
    /// ms) per route label, measured now; and each partition's last event.
    pub fn record_ages<'a>(
        &self,
        times: impl Iterator<Item = (&'a str, &'a [i64])>,
        last: &LastEvents,
    ) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (route, ts) in times.filter(|(_, ts)| !ts.is_empty()) {
            let h = self.freshness.event_age.with_label_values(&[route]);
            for t in ts {
                h.observe((now_ms - t).max(0) as f64 / 1e3);
            }
        }
        for (tp, ts) in last {
            let [t, p] = Self::partition_labels(tp);
            self.freshness
                .last_event_timestamp
                .with_label_values(&[t.as_str(), &p])
                .set(*ts as f64 / 1e3);
        }
    }

    pub fn set_stalled(&self, tp: &TopicPartition, stalled: bool) {
        let [t, p] = Self::partition_labels(tp);
        let labels = [t.as_str(), p.as_str()];
        if stalled {
            self.partition_stalled.with_label_values(&labels).set(1);
        } else {
            let _ = self.partition_stalled.remove_label_values(&labels);
        }
    }

    pub fn count_lost(&self, tp: &TopicPartition, lost: i64) {
        let [t, p] = Self::partition_labels(tp);
        self.offsets_lost
            .with_label_values(&[t.as_str(), &p])
            .inc_by(lost.max(0) as u64);
    }

    /// Drops the per-partition series of a partition this process no longer owns.
    pub fn forget_partition(&self, tp: &TopicPartition) {
        let [t, p] = Self::partition_labels(tp);
        let labels = [t.as_str(), p.as_str()];
        let _ = self.lag.remove_label_values(&labels);
        let _ = self.stored_offset.remove_label_values(&labels);
        let _ = self.partition_stalled.remove_label_values(&labels);
        let _ = self.freshness.partition_stall.remove_label_values(&labels);
        let _ = self
            .freshness
            .last_event_timestamp
            .remove_label_values(&labels);
        self.freshness
            .advanced
            .lock()
            .expect("advanced lock")
            .remove(tp);
    }

    /// Names of every registered metric family (also those without series yet).
    pub fn family_names(&self) -> Vec<String> {
        self.families.to_vec()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome families that add up to `messages_consumed_total`.
pub const OUTCOME_FAMILIES: &[&str] = &[
    "kafka_pg_sink_rows_inserted_total",
    "kafka_pg_sink_rows_updated_total",
    "kafka_pg_sink_rows_deleted_total",
    "kafka_pg_sink_duplicates_total",
    "kafka_pg_sink_dead_letters_total",
    "kafka_pg_sink_messages_skipped_total",
];

/// `(consumed, sum of outcomes)` from Prometheus text; equal when the
/// identity holds.
pub fn identity(text: &str) -> (f64, f64) {
    let consumed = sum_family(text, "kafka_pg_sink_messages_consumed_total");
    let outcomes = OUTCOME_FAMILIES.iter().map(|n| sum_family(text, n)).sum();
    (consumed, outcomes)
}

/// Sum of all series of a metric family in Prometheus text (for tests/tools).
pub fn sum_family(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_holds_for_recorded_batches() {
        let m = Metrics::new();
        let b = BatchCounts {
            consumed: 22,
            duplicate_in_batch: 3,
            superseded: 2,
            stale_in_batch: 1,
            tombstone_ignored: 1,
            truncates: 1,
            truncates_ignored: 1,
            change_ops: [4, 0, 2, 1, 2],
        };
        let t = TableCounts {
            inserted: 5,
            updated: 2,
            deleted: 1,
            duplicate_in_table: 2,
            stale_in_table: 1,
            tombstone_noop: 0,
            truncated_rows: 7,
            rejected: vec![],
            by_table: [("replica.t".to_string(), [5, 2, 1])].into(),
        };
        m.record_batch(&b, &t, &[("invalid_json", 2)], 0.01);
        let text = m.render();
        let (consumed, parts) = identity(&text);
        assert_eq!(consumed, 22.0);
        assert_eq!(parts, consumed, "{text}");
        assert!(text.contains("kafka_pg_sink_build_info{version="));
        assert!(
            text.contains(
                r#"kafka_pg_sink_table_rows_total{change="inserted",table="replica.t"} 5"#
            ),
            "{text}"
        );
    }
}
