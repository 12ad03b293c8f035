//! End-to-end benchmark in ONE run, reported as ratios against ceilings
//! measured in the same run (the machine is shared and noisy). See
//! bench/README.md; run with `bash bench/run.sh`. The measurements run in
//! the order the README lists them, one function each.

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
    let ac: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in ac.create_topics(&[new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    eprintln!("producing to {topic}…");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    for (partition, key, payload) in records {
        let rec = || {
            BaseRecord::to(topic)
                .partition(*partition)
                .key(*key)
                .payload(payload)
        };
        while producer.send(rec()).is_err() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(())
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
            }
        })
        .collect()
}

/// Phase 1a: document-table ceilings, one backend, the distinct final rows.
///
/// `ceiling_rows_per_s` is defined like the typed ceiling: COPY (payload as
/// text; rows in key order, as the sink's fold leaves them and as the typed
/// ceiling's are) into a temporary table, then one INSERT … SELECT … ON CONFLICT
/// parsing the jsonb, as the sink's statement does, timed together.
/// `dup_filtered_ceiling_rows_per_s` is the sink's own duplicate pre-filter
/// statement for a versioned route (keys, hashes and versions bound as
/// arrays, one probe per row) over every row already stored, in the sink's
/// batch size: what a replay asks of Postgres; `replay_stream_ceiling_events_per_s`
/// the same over the whole event stream. For reference, the earlier definitions with the rows staged
/// server side before the clock starts (no data crosses the wire): the
/// upsert into the empty table, again (all duplicates), and a server-side
/// anti-join as the pre-filter. Last, COPY into the table itself.
async fn document_ceilings(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring Postgres ceilings (document table)…");
    let route = b.route_for(&b.document_route("ceiling")).await?;
    let staged = prepare(std::slice::from_ref(&route), b.msgs.clone());
    let rows = &staged.writes[0].upserts;
    let copy_text: String = rows.iter().map(copy_line).collect();
    let mut conn = PgConnection::connect(&b.url).await?;
    sqlx::raw_sql("CREATE UNLOGGED TABLE staging (LIKE ceiling); ALTER TABLE staging ALTER COLUMN payload TYPE text")
        .execute(&mut conn)
        .await?;
    copy(&mut conn, "COPY staging FROM STDIN", &copy_text).await?;
    sqlx::query("ANALYZE staging").execute(&mut conn).await?;
    let upsert_sql = "INSERT INTO ceiling AS t SELECT key, event_hash, payload::jsonb, version, kafka_topic, \
        kafka_partition, kafka_offset FROM staging ON CONFLICT (key) DO UPDATE SET \
        event_hash = EXCLUDED.event_hash, payload = EXCLUDED.payload, kafka_offset = EXCLUDED.kafka_offset \
        WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash";
    let antijoin_sql = upsert_sql.replace(
        "FROM staging ON CONFLICT",
        "FROM staging s WHERE NOT EXISTS (SELECT 1 FROM ceiling c \
         WHERE c.key = s.key AND c.event_hash = s.event_hash) ON CONFLICT",
    );
    let per_s = |t: Instant| rows.len() as f64 / t.elapsed().as_secs_f64();
    for (name, sql) in [
        ("prestaged_ceiling_rows_per_s", upsert_sql),
        ("dup_ceiling_rows_per_s", upsert_sql),
        ("dup_antijoin_ceiling_rows_per_s", antijoin_sql.as_str()),
    ] {
        let t = Instant::now();
        sqlx::query(sql).execute(&mut conn).await?;
        out.insert(name, json!(per_s(t)));
    }
    prefilter_ceilings(b, &mut conn, &route, rows, out).await?;
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let cpu = CpuMark::now(None);
    let t = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE TEMP TABLE stage (LIKE staging) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    copy(&mut tx, "COPY stage FROM STDIN", &copy_text).await?;
    sqlx::query(&upsert_sql.replace("FROM staging", "FROM stage"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    out.insert("ceiling_rows_per_s", json!(per_s(t)));
    record_cpu(out, "ceiling", &cpu, None, "row", rows.len());
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let stream = StreamCeiling {
        name: "stream_ceiling_events_per_s",
        route: route.clone(),
        line: copy_line,
        stage: "CREATE TEMP TABLE stage (LIKE staging) ON COMMIT DROP",
        copy: "COPY stage FROM STDIN",
        upsert: &upsert_sql.replace("FROM staging", "FROM stage"),
    };
    stream_ceiling(b, &mut conn, stream, out).await?;
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let t = Instant::now();
    copy(&mut conn, "COPY ceiling FROM STDIN", &copy_text).await?;
    out.insert("copy_rows_per_s", json!(per_s(t)));
    Ok(())
}

/// The duplicate ceilings of a replay: the sink's own pre-filter statement
/// for a versioned route (`dup_filtered_ceiling_rows_per_s`) over `rows`,
/// all stored, in the sink's batch size; then the same statement over the
/// whole event stream (`replay_stream_ceiling_events_per_s`).
async fn prefilter_ceilings(
    b: &Bench,
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
    out: &mut Results,
) -> anyhow::Result<()> {
    // The sink's own statement, as it sends it for a versioned route.
    let mut versioned = route.clone();
    versioned.version = Some("/version".into());
    versioned.version_pointer = Some(kafka_pg_sink::json::pointer::JsonPointer::parse("/version"));
    let cpu = CpuMark::now(None);
    let per_s = filtered_pass(b, conn, &versioned, rows).await?;
    out.insert("dup_filtered_ceiling_rows_per_s", json!(per_s));
    record_cpu(out, "dup_filtered_ceiling", &cpu, None, "row", rows.len());
    // The same statement over the whole event stream, in the sink's batches
    // folded as the sink folds them: what a replay of this topic asks of
    // Postgres (re-sends and older versions in other batches are probed
    // too, and the older versions come back as rows).
    let batches = stream_rows(b, &versioned)?;
    // Every stored key is in the stream: fewer rows means events were
    // refused (a route the fold cannot read) and the loop would time nothing.
    let probed: usize = batches.iter().map(Vec::len).sum();
    anyhow::ensure!(
        probed >= rows.len(),
        "the event stream folded to {probed} rows, fewer than the {} stored",
        rows.len()
    );
    let t = Instant::now();
    for batch in &batches {
        prefilter(conn, &versioned, batch).await?;
    }
    out.insert(
        "replay_stream_ceiling_events_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The sink's pre-filter statement over `rows`, every one stored, in the
/// sink's batch size on one backend: rows per second. Fails if it keeps a
/// row (the loop would then not time what it claims).
async fn filtered_pass(
    b: &Bench,
    conn: &mut PgConnection,
    route: &Route,
    rows: &[RowUpsert],
) -> anyhow::Result<f64> {
    let batch_size = b.batch_size()?;
    let t = Instant::now();
    for chunk in rows.chunks(batch_size) {
        let kept = prefilter(conn, route, chunk).await?.len();
        anyhow::ensure!(kept == 0, "the pre-filter kept {kept} stored rows");
    }
    Ok(rows.len() as f64 / t.elapsed().as_secs_f64())
}

/// The topic's whole event stream in the sink's batches, each folded on
/// `route` as the sink folds it: the rows each batch sends Postgres
/// (superseded states first, as the sink writes them).
fn stream_rows(b: &Bench, route: &Route) -> anyhow::Result<Vec<Vec<RowUpsert>>> {
    Ok(b.msgs
        .chunks(b.batch_size()?)
        .map(|chunk| {
            let mut batch = prepare(std::slice::from_ref(route), chunk.to_vec());
            let w = &mut batch.writes[0];
            let mut rows = std::mem::take(&mut w.previous);
            rows.append(&mut w.upserts);
            rows
        })
        .collect())
}

/// A ceiling's statement applied to the topic's whole event stream rather
/// than its distinct final rows: each batch of the sink's size folded as
/// the sink folds it (not timed), then COPY-staged (`stage` is the CREATE
/// of the temporary table `stage`, `copy` the COPY into it) and upserted
/// (`upsert`) in its own transaction. The database's share of a route:
/// re-sends and versions that land in different batches reach Postgres as
/// rows here too, as they do from the sink. Recorded as `<name>` in
/// events/s.
struct StreamCeiling<'a> {
    name: &'static str,
    route: Route,
    line: fn(&RowUpsert) -> String,
    stage: &'a str,
    copy: &'a str,
    upsert: &'a str,
}

async fn stream_ceiling(
    b: &Bench,
    conn: &mut PgConnection,
    c: StreamCeiling<'_>,
    out: &mut Results,
) -> anyhow::Result<()> {
    let batches: Vec<String> = stream_rows(b, &c.route)?
        .iter()
        .map(|rows| rows.iter().map(c.line).collect())
        .collect();
    let t = Instant::now();
    for text in &batches {
        let mut tx = conn.begin().await?;
        sqlx::query(c.stage).execute(&mut *tx).await?;
        copy(&mut tx, c.copy, text).await?;
        sqlx::query(c.upsert).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    out.insert(c.name, json!(b.n as f64 / t.elapsed().as_secs_f64()));
    Ok(())
}

/// A document row as a line of the ceilings' COPY text.
fn copy_line(r: &RowUpsert) -> String {
    format!(
        "{}\t\\\\x{}\t{}\t\\N\t{}\t{}\t{}\n",
        r.key.0,
        hex::encode(r.hash.0),
        r.payload,
        r.tp.topic,
        r.tp.partition,
        r.offset.0
    )
}

/// Phase 1b: typed-table ceilings, one backend, the distinct final rows:
/// COPY into the table with its primary key, and COPY into a temporary
/// table then one INSERT … SELECT … ON CONFLICT DO UPDATE (what the sink's
/// staged statement does at best).
async fn typed_ceilings(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring Postgres ceilings (typed table)…");
    let rows = b.final_orders();
    let mut text = String::with_capacity(rows.len() * 80);
    for o in &rows {
        let v: Value = serde_json::from_str(&o.json)?;
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            o.key,
            o.customer,
            v["amount"],
            o.currency,
            o.status,
            o.version,
            v["ts"].as_str().unwrap_or_default()
        ));
    }
    b.exec(&format!(
        "CREATE TABLE typed_copy {0}; CREATE TABLE typed_ceiling {0}",
        data::TYPED_DDL
    ))
    .await?;
    let mut conn = PgConnection::connect(&b.url).await?;
    let per_s = |t: Instant| rows.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    copy(&mut conn, "COPY typed_copy FROM STDIN", &text).await?;
    out.insert("typed_copy_rows_per_s", json!(per_s(t)));
    let cpu = CpuMark::now(None);
    let t = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE TEMP TABLE stage (LIKE typed_ceiling) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    copy(&mut tx, "COPY stage FROM STDIN", &text).await?;
    sqlx::query(&typed_upsert_sql("typed_ceiling"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    out.insert("typed_ceiling_rows_per_s", json!(per_s(t)));
    record_cpu(out, "typed_ceiling", &cpu, None, "row", rows.len());
    b.exec(&format!("CREATE TABLE typed_stream {}", data::TYPED_DDL))
        .await?;
    let route = b
        .route_for(&b.typed_route(&b.topic, "typed_stream", "json"))
        .await?;
    // The route's columns, in the order of its COPY lines.
    let columns = route
        .columns
        .as_ref()
        .expect("a typed route")
        .columns
        .iter();
    let columns: Vec<String> = columns.map(|c| c.quoted()).collect();
    let stream = StreamCeiling {
        name: "typed_stream_ceiling_events_per_s",
        route,
        line: |r| format!("{}\n", r.row.as_deref().unwrap_or_default()),
        stage: "CREATE TEMP TABLE stage (LIKE typed_stream) ON COMMIT DROP",
        copy: &format!("COPY stage ({}) FROM STDIN", columns.join(", ")),
        upsert: &typed_upsert_sql("typed_stream"),
    };
    stream_ceiling(b, &mut conn, stream, out).await?;
    Ok(())
}

/// The typed ceilings' upsert of the staged rows into `table`.
fn typed_upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS t SELECT * FROM stage ON CONFLICT (order_id) DO UPDATE SET \
         customer = EXCLUDED.customer, amount = EXCLUDED.amount, currency = EXCLUDED.currency, \
         status = EXCLUDED.status, version = EXCLUDED.version, ts = EXCLUDED.ts \
         WHERE (t.customer, t.amount, t.currency, t.status, t.version, t.ts) IS DISTINCT FROM \
               (EXCLUDED.customer, EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.status, EXCLUDED.version, EXCLUDED.ts)"
    )
}

/// Phase 1c: broker read ceiling: a plain consumer with the sink's settings.
fn broker_ceiling(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring broker read ceiling…");
    let consumer = b.consumer(&format!("bench-read-{}", b.stamp))?;
    consumer.assign(&b.whole_topic()?)?;
    let t = Instant::now();
    let mut read = 0usize;
    while read < b.n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("broker read stalled at {read}/{}", b.n);
        }
    }
    out.insert(
        "broker_read_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Phase 2: write path in process (document route): prepare + commit
/// (offsets included), overlapped the way the pipeline overlaps them, and
/// the client-side cost alone (parse, hash, fold on one thread).
async fn write_path(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring the write path…");
    let route = b.route_for(&b.document_route("write_path")).await?;
    let batch_size = b.batch_size()?;
    let t = Instant::now();
    for chunk in b.msgs.chunks(batch_size) {
        std::hint::black_box(prepare(std::slice::from_ref(&route), chunk.to_vec()));
    }
    out.insert(
        "prepare_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    let writer = BatchWriter::new(
        b.pool.clone(),
        "bench-write-path",
        vec![route.clone()],
        OnError::DeadLetter,
    );
    let mut planned: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
    let t = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let preparer = {
        let msgs = b.msgs.clone();
        std::thread::spawn(move || {
            for chunk in msgs.chunks(batch_size) {
                if tx
                    .blocking_send(prepare(std::slice::from_ref(&route), chunk.to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    while let Some(batch) = rx.recv().await {
        commit_next(&writer, &mut planned, &batch).await?;
    }
    preparer.join().expect("preparer thread");
    out.insert(
        "write_path_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Commits `batch` with the fence a lone consumer of a new group uses:
/// each partition expected where the previous batch left it.
async fn commit_next(
    writer: &BatchWriter,
    planned: &mut BTreeMap<TopicPartition, Offset>,
    batch: &PreparedBatch,
) -> anyhow::Result<()> {
    let expected: Vec<Expected> = batch
        .ranges
        .iter()
        .map(|(tp, (_, last))| Expected {
            tp: tp.clone(),
            expected: planned.get(tp).copied(),
            new_next: last.next(),
        })
        .collect();
    match writer.commit(batch, &expected).await? {
        CommitOutcome::Committed(_) => {}
        other => anyhow::bail!("bench commit not applied: {other:?}"),
    }
    for e in expected {
        planned.insert(e.tp, e.new_next);
    }
    Ok(())
}

/// Phase 2b: the sink's commits alone, for the document and the typed
/// route: every batch of the topic prepared first (as the pipeline
/// prepares it, COPY text included), then committed on one connection with
/// the fence, nothing else running. Set beside the stream ceilings (the
/// ceilings' statements over the same batches), this separates what the
/// sink's SQL costs from what running beside Postgres and the broker on
/// the same cores costs: `<route>_commits_vs_stream_ceiling`.
async fn commits_alone(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("measuring the sink's commits alone…");
    b.exec(&format!("CREATE TABLE commits_typed {}", data::TYPED_DDL))
        .await?;
    let routes = [
        ("document_commits", b.document_route("commits_document")),
        (
            "typed_commits",
            b.typed_route(&b.topic, "commits_typed", "json"),
        ),
    ];
    for (prefix, route) in routes {
        let route = b.route_for(&route).await?;
        let batches: Vec<PreparedBatch> = b
            .msgs
            .chunks(b.batch_size()?)
            .map(|chunk| {
                let routes = std::slice::from_ref(&route);
                prepare_for_commit(routes, chunk.to_vec(), &SchemaSet::default(), &[false])
            })
            .collect();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&b.url)
            .await?;
        let group = format!("bench-{prefix}");
        let writer = BatchWriter::new(pool.clone(), &group, vec![route], OnError::DeadLetter);
        let mut planned = BTreeMap::new();
        let cpu = CpuMark::now(None);
        let t = Instant::now();
        for batch in &batches {
            commit_next(&writer, &mut planned, batch).await?;
        }
        out.insert(
            prefixed(prefix, "events_per_s"),
            json!(b.n as f64 / t.elapsed().as_secs_f64()),
        );
        record_cpu(out, prefix, &cpu, None, "event", b.n);
        pool.close().await;
    }
    Ok(())
}

/// The release binary running as a child process.
struct SinkRun {
    child: std::process::Child,
    cfg_path: PathBuf,
    port: u16,
    group: String,
    started: Instant,
    cpu_start: CpuMark,
    _dir: tempfile::TempDir,
}

impl SinkRun {
    async fn metrics(&self) -> String {
        net::http_get(self.port, "/metrics")
            .await
            .unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the sink with one route (and extra TOML) under a new group.
fn start_sink(b: &Bench, name: &str, route: &str, extra: &str) -> anyhow::Result<SinkRun> {
    let dir = tempfile::tempdir()?;
    let group = format!("bench-{name}-{}", b.stamp);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (cfg, _) = b.config(route, extra, &group, port)?;
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(&cfg_path, cfg.to_toml())?;
    // BENCH_LOG_DIR keeps each sink's log (with KAFKA_PG_SINK_LOG, e.g.
    // `kafka_pg_sink::store=debug,info` for per-batch timings).
    let log_dir = std::env::var_os("BENCH_LOG_DIR").map_or(dir.path().to_owned(), PathBuf::from);
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let cpu_start = CpuMark::now(None);
    let started = Instant::now();
    let child = std::process::Command::new(&b.sink_bin)
        .arg("--config")
        .arg(&cfg_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(log)
        .spawn()?;
    Ok(SinkRun {
        child,
        cfg_path,
        port,
        group,
        started,
        cpu_start,
        _dir: dir,
    })
}

/// Runs the sink from offset 0 until every offset is stored; records
/// events/s under `prefix`, and peak RSS, CPU, batch size and commit time.
async fn measure_sink(
    b: &Bench,
    run: &SinkRun,
    prefix: &str,
    out: &mut Results,
) -> anyhow::Result<()> {
    b.wait_stored(&run.group, run.started, prefix).await?;
    let seconds = run.started.elapsed().as_secs_f64();
    let cpu_s = record_phase(b, run, prefix, seconds, "", &run.cpu_start, out).await;
    out.insert(prefixed(prefix, "cpu_seconds"), json!(cpu_s));
    Ok(())
}

/// Records a phase of `run` that took `seconds` for the whole topic under
/// `prefix`: events/s, peak RSS, the average batch size and commit time
/// from the sink's metrics since `before` (a scrape, or "" for since start)
/// and CPU use since `cpu` ([`record_cpu`]). Returns the process's CPU
/// seconds so far.
async fn record_phase(
    b: &Bench,
    run: &SinkRun,
    prefix: &str,
    seconds: f64,
    before: &str,
    cpu: &CpuMark,
    out: &mut Results,
) -> f64 {
    let (rss, cpu_s) = proc_stats(run.child.id());
    record_cpu(out, prefix, cpu, Some(run.child.id()), "event", b.n);
    let key = |s: &str| prefixed(prefix, s);
    out.insert(key("events_per_s"), json!(b.n as f64 / seconds));
    out.insert(key("peak_rss_mb"), json!(rss));
    let (batch, commit_ms) = phase_averages(before, &run.metrics().await);
    out.insert(key("avg_batch"), json!(batch));
    out.insert(key("avg_commit_ms"), json!(commit_ms));
    cpu_s
}

/// A result key `<prefix>_<name>` (result keys live as long as the run).
fn prefixed(prefix: &str, name: &str) -> &'static str {
    Box::leak(format!("{prefix}_{name}").into_boxed_str())
}

async fn count(b: &Bench, table: &str) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&b.pool)
        .await?;
    Ok(n as usize)
}

/// Phase 3: the document route end to end, as a process. It keeps running
/// for phase 4.
async fn sink_document(b: &Bench, out: &mut Results) -> anyhow::Result<SinkRun> {
    eprintln!("running kafka-pg-sink end to end (document table)…");
    let run = start_sink(b, "sink", &b.document_route("sink_events"), "")?;
    measure_sink(b, &run, "sink", out).await?;
    let rows = count(b, "sink_events").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "sink wrote {rows} rows, expected {}",
        b.distinct
    );
    Ok(run)
}

/// Phase 4b: a versioned document sink (`version = "/version"`) drains the
/// topic; it keeps running for the replay. Returns the run and its route.
async fn sink_versioned(b: &Bench, out: &mut Results) -> anyhow::Result<(SinkRun, String)> {
    eprintln!("running kafka-pg-sink end to end (versioned document table)…");
    let route = format!(
        "{}\nversion = \"/version\"",
        b.document_route("versioned_events")
    );
    let run = start_sink(b, "versioned", &route, "")?;
    measure_sink(b, &run, "versioned_sink", out).await?;
    let rows = count(b, "versioned_events").await?;
    anyhow::ensure!(rows == b.distinct, "versioned sink wrote {rows} rows");
    Ok((run, route))
}

/// Phase 4: `replay --to-earliest` on a running sink, recorded under
/// `prefix`. On the versioned route every re-read event is a duplicate or
/// stale (a no-op): `replay`, the measure with the target. On the route
/// without `version` a replay re-applies history — each key that changed
/// later goes back to its older state and forward again, real writes for
/// ~30% of this topic's events: `replay_unversioned`, for information.
///
/// With `paired` (the versioned route), the replay runs `REPLAY_ROUNDS`
/// times, each right after the pre-filter ceiling measured on the sink's own
/// table: the machine is shared, and the ceilings phase, a minute or more
/// earlier, measured 302k-546k rows/s in four runs within ten minutes. A
/// round's ceiling and replay see the same load; `replay_vs_paired_ceiling`
/// is the median of the rounds' ratios, `replay_events_per_s` the median
/// rate. CPU and batch figures are the last round's.
async fn replay(
    b: &Bench,
    run: SinkRun,
    prefix: &str,
    paired: Option<&str>,
    out: &mut Results,
) -> anyhow::Result<()> {
    eprintln!("replaying ({prefix})…");
    let mut ceiling = match paired {
        Some(route) => {
            let route = b.route_for(route).await?;
            let staged = prepare(std::slice::from_ref(&route), b.msgs.clone());
            let rows = staged.writes[0].upserts.clone();
            anyhow::ensure!(rows.len() == b.distinct, "{} stored rows", rows.len());
            let mut conn = PgConnection::connect(&b.url).await?;
            // Untimed: the first pass over rows the sink just wrote sets
            // their hint bits and ran 14-27% slower than the next ones,
            // which favoured the first round's replay.
            filtered_pass(b, &mut conn, &route, &rows).await?;
            Some((route, rows, conn))
        }
        None => None,
    };
    let rounds = if ceiling.is_some() { REPLAY_ROUNDS } else { 1 };
    let (mut rates, mut ratios, mut ceilings) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        if let Some((route, rows, conn)) = &mut ceiling {
            ceilings.push(filtered_pass(b, conn, route, rows).await?);
        }
        let before = run.metrics().await;
        let cpu = CpuMark::now(Some(run.child.id()));
        let seconds = replay_once(b, &run).await?;
        rates.push(b.n as f64 / seconds);
        if let Some(&c) = ceilings.last() {
            ratios.push(b.n as f64 / seconds / c.min(f(out, "broker_read_per_s")));
        }
        if round == rounds {
            record_phase(b, &run, prefix, seconds, &before, &cpu, out).await;
        }
    }
    out.insert(prefixed(prefix, "events_per_s"), json!(median(&rates)));
    if !ceilings.is_empty() {
        out.insert(prefixed(prefix, "rounds_events_per_s"), json!(rates));
        out.insert(
            prefixed(prefix, "rounds_ceiling_rows_per_s"),
            json!(ceilings),
        );
        out.insert(
            prefixed(prefix, "paired_ceiling_rows_per_s"),
            json!(median(&ceilings)),
        );
        out.insert(
            prefixed(prefix, "vs_paired_ceiling"),
            json!(median(&ratios)),
        );
    }
    run.stop();
    Ok(())
}

/// Rounds of the versioned replay, each paired with its ceiling.
const REPLAY_ROUNDS: usize = 3;

/// One `replay --to-earliest` on the running sink: seconds from the command
/// to every position stored again.
async fn replay_once(b: &Bench, run: &SinkRun) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new(&b.sink_bin)
        .args([
            "--config",
            run.cfg_path.to_str().unwrap(),
            "replay",
            "--to-earliest",
        ])
        .env_remove("DATABASE_URL")
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Wait for the rewind to be visible, then for the sink to reach the end again.
    while b.stored_sum(&run.group).await >= b.n as i64 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.wait_stored(&run.group, t, "the replay").await?;
    Ok(t.elapsed().as_secs_f64())
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

/// Phase 5: the typed route end to end (7 typed columns, text primary key).
async fn sink_typed(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    eprintln!("running kafka-pg-sink end to end (typed table)…");
    b.exec(&format!("CREATE TABLE orders_typed {}", data::TYPED_DDL))
        .await?;
    let run = start_sink(
        b,
        "typed",
        &b.typed_route(&b.topic, "orders_typed", "json"),
        "",
    )?;
    measure_sink(b, &run, "typed_sink", out).await?;
    run.stop();
    let rows = count(b, "orders_typed").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "typed sink wrote {rows} rows, expected {}",
        b.distinct
    );
    Ok(())
}

/// Phase 6: the same events as Avro (Confluent wire format, schema in the
/// registry at $REGISTRY_URL) into the same typed table shape.
async fn sink_avro(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let Ok(registry) = std::env::var("REGISTRY_URL") else {
        eprintln!("REGISTRY_URL not set: Avro phase skipped");
        return Ok(());
    };
    eprintln!("producing the events as Avro and running the typed route on them…");
    let client = RegistryClient::new(&RegistryConfig::new(&registry))?;
    let topic = format!("{}-avro", b.topic);
    let id = client
        .register(
            &format!("{topic}-value"),
            kafka_pg_sink::format::SchemaType::Avro,
            data::AVRO_SCHEMA,
        )
        .await?;
    let schema = client.schema(id).await?;
    let avro = schema.as_avro().expect("an Avro schema");
    let mut records = Vec::with_capacity(b.orders.len());
    for o in &b.orders {
        let body = avro
            .encode(data::avro_record(o))
            .map_err(anyhow::Error::msg)?;
        records.push((o.partition, o.key.as_str(), wire::encode(id, &body)));
    }
    produce(&b.brokers, &topic, &records).await?;
    b.exec(&format!("CREATE TABLE orders_avro {}", data::TYPED_DDL))
        .await?;
    let extra = format!("[schema_registry]\nurl = \"{registry}\"");
    let run = start_sink(
        b,
        "avro",
        &b.typed_route(&topic, "orders_avro", "avro"),
        &extra,
    )?;
    measure_sink(b, &run, "avro_sink", out).await?;
    run.stop();
    let rows = count(b, "orders_avro").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "Avro sink wrote {rows} rows, expected {}",
        b.distinct
    );
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders_avro a JOIN orders_typed j USING (order_id) \
         WHERE (a.customer, a.amount, a.currency, a.status, a.version, a.ts) = \
               (j.customer, j.amount, j.currency, j.status, j.version, j.ts)",
    )
    .fetch_one(&b.pool)
    .await?;
    anyhow::ensure!(
        same as usize == b.distinct,
        "Avro and JSON tables differ ({same} equal rows)"
    );
    Ok(())
}

/// Phase 6b: scaling of the typed route: 1, 2 and 4 commit lanes (disjoint
/// partition sets committing on their own connections), and two sink
/// processes in one group against one process.
async fn scaling(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    for lanes in [1usize, 2, 4] {
        eprintln!("typed route with {lanes} commit lane(s)…");
        let table = format!("orders_lanes_{lanes}");
        b.exec(&format!("CREATE TABLE {table} {}", data::TYPED_DDL))
            .await?;
        let extra = format!(
            "commit_lanes = {lanes}\n[postgres]\nmax_connections = {}",
            lanes + 2
        );
        let run = start_sink(
            b,
            &format!("lanes{lanes}"),
            &b.typed_route(&b.topic, &table, "json"),
            &extra,
        )?;
        measure_sink(b, &run, &format!("typed_lanes_{lanes}"), out).await?;
        run.stop();
        anyhow::ensure!(
            count(b, &table).await? == b.distinct,
            "{table} is not exact"
        );
    }
    eprintln!("typed route on two sink processes in one group…");
    b.exec(&format!("CREATE TABLE orders_two {}", data::TYPED_DDL))
        .await?;
    let route = b.typed_route(&b.topic, "orders_two", "json");
    let first = start_sink(b, "two", &route, "")?;
    let (cfg, _) = b.config(&route, "", &first.group, 0)?;
    let second_path = first._dir.path().join("second.toml");
    std::fs::write(&second_path, cfg.to_toml())?;
    let mut second = std::process::Command::new(&b.sink_bin)
        .arg("--config")
        .arg(&second_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    b.wait_stored(&first.group, first.started, "two replicas")
        .await?;
    out.insert(
        "typed_two_processes_events_per_s",
        json!(b.n as f64 / first.started.elapsed().as_secs_f64()),
    );
    first.stop();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status();
    let _ = second.wait();
    anyhow::ensure!(
        count(b, "orders_two").await? == b.distinct,
        "orders_two is not exact"
    );
    Ok(())
}

/// Phase 7: naive at-least-once consumer: one upsert transaction per
/// message plus an async Kafka commit.
async fn naive(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    let naive_n = env_usize("BENCH_NAIVE_EVENTS", 20_000).min(b.n);
    eprintln!("running the naive consumer on {naive_n} events…");
    b.route_for(&b.document_route("naive")).await?;
    let consumer = b.consumer(&format!("bench-naive-{}", b.stamp))?;
    consumer.assign(&b.whole_topic()?)?;
    let mut conn = PgConnection::connect(&b.url).await?;
    let t = Instant::now();
    let mut done = 0usize;
    while done < naive_n {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let payload = std::str::from_utf8(m.payload().unwrap_or_default())?.to_string();
        let v: Value = serde_json::from_str(&payload)?;
        sqlx::query(
            "INSERT INTO naive AS t (key, event_hash, payload, kafka_topic, kafka_partition, kafka_offset) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, \
             payload = EXCLUDED.payload WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash",
        )
        .bind(v["order_id"].as_str().unwrap_or_default())
        .bind(hash::hash_value(&v).0.to_vec())
        .bind(&payload)
        .bind(m.topic())
        .bind(m.partition())
        .bind(m.offset())
        .execute(&mut conn)
        .await?;
        let mut c = TopicPartitionList::new();
        c.add_partition_offset(
            m.topic(),
            m.partition(),
            rdkafka::Offset::Offset(m.offset() + 1),
        )?;
        consumer.commit(&c, rdkafka::consumer::CommitMode::Async)?;
        done += 1;
    }
    out.insert("naive_events", json!(naive_n));
    out.insert(
        "naive_events_per_s",
        json!(naive_n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Phase 8 (BENCH_PEERS=1): the Debezium JDBC sink on Kafka Connect, best
/// configuration, alone on the same topic into the same typed table shape
/// (bench/peer-debezium.sh), and the table it wrote checked.
async fn peers(b: &Bench, out: &mut Results) -> anyhow::Result<()> {
    if std::env::var("BENCH_PEERS").as_deref() != Ok("1") {
        return Ok(());
    }
    eprintln!("running the Debezium JDBC sink (best configuration) on the same topic…");
    let root = env!("CARGO_MANIFEST_DIR");
    let st = std::process::Command::new("bash")
        .arg(format!("{root}/bench/peer-debezium.sh"))
        .args([&b.topic, &b.url, "orders_debezium", "best"])
        .env("KAFKA_BROKERS", &b.brokers)
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "peer bench failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let line = String::from_utf8_lossy(&st.stdout);
    let peer: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    let rows = count(b, "orders_debezium").await?;
    anyhow::ensure!(
        rows == b.distinct,
        "the peer wrote {rows} rows, expected {}",
        b.distinct
    );
    out.insert("debezium_events_per_s", peer["msgs_per_s"].clone());
    out.insert(
        "debezium_incl_startup_per_s",
        peer["incl_startup_per_s"].clone(),
    );
    out.insert("debezium_startup_s", peer["startup_s"].clone());
    Ok(())
}

/// Average batch size and commit latency between two scrapes of /metrics.
fn phase_averages(from: &str, to: &str) -> (f64, f64) {
    let d = |name: &str| sum_family(to, name) - sum_family(from, name);
    let batches = d("kafka_pg_sink_batch_size_count").max(1.0);
    (
        d("kafka_pg_sink_batch_size_sum") / batches,
        1000.0 * d("kafka_pg_sink_commit_duration_seconds_sum") / batches,
    )
}

/// CPU counters at one moment: the whole machine's busy and total time
/// (all cores, `/proc/stat`), one process's CPU time, and the CPU time of
/// Postgres and of the Kafka broker, in seconds.
#[derive(Clone, Copy)]
struct CpuMark {
    busy: f64,
    total: f64,
    process: f64,
    postgres: f64,
    broker: f64,
}

impl CpuMark {
    fn now(pid: Option<u32>) -> CpuMark {
        // cpu  user nice system idle iowait irq softirq steal (USER_HZ ticks)
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total: f64 = ticks.iter().sum();
        let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
        let (postgres, broker) = service_cpu();
        CpuMark {
            busy: (total - idle) / 100.0,
            total: total / 100.0,
            process: pid.map_or(0.0, |p| proc_stats(p).1),
            postgres,
            broker,
        }
    }
}

/// CPU seconds so far of every Postgres process (with the backends that
/// exited, which the postmaster counts as its children's time) and of the
/// Kafka broker's JVM: who, besides the sink, takes the cores.
fn service_cpu() -> (f64, f64) {
    let (mut postgres, mut broker) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0.0, 0.0);
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, [utime, stime, cutime, cstime])) = cpu_times(&stat) else {
            continue;
        };
        if head.ends_with("(postgres") {
            postgres += utime + stime + cutime + cstime;
        } else if head.ends_with("(java")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"kafka.Kafka"))
        {
            broker += utime + stime;
        }
    }
    (postgres, broker)
}

/// Records CPU use since `since` under `prefix`: `machine_busy`, the share
/// of all cores busy (sink, Postgres, broker and anything else on the
/// machine), and `cpu_us_per_<unit>`, busy CPU time per unit of work, split
/// into `postgres_cpu_us_per_<unit>` and `broker_cpu_us_per_<unit>`; with
/// a process, also its own `process_cpu_us_per_<unit>`. The ceilings run one
/// Postgres backend; a sink phase shares the same cores with the broker and
/// its own parsing: this is what says whether a phase was bound by the
/// machine's CPU, and by whose.
fn record_cpu(
    out: &mut Results,
    prefix: &str,
    since: &CpuMark,
    pid: Option<u32>,
    unit: &str,
    units: usize,
) {
    let now = CpuMark::now(pid);
    let key = |s: String| prefixed(prefix, &s);
    let busy = now.busy - since.busy;
    out.insert(
        key("machine_busy".into()),
        json!(busy / (now.total - since.total).max(1e-9)),
    );
    let per_unit = |s: f64| s * 1e6 / units as f64;
    out.insert(key(format!("cpu_us_per_{unit}")), json!(per_unit(busy)));
    out.insert(
        key(format!("postgres_cpu_us_per_{unit}")),
        json!(per_unit(now.postgres - since.postgres)),
    );
    out.insert(
        key(format!("broker_cpu_us_per_{unit}")),
        json!(per_unit(now.broker - since.broker)),
    );
    if pid.is_some() {
        out.insert(
            key(format!("process_cpu_us_per_{unit}")),
            json!(per_unit(now.process - since.process)),
        );
    }
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = cpu_times(&stat).map_or(0.0, |(_, [utime, stime, ..])| utime + stime);
    (hwm_kb / 1024.0, cpu)
}

/// A `/proc/<pid>/stat` line's text up to its command name's `(name`, and
/// its utime, stime, cutime and cstime in seconds (USER_HZ ticks / 100).
/// The name may hold spaces and parentheses: the fields start after its
/// last `)`.
fn cpu_times(stat: &str) -> Option<(&str, [f64; 4])> {
    let (head, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().map_or(0.0, |t| t.parse().unwrap_or(0.0)) / 100.0;
    Some((head, [next(), next(), next(), next()]))
}

async fn copy(conn: &mut PgConnection, sql: &str, text: &str) -> anyhow::Result<()> {
    let mut c = conn.copy_in_raw(sql).await?;
    for chunk in text.as_bytes().chunks(1 << 20) {
        c.send(chunk).await?;
    }
    c.finish().await?;
    Ok(())
}

/// Ratios against the ceilings (and peers) of the same run, printed and
/// written to bench/results/<date>.json.
fn report(b: &Bench, mut out: Results) -> anyhow::Result<()> {
    let ratios = ratios(&out);
    println!("\n{:<36} {:>14}", "measure", "value");
    for (k, v) in &out {
        if let Some(x) = v.as_f64() {
            println!("{k:<36} {x:>14.1}");
        }
    }
    println!("\n{:<36} {:>8} {:>8}", "ratio", "value", "target");
    for (k, v, target) in ratios {
        println!("{k:<36} {v:>8.2} {target:>8}");
        if v.is_finite() {
            out.insert(k, json!(v));
        }
    }
    out.insert("date", json!(b.stamp));
    out.insert("events", json!(b.n));
    out.insert("distinct_events", json!(b.distinct));
    out.insert("keys", json!(b.keys.name()));
    out.insert("partitions", json!(PARTITIONS));
    out.insert(
        "cores",
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)),
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", &b.stamp[..15]));
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `bench --medians FILE…`: each ratio of several result files and its
/// median. One run's ratio moves with its ceilings (±0.1 here); the median
/// of several runs is the number to quote.
fn medians(files: &[String]) -> anyhow::Result<()> {
    let runs: Vec<BTreeMap<String, Value>> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {f}"))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "{:<36} {:>8} {:>8}   runs, sorted",
        "ratio", "median", "target"
    );
    for (k, _, target) in ratios(&Results::new()) {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(k)?.as_f64()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let median = median(&v);
        let all: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!("{k:<36} {median:>8.2} {target:>8}   {}", all.join(" "));
    }
    Ok(())
}

/// The printed ratios of one run's results: name, value, target.
fn ratios(out: &Results) -> Vec<(&'static str, f64, &'static str)> {
    let f = |k: &str| f(out, k);
    // A sink can go no faster than the broker hands it messages.
    let vs_ceiling = |rate: &str, ceiling: &str| f(rate) / f(ceiling).min(f("broker_read_per_s"));
    vec![
        (
            "write_path_vs_pg_ceiling",
            f("write_path_per_s") / f("ceiling_rows_per_s"),
            ">= 0.6",
        ),
        (
            "document_sink_vs_ceiling",
            vs_ceiling("sink_events_per_s", "ceiling_rows_per_s"),
            ">= 0.8",
        ),
        (
            "typed_sink_vs_typed_ceiling",
            vs_ceiling("typed_sink_events_per_s", "typed_ceiling_rows_per_s"),
            ">= 0.6",
        ),
        (
            "replay_vs_paired_ceiling",
            f("replay_vs_paired_ceiling"),
            ">= 0.9",
        ),
        (
            // The fastest this replay's CPU demand (sink, broker, Postgres,
            // all busy time per event) allows on this machine's cores, as a
            // ratio of the same ceiling: the target is out of reach in a
            // run where this is below it, whatever the overlap.
            "replay_cpu_bound_vs_paired_ceiling",
            f("cores") * 1e6 / f("replay_cpu_us_per_event") / f("replay_paired_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "replay_vs_filtered_ceiling",
            vs_ceiling("replay_events_per_s", "dup_filtered_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "document_sink_vs_prestaged_ceiling",
            vs_ceiling("sink_events_per_s", "prestaged_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "document_sink_vs_stream_ceiling",
            vs_ceiling("sink_events_per_s", "stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "typed_sink_vs_typed_stream_ceiling",
            vs_ceiling(
                "typed_sink_events_per_s",
                "typed_stream_ceiling_events_per_s",
            ),
            "(info)",
        ),
        (
            // The sink's commits alone (no Kafka, nothing beside them) over
            // the same batches as the stream ceiling: what its SQL costs.
            "document_commits_vs_stream_ceiling",
            f("document_commits_events_per_s") / f("stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "typed_commits_vs_typed_stream_ceiling",
            f("typed_commits_events_per_s") / f("typed_stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "replay_vs_replay_stream_ceiling",
            vs_ceiling("replay_events_per_s", "replay_stream_ceiling_events_per_s"),
            "(info)",
        ),
        (
            "replay_vs_antijoin_ceiling",
            vs_ceiling("replay_events_per_s", "dup_antijoin_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "replay_vs_dup_ceiling",
            vs_ceiling("replay_events_per_s", "dup_ceiling_rows_per_s"),
            "(info)",
        ),
        (
            "typed_vs_debezium",
            f("typed_sink_events_per_s") / f("debezium_events_per_s"),
            ">= 3",
        ),
        (
            "avro_vs_json_typed",
            f("avro_sink_events_per_s") / f("typed_sink_events_per_s"),
            "(info)",
        ),
        (
            "sink_vs_naive",
            f("sink_events_per_s") / f("naive_events_per_s"),
            ">= 20",
        ),
    ]
}

/// Whether a phase runs: all, or those listed in BENCH_PHASES
/// (`ceilings,write_path,commits,document,typed,avro,scaling,naive,peers`).
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
    if runs("naive") {
        naive(&b, &mut out).await?;
    }
    peers(&b, &mut out).await?;
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
