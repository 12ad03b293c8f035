//! Reprocessing with audit (docs/reprocessing.md): `verify` a table against
//! the log, `rebuild` a route into a shadow table with its own consumer
//! group, then `promote` (swap atomically) or `abort` it.
//!
//! * `verify.rs` — reads the range a table claims to reflect and folds it
//!   with the sink's own code into a temporary copy, compares server side;
//! * `reader.rs` — reads fixed offset ranges outside any consumer group;
//! * `report.rs` — what verify found, as text or JSON; progress;
//! * `rebuild.rs` — the rebuild run, promote and abort.
//!
//! The transactions of promote/abort and the comparison SQL live in
//! `store/shadow.rs` and `store/compare.rs`; the mapping check every commit
//! makes in `store/mappings.rs`.

pub mod instances;
pub mod reader;
pub mod rebuild;
pub mod report;
pub mod verify;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use sqlx::PgPool;

use crate::config::route::Route;
use crate::config::Config;
use crate::kafka::client::{self, client_config, METADATA_TIMEOUT};
use crate::store::mappings::canonical_table;
use crate::types::{Offset, TableName, TopicPartition};

/// Where a read starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The log start (low watermark).
    Earliest,
    Offset(i64),
    /// The first offset at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A partition of a route's topics with its log range.
#[derive(Clone, Debug)]
pub struct PartitionLog {
    pub tp: TopicPartition,
    pub low: Offset,
    pub high: Offset,
}

/// A client for metadata and watermarks, outside the sink's group.
pub fn metadata_client(cfg: &Config, purpose: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}.{purpose}", cfg.kafka.group_id));
    c.create().context("creating Kafka client")
}

/// Every partition of the routes' topics with its watermarks.
pub fn partition_logs<C>(
    consumer: &BaseConsumer,
    routes: &[Route<C>],
) -> anyhow::Result<Vec<PartitionLog>> {
    let tps = client::routed_partitions(consumer, routes).context("fetching Kafka metadata")?;
    let bounds = client::log_bounds(consumer, &tps, METADATA_TIMEOUT)
        .context("listing the partitions' log bounds")?;
    Ok(tps
        .into_iter()
        .zip(bounds)
        .map(|(tp, (low, high))| PartitionLog {
            tp,
            low: Offset(low),
            high: Offset(high),
        })
        .collect())
}

/// The first offset to read in each partition for `start`.
pub fn start_offsets(
    consumer: &BaseConsumer,
    logs: &[PartitionLog],
    start: Start,
) -> anyhow::Result<Vec<Offset>> {
    match start {
        Start::Earliest => Ok(logs.iter().map(|l| l.low).collect()),
        Start::Offset(n) => logs
            .iter()
            .map(|l| {
                anyhow::ensure!(
                    (l.low.0..=l.high.0).contains(&n),
                    "offset {n} is outside {}'s log [{}, {}]",
                    l.tp,
                    l.low,
                    l.high
                );
                Ok(Offset(n))
            })
            .collect(),
        Start::Timestamp(ms) => {
            let mut tpl = TopicPartitionList::new();
            for l in logs {
                tpl.add_partition_offset(&l.tp.topic, l.tp.partition, rdkafka::Offset::Offset(ms))?;
            }
            let found = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .context("offsets for timestamp")?;
            Ok(logs
                .iter()
                .map(|l| {
                    match found
                        .find_partition(&l.tp.topic, l.tp.partition)
                        .map(|e| e.offset())
                    {
                        Some(rdkafka::Offset::Offset(o)) => Offset(o),
                        // No record at or after the time: nothing to read.
                        _ => l.high,
                    }
                })
                .collect())
        }
    }
}

/// The schema-qualified name of `table`, which must exist.
pub async fn existing_table(pool: &PgPool, table: &TableName) -> anyhow::Result<TableName> {
    let mut conn = pool.acquire().await?;
    canonical_table(&mut conn, table)
        .await?
        .with_context(|| format!("table {table} does not exist"))
}

/// `name` (a bare table name or `schema.table`) as a table in `live`'s
/// schema; a shadow elsewhere could not take the live table's place by a
/// rename.
pub fn shadow_beside(live: &TableName, name: &str) -> anyhow::Result<TableName> {
    let t = TableName::parse(name).map_err(|e| anyhow::anyhow!("shadow table: {e}"))?;
    if let Some(s) = &t.schema {
        anyhow::ensure!(
            Some(s) == live.schema.as_ref(),
            "shadow table {t} must be in the schema of {live}"
        );
    }
    anyhow::ensure!(
        t.name != live.name,
        "the shadow table cannot be the live table"
    );
    Ok(TableName {
        schema: live.schema.clone(),
        name: t.name,
    })
}
