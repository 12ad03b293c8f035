//! Reprocessing with audit: `verify` against the log (tampered tables, a
//! running sink), `rebuild` into a shadow table with a changed mapping under
//! live traffic and SIGKILLs, `promote` (the live sink continues on the new
//! table without restart), `abort`, and the mapping check that refuses a
//! batch prepared with the old mapping after a promote.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_pg_sink::config::fingerprint::Fingerprint;
use kafka_pg_sink::config::OnError;
use kafka_pg_sink::event::prepare;
use kafka_pg_sink::kafka::message::SourceMessage;
use kafka_pg_sink::store::mappings::MappingGuard;
use kafka_pg_sink::store::promote::{self, PromoteRequest};
use kafka_pg_sink::store::shadow::{self, RebuildSpec};
use kafka_pg_sink::store::{BatchWriter, CommitOutcome, StoreError};
use kafka_pg_sink::types::{Offset, TableName, TopicPartition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// Runs a one-shot command with `config`: (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sink_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `verify --json` (plus `extra` flags): exit code and report.
fn verify(config: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(config, &args);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report)
}

/// The sample keys of one kind of difference in the first route's report.
fn samples(report: &Value, kind: &str) -> Vec<String> {
    report["routes"][0][format!("samples_{kind}")]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect()
}

/// A long-running command (`rebuild …`) as a child process; killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(config: &Path, args: &[&str]) -> Proc {
        let log = config.with_file_name(format!("{}.log", unique("proc")));
        let child = Command::new(sink_binary())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("KAFKA_PG_SINK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its exit code.
    async fn exited(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces in the background until dropped: `send(seq)` per message, at
/// roughly `per_sec` messages a second.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(topic: Arc<TestTopic>, per_sec: u64, send: fn(&TestTopic, u64)) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut seq = 100_000;
            while !s.load(Ordering::Relaxed) {
                for _ in 0..per_sec / 20 {
                    seq += 1;
                    send(&topic, seq);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            topic.flush();
        });
        Traffic {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops producing; everything sent is flushed when this returns.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn wait_sent(t: &Traffic, n: u64) {
    let base = t.sent();
    wait_until(T, "traffic", || async { t.sent() >= base + n }).await;
}

// ---------------------------------------------------------------- verify

fn doc_event(topic: &TestTopic, seq: u64) {
    let id = format!("k{}", seq * 7919 % 250);
    topic.send(
        partition_of(&id, topic.partitions),
        Some(&id),
        Some(event(&id, seq).as_bytes()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_tampered_rows_replay_repairs_what_events_cover_rebuild_all() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(3).await;
    for seq in 0..1200 {
        doc_event(&topic, seq);
        if seq % 7 == 0 {
            doc_event(&topic, seq); // an exact re-send
        }
    }
    let gone = "k3";
    topic.send(partition_of(gone, 3), Some(gone), None); // a tombstone
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let _sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;

    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!((code, report["ok"].as_bool()), (0, Some(true)), "{report}");
    assert_eq!(report["routes"][0]["mode"], "complete");
    assert_eq!(report["messages_read"], 1200 + 1200 / 7 + 1 + 1);
    let checksum = report["routes"][0]["checksum_table"].clone();
    assert_eq!(checksum, report["routes"][0]["checksum_expected"]);

    // Tamper: delete a row, change a payload, insert a row no event produced.
    db.exec("DELETE FROM events WHERE key = 'k1'").await;
    db.exec(r#"UPDATE events SET payload = payload || '{"note":"edited"}' WHERE key = 'k2'"#)
        .await;
    db.exec(&format!(
        "INSERT INTO events VALUES ('intruder', '\\x00', '{{}}', NULL, '{}', 0, 5)",
        topic.name
    ))
    .await;
    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["ok"], false);
    assert_eq!(samples(&report, "missing"), ["k1"]);
    assert_eq!(samples(&report, "different"), ["k2"]);
    assert_eq!(samples(&report, "extra"), ["intruder"]);
    assert_eq!(
        report["routes"][0]["samples_different"][0]["columns"],
        serde_json::json!(["payload"])
    );
    let (_, text, _) = cli(&cfg.path, &["verify"]);
    for k in ["k1", "k2 (payload)", "intruder", "DIFFERENT"] {
        assert!(text.contains(k), "{k} not in:\n{text}");
    }

    // Replay re-applies every event in order: the deleted row comes back,
    // and k2, whose content changed along the log, is rewritten. A row no
    // event produced is never touched by a replay: verify still names it.
    replay_to_earliest(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 3, "{report}");
    assert!(samples(&report, "missing").is_empty(), "{report}");
    assert!(samples(&report, "different").is_empty(), "{report}");
    assert_eq!(samples(&report, "extra"), ["intruder"]);

    // Rebuilding into a shadow and promoting it repairs everything.
    let mut rebuild = Proc::start(
        &cfg.path,
        &["rebuild", "--route", "events", "--into", "events_fixed"],
    );
    let rg = format!("{}.rebuild.events_fixed", cfg.group);
    let end = topic.end_offsets();
    wait_until(T, "the rebuild to catch up", || async {
        db.stored_offsets(&rg, &topic.name).await == end
    })
    .await;
    let (code, out, err) = cli(
        &cfg.path,
        &["promote", "--route", "events", "--shadow", "events_fixed"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rebuild.exited(T).await, 0, "{}", rebuild.logs());
    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["routes"][0]["checksum_table"], checksum);
    assert_eq!(
        db.count("SELECT count(*) FROM events_retired WHERE key = 'intruder'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_while_the_sink_runs_and_data_arrives() {
    let db = TestDb::new().await;
    let topic = Arc::new(TestTopic::new(4).await);
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    let traffic = Traffic::start(topic.clone(), 600, doc_event);
    wait_sent(&traffic, 1500).await;
    let port = free_port();
    for round in 0..3 {
        let bind = format!("127.0.0.1:{port}");
        let (code, report) = verify(&cfg.path, &["--http-bind", &bind]);
        assert_eq!(code, 0, "round {round}: {report}");
        assert!(report["messages_read"].as_u64().unwrap() > 0);
        assert_eq!(
            report["routes"][0]["partitions"].as_array().unwrap().len(),
            4
        );
        wait_sent(&traffic, 300).await;
    }
    // A partial range: applied on top of the table, content compared.
    let (code, report) = verify(&cfg.path, &["--from-offset", "1"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["routes"][0]["mode"], "partial");
    assert!(!report["routes"][0]["compared_columns"]
        .as_array()
        .unwrap()
        .contains(&Value::from("kafka_offset")));
    // From a time before the first record: the whole log again.
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (code, report) = verify(&cfg.path, &["--from-timestamp", &hour_ago]);
    assert_eq!(
        (code, &report["routes"][0]["mode"]),
        (0, &Value::from("complete")),
        "{report}"
    );
    traffic.stop();
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    // verify never wrote positions (its own or the sink's).
    let groups: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT consumer_group FROM sink_offsets")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(groups, vec![cfg.group.clone()]);
    assert_metrics_identity(&sink.metrics().await.unwrap());
    assert_eq!(verify(&cfg.path, &[]).0, 0);
}

// ---------------------------------------------------------------- rebuild

const ORDERS_DDL: &str =
    "CREATE TABLE orders (id text PRIMARY KEY, amount numeric(12,2) NOT NULL, src_offset bigint)";
const OLD_COLUMNS: &str =
    r#"columns = { id = "/id", amount = "/amount", src_offset = "@kafka_offset" }"#;
const NEW_COLUMNS: &str =
    r#"columns = { id = "/id", amount = "/amount", note = "/note", src_offset = "@kafka_offset" }"#;

fn orders_route(topic: &str, columns: &str) -> String {
    format!("[[route]]\ntopic = \"{topic}\"\ntable = \"orders\"\nkey = \"id\"\n{columns}\n")
}

/// An order event (amount and note unique per `seq`), every 25th a tombstone.
fn order_event(topic: &TestTopic, seq: u64) {
    let id = format!("o{}", seq * 7919 % 300);
    let p = partition_of(&id, topic.partitions);
    if seq.is_multiple_of(25) {
        return topic.send(p, Some(&id), None);
    }
    let body = format!(
        r#"{{"id":"{id}","amount":{}.{:02},"note":"n{seq}"}}"#,
        seq % 100_000,
        seq % 100
    );
    topic.send(p, Some(&id), Some(body.as_bytes()));
}

/// The new mapping's table, computed from the log itself: per key its last
/// record (a tombstone removes it) with that record's offset.
fn orders_model(topic: &TestTopic) -> BTreeMap<String, (String, String, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("model"))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let end = topic.end_offsets();
    for p in 0..topic.partitions {
        tpl.add_partition_offset(&topic.name, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut model = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = (0..topic.partitions).map(|p| (p, 0)).collect();
    while next.iter().any(|(p, n)| *n < end[p]) {
        let Some(m) = c.poll(Duration::from_secs(5)) else {
            continue;
        };
        let m = m.unwrap();
        next.insert(m.partition(), m.offset() + 1);
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        match m.payload() {
            None => {
                model.remove(&key);
            }
            Some(_) if key.starts_with("bad") => {}
            Some(b) => {
                let v: Value = serde_json::from_slice(b).unwrap();
                let amount = v["amount"].to_string();
                let amount = if amount.contains('.') {
                    amount
                } else {
                    format!("{amount}.00")
                };
                let note = v["note"].as_str().unwrap().to_string();
                model.insert(key, (amount, note, m.offset()));
            }
        }
    }
    model
}

async fn orders_rows(db: &TestDb) -> BTreeMap<String, (String, String, i64)> {
    sqlx::query_as::<_, (String, String, String, i64)>(
        "SELECT id, amount::text, coalesce(note, '<NULL>'), src_offset FROM orders",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, a, n, o)| (id, (a, n, o)))
    .collect()
}

async fn orders_checksum(db: &TestDb) -> String {
    sqlx::query_scalar::<_, Option<String>>(
        "SELECT md5(string_agg(concat_ws('|', id, amount::text, note, src_offset), E'\\n' ORDER BY id)) FROM orders",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_with_a_new_column_under_traffic_and_sigkills_promotes_exactly() {
    let db = TestDb::new().await;
    db.exec(ORDERS_DDL).await;
    let topic = Arc::new(TestTopic::new(3).await);
    let cfg = SinkConfig::with_routes(&db, &orders_route(&topic.name, OLD_COLUMNS), "");
    // The operator's new configuration: the same group, one more column.
    let new_path = cfg.dir.path().join("new.toml");
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let added = text.replace("id = \"/id\"\n", "id = \"/id\"\nnote = \"/note\"\n");
    assert_ne!(
        added, text,
        "the columns table holds `id = \"/id\"`:\n{text}"
    );
    std::fs::write(&new_path, added).unwrap();

    // A value the column type refuses: a dead letter under either mapping.
    let bad = r#"{"id":"bad-1","amount":"abc","note":"x"}"#;
    topic.send(
        partition_of("bad-1", 3),
        Some("bad-1"),
        Some(bad.as_bytes()),
    );
    // The live sink holds each batch 100 ms, so a promote likely meets one in flight.
    let delay = [("KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS", "100")];
    let mut live = SinkProcess::start_with(&cfg, cfg.http_port, &delay);
    let traffic = Traffic::start(topic.clone(), 400, order_event);
    wait_sent(&traffic, 800).await;
    live.kill9();
    let mut live = SinkProcess::start_with(&cfg, cfg.http_port, &delay);

    // The new column is missing from the shadow created like the live table.
    let (code, _, err) = cli(
        &new_path,
        &["rebuild", "--route", "orders", "--into", "orders_v2"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("orders_v2") && err.contains("note"), "{err}");
    db.exec("ALTER TABLE orders_v2 ADD COLUMN note text").await;

    let rg = format!("{}.rebuild.orders_v2", cfg.group);
    let rebuild_args = ["rebuild", "--route", "orders", "--into", "orders_v2"];
    let mut rebuild = Proc::start(&new_path, &rebuild_args);
    wait_until(T, "rebuild progress", || async {
        db.stored_sum(&rg, &topic.name).await > 300
    })
    .await;
    rebuild.kill9();
    wait_sent(&traffic, 400).await;
    let mut rebuild = Proc::start(&new_path, &rebuild_args);
    // Caught up: on every partition at or past where the live sink is now
    // (and past the first record: the dead letter).
    let live_now = db.stored_offsets(&cfg.group, &topic.name).await;
    wait_until(
        T,
        "the rebuild to pass the live sink's positions",
        || async {
            let rebuilt = db.stored_offsets(&rg, &topic.name).await;
            (0..topic.partitions).all(|p| {
                let live = live_now.get(&p).copied().unwrap_or(1);
                rebuilt.get(&p).is_some_and(|r| *r >= live)
            })
        },
    )
    .await;

    // Audit the shadow before publishing it (while both keep running).
    let (code, report) = verify(&new_path, &["--route", "orders", "--shadow", "orders_v2"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["group"], rg.as_str());
    assert_eq!(report["dead_letters"], 1, "{report}");

    // The operator switches the live configuration, then promotes.
    std::fs::copy(&new_path, &cfg.path).unwrap();
    let (code, out, err) = cli(
        &cfg.path,
        &["promote", "--route", "orders", "--shadow", "orders_v2"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rebuild.exited(T).await, 0, "{}", rebuild.logs());
    wait_sent(&traffic, 600).await;
    traffic.stop();
    wait_caught_up(&db, &cfg.group, &topic, T).await;

    let model = orders_model(&topic);
    assert_eq!(
        orders_rows(&db).await,
        model,
        "table differs from the log's model"
    );
    // The same process continues on the new table.
    assert!(live.child.try_wait().unwrap().is_none(), "{}", live.logs());
    let logs = live.logs();
    assert!(logs.contains("reading the configuration again"), "{logs}");
    for l in logs
        .lines()
        .filter(|l| l.contains("mapping") || l.contains("fenced"))
    {
        eprintln!("live sink: {l}");
    }
    // The rebuild's dead letters are the live group's now; the old ones are
    // kept under the retired table's name.
    let dead: Vec<(String, i64)> = sqlx::query_as(
        "SELECT consumer_group, count(*) FROM sink_dead_letters GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let retired = format!("{}.retired.orders_retired", cfg.group);
    assert_eq!(dead, [(cfg.group.clone(), 1), (retired, 1)]);
    assert_eq!(
        db.count("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders_retired' AND column_name = 'note'").await,
        0
    );
    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 0, "{report}");

    // A fresh run with the new mapping gives the same table.
    let fresh = TestDb::new().await;
    fresh.exec(ORDERS_DDL).await;
    fresh.exec("ALTER TABLE orders ADD COLUMN note text").await;
    let fresh_cfg = SinkConfig::with_routes(&fresh, &orders_route(&topic.name, NEW_COLUMNS), "");
    let _fresh_sink = SinkProcess::start(&fresh_cfg);
    wait_caught_up(&fresh, &fresh_cfg.group, &topic, T).await;
    assert_eq!(orders_checksum(&db).await, orders_checksum(&fresh).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_the_live_table_untouched() {
    let db = TestDb::new().await;
    let topic = Arc::new(TestTopic::new(2).await);
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let live = SinkProcess::start(&cfg);
    let traffic = Traffic::start(topic.clone(), 400, doc_event);
    wait_until(T, "the live sink to write", || async {
        db.stored_sum(&cfg.group, &topic.name).await > 0
    })
    .await;
    let mut rebuild = Proc::start(
        &cfg.path,
        &["rebuild", "--route", "events", "--into", "events_next"],
    );
    let rg = format!("{}.rebuild.events_next", cfg.group);
    wait_until(T, "rebuild progress", || async {
        db.stored_sum(&rg, &topic.name).await > 200
    })
    .await;
    traffic.stop();
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let before = db.checksum("events").await;

    let (code, out, err) = cli(
        &cfg.path,
        &["abort", "--route", "events", "--shadow", "events_next"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rebuild.exited(T).await, 0, "{}", rebuild.logs());
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'events_next'")
            .await,
        0
    );
    assert!(db.stored_offsets(&rg, &topic.name).await.is_empty());
    assert_eq!(db.checksum("events").await, before);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM sink_route_mappings WHERE consumer_group NOT LIKE '%.rebuild.%'"
        )
        .await,
        0
    );
    // The live sink keeps going.
    for seq in 0..200 {
        doc_event(&topic, seq);
    }
    topic.flush();
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(verify(&cfg.path, &[]).0, 0);
    assert!(!live.logs().contains("reading the configuration again"));
    // Promoting an aborted rebuild is refused.
    let (code, _, err) = cli(
        &cfg.path,
        &["promote", "--route", "events", "--shadow", "events_next"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("aborted"), "{err}");
}

// ------------------------------------------------- the in-commit mapping check

fn msgs(from: i64, n: i64) -> Vec<SourceMessage> {
    (from..from + n)
        .map(|o| SourceMessage {
            tp: TopicPartition::new("orders", 0),
            offset: Offset(o),
            key: None,
            payload: Some(format!(r#"{{"id":"k{}","o":{o}}}"#, o % 3).into_bytes()),
            timestamp: None,
            headers: Vec::new(),
            source_commit: None,
        })
        .collect()
}

/// The race the offset fence alone does not catch: the live sink prepared a
/// batch with the old mapping at exactly the position the promote hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_prepared_with_the_old_mapping_is_refused_after_promote() {
    let db = TestDb::new().await;
    let live = db
        .writer_for("topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"")
        .await;
    let table = |name: &str| TableName {
        schema: Some("public".into()),
        name: name.into(),
    };
    let (old, new) = (Fingerprint("old".into()), Fingerprint("new".into()));
    let spec = RebuildSpec {
        live_group: "g".into(),
        rebuild_group: "g.rebuild.events_v2".into(),
        live: table("events"),
        shadow: table("events_v2"),
        fingerprint: new.clone(),
    };
    let mut shadow_routes = live.routes().all().to_vec();
    shadow_routes[0].table = table("events_v2");
    let live = live.with_guard(MappingGuard::new(vec![(table("events").quoted(), old)]));
    let first = prepare(live.routes().all(), msgs(0, 6));
    assert!(matches!(
        commit(&live, &first, &orders_position(None, 5)).await,
        CommitOutcome::Committed(_)
    ));

    assert_eq!(
        shadow::register(&db.pool, &spec).await.unwrap(),
        shadow::Registered::Started { previous: None }
    );
    let rebuild = BatchWriter::new(
        db.pool.clone(),
        &spec.rebuild_group,
        shadow_routes,
        OnError::DeadLetter,
    )
    .with_guard(MappingGuard::new(vec![(table("events_v2").quoted(), new)]));
    assert!(matches!(
        commit(&rebuild, &first, &orders_position(None, 5)).await,
        CommitOutcome::Committed(_)
    ));

    let req = PromoteRequest {
        rebuild_group: spec.rebuild_group.clone(),
        partitions: vec![(TopicPartition::new("orders", 0), Offset(0))],
        retire_as: None,
        max_lag: Some(0),
        dry_run: false,
    };
    let report = promote::promote(&db.pool, &req).await.unwrap();
    assert_eq!(report.positions[0].next, 6);

    // Same position as the live sink planned: the fence would let it pass.
    let held = prepare(live.routes().all(), msgs(6, 3));
    match live.commit(&held, &orders_position(Some(6), 8)).await {
        Err(StoreError::MappingReplaced(t)) => assert_eq!(t, [table("events").quoted()]),
        other => panic!("a batch of the old mapping was not refused: {other:?}"),
    }
    match rebuild.commit(&held, &orders_position(Some(6), 8)).await {
        Err(StoreError::MappingReplaced(_)) | Ok(CommitOutcome::Fenced(_)) => {}
        other => panic!("the promoted rebuild group could still commit: {other:?}"),
    }
    assert_eq!(db.stored_offsets("g", "orders").await[&0], 6);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE payload->>'o' = '6'")
            .await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM events_retired").await, 3);
}

/// The same race with the promote still open while the batch commits: the
/// fence waits for the promote's row locks, and the mapping check after it
/// must see what the promote committed meanwhile — a check that read the
/// fence's snapshot would let the batch into the promoted table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waiting_on_a_promote_sees_the_mapping_it_committed() {
    let db = TestDb::new().await;
    let live = db
        .writer_for("topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"")
        .await;
    let events = TableName {
        schema: Some("public".into()),
        name: "events".into(),
    }
    .quoted();
    let live = live.with_guard(MappingGuard::new(vec![(
        events.clone(),
        Fingerprint("old".into()),
    )]));
    sqlx::query("INSERT INTO sink_route_mappings (consumer_group, table_name, fingerprint) VALUES ('g', $1, 'old')")
        .bind(&events)
        .execute(&db.pool)
        .await
        .unwrap();
    let first = prepare(live.routes().all(), msgs(0, 6));
    assert!(matches!(
        commit(&live, &first, &orders_position(None, 5)).await,
        CommitOutcome::Committed(_)
    ));

    // What `promote` does first: lock the group's positions, then change
    // the mapping (positions left where the live sink expects them).
    let mut promote = db.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM sink_offsets WHERE consumer_group = 'g' FOR UPDATE")
        .execute(&mut *promote)
        .await
        .unwrap();
    sqlx::query("UPDATE sink_route_mappings SET fingerprint = 'new' WHERE consumer_group = 'g'")
        .execute(&mut *promote)
        .await
        .unwrap();
    let held = prepare(live.routes().all(), msgs(6, 3));
    let pending = tokio::spawn(async move {
        let outcome = live.commit(&held, &orders_position(Some(6), 8)).await;
        (live, outcome)
    });
    wait_for_lock_waiter(&db.pool, "%sink_fence%", "the fence waits for the promote").await;
    promote.commit().await.unwrap();
    let (_live, outcome) = pending.await.unwrap();
    match outcome {
        Err(StoreError::MappingReplaced(t)) => assert_eq!(t, [events]),
        other => panic!("a batch of the old mapping was not refused: {other:?}"),
    }
    assert_eq!(db.stored_offsets("g", "orders").await[&0], 6);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE payload->>'o' = '6'")
            .await,
        0
    );
}
