//! End-to-end benchmark in ONE run, reported as ratios against ceilings
//! measured in the same run (the machine is shared and noisy). See
//! bench/README.md; run with `bash bench/run.sh`. The measurements run in
//! the order the README lists them, one function each, by phase:
//!
//! * `data.rs` — the topic's events; this file — setup, production, `main`;
//! * `ceilings.rs` — Postgres and the broker alone (the denominators);
//! * `in_process.rs` — the write path and the commits in process;
//! * `sink.rs` — the sink as a process: routes, replay, Avro, replicas;
//! * `partitions.rs` — a thousand partitions over 100 routes on three
//!   replicas (`wire_count.rs`: the commit's round trips, from the wire);
//! * `peers.rs` — the Debezium JDBC sink on the same topic;
//! * `plain.rs` — a second typed shape (text, bigint, double, nested), both
//!   systems;
//! * `citus.rs` — the typed route into a Citus distributed table;
//! * `freshness.rs` — produce-to-visible latency at fixed rates, against
//!   the Debezium JDBC sink (`pacer.rs`: the fixed-rate producer);
//! * `capture.rs` — a whole database from a Debezium snapshot, against the
//!   Debezium JDBC sink on the same topics;
//! * `measure.rs` — CPU probes; `report.rs` — results, ratios, medians.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_pg_sink::config::route::{Route, RouteSpec};
use kafka_pg_sink::config::{local_config_path, Config, OnError, Overrides};
use kafka_pg_sink::event::{prepare, prepare_for_commit, PreparedBatch, RowUpsert};
use kafka_pg_sink::format::registry::{RegistryClient, RegistryConfig};
use kafka_pg_sink::format::{wire, SchemaSet};
use kafka_pg_sink::json::hash;
use kafka_pg_sink::kafka::message::SourceMessage;
use kafka_pg_sink::ops::metrics::sum_family;
use kafka_pg_sink::store::{prefilter, BatchWriter, CommitOutcome, Expected};
use kafka_pg_sink::types::{Offset, TopicPartition};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The sink's allocator, so the in-process phases (`prepare_per_s`, the
/// write path) allocate as the sink does.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../tests/common/net.rs"]
mod net;

#[path = "data.rs"]
mod data;

mod capture;
mod ceilings;
mod citus;
mod freshness;
mod in_process;
mod measure;
mod pacer;
mod partitions;
mod peers;
mod plain;
mod report;
mod sink;
mod wire_count;

use ceilings::*;
use in_process::*;
use measure::*;
use peers::*;
use report::*;
use sink::*;

use data::Order;

const PARTITIONS: i32 = 4;

type Results = BTreeMap<&'static str, Value>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Everything the measurements share: the data, its topics and database.
struct Bench {
    n: usize,
    distinct: usize,
    keys: data::Keys,
    stamp: String,
    brokers: String,
    admin_url: String,
    db_name: String,
    url: String,
    topic: String,
    sink_bin: String,
    pool: PgPool,
    orders: Vec<Order>,
    msgs: Vec<SourceMessage>,
}

impl Bench {
    /// The sink's configuration with one `[[route]]` body (and extra TOML):
    /// the shipped local configuration through the real loader.
    fn config(
        &self,
        route: &str,
        extra: &str,
        group: &str,
        port: u16,
    ) -> anyhow::Result<(Config, Vec<RouteSpec>)> {
        let overrides = Overrides {
            toml: vec![format!(
                "[sink]\ncommit_to_kafka = true\n{extra}\n[[route]]\n{route}\n"
            )],
            brokers: Some(self.brokers.clone()),
            group_id: Some(group.to_string()),
            database_url: Some(self.url.clone()),
            http_bind: Some(format!("127.0.0.1:{port}")),
        };
        Ok(Config::load(&local_config_path(), &overrides)?)
    }

    /// The sink's batch size (`batch.max_messages`, as configured).
    fn batch_size(&self) -> anyhow::Result<usize> {
        let (cfg, _) = self.config(&self.document_route("ceiling"), "", "ceiling", 0)?;
        Ok(cfg.batch.max_messages)
    }

    fn document_route(&self, table: &str) -> String {
        format!(
            "topic = \"{}\"\ntable = \"{table}\"\nkey = \"/order_id\"",
            self.topic
        )
    }

    fn typed_route(&self, topic: &str, table: &str, format: &str) -> String {
        format!(
            "topic = \"{topic}\"\ntable = \"{table}\"\nkey = \"order_id\"\nformat = \"{format}\"\n\
             columns = {}",
            data::TYPED_COLUMNS
        )
    }

    /// Creates the route's table the way `setup` does; its resolved route.
    async fn route_for(&self, route: &str) -> anyhow::Result<Route> {
        let (cfg, specs) = self.config(route, "", "bench-unused", 0)?;
        let (pool, mut routes) = kafka_pg_sink::app::setup(&cfg, &specs).await?;
        pool.close().await;
        Ok(routes.remove(0))
    }

    async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }

    async fn stored_sum(&self, group: &str) -> i64 {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(next_offset)::bigint FROM sink_offsets WHERE consumer_group = $1",
        )
        .bind(group)
        .fetch_one(&self.pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
    }

    /// Waits until `group` has stored every offset of the topic.
    async fn wait_stored(&self, group: &str, started: Instant, what: &str) -> anyhow::Result<()> {
        while self.stored_sum(group).await < self.n as i64 {
            if started.elapsed() > Duration::from_secs(3600) {
                anyhow::bail!("{what} did not finish");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn consumer(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        let (cfg, _) = self.config(&self.document_route("unused"), "", group, 0)?;
        Ok(kafka_pg_sink::kafka::client::client_config(&cfg).create()?)
    }

    fn whole_topic(&self) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Beginning)?;
        }
        Ok(tpl)
    }

    /// The last event of every order, in key order: the expected table.
    fn final_orders(&self) -> Vec<&Order> {
        let mut last: BTreeMap<&str, &Order> = BTreeMap::new();
        for o in &self.orders {
            last.insert(&o.key, o);
        }
        last.into_values().collect()
    }
}

async fn setup() -> anyhow::Result<Bench> {
    let n = env_usize("BENCH_EVENTS", 550_000);
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let db_name = format!("kpgs_bench_{}", stamp.to_lowercase());
    let topic = format!("kpgs-bench-{stamp}");
    let keys = data::Keys::from_env()?;
    eprintln!("generating {n} events ({} keys)…", keys.name());
    let (orders, distinct) = data::generate(n, PARTITIONS, keys);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(&format!("/{db_name}"));
    let url = url.to_string();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let payloads: Vec<(i32, &str, Vec<u8>)> = orders
        .iter()
        .map(|o| (o.partition, o.key.as_str(), o.json.clone().into_bytes()))
        .collect();
    produce(&brokers, &topic, &payloads).await?;
    let msgs = source_messages(&topic, &orders);
    Ok(Bench {
        n,
        distinct,
        keys,
        stamp,
        brokers,
        admin_url,
        db_name,
        url,
        topic,
        sink_bin: std::env::var("SINK_BIN")
            .unwrap_or_else(|_| "target/release/kafka-pg-sink".into()),
        pool,
        orders,
        msgs,
    })
}

async fn produce(
    brokers: &str,
    topic: &str,
    records: &[(i32, &str, Vec<u8>)],
) -> anyhow::Result<()> {
    create_topics(brokers, &[topic.to_string()], PARTITIONS, &[]).await?;
    eprintln!("producing to {topic}…");
    send_all(
        brokers,
        records
            .iter()
            .map(|(partition, key, payload)| (topic, *partition, *key, payload.as_slice())),
    )
}

/// Creates `topics` with `partitions` each and the topic `config`.
async fn create_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let ac: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            config.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    for r in ac.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(())
}

/// Produces (topic, partition, key, payload) records in order, batched
/// and compressed, waiting while the producer's queue is full.
fn send_all<'a>(
    brokers: &str,
    records: impl Iterator<Item = (&'a str, i32, &'a str, &'a [u8])>,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    for (topic, partition, key, payload) in records {
        let rec = || {
            BaseRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload)
        };
        while producer.send(rec()).is_err() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
}

/// Deletes `topic` (kept with `BENCH_KEEP_DB=1`, like the database).
async fn delete_topic(b: &Bench, topic: &str) {
    if std::env::var("BENCH_KEEP_DB").as_deref() == Ok("1") {
        return;
    }
    if let Ok(ac) = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .create::<AdminClient<DefaultClientContext>>()
    {
        let _ = ac.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// The produced events as the consumer would hand them over (for the
/// in-process measurements).
fn source_messages(topic: &str, orders: &[Order]) -> Vec<SourceMessage> {
    let mut next_off = [0i64; PARTITIONS as usize];
    orders
        .iter()
        .map(|o| {
            let off = next_off[o.partition as usize];
            next_off[o.partition as usize] += 1;
            SourceMessage {
                tp: TopicPartition::new(topic.to_string(), o.partition),
                offset: Offset(off),
                key: Some(o.key.clone().into_bytes()),
                payload: Some(o.json.clone().into_bytes()),
                timestamp: None,
                headers: Vec::new(),
                source_commit: None,
            }
        })
        .collect()
}

async fn count(b: &Bench, table: &str) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&b.pool)
        .await?;
    Ok(n as usize)
}

/// A result's number (NaN when the phase did not run).
fn f(out: &Results, k: &str) -> f64 {
    out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

async fn copy(conn: &mut PgConnection, sql: &str, text: &str) -> anyhow::Result<()> {
    let mut c = conn.copy_in_raw(sql).await?;
    for chunk in text.as_bytes().chunks(1 << 20) {
        c.send(chunk).await?;
    }
    c.finish().await?;
    Ok(())
}

/// Whether a phase runs: all, or those listed in BENCH_PHASES
/// (`ceilings,write_path,commits,document,typed,avro,scaling,partitions,naive,plain,citus,freshness,capture`);
/// the peers run with `BENCH_PEERS=1`.
fn runs(phase: &str) -> bool {
    match std::env::var("BENCH_PHASES") {
        Ok(list) if !list.is_empty() => list.split(',').any(|p| p.trim() == phase),
        _ => true,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--medians") {
        return medians(&args[1..]);
    }
    let b = setup().await?;
    let mut out = Results::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    out.insert("cores", json!(cores));
    if runs("ceilings") {
        document_ceilings(&b, &mut out).await?;
        typed_ceilings(&b, &mut out).await?;
        broker_ceiling(&b, &mut out)?;
    }
    if runs("write_path") {
        write_path(&b, &mut out).await?;
    }
    if runs("commits") {
        commits_alone(&b, &mut out).await?;
    }
    if runs("document") {
        let run = sink_document(&b, &mut out).await?;
        replay(&b, run, "replay_unversioned", None, &mut out).await?;
        let (run, route) = sink_versioned(&b, &mut out).await?;
        replay(&b, run, "replay", Some(&route), &mut out).await?;
    }
    if runs("typed") {
        sink_typed(&b, &mut out).await?;
    }
    if runs("avro") {
        sink_avro(&b, &mut out).await?;
    }
    if runs("scaling") {
        scaling(&b, &mut out).await?;
    }
    if runs("partitions") {
        partitions::partitions(&b, &mut out).await?;
    }
    if runs("naive") {
        naive(&b, &mut out).await?;
    }
    peers(&b, &mut out).await?;
    if runs("plain") {
        plain::plain(&b, &mut out).await?;
    }
    if runs("citus") {
        citus::citus(&b, &mut out).await?;
    }
    if runs("freshness") {
        freshness::freshness(&b, &mut out).await?;
    }
    if runs("capture") {
        capture::capture(&b, &mut out).await?;
    }
    report(&b, out)?;
    b.pool.close().await;
    if std::env::var("BENCH_KEEP_DB").as_deref() != Ok("1") {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&b.admin_url)
            .await?;
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            b.db_name
        ))
        .execute(&admin)
        .await;
    }
    Ok(())
}
