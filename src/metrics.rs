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

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::batch::BatchCounts;
use crate::store::TableCounts;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub messages_consumed: IntCounter,
    pub rows_inserted: IntCounter,
    pub rows_updated: IntCounter,
    pub rows_deleted: IntCounter,
    pub duplicates: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub skipped: IntCounterVec,
    pub batches: IntCounter,
    pub batch_size: Histogram,
    pub commit_duration: HistogramVec,
    pub fenced_batches: IntCounter,
    pub db_retries: IntCounter,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub lag: IntGaugeVec,
    pub stored_offset: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            messages_consumed: IntCounter::new("kafka_pg_sink_messages_consumed_total", "Messages read from Kafka and committed in a batch").unwrap(),
            rows_inserted: IntCounter::new("kafka_pg_sink_rows_inserted_total", "Rows inserted").unwrap(),
            rows_updated: IntCounter::new("kafka_pg_sink_rows_updated_total", "Rows updated (content changed)").unwrap(),
            rows_deleted: IntCounter::new("kafka_pg_sink_rows_deleted_total", "Rows deleted by tombstones").unwrap(),
            duplicates: IntCounterVec::new(
                Opts::new("kafka_pg_sink_duplicates_total", "Messages that were duplicates: within a batch (stage=batch) or of the stored row (stage=table)"),
                &["stage"],
            ).unwrap(),
            dead_letters: IntCounterVec::new(
                Opts::new("kafka_pg_sink_dead_letters_total", "Poison messages written to sink_dead_letters"),
                &["reason"],
            ).unwrap(),
            skipped: IntCounterVec::new(
                Opts::new("kafka_pg_sink_messages_skipped_total", "Messages with no effect that are not duplicates"),
                &["reason"],
            ).unwrap(),
            batches: IntCounter::new("kafka_pg_sink_batches_total", "Batches committed").unwrap(),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("kafka_pg_sink_batch_size", "Messages per committed batch")
                    .buckets(vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0]),
            ).unwrap(),
            commit_duration: HistogramVec::new(
                HistogramOpts::new("kafka_pg_sink_commit_duration_seconds", "Duration of the batch transaction")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["result"],
            ).unwrap(),
            fenced_batches: IntCounter::new("kafka_pg_sink_fenced_batches_total", "Batches refused by the offset compare-and-set (zombie or replay)").unwrap(),
            db_retries: IntCounter::new("kafka_pg_sink_db_retries_total", "Transient database errors retried").unwrap(),
            rebalances: IntCounterVec::new(
                Opts::new("kafka_pg_sink_rebalances_total", "Consumer group rebalance events"),
                &["kind"],
            ).unwrap(),
            assigned_partitions: IntGauge::new("kafka_pg_sink_assigned_partitions", "Partitions currently assigned to this process").unwrap(),
            lag: IntGaugeVec::new(
                Opts::new("kafka_pg_sink_consumer_lag", "Broker high watermark minus stored next offset"),
                &["topic", "partition"],
            ).unwrap(),
            stored_offset: IntGaugeVec::new(
                Opts::new("kafka_pg_sink_stored_offset", "Next offset stored in Postgres by this process"),
                &["topic", "partition"],
            ).unwrap(),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("kafka_pg_sink_build_info", "Build information"),
            &["version"],
        )
        .unwrap();
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(m.messages_consumed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.rows_inserted.clone()),
            Box::new(m.rows_updated.clone()),
            Box::new(m.rows_deleted.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.skipped.clone()),
            Box::new(m.batches.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.commit_duration.clone()),
            Box::new(m.fenced_batches.clone()),
            Box::new(m.db_retries.clone()),
            Box::new(m.rebalances.clone()),
            Box::new(m.assigned_partitions.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.stored_offset.clone()),
            Box::new(build),
        ] {
            m.registry.register(c).unwrap();
        }
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
        ] {
            if n > 0 {
                self.skipped.with_label_values(&[reason]).inc_by(n);
            }
        }
        for (reason, n) in dead {
            self.dead_letters.with_label_values(&[reason]).inc_by(*n);
        }
        self.batches.inc();
        self.batch_size.observe(b.consumed as f64);
        self.commit_duration
            .with_label_values(&["committed"])
            .observe(seconds);
    }

    /// Names of every registered metric family (also those without series yet).
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let mut names: Vec<String> = [
            &self.messages_consumed as &dyn Collector,
            &self.rows_inserted,
            &self.rows_updated,
            &self.rows_deleted,
            &self.duplicates,
            &self.dead_letters,
            &self.skipped,
            &self.batches,
            &self.batch_size,
            &self.commit_duration,
            &self.fenced_batches,
            &self.db_retries,
            &self.rebalances,
            &self.assigned_partitions,
            &self.lag,
            &self.stored_offset,
        ]
        .iter()
        .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
        .collect();
        names.push("kafka_pg_sink_build_info".into());
        names
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
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
            consumed: 20,
            duplicate_in_batch: 3,
            superseded: 2,
            stale_in_batch: 1,
            tombstone_ignored: 1,
        };
        let t = TableCounts {
            inserted: 5,
            updated: 2,
            deleted: 1,
            duplicate_in_table: 2,
            stale_in_table: 1,
            tombstone_noop: 0,
            rejected: vec![],
        };
        m.record_batch(&b, &t, &[("invalid_json", 2)], 0.01);
        let text = m.render();
        let (consumed, parts) = identity(&text);
        assert_eq!(consumed, 20.0);
        assert_eq!(parts, consumed, "{text}");
        assert!(text.contains("kafka_pg_sink_build_info{version="));
    }
}
