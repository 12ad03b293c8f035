//! End-to-end benchmark in ONE run, reported as ratios against ceilings
//! measured in the same run (the machine is shared and noisy). See
//! bench/README.md; run with `bash bench/run.sh`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_pg_sink::batch::{prepare, SourceMessage};
use kafka_pg_sink::config::{Config, OnError};
use kafka_pg_sink::hash;
use kafka_pg_sink::store::{self, commit_batch, Expected};
use kafka_pg_sink::types::{Offset, TopicPartition};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, TopicPartitionList};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

const PARTITIONS: i32 = 4;

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
        let partition = (key
            .bytes()
            .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
            % PARTITIONS as u32) as i32;
        out.push(Event {
            key,
            partition,
            payload,
        });
    }
    (out, distinct)
}

fn routes_toml(
    brokers: &str,
    group: &str,
    url: &str,
    topic: &str,
    table: &str,
    port: u16,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
[postgres]
url = "{url}"
[http]
bind = "127.0.0.1:{port}"
[sink]
commit_to_kafka = true
[[route]]
topic = "{topic}"
table = "{table}"
key = ["/tenant", "/region", "/seq"]
"#
    )
}

async fn stored_sum(pool: &PgPool, group: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(next_offset)::bigint FROM sink_offsets WHERE consumer_group = $1",
    )
    .bind(group)
    .fetch_one(pool)
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
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
    let ticks: f64 = fields
        .get(11)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let naive_n: usize = std::env::var("BENCH_NAIVE_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
        .min(n);
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let sink_bin =
        std::env::var("SINK_BIN").unwrap_or_else(|_| "target/release/kafka-pg-sink".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let db_name = format!("kpgs_bench_{}", stamp.to_lowercase());
    let topic = format!("kpgs-bench-{stamp}");

    eprintln!("generating {n} events…");
    let (events, distinct) = generate(n);
    let avg_len = events.iter().map(|e| e.payload.len()).sum::<usize>() / n;

    // Database and topic.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin)
        .await?;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(&format!("/{db_name}"));
    let url = url.to_string();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let toml = routes_toml(&brokers, "bench-unused", &url, &topic, "sink_events", 0);
    let (cfg, _) = Config::from_toml(&toml)?;
    let all_tables = ["ceiling", "write_path", "sink_events", "naive"];
    let mut routes_all = Vec::new();
    for t in all_tables {
        let (_, r) = Config::from_toml(&toml.replace("\"sink_events\"", &format!("\"{t}\"")))?;
        routes_all.extend(r);
    }
    store::migrate(&pool).await?;
    store::schema::ensure_tables(&pool, &routes_all).await?;

    let ac: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    for r in ac
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }

    eprintln!("producing to {topic}…");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let t0 = Instant::now();
    for e in &events {
        loop {
            match producer.send(
                BaseRecord::to(&topic)
                    .partition(e.partition)
                    .key(&e.key)
                    .payload(&e.payload),
            ) {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produce_s = t0.elapsed().as_secs_f64();

    // Offsets of every message (for the in-process write path).
    let mut next_off = [0i64; PARTITIONS as usize];
    let msgs: Vec<SourceMessage> = events
        .iter()
        .map(|e| {
            let o = next_off[e.partition as usize];
            next_off[e.partition as usize] += 1;
            SourceMessage {
                tp: TopicPartition::new(topic.clone(), e.partition),
                offset: Offset(o),
                key: Some(e.key.clone().into_bytes()),
                payload: Some(e.payload.clone().into_bytes()),
                timestamp: None,
                headers: Vec::new(),
            }
        })
        .collect();

    // 1a. Postgres ceilings: the distinct rows staged server side, then one
    // INSERT … SELECT … ON CONFLICT (no client round-trips), again (all
    // duplicates), and COPY into the same table shape.
    eprintln!("measuring Postgres ceilings…");
    let ceiling_route = &routes_all[0];
    let staged = prepare(std::slice::from_ref(ceiling_route), msgs.clone());
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
    let mut conn = PgConnection::connect(&url).await?;
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
    let t = Instant::now();
    sqlx::query(upsert_sql).execute(&mut conn).await?;
    let ceiling_rows_per_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    sqlx::query(upsert_sql).execute(&mut conn).await?;
    let dup_ceiling_rows_per_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    // The same duplicates with the sink's pre-filter (rows stored with the
    // same hash are skipped before the jsonb cast): the ceiling of the
    // statement shape the sink uses, for an honest second replay ratio.
    let filtered_sql = upsert_sql.replace(
        "FROM staging ON CONFLICT",
        "FROM staging s WHERE NOT EXISTS (SELECT 1 FROM ceiling c \
         WHERE c.key = s.key AND c.event_hash = s.event_hash) ON CONFLICT",
    );
    anyhow::ensure!(filtered_sql != upsert_sql);
    let t = Instant::now();
    sqlx::query(&filtered_sql).execute(&mut conn).await?;
    let dup_filtered_ceiling_rows_per_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE ceiling").execute(&mut conn).await?;
    let t = Instant::now();
    copy(&mut conn, "COPY ceiling FROM STDIN", &copy_text).await?;
    let copy_rows_per_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    drop(copy_text);

    // 1b. Broker read ceiling: a plain consumer with the sink's settings.
    eprintln!("measuring broker read ceiling…");
    let mut read_cfg = cfg.clone();
    read_cfg.kafka.group_id = format!("bench-read-{stamp}");
    let consumer: BaseConsumer = kafka_pg_sink::consumer::client_config(&read_cfg).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let t = Instant::now();
    let mut read = 0usize;
    let mut bytes = 0usize;
    while read < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
            bytes += m.payload().map_or(0, |p| p.len());
        }
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("broker read stalled at {read}/{n}");
        }
    }
    let broker_read_per_s = n as f64 / t.elapsed().as_secs_f64();
    drop(consumer);
    let _ = bytes;

    // The client-side cost alone: parse, hash, fold on one thread.
    let t = Instant::now();
    for chunk in msgs.chunks(5000) {
        std::hint::black_box(prepare(&routes_all[1..2], chunk.to_vec()));
    }
    let prepare_per_s = n as f64 / t.elapsed().as_secs_f64();

    // 2. Write path in process: prepare + commit_batch (offsets included),
    // overlapped the way the sink's pipeline overlaps them: one thread
    // prepares batch N+1 while batch N commits (channel of one batch).
    eprintln!("measuring the write path…");
    let wp_route = vec![routes_all[1].clone()];
    let mut planned: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
    let t = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let preparer = {
        let route = wp_route.clone();
        let msgs = msgs.clone();
        std::thread::spawn(move || {
            for chunk in msgs.chunks(5000) {
                if tx.blocking_send(prepare(&route, chunk.to_vec())).is_err() {
                    return;
                }
            }
        })
    };
    while let Some(b) = rx.recv().await {
        let expected: Vec<Expected> = b
            .ranges
            .iter()
            .map(|(tp, (_, last))| Expected {
                tp: tp.clone(),
                expected: planned.get(tp).copied(),
                new_next: last.next(),
            })
            .collect();
        commit_batch(
            &pool,
            "bench-write-path",
            &wp_route,
            &b,
            &expected,
            OnError::DeadLetter,
        )
        .await?;
        for e in expected {
            planned.insert(e.tp, e.new_next);
        }
    }
    preparer.join().expect("preparer thread");
    let write_path_per_s = n as f64 / t.elapsed().as_secs_f64();

    // 3. The sink end to end, as a process.
    eprintln!("running kafka-pg-sink end to end…");
    let dir = tempfile::tempdir()?;
    let group = format!("bench-sink-{stamp}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        routes_toml(&brokers, &group, &url, &topic, "sink_events", port),
    )?;
    let log = std::fs::File::create(dir.path().join("sink.log"))?;
    let t = Instant::now();
    let mut child = std::process::Command::new(&sink_bin)
        .arg("--config")
        .arg(&cfg_path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut first_progress: Option<Instant> = None;
    while stored_sum(&pool, &group).await < n as i64 {
        if first_progress.is_none() && stored_sum(&pool, &group).await > 0 {
            first_progress = Some(Instant::now());
        }
        if t.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("sink did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sink_s = t.elapsed().as_secs_f64();
    let sink_events_per_s = n as f64 / sink_s;
    let (peak_rss_mb, cpu_s) = proc_stats(pid);
    let rows_in_table: i64 = sqlx::query_scalar("SELECT count(*) FROM sink_events")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        rows_in_table as usize == distinct,
        "sink wrote {rows_in_table} rows, expected {distinct}"
    );

    // 5. Replay: all duplicates, with the sink still running.
    eprintln!("replaying (all duplicates)…");
    let before_replay = http_get(port, "/metrics").await.unwrap_or_default();
    let t = Instant::now();
    let st = std::process::Command::new(&sink_bin)
        .args([
            "--config",
            cfg_path.to_str().unwrap(),
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
    while stored_sum(&pool, &group).await >= n as i64 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while stored_sum(&pool, &group).await < n as i64 {
        if t.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("replay did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay_events_per_s = n as f64 / t.elapsed().as_secs_f64();
    let (peak_rss_after_replay_mb, _) = proc_stats(pid);
    // Where the sink's time went, per phase: batch size and commit latency.
    let after_replay = http_get(port, "/metrics").await.unwrap_or_default();
    let phase = |from: &str, to: &str| {
        let d = |name: &str| {
            kafka_pg_sink::metrics::sum_family(to, name)
                - kafka_pg_sink::metrics::sum_family(from, name)
        };
        let batches = d("kafka_pg_sink_batch_size_count").max(1.0);
        (
            d("kafka_pg_sink_batch_size_sum") / batches,
            1000.0 * d("kafka_pg_sink_commit_duration_seconds_sum") / batches,
        )
    };
    let (sink_avg_batch, sink_avg_commit_ms) = phase("", &before_replay);
    let (replay_avg_batch, replay_avg_commit_ms) = phase(&before_replay, &after_replay);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();

    // 4. Naive at-least-once consumer: one transaction per message.
    eprintln!("running the naive consumer on {naive_n} events…");
    let naive_cfg = {
        let mut c = cfg.clone();
        c.kafka.group_id = format!("bench-naive-{stamp}");
        c
    };
    let consumer: BaseConsumer = kafka_pg_sink::consumer::client_config(&naive_cfg).create()?;
    consumer.assign(&tpl)?;
    let mut conn = PgConnection::connect(&url).await?;
    let t = Instant::now();
    let mut done = 0usize;
    while done < naive_n {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let payload = std::str::from_utf8(m.payload().unwrap_or_default())?.to_string();
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        let key = format!("{}|{}|{}", v["tenant"], v["region"], v["seq"]);
        let h = hash::hash_value(&v);
        sqlx::query(
            "INSERT INTO naive AS t (key, event_hash, payload, kafka_topic, kafka_partition, kafka_offset) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET event_hash = EXCLUDED.event_hash, \
             payload = EXCLUDED.payload WHERE t.event_hash IS DISTINCT FROM EXCLUDED.event_hash",
        )
        .bind(&key)
        .bind(h.0.to_vec())
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
    let naive_events_per_s = naive_n as f64 / t.elapsed().as_secs_f64();

    let ceiling = broker_read_per_s.min(ceiling_rows_per_s);
    let result = json!({
        "date": stamp,
        "events": n,
        "distinct_events": distinct,
        "avg_payload_bytes": avg_len,
        "partitions": PARTITIONS,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "produce_s": produce_s,
        "ceiling_rows_per_s": ceiling_rows_per_s,
        "dup_ceiling_rows_per_s": dup_ceiling_rows_per_s,
        "dup_filtered_ceiling_rows_per_s": dup_filtered_ceiling_rows_per_s,
        "copy_rows_per_s": copy_rows_per_s,
        "broker_read_per_s": broker_read_per_s,
        "write_path_per_s": write_path_per_s,
        "sink_events_per_s": sink_events_per_s,
        "sink_seconds": sink_s,
        "sink_startup_to_first_commit_s": first_progress.map(|f| (f - (Instant::now() - Duration::from_secs_f64(sink_s))).as_secs_f64()),
        "replay_events_per_s": replay_events_per_s,
        "prepare_per_s": prepare_per_s,
        "sink_avg_batch": sink_avg_batch,
        "sink_avg_commit_ms": sink_avg_commit_ms,
        "replay_avg_batch": replay_avg_batch,
        "replay_avg_commit_ms": replay_avg_commit_ms,
        "naive_events": naive_n,
        "naive_events_per_s": naive_events_per_s,
        "peak_rss_mb": peak_rss_mb.max(peak_rss_after_replay_mb),
        "sink_cpu_seconds": cpu_s,
        "sink_vs_ceiling": sink_events_per_s / ceiling,
        "write_path_vs_pg_ceiling": write_path_per_s / ceiling_rows_per_s,
        "replay_vs_ceiling": replay_events_per_s / dup_ceiling_rows_per_s.min(broker_read_per_s),
        "replay_vs_filtered_ceiling": replay_events_per_s
            / dup_filtered_ceiling_rows_per_s.min(broker_read_per_s),
        "sink_vs_naive": sink_events_per_s / naive_events_per_s,
    });
    println!("\n{:<34} {:>14}", "measure", "value");
    for k in [
        "ceiling_rows_per_s",
        "dup_ceiling_rows_per_s",
        "dup_filtered_ceiling_rows_per_s",
        "copy_rows_per_s",
        "broker_read_per_s",
        "write_path_per_s",
        "sink_events_per_s",
        "replay_events_per_s",
        "prepare_per_s",
        "sink_avg_batch",
        "sink_avg_commit_ms",
        "replay_avg_batch",
        "replay_avg_commit_ms",
        "naive_events_per_s",
        "peak_rss_mb",
        "sink_cpu_seconds",
    ] {
        println!("{:<34} {:>14.1}", k, result[k].as_f64().unwrap_or(0.0));
    }
    println!("\n{:<34} {:>8} {:>8}", "ratio", "value", "target");
    for (k, target) in [
        ("write_path_vs_pg_ceiling", ">= 0.6"),
        ("replay_vs_ceiling", ">= 0.7"),
        ("replay_vs_filtered_ceiling", "(info)"),
        ("sink_vs_ceiling", ">= 0.5"),
        ("sink_vs_naive", ">= 20"),
    ] {
        println!(
            "{:<34} {:>8.2} {:>8}",
            k,
            result[k].as_f64().unwrap_or(0.0),
            target
        );
    }
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join(format!("{}.json", &stamp[..8]));
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")?;
    eprintln!("wrote {}", path.display());

    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    Ok(())
}

async fn copy(conn: &mut PgConnection, sql: &str, text: &str) -> anyhow::Result<()> {
    let mut c = conn.copy_in_raw(sql).await?;
    for chunk in text.as_bytes().chunks(1 << 20) {
        c.send(chunk).await?;
    }
    c.finish().await?;
    Ok(())
}

/// Minimal HTTP GET (the sink's /metrics) without an HTTP client dependency.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}
