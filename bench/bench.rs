//! End-to-end benchmark in ONE run, reported as ratios against ceilings
//! measured in the same run (the machine is shared and noisy). See
//! bench/README.md; run with `bash bench/run.sh`. The measurements run in
//! the order the README lists them, one function each.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_pg_sink::batch::prepare;
use kafka_pg_sink::config::{local_config_path, Config, OnError, Overrides};
use kafka_pg_sink::hash;
use kafka_pg_sink::message::SourceMessage;
use kafka_pg_sink::metrics::sum_family;
use kafka_pg_sink::route::Route;
use kafka_pg_sink::store::{BatchWriter, Expected};
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

#[path = "../tests/common/net.rs"]
mod net;

const PARTITIONS: i32 = 4;
const BATCH: usize = 5000;

struct Event {
    key: String,
    partition: i32,
    payload: String,
}

/// N messages, ~150 bytes, 3 key fields, 10% exact re-sends of earlier events.
fn generate(n: usize) -> (Vec<Event>, usize) {
    let mut out: Vec<Event> = Vec::with_capacity(n);
    let mut distinct = 0usize;
    let mut rng = 0x9e3779b97f4a7c15u64;
    for i in 0..n {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if i % 10 == 9 && !out.is_empty() {
            let e = &out[(rng as usize) % out.len()];
            out.push(Event {
                key: e.key.clone(),
                partition: e.partition,
                payload: e.payload.clone(),
            });
            continue;
        }
        let d = distinct;
        distinct += 1;
        let (tenant, region, seq) = (d % 97, (d / 97) % 13, d / (97 * 13));
        let key = format!("t{tenant}|r{region}|{seq}");
        let payload = format!(
            r#"{{"tenant":"t{tenant}","region":"r{region}","seq":{seq},"amount":{}.{:02},"currency":"EUR","status":"created","customer":"c{:07}","note":"benchmark event"}}"#,
            rng % 10_000,
            rng % 100,
            rng % 1_000_000
        );
        let partition = net::partition_of(&key, PARTITIONS);
        out.push(Event {
            key,
            partition,
            payload,
        });
    }
    (out, distinct)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Everything the measurements share: the data, its topic and database.
struct Bench {
    n: usize,
    distinct: usize,
    stamp: String,
    brokers: String,
    admin_url: String,
    db_name: String,
    url: String,
    topic: String,
    sink_bin: String,
    pool: PgPool,
    msgs: Vec<SourceMessage>,
}

impl Bench {
    /// The sink's configuration for `table` and `group`: the shipped local
    /// configuration through the real loader, with this run's settings.
    fn config(
        &self,
        table: &str,
        group: &str,
        port: u16,
    ) -> anyhow::Result<(Config, Vec<kafka_pg_sink::route::RouteSpec>)> {
        let overrides = Overrides {
            toml: vec![format!(
                "[sink]\ncommit_to_kafka = true\n[[route]]\ntopic = \"{}\"\ntable = \"{table}\"\n\
                 key = [\"/tenant\", \"/region\", \"/seq\"]\n",
                self.topic
            )],
            brokers: Some(self.brokers.clone()),
            group_id: Some(group.to_string()),
            database_url: Some(self.url.clone()),
            http_bind: Some(format!("127.0.0.1:{port}")),
        };
        Ok(Config::load(&local_config_path(), &overrides)?)
    }

    /// Creates `table` the way `setup` does and returns its resolved route.
    async fn route_for(&self, table: &str) -> anyhow::Result<Route> {
        let (cfg, specs) = self.config(table, "bench-unused", 0)?;
        let (pool, mut routes) = kafka_pg_sink::app::setup(&cfg, &specs).await?;
        pool.close().await;
        Ok(routes.remove(0))
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
            if started.elapsed() > Duration::from_secs(1800) {
                anyhow::bail!("{what} did not finish");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn consumer(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        let (mut cfg, _) = self.config("unused", group, 0)?;
        cfg.kafka.group_id = group.to_string();
        Ok(kafka_pg_sink::kafka::client_config(&cfg).create()?)
    }

    fn whole_topic(&self) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Beginning)?;
        }
        Ok(tpl)
    }
}

async fn setup() -> anyhow::Result<Bench> {
    let n = env_usize("BENCH_EVENTS", 1_000_000);
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let db_name = format!("kpgs_bench_{}", stamp.to_lowercase());
    let topic = format!("kpgs-bench-{stamp}");

    eprintln!("generating {n} events…");
    let (events, distinct) = generate(n);
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
    produce(&brokers, &topic, &events).await?;
    let msgs = source_messages(&topic, &events);
    Ok(Bench {
        n,
        distinct,
        stamp,
        brokers,
        admin_url,
        db_name,
        url,
        topic,
        sink_bin: std::env::var("SINK_BIN")
            .unwrap_or_else(|_| "target/release/kafka-pg-sink".into()),
        pool,
        msgs,
    })
}

async fn produce(brokers: &str, topic: &str, events: &[Event]) -> anyhow::Result<()> {
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
    for e in events {
        let rec = || {
            BaseRecord::to(topic)
                .partition(e.partition)
                .key(&e.key)
                .payload(&e.payload)
        };
        while producer.send(rec()).is_err() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// The produced events as the consumer would hand them over (for the
/// in-process measurements).
fn source_messages(topic: &str, events: &[Event]) -> Vec<SourceMessage> {
    let mut next_off = [0i64; PARTITIONS as usize];
    events
        .iter()
        .map(|e| {
            let o = next_off[e.partition as usize];
            next_off[e.partition as usize] += 1;
            SourceMessage {
                tp: TopicPartition::new(topic.to_string(), e.partition),
                offset: Offset(o),
                key: Some(e.key.clone().into_bytes()),
                payload: Some(e.payload.clone().into_bytes()),
                timestamp: None,
                headers: Vec::new(),
            }
        })
        .collect()
}

/// Phase 1a: Postgres ceilings: the distinct rows staged server side, then one
/// INSERT … SELECT … ON CONFLICT (no client round-trips), again (all
/// duplicates), with the sink's duplicate pre-filter, and COPY into the same
/// table shape.
async fn postgres_ceilings(
    b: &Bench,
    out: &mut BTreeMap<&'static str, Value>,
) -> anyhow::Result<()> {
    eprintln!("measuring Postgres ceilings…");
    let route = b.route_for("ceiling").await?;
    let staged = prepare(std::slice::from_ref(&route), b.msgs.clone());
    let rows = &staged.writes[0].upserts;
    let mut copy_text = String::with_capacity(rows.len() * 260);
    for r in rows {
        copy_text.push_str(&format!(
            "{}\t\\\\x{}\t{}\t\\N\t{}\t{}\t{}\n",
            r.key.0,
            hex::encode(r.hash.0),
            r.payload,
            r.topic,
            r.partition,
            r.offset.0
        ));
    }
    let mut conn = PgConnection::connect(&b.url).await?;
    // Staged with the payload as text: the measured statement parses it into
    // jsonb, the same server-side work the sink's statement (and COPY) does.
    sqlx::query("CREATE UNLOGGED TABLE staging (LIKE ceiling)")
        .execute(&mut conn)
        .await?;
    sqlx::query("ALTER TABLE staging ALTER COLUMN payload TYPE text")
        .execute(&mut conn)
        .await?;
    copy(&mut conn, "COPY staging FROM STDIN", &copy_text).await?;
    sqlx::query("ANALYZE staging").execute(&mut conn).await?;
    let upsert_sql = "INSERT INTO ceiling AS t SELECT key, event_hash, payload::jsonb, version, kafka_topic, \
        kafka_partition, kafka_offset FROM staging ON CONFLICT (key) DO UPDATE SET \
        event_hash = EXCLUDED.event_hash, payload = EXCLUDED.payload, kafka_offset = EXCLUDED.kafka_offset \
        WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash";
    let filtered_sql = upsert_sql.replace(
        "FROM staging ON CONFLICT",
        "FROM staging s WHERE NOT EXISTS (SELECT 1 FROM ceiling c \
         WHERE c.key = s.key AND c.event_hash = s.event_hash) ON CONFLICT",
    );
    anyhow::ensure!(filtered_sql != upsert_sql);
    let per_s = |t: Instant| rows.len() as f64 / t.elapsed().as_secs_f64();
    for (name, sql) in [
        ("ceiling_rows_per_s", upsert_sql),
        ("dup_ceiling_rows_per_s", upsert_sql),
        // The same duplicates with the sink's pre-filter: the ceiling of the
        // statement shape the sink uses during replays.
        ("dup_filtered_ceiling_rows_per_s", filtered_sql.as_str()),
    ] {
        let t = Instant::now();
        sqlx::query(sql).execute(&mut conn).await?;
        out.insert(name, json!(per_s(t)));
    }
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let t = Instant::now();
    copy(&mut conn, "COPY ceiling FROM STDIN", &copy_text).await?;
    out.insert("copy_rows_per_s", json!(per_s(t)));
    Ok(())
}

/// Phase 1b: Broker read ceiling: a plain consumer with the sink's settings.
fn broker_ceiling(b: &Bench, out: &mut BTreeMap<&'static str, Value>) -> anyhow::Result<()> {
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

/// Phase 2: Write path in process: prepare + commit (offsets included), overlapped
/// the way the pipeline overlaps them: one thread prepares batch N+1 while
/// batch N commits (channel of one batch). Also the client-side cost alone:
/// parse, hash, fold on one thread.
async fn write_path(b: &Bench, out: &mut BTreeMap<&'static str, Value>) -> anyhow::Result<()> {
    eprintln!("measuring the write path…");
    let route = b.route_for("write_path").await?;
    let t = Instant::now();
    for chunk in b.msgs.chunks(BATCH) {
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
            for chunk in msgs.chunks(BATCH) {
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
        let expected: Vec<Expected> = batch
            .ranges
            .iter()
            .map(|(tp, (_, last))| Expected {
                tp: tp.clone(),
                expected: planned.get(tp).copied(),
                new_next: last.next(),
            })
            .collect();
        writer.commit(&batch, &expected).await?;
        for e in expected {
            planned.insert(e.tp, e.new_next);
        }
    }
    preparer.join().expect("preparer thread");
    out.insert(
        "write_path_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The release binary running as a child process.
struct SinkRun {
    child: std::process::Child,
    cfg_path: std::path::PathBuf,
    port: u16,
    group: String,
    _dir: tempfile::TempDir,
}

impl SinkRun {
    async fn metrics(&self) -> String {
        net::http_get(self.port, "/metrics")
            .await
            .unwrap_or_default()
    }
}

/// Phase 3: The sink end to end, as a process, from offset 0 until every offset is
/// stored (events/s, peak RSS, CPU seconds). The sink keeps running for 4.
async fn sink_end_to_end(
    b: &Bench,
    out: &mut BTreeMap<&'static str, Value>,
) -> anyhow::Result<SinkRun> {
    eprintln!("running kafka-pg-sink end to end…");
    let dir = tempfile::tempdir()?;
    let group = format!("bench-sink-{}", b.stamp);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (cfg, _) = b.config("sink_events", &group, port)?;
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(&cfg_path, cfg.to_toml())?;
    let log = std::fs::File::create(dir.path().join("sink.log"))?;
    let t = Instant::now();
    let child = std::process::Command::new(&b.sink_bin)
        .arg("--config")
        .arg(&cfg_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(log)
        .spawn()?;
    b.wait_stored(&group, t, "the sink").await?;
    let seconds = t.elapsed().as_secs_f64();
    let (rss, cpu_s) = proc_stats(child.id());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sink_events")
        .fetch_one(&b.pool)
        .await?;
    anyhow::ensure!(
        rows as usize == b.distinct,
        "sink wrote {rows} rows, expected {}",
        b.distinct
    );
    out.insert("sink_events_per_s", json!(b.n as f64 / seconds));
    out.insert("sink_seconds", json!(seconds));
    out.insert("peak_rss_mb", json!(rss));
    out.insert("sink_cpu_seconds", json!(cpu_s));
    let run = SinkRun {
        child,
        cfg_path,
        port,
        group,
        _dir: dir,
    };
    let (batch, commit_ms) = phase_averages("", &run.metrics().await);
    out.insert("sink_avg_batch", json!(batch));
    out.insert("sink_avg_commit_ms", json!(commit_ms));
    Ok(run)
}

/// Phase 4: Replay: `replay --to-earliest` on the running sink (all duplicates).
async fn replay(
    b: &Bench,
    mut run: SinkRun,
    out: &mut BTreeMap<&'static str, Value>,
) -> anyhow::Result<()> {
    eprintln!("replaying (all duplicates)…");
    let before = run.metrics().await;
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
    out.insert(
        "replay_events_per_s",
        json!(b.n as f64 / t.elapsed().as_secs_f64()),
    );
    let (rss, _) = proc_stats(run.child.id());
    let peak = out["peak_rss_mb"].as_f64().unwrap_or(0.0).max(rss);
    out.insert("peak_rss_mb", json!(peak));
    let (batch, commit_ms) = phase_averages(&before, &run.metrics().await);
    out.insert("replay_avg_batch", json!(batch));
    out.insert("replay_avg_commit_ms", json!(commit_ms));
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(run.child.id().to_string())
        .status();
    let _ = run.child.wait();
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

/// Phase 5: Naive at-least-once consumer: one upsert transaction per message plus
/// an async Kafka commit.
async fn naive(b: &Bench, out: &mut BTreeMap<&'static str, Value>) -> anyhow::Result<()> {
    let naive_n = env_usize("BENCH_NAIVE_EVENTS", 20_000).min(b.n);
    eprintln!("running the naive consumer on {naive_n} events…");
    b.route_for("naive").await?;
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
        let key = format!("{}|{}|{}", v["tenant"], v["region"], v["seq"]);
        sqlx::query(
            "INSERT INTO naive AS t (key, event_hash, payload, kafka_topic, kafka_partition, kafka_offset) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, \
             payload = EXCLUDED.payload WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash",
        )
        .bind(&key)
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

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (hwm_kb / 1024.0, (field(11) + field(12)) / 100.0)
}

async fn copy(conn: &mut PgConnection, sql: &str, text: &str) -> anyhow::Result<()> {
    let mut c = conn.copy_in_raw(sql).await?;
    for chunk in text.as_bytes().chunks(1 << 20) {
        c.send(chunk).await?;
    }
    c.finish().await?;
    Ok(())
}

/// Ratios against the ceilings of the same run, printed and written to
/// bench/results/<date>.json.
fn report(b: &Bench, mut out: BTreeMap<&'static str, Value>) -> anyhow::Result<()> {
    let f =
        |out: &BTreeMap<&str, Value>, k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let ceiling = f(&out, "broker_read_per_s").min(f(&out, "ceiling_rows_per_s"));
    let ratios = [
        (
            "write_path_vs_pg_ceiling",
            f(&out, "write_path_per_s") / f(&out, "ceiling_rows_per_s"),
            ">= 0.6",
        ),
        (
            "replay_vs_ceiling",
            f(&out, "replay_events_per_s")
                / f(&out, "dup_ceiling_rows_per_s").min(f(&out, "broker_read_per_s")),
            ">= 0.7",
        ),
        (
            "replay_vs_filtered_ceiling",
            f(&out, "replay_events_per_s")
                / f(&out, "dup_filtered_ceiling_rows_per_s").min(f(&out, "broker_read_per_s")),
            "(info)",
        ),
        (
            "sink_vs_ceiling",
            f(&out, "sink_events_per_s") / ceiling,
            ">= 0.5",
        ),
        (
            "sink_vs_naive",
            f(&out, "sink_events_per_s") / f(&out, "naive_events_per_s"),
            ">= 20",
        ),
    ];
    println!("\n{:<34} {:>14}", "measure", "value");
    for (k, v) in &out {
        if let Some(x) = v.as_f64() {
            println!("{k:<34} {x:>14.1}");
        }
    }
    println!("\n{:<34} {:>8} {:>8}", "ratio", "value", "target");
    for (k, v, target) in ratios {
        println!("{k:<34} {v:>8.2} {target:>8}");
        out.insert(k, json!(v));
    }
    out.insert("date", json!(b.stamp));
    out.insert("events", json!(b.n));
    out.insert("distinct_events", json!(b.distinct));
    out.insert("partitions", json!(PARTITIONS));
    out.insert(
        "cores",
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)),
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", &b.stamp[..8]));
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let b = setup().await?;
    let mut out = BTreeMap::new();
    postgres_ceilings(&b, &mut out).await?;
    broker_ceiling(&b, &mut out)?;
    write_path(&b, &mut out).await?;
    let run = sink_end_to_end(&b, &mut out).await?;
    replay(&b, run, &mut out).await?;
    naive(&b, &mut out).await?;
    report(&b, out)?;
    b.pool.close().await;
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
    Ok(())
}
