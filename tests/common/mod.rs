//! Shared integration-test harness: a fresh database per test, a topic per
//! test on the real broker, the sink as a real child process, and
//! `wait_until` instead of sleeps.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_pg_sink::config::{local_config_path, Config, OnError, Overrides};
use kafka_pg_sink::store::BatchWriter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

pub mod capture;
pub mod connect_protobuf;
mod net;
pub mod role;
pub mod tables;
#[allow(unused_imports)] // used by some test binaries only
pub use net::http_get_status;
pub use net::{http_get, partition_of};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A unique lowercase name for databases, topics and groups.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{prefix}_{:012x}", n & 0xffff_ffff_ffff)
}

/// A database created for one test and dropped afterwards. Tests using it
/// must run on a multi-thread runtime: `Drop` blocks its thread while
/// another thread drops the database.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server's maintenance database URL (creates and drops `name`).
    admin_url: String,
    /// A database on the Citus cluster (scripts/citus.sh): dropped on
    /// every node.
    citus: bool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::on(&database_url()).await
    }

    /// A fresh database on another server (`admin_url`: any database there).
    pub async fn on(admin_url: &str) -> TestDb {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be reachable at {admin_url} (scripts/test.sh starts it): {e}"
                )
            });
        let name = unique("kpgs_test");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        TestDb {
            name,
            url,
            pool,
            admin_url: admin_url.to_string(),
            citus: false,
        }
    }

    /// A fresh database on the Citus cluster (coordinator + two workers,
    /// `scripts/citus.sh ensure`, done by scripts/test.sh): the extension
    /// created and the nodes registered in it.
    pub async fn citus() -> TestDb {
        let name = unique("kpgs_citus");
        // Citus turns on TLS with a self-signed X.509 v1 certificate, which
        // rustls refuses: the cluster is local, so no TLS.
        let url = format!("{}?sslmode=disable", citus_sh(&["createdb", &name]).trim());
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        TestDb {
            name,
            admin_url: url.clone(),
            url,
            pool,
            citus: true,
        }
    }

    /// A batch writer for group `g` with one route (a `[[route]]` body),
    /// set up the way `kafka-pg-sink setup` does it: configuration through
    /// the real loader, migrations, route table, routes resolved against the
    /// catalog (tests that call the store directly, without a broker).
    pub async fn writer_for(&self, route: &str) -> BatchWriter {
        let overrides = Overrides {
            toml: vec![format!("[[route]]\n{route}\n")],
            database_url: Some(self.url.clone()),
            ..Default::default()
        };
        let (cfg, specs) = Config::load(&local_config_path(), &overrides).unwrap();
        let (pool, routes) = kafka_pg_sink::app::setup(&cfg, &specs).await.unwrap();
        BatchWriter::new(pool, "g", routes, OnError::DeadLetter)
    }

    /// Runs statements (DDL, setup, `BEGIN; …; COMMIT`), panicking on error.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Turns the database read-only for new sessions (what a standby
    /// answers: 25006) or back, and ends the sink's sessions so they
    /// reconnect under it. Its own transaction is read-write whatever this
    /// pool's sessions were opened with.
    pub async fn set_read_only(&self, on: bool) {
        let setting = if on {
            "SET default_transaction_read_only = on"
        } else {
            "RESET default_transaction_read_only"
        };
        let sql = format!(
            "BEGIN READ WRITE; ALTER DATABASE \"{}\" {setting}; COMMIT; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'kafka-pg-sink'",
            self.name
        );
        sqlx::raw_sql(&sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(-1)
    }

    /// Order-independent checksum of a document table's full content.
    pub async fn checksum(&self, table: &str) -> String {
        sqlx::query_scalar::<_, Option<String>>(&format!(
            "SELECT md5(string_agg(concat_ws('|', key, encode(event_hash, 'hex'), payload::text, \
               coalesce(version::text, ''), kafka_topic, kafka_partition, kafka_offset), E'\\n' ORDER BY key)) FROM {table}"
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
        .unwrap_or_default()
    }

    /// key → payload (as JSON) of a document table.
    pub async fn rows(&self, table: &str) -> BTreeMap<String, serde_json::Value> {
        sqlx::query(&format!("SELECT key, payload::text FROM {table}"))
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    serde_json::from_str(&r.get::<String, _>(1)).unwrap(),
                )
            })
            .collect()
    }

    /// Stored next offsets of a group: partition → next offset.
    pub async fn stored_offsets(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        sqlx::query("SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = $1 AND topic = $2")
            .bind(group)
            .bind(topic)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| (r.get::<i32, _>(0), r.get::<i64, _>(1)))
            .collect()
    }

    /// The sum of a group's stored next offsets on a topic: grows with
    /// every commit.
    pub async fn stored_sum(&self, group: &str, topic: &str) -> i64 {
        self.stored_offsets(group, topic).await.values().sum()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let pool = self.pool.clone();
        let admin_url = self.admin_url.clone();
        if self.citus {
            block_on_in_drop(async move { pool.close().await });
            let _ = Command::new("bash")
                .arg(format!("{}/scripts/citus.sh", env!("CARGO_MANIFEST_DIR")))
                .args(["dropdb", &name])
                .output();
            return;
        }
        block_on_in_drop(async move {
            pool.close().await;
            if let Ok(admin) = PgPoolOptions::new()
                .max_connections(1)
                .connect(&admin_url)
                .await
            {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
        });
    }
}

/// Runs a cleanup future to its end from `Drop`, which cannot await: on a
/// short-lived runtime of its own thread (the test's runtime may be the one
/// dropping).
pub fn block_on_in_drop(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cleanup);
    })
    .join();
}

/// `scripts/citus.sh ARGS`; its stdout, or a panic with its output.
pub fn citus_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(format!("{}/scripts/citus.sh", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .expect("scripts/citus.sh");
    assert!(
        out.status.success(),
        "citus.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A topic created for one test.
pub struct TestTopic {
    pub name: String,
    pub partitions: i32,
    /// The bootstrap string of the cluster holding the topic.
    pub brokers: String,
    replication: i32,
    producer: ThreadedProducer<DefaultProducerContext>,
}

/// An admin client for the test broker.
pub fn admin() -> AdminClient<DefaultClientContext> {
    admin_on(&brokers())
}

/// An admin client for the cluster at `brokers`.
pub fn admin_on(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

/// A seed for a randomised test: `KPGS_SEED` if set, else random; printed so
/// a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("KPGS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (KPGS_SEED={seed} replays it)");
    seed
}

impl TestTopic {
    pub async fn new(partitions: i32) -> TestTopic {
        Self::with_config(partitions, &[]).await
    }

    /// A topic with topic-level configuration (e.g. `cleanup.policy`).
    pub async fn with_config(partitions: i32, config: &[(&str, &str)]) -> TestTopic {
        Self::on(&brokers(), partitions, 1, config).await
    }

    /// A topic on the cluster at `brokers` with `replication` replicas.
    pub async fn on(
        brokers: &str,
        partitions: i32,
        replication: i32,
        config: &[(&str, &str)],
    ) -> TestTopic {
        Self::named_on(
            brokers,
            &unique("kpgs_topic"),
            partitions,
            replication,
            config,
        )
        .await
    }

    /// A topic with a name the test chose (make it unique to the test).
    pub async fn named(name: &str, partitions: i32) -> TestTopic {
        Self::named_on(&brokers(), name, partitions, 1, &[]).await
    }

    async fn named_on(
        brokers: &str,
        name: &str,
        partitions: i32,
        replication: i32,
        config: &[(&str, &str)],
    ) -> TestTopic {
        let name = name.to_string();
        create_topic(brokers, &name, partitions, replication, config).await;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        TestTopic {
            name,
            partitions,
            brokers: brokers.to_string(),
            replication,
            producer,
        }
    }

    /// Grows the topic to `total` partitions.
    pub async fn add_partitions(&mut self, total: i32) {
        let res = admin_on(&self.brokers)
            .create_partitions(
                &[rdkafka::admin::NewPartitions::new(
                    &self.name,
                    total as usize,
                )],
                &admin_options(),
            )
            .await
            .unwrap();
        for r in res {
            r.expect("create partitions");
        }
        self.partitions = total;
        // The producer learns of new partitions from metadata.
        wait_until(
            Duration::from_secs(30),
            "the producer to see the new partitions",
            || async {
                self.producer
                    .client()
                    .fetch_metadata(Some(&self.name), Duration::from_secs(5))
                    .is_ok_and(|md| md.topics()[0].partitions().len() == total as usize)
            },
        )
        .await;
    }

    /// Deletes the records of `partition` before `offset` (what retention
    /// does); returns the new log start offset.
    pub async fn delete_records_before(&self, partition: i32, offset: i64) -> i64 {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&self.name, partition, rdkafka::Offset::Offset(offset))
            .unwrap();
        let res = admin_on(&self.brokers)
            .delete_records(&tpl, &admin_options())
            .await
            .unwrap();
        let e = res.find_partition(&self.name, partition).unwrap();
        e.error().expect("delete records");
        e.offset().to_raw().unwrap()
    }

    /// Deletes the topic and creates it again, empty, with the same name.
    pub async fn recreate(&self) {
        let res = admin_on(&self.brokers)
            .delete_topics(&[&self.name], &admin_options())
            .await
            .unwrap();
        for r in res {
            r.expect("delete topic");
        }
        // Deletion completes asynchronously: creation fails until it has.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let res = admin_on(&self.brokers)
                .create_topics(
                    &[NewTopic::new(
                        &self.name,
                        self.partitions,
                        TopicReplication::Fixed(self.replication),
                    )],
                    &admin_options(),
                )
                .await
                .unwrap();
            if res.iter().all(|r| r.is_ok()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "recreating {}: {res:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A one-partition topic holding `n` events keyed `k0…`, flushed.
    pub async fn with_events(n: u64) -> TestTopic {
        let topic = TestTopic::new(1).await;
        for i in 0..n {
            let id = format!("k{i}");
            topic.send(0, Some(&id), Some(event(&id, i).as_bytes()));
        }
        topic.flush();
        topic
    }

    /// Sends to an explicit partition (None value = tombstone).
    pub fn send(&self, partition: i32, key: Option<&str>, value: Option<&[u8]>) {
        self.send_with_headers(partition, key, value, &[]);
    }

    /// Sends a record whose key is bytes (a schema'd key).
    pub fn send_bytes(&self, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>) {
        loop {
            let mut rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.name).partition(partition);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(v) = value {
                rec = rec.payload(v);
            }
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }

    pub fn send_with_headers(
        &self,
        partition: i32,
        key: Option<&str>,
        value: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) {
        loop {
            let mut rec: BaseRecord<'_, str, [u8]> =
                BaseRecord::to(&self.name).partition(partition);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(v) = value {
                rec = rec.payload(v);
            }
            if !headers.is_empty() {
                let mut hs = OwnedHeaders::new_with_capacity(headers.len());
                for (k, v) in headers {
                    hs = hs.insert(Header {
                        key: k,
                        value: Some(*v),
                    });
                }
                rec = rec.headers(hs);
            }
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).expect("flush");
    }

    /// High watermarks per partition (what `sink_offsets` must reach).
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        end_offsets_at(&self.brokers, &self.name)
    }
}

async fn create_topic(
    brokers: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let res = admin_on(brokers)
        .create_topics(&[topic], &admin_options())
        .await
        .expect("Kafka must be reachable (scripts/test.sh starts it)");
    for r in res {
        r.expect("create topic");
    }
}

/// High watermarks per partition of any topic on the test broker.
pub fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    end_offsets_at(&brokers(), topic)
}

/// High watermarks per partition of a topic on the cluster at `brokers`.
/// Retried for a while: right after a broker restart, metadata and
/// watermark requests fail transiently (NotLeaderForPartition, transport
/// errors) until leadership settles.
pub fn end_offsets_at(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match watermarks(&c, topic) {
            Ok(end) => return end,
            Err(e) if Instant::now() < deadline => {
                eprintln!("end offsets of {topic}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("end offsets of {topic} for 90 s: {e}"),
        }
    }
}

fn watermarks(
    c: &BaseConsumer,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = &md.topics()[0];
    // A topic whose leaders are not settled reports an error and no
    // partitions; an empty map would look like "nothing to consume".
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    t.partitions()
        .iter()
        .map(|p| {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            Ok((p.id(), high))
        })
        .collect()
}

/// Writes a sink configuration for one test and returns its path.
pub struct SinkConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub group: String,
    pub http_port: u16,
}

/// A free port for a sink's HTTP listener, handed out once per test binary.
///
/// Taken below the kernel's ephemeral range (32768-60999 by default): a port
/// the kernel picked for `127.0.0.1:0` and released is free for any outgoing
/// connection too, and one Kafka or Postgres client of a parallel test took
/// it before the sink bound it ("Address already in use" in CI). No client
/// connection gets a port below that range. Where the range starts too low,
/// the kernel's pick it is.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 21_000; // above this project's fixed ports (…, 18081, 18083+, 20000)
    const HIGH: u32 = 29_000; // below the test cluster's 29092+
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    if ephemeral_low >= HIGH {
        // Test binaries run one at a time; the process id spreads them anyway.
        let start = std::process::id().wrapping_mul(7_919);
        for _ in 0..HIGH - LOW {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOW + start.wrapping_add(i) % (HIGH - LOW)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SinkConfig {
    /// `route_extra` is appended to the `[[route]]` table (e.g. `version = "/v"`).
    pub fn new(db: &TestDb, topic: &str, route_extra: &str, extra: &str) -> SinkConfig {
        let route = format!(
            "[[route]]\ntopic = \"{topic}\"\ntable = \"events\"\nkey = \"/id\"\n{route_extra}\n"
        );
        Self::with_routes(db, &route, extra)
    }

    /// Runs a one-shot subcommand (`setup`, `check-config`, `replay …`) with
    /// this configuration; returns success and stdout + stderr.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        self.cli_of(std::path::Path::new(sink_binary()), args, env)
    }

    /// [`SinkConfig::cli`] of another build of the sink.
    pub fn cli_of(
        &self,
        binary: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (bool, String) {
        let out = Command::new(binary)
            .arg("--config")
            .arg(&self.path)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `offsets show --json` of this configuration.
    pub fn offsets_json(&self) -> Vec<serde_json::Value> {
        let (ok, out) = self.cli(&["offsets", "show", "--json"], &[]);
        assert!(ok, "offsets show: {out}");
        let json = &out[out.find('[').expect("a JSON array")..];
        let first = serde_json::Deserializer::from_str(json)
            .into_iter::<Vec<serde_json::Value>>()
            .next();
        first
            .expect("a JSON array")
            .unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Replaces text in the written configuration (the text must be there).
    pub fn rewrite(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.path).unwrap();
        assert!(text.contains(from), "{from} not in config");
        std::fs::write(&self.path, text.replace(from, to)).unwrap();
    }

    /// A configuration with the given `[[route]]` tables (TOML text):
    /// the shipped `config/local.toml` loaded through the real loader with
    /// this test's broker, group, database, HTTP port and settings layered
    /// over it, written back as TOML for the sink process. `extra` is TOML
    /// placed in the `[sink]` table (and may open tables of its own).
    pub fn with_routes(db: &TestDb, routes: &str, extra: &str) -> SinkConfig {
        Self::with_brokers(db, &brokers(), routes, extra)
    }

    /// As [`SinkConfig::with_routes`], for the Kafka cluster at `brokers`.
    pub fn with_brokers(db: &TestDb, brokers: &str, routes: &str, extra: &str) -> SinkConfig {
        let dir = tempfile::tempdir().unwrap();
        let group = unique("kpgs_group");
        let http_port = free_port();
        let overrides = Overrides {
            toml: vec![format!(
                "[batch]\nmax_messages = 500\nmax_wait = \"50ms\"\n\
                 [sink]\nshutdown_timeout = \"10s\"\n{extra}\n\n{routes}\n"
            )],
            brokers: Some(brokers.to_string()),
            group_id: Some(group.clone()),
            database_url: Some(db.url.clone()),
            http_bind: Some(format!("127.0.0.1:{http_port}")),
        };
        let (cfg, _) = Config::load(&local_config_path(), &overrides)
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        let path = dir.path().join("sink.toml");
        std::fs::write(&path, cfg.to_toml()).unwrap();
        SinkConfig {
            dir,
            path,
            group,
            http_port,
        }
    }
}

/// The position a direct-store test claims on `orders[0]`: `expected` is the
/// stored next offset it believes in (None = first batch), `last` the batch's
/// last offset.
pub fn orders_position(expected: Option<i64>, last: i64) -> Vec<kafka_pg_sink::store::Expected> {
    use kafka_pg_sink::types::{Offset, TopicPartition};
    vec![kafka_pg_sink::store::Expected {
        tp: TopicPartition::new("orders", 0),
        expected: expected.map(Offset),
        new_next: Offset(last + 1),
    }]
}

/// Commits a prepared batch (tests that call the store directly).
pub async fn commit(
    writer: &BatchWriter,
    batch: &kafka_pg_sink::event::PreparedBatch,
    expected: &[kafka_pg_sink::store::Expected],
) -> kafka_pg_sink::store::CommitOutcome {
    writer.commit(batch, expected).await.unwrap()
}

/// The sink binary as a child process; killed on drop.
pub struct SinkProcess {
    pub child: Child,
    pub log: PathBuf,
    pub http_port: u16,
}

pub fn sink_binary() -> &'static str {
    env!("CARGO_BIN_EXE_kafka-pg-sink")
}

impl SinkProcess {
    pub fn start(cfg: &SinkConfig) -> SinkProcess {
        Self::start_with(cfg, cfg.http_port, &[])
    }

    pub fn start_with(cfg: &SinkConfig, http_port: u16, env: &[(&str, &str)]) -> SinkProcess {
        Self::start_binary(std::path::Path::new(sink_binary()), cfg, http_port, env)
    }

    /// `run` of another build of the sink (the previous version).
    pub fn start_binary(
        binary: &std::path::Path,
        cfg: &SinkConfig,
        http_port: u16,
        env: &[(&str, &str)],
    ) -> SinkProcess {
        let log = cfg.dir.path().join(format!("sink-{}.log", unique("run")));
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&cfg.path)
            .arg("--http-bind")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("run")
            .env_remove("DATABASE_URL")
            .env("KAFKA_PG_SINK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sink");
        SinkProcess {
            child,
            log,
            http_port,
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> Option<String> {
        http_get(self.http_port, "/metrics").await
    }

    /// Waits until `/readyz` answers 200: setup (migrations, catalog reads)
    /// is done, the database answers and the consumer has joined.
    pub async fn wait_ready(&self, timeout: Duration) {
        wait_until(timeout, "the sink to be ready (/readyz 200)", || async {
            http_get(self.http_port, "/readyz").await.is_some()
        })
        .await;
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("---- sink log tail ({}) ----", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(timeout, check).await {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// Waits until one session of `pool`'s database waits for a lock while
/// running a query `LIKE pattern`; panics with `what` after 30 s.
pub async fn wait_for_lock_waiter(pool: &PgPool, pattern: &str, what: &str) {
    wait_until(Duration::from_secs(30), what, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(pattern)
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
}

/// Polls `check` until it returns true (true) or `timeout` passes (false),
/// for callers that gather diagnostics before failing.
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of a metric family in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    kafka_pg_sink::ops::metrics::sum_family(text, name)
}

/// consumed = inserted + updated + deleted + duplicates + dead letters + skipped.
pub fn assert_metrics_identity(text: &str) {
    let (consumed, outcomes) = kafka_pg_sink::ops::metrics::identity(text);
    assert_eq!(consumed, outcomes, "metrics identity broken:\n{text}");
}

/// Runs `replay --to-earliest` for a test's sink configuration.
pub fn replay_to_earliest(cfg: &SinkConfig) {
    let (ok, out) = cfg.cli(&["replay", "--to-earliest"], &[]);
    assert!(ok, "replay: {out}");
}

pub fn event(id: &str, seq: u64) -> String {
    format!(
        r#"{{"id":"{id}","seq":{seq},"amount":{}.{:02},"note":"event {seq} of {id}"}}"#,
        seq * 7 % 1000,
        seq % 100
    )
}

/// Produces a workload and returns the expected final document per key,
/// computed independently of the sink: the last event produced for each key.
pub struct Workload {
    pub expected: BTreeMap<String, serde_json::Value>,
    pub produced: u64,
}

impl Workload {
    pub fn new() -> Self {
        Workload {
            expected: BTreeMap::new(),
            produced: 0,
        }
    }

    pub fn send(&mut self, topic: &TestTopic, id: &str, payload: &str) {
        topic.send(
            partition_of(id, topic.partitions),
            Some(id),
            Some(payload.as_bytes()),
        );
        self.expected
            .insert(id.to_string(), serde_json::from_str(payload).unwrap());
        self.produced += 1;
    }
}

/// Events over `keys` keys in a scattered order, each key's events
/// cycling through `versions` versions: re-sends and changes of the same
/// keys, with the model of what was produced in `w`.
pub struct Scattered {
    pub w: Workload,
    seq: u64,
    keys: u64,
    versions: u64,
}

impl Scattered {
    pub fn new(keys: u64, versions: u64) -> Self {
        Scattered {
            w: Workload::new(),
            seq: 0,
            keys,
            versions,
        }
    }

    /// Sends `n` more events and flushes them.
    pub fn produce(&mut self, topic: &TestTopic, n: u64) {
        for _ in 0..n {
            self.seq += 1;
            let id = format!("k{}", self.seq * 7919 % self.keys);
            self.w
                .send(topic, &id, &event(&id, self.seq % self.versions));
        }
        topic.flush();
    }
}

/// `kills` rounds of: `before` new events, the sink started, its stored
/// positions awaited past where they were, `during` more events while it
/// runs, SIGKILL. Each killed sink's log must hold no panic.
pub async fn sigkill_rounds(
    db: &TestDb,
    topic: &TestTopic,
    cfg: &SinkConfig,
    load: &mut Scattered,
    kills: usize,
    (before, during): (u64, u64),
    timeout: Duration,
) {
    let stored = || db.stored_sum(&cfg.group, &topic.name);
    for kill in 0..kills {
        let start = stored().await;
        // New data first, so the restarted sink always has work to be killed in.
        load.produce(topic, before);
        let mut sink = SinkProcess::start(cfg);
        // Kill only after the sink made progress, while more data is arriving.
        wait_until(timeout, "progress before kill", || async {
            stored().await > start
        })
        .await;
        load.produce(topic, during);
        sink.kill9();
        assert!(
            !sink.logs().contains("panicked"),
            "kill {kill}: {}",
            sink.logs()
        );
    }
}

/// Waits until the sink has stored the end offset of every partition.
pub async fn wait_caught_up(db: &TestDb, group: &str, topic: &TestTopic, timeout: Duration) {
    let end = topic.end_offsets();
    wait_until(timeout, "sink_offsets to reach the end offsets", || {
        let end = end.clone();
        async move { db.stored_offsets(group, &topic.name).await == end }
    })
    .await;
}

/// The checksum of `events` equals that of a single uninterrupted sink run
/// over the same topic into a fresh database (same rows, hashes and source
/// offsets): whatever happened to `db`'s run left no trace.
pub async fn assert_same_as_clean_run(db: &TestDb, topic: &TestTopic, timeout: Duration) {
    let clean = TestDb::new().await;
    let clean_cfg = SinkConfig::new(&clean, &topic.name, "", "");
    let _sink = SinkProcess::start(&clean_cfg);
    wait_caught_up(&clean, &clean_cfg.group, topic, timeout).await;
    assert_eq!(db.checksum("events").await, clean.checksum("events").await);
}

/// Runs `scripts/<name> <args>` (the repo's service scripts) and returns its
/// stdout, the machine-readable result; its progress lines (stderr) are
/// printed with the test's output. Panics unless the script succeeds.
pub fn script(name: &str, args: &[&str]) -> String {
    let path = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash").arg(&path).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        eprint!("{stderr}");
    }
    assert!(out.status.success(), "{name} {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `scripts/kafka-cluster.sh ARGS` (the 3-node cluster of the fault tests).
pub async fn cluster(args: &[&str]) -> String {
    script_async("kafka-cluster.sh", args).await
}

/// `scripts/pg-failover.sh ARGS` (the Postgres primary and standby).
pub async fn pgfo(args: &[&str]) -> String {
    script_async("pg-failover.sh", args).await
}

/// [`script`] off the async runtime's worker threads (the scripts wait for
/// nodes and proxies for seconds).
pub async fn script_async(name: &'static str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        script(name, &args)
    })
    .await
    .unwrap()
}

/// Keyed events for a route with `version = "/v"`, from a seeded generator:
/// mostly newer versions, some exact re-sends (a producer retry: same
/// version, same body) and some late older versions. One event in ten has a
/// key of its own (`u<n>`, written once), so a lost event shows in the final
/// table even when later versions of busy keys would hide it.
pub struct VersionedEvents {
    rng: rand::rngs::StdRng,
    keys: u32,
    current: BTreeMap<String, (i64, String)>,
    seq: u64,
}

impl VersionedEvents {
    pub fn new(seed: u64, keys: u32) -> Self {
        use rand::SeedableRng;
        VersionedEvents {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            keys,
            current: BTreeMap::new(),
            seq: 0,
        }
    }

    /// The next event: `(key, payload)`.
    pub fn next_event(&mut self) -> (String, String) {
        self.next_event_where(|_| true)
    }

    /// The next event for a key that `pick` accepts (e.g. only keys of some
    /// partitions).
    pub fn next_event_where(&mut self, pick: impl Fn(&str) -> bool) -> (String, String) {
        use rand::Rng;
        self.seq += 1;
        let unique = format!("u{}", self.seq);
        let id = if self.rng.gen_range(0..10) == 0 && pick(&unique) {
            unique
        } else {
            loop {
                let id = format!("k{}", self.rng.gen_range(0..self.keys));
                if pick(&id) {
                    break id;
                }
            }
        };
        let (cur, body) = self.current.get(&id).cloned().unwrap_or((0, String::new()));
        let (v, body) = match self.rng.gen_range(0..100) {
            0..=14 if cur > 0 => (cur, body),
            15..=29 if cur > 1 => (cur - 1, format!("late-{}", self.seq)),
            _ => (cur + 1, format!("s{}", self.seq)),
        };
        if v > cur {
            self.current.insert(id.clone(), (v, body.clone()));
        }
        let payload = format!(r#"{{"id":"{id}","v":{v},"body":"{body}"}}"#);
        (id, payload)
    }
}

/// What a route with `version = "/v"` makes of a log (`(key, payload)` in
/// log order per key): an event replaces the key's row when its version is
/// at least the row's. Computed from the log, not by the sink's code.
pub fn versioned_model<'a>(
    log: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, serde_json::Value> {
    let mut rows: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (key, payload) in log {
        let doc: serde_json::Value = serde_json::from_str(payload).unwrap();
        let newer = rows
            .get(key)
            .is_none_or(|row| doc["v"].as_i64() >= row["v"].as_i64());
        if newer {
            rows.insert(key.to_string(), doc);
        }
    }
    rows
}

/// Sends `n` events `{"id":"k<i % keys>","v":<i>}` keyed by id, continuing
/// `log` (whose length numbers the next event), and flushes.
pub fn send_versioned(topic: &TestTopic, log: &mut Vec<(String, String)>, n: u32, keys: u32) {
    let start = log.len() as u32;
    for i in start..start + n {
        let id = format!("k{}", i % keys);
        let payload = format!(r#"{{"id":"{id}","v":{i}}}"#);
        send_logged(topic, log, id, payload);
    }
    topic.flush();
}

/// Sends one event keyed by `id` to its partition and records it in `log`.
pub fn send_logged(
    topic: &TestTopic,
    log: &mut Vec<(String, String)>,
    id: String,
    payload: String,
) {
    topic.send(
        partition_of(&id, topic.partitions),
        Some(&id),
        Some(payload.as_bytes()),
    );
    log.push((id, payload));
}

/// Asserts the document table `events` equals the versioned model of `log`
/// (the newest version per key), naming the seed and how many rows differ.
pub async fn assert_table_is_model<'a>(
    db: &TestDb,
    log: impl IntoIterator<Item = (&'a str, &'a str)>,
    seed: u64,
) {
    let expected = versioned_model(log);
    let actual = db.rows("events").await;
    assert!(
        actual == expected,
        "table differs from the model (seed {seed}): {} rows vs {} expected, {} differ",
        actual.len(),
        expected.len(),
        expected
            .iter()
            .filter(|(k, v)| actual.get(*k) != Some(v))
            .count()
    );
}

/// Applies the sink's migrations, then records in `offset_regressions`
/// every stored position that moves back outside a replay (a zombie that
/// commits despite the fence would). The damage to a table may heal when
/// someone re-reads; this record does not.
pub async fn audit_offset_regressions(db: &TestDb) {
    kafka_pg_sink::store::migrate(&db.pool).await.unwrap();
    db.exec(
        "CREATE TABLE offset_regressions (topic text, partition int, old bigint, new bigint); \
         CREATE FUNCTION audit_offsets() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.next_offset < OLD.next_offset \
              AND coalesce(current_setting('kafka_pg_sink.replay', true), '') <> 'on' THEN \
             INSERT INTO offset_regressions VALUES (NEW.topic, NEW.partition, OLD.next_offset, NEW.next_offset); \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER audit_offsets BEFORE UPDATE ON sink_offsets \
           FOR EACH ROW EXECUTE FUNCTION audit_offsets();",
    )
    .await;
}
