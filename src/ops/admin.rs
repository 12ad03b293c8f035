//! Offsets administration: `offsets show` and `replay`.

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use serde::Serialize;
use sqlx::PgPool;

use crate::config::route::Route;
use crate::config::Config;
use crate::kafka::client::{self, client_config, METADATA_TIMEOUT as TIMEOUT};
use crate::store::offsets;
use crate::types::{Offset, TopicPartition};

#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub stored_next_offset: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    pub lag: i64,
    /// How old the last committed event is (its Kafka timestamp to now).
    pub last_event_age_seconds: Option<f64>,
    /// How far behind the table is: the last committed event's age while
    /// the partition has lag, 0 when caught up.
    pub behind_seconds: Option<f64>,
}

fn admin_consumer(cfg: &Config) -> anyhow::Result<BaseConsumer> {
    client_config(cfg).create().context("creating Kafka client")
}

fn routed_partitions(
    consumer: &BaseConsumer,
    routes: &[Route],
) -> anyhow::Result<Vec<TopicPartition>> {
    client::routed_partitions(consumer, routes).context("fetching Kafka metadata")
}

pub async fn show(
    cfg: &Config,
    routes: &[Route],
    pool: &PgPool,
) -> anyhow::Result<Vec<PartitionStatus>> {
    let consumer = admin_consumer(cfg)?;
    let stored = offsets::read_group(pool, &cfg.kafka.group_id).await?;
    let ages = offsets::event_ages(pool, &cfg.kafka.group_id).await?;
    let mut tps = routed_partitions(&consumer, routes)?;
    for (tp, _) in &stored {
        if !tps.contains(tp) {
            tps.push(tp.clone());
        }
    }
    tps.sort();
    let bounds = log_bounds(&consumer, &tps)?;
    let mut out = Vec::new();
    for (tp, (low, high)) in tps.into_iter().zip(bounds) {
        let s = stored.iter().find(|(t, _)| *t == tp).map(|(_, o)| o.0);
        let lag = high - s.unwrap_or(low).max(low);
        let age = ages.get(&tp).copied();
        out.push(PartitionStatus {
            lag,
            last_event_age_seconds: age,
            behind_seconds: if lag > 0 { age } else { Some(0.0) },
            topic: tp.topic.to_string(),
            partition: tp.partition,
            stored_next_offset: s,
            low_watermark: low,
            high_watermark: high,
        });
    }
    Ok(out)
}

pub fn render_table(rows: &[PartitionStatus]) -> String {
    let mut s = format!(
        "{:<30} {:>9} {:>14} {:>12} {:>12} {:>10} {:>12} {:>10}\n",
        "TOPIC", "PARTITION", "STORED_NEXT", "LOW", "HIGH", "LAG", "LAST_EVENT", "BEHIND"
    );
    let seconds = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}s"));
    for r in rows {
        s.push_str(&format!(
            "{:<30} {:>9} {:>14} {:>12} {:>12} {:>10} {:>12} {:>10}\n",
            r.topic,
            r.partition,
            r.stored_next_offset
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            r.low_watermark,
            r.high_watermark,
            r.lag,
            seconds(r.last_event_age_seconds),
            seconds(r.behind_seconds),
        ));
    }
    s
}

/// `(low, high)` of each of `tps`, in order.
fn log_bounds(consumer: &BaseConsumer, tps: &[TopicPartition]) -> anyhow::Result<Vec<(i64, i64)>> {
    client::log_bounds(consumer, tps, TIMEOUT).context("listing the partitions' log bounds")
}

#[derive(Clone, Debug)]
pub enum ReplayTarget {
    Earliest,
    Offset(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

/// Rewrites stored positions of the selected partitions in one transaction.
pub async fn replay(
    cfg: &Config,
    routes: &[Route],
    pool: &PgPool,
    target: ReplayTarget,
    topic: Option<&str>,
    partition: Option<i32>,
) -> anyhow::Result<Vec<(TopicPartition, Offset)>> {
    let consumer = admin_consumer(cfg)?;
    let mut tps = routed_partitions(&consumer, routes)?;
    if let Some(t) = topic {
        if !routes.iter().any(|r| r.topic.matches(t)) {
            bail!("topic `{t}` is not consumed by any [[route]]");
        }
        tps.retain(|tp| &*tp.topic == t);
    }
    if let Some(p) = partition {
        tps.retain(|tp| tp.partition == p);
    }
    if tps.is_empty() {
        bail!("no partition matches the selection");
    }
    let mut positions = Vec::with_capacity(tps.len());
    match target {
        ReplayTarget::Earliest => {
            let bounds = log_bounds(&consumer, &tps)?;
            for (tp, (low, _)) in tps.into_iter().zip(bounds) {
                positions.push((tp, Offset(low)));
            }
        }
        ReplayTarget::Offset(n) => {
            let bounds = log_bounds(&consumer, &tps)?;
            for (tp, (low, high)) in tps.into_iter().zip(bounds) {
                if n < low || n > high {
                    bail!("offset {n} is outside {tp}'s range [{low}, {high}]");
                }
                positions.push((tp, Offset(n)));
            }
        }
        ReplayTarget::Timestamp(ms) => {
            let mut tpl = TopicPartitionList::new();
            for tp in &tps {
                tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(ms))?;
            }
            let found = consumer
                .offsets_for_times(tpl, TIMEOUT)
                .context("offsets for timestamp")?;
            let bounds = log_bounds(&consumer, &tps)?;
            for (tp, (_, high)) in tps.into_iter().zip(bounds) {
                let Some(e) = found.find_partition(&tp.topic, tp.partition) else {
                    continue;
                };
                let off = match e.offset() {
                    rdkafka::Offset::Offset(o) => o,
                    // No message at or after the timestamp: start at the end.
                    _ => high,
                };
                positions.push((tp, Offset(off)));
            }
        }
    }
    offsets::rewrite(pool, &cfg.kafka.group_id, &positions).await?;
    Ok(positions)
}
