//! A 3-broker KRaft cluster (`scripts/kafka-cluster.sh`: every node broker
//! and controller, replication factor 3, `min.insync.replicas` 2) under a
//! running sink: while a seeded `acks=all`, idempotent producer writes keyed,
//! versioned events to a 4-partition topic, the leader of one partition is
//! SIGKILLed (and restarted), then the active controller (and restarted).
//!
//! Checked: the table equals a model computed from the records the producer
//! got acknowledged (their partitions and offsets, from the delivery
//! reports); those records are exactly the log (dense offsets, no failed
//! delivery); `sink_offsets` = end offsets; the metrics identity; the sink
//! kept consuming from the new leaders while the killed node was down; and
//! no partition stalled longer than a bound derived from the cluster's and
//! the sink's timeouts (see [`gap_bound`]).
//!
//! Own test binary: it kills and restarts nodes of its own cluster (ports
//! 29092-29094, never the dev broker on 9092). `KPGS_SEED` replays the event
//! sequence and the choice of partition; `KPGS_SKIP_KAFKA_CLUSTER` skips.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

const PARTITIONS: i32 = 4;
/// Events per second written by the producer.
const RATE: u64 = 600;
/// Sink's `batch.max_wait` (the harness's setting, see `SinkConfig`).
const BATCH_MAX_WAIT: Duration = Duration::from_millis(50);

/// The producer's view: every record it got acknowledged, with the
/// partition and offset the broker assigned.
#[derive(Default)]
struct Acks {
    records: Mutex<Vec<(i32, i64, String, String)>>,
    failed: Mutex<Vec<String>>,
    /// Per partition, the offset after the highest acknowledged record.
    next: [AtomicI64; PARTITIONS as usize],
}

#[derive(Clone)]
struct AckContext(Arc<Acks>);

/// A record's key or payload as text (empty when absent).
fn text(b: Option<&[u8]>) -> String {
    String::from_utf8_lossy(b.unwrap_or(&[])).to_string()
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.0.next[m.partition() as usize].fetch_max(m.offset() + 1, Ordering::SeqCst);
                self.0.records.lock().unwrap().push((
                    m.partition(),
                    m.offset(),
                    text(m.key()),
                    text(m.payload()),
                ));
            }
            Err((e, m)) => self.0.failed.lock().unwrap().push(format!(
                "p{} key {:?}: {e}",
                m.partition(),
                m.key()
            )),
        }
    }
}

/// librdkafka reports a message as delivered with offset -1001 (unknown)
/// when it retried it after a possibly-persisted error (a leader SIGKILLed
/// mid-request) and the broker answered that it already had it
/// (DUPLICATE_SEQUENCE_NUMBER; librdkafka PR #4438). Such records are in the
/// log, at offsets no other acknowledgement names. A retry after an epoch bump
/// can also leave a second copy of a record that was acknowledged elsewhere
/// (the first attempt was persisted, the retry was acknowledged). So every
/// offset of the log that no acknowledgement names is read back: it must be
/// an unknown-offset acknowledgement (its offset is filled in) or repeat an
/// acknowledged record exactly (it is added as that duplicate; the model,
/// highest version per key, is the same). Anything else fails, as does an
/// unknown-offset acknowledgement the log does not hold.
fn place_unknown_offsets(
    topic: &TestTopic,
    end: &BTreeMap<i32, i64>,
    records: &mut Vec<(i32, i64, String, String)>,
    seed: u64,
) {
    for (&p, &e) in end {
        let known: std::collections::BTreeSet<i64> = records
            .iter()
            .filter(|r| r.0 == p && r.1 >= 0)
            .map(|r| r.1)
            .collect();
        let gaps: Vec<i64> = (0..e).filter(|o| !known.contains(o)).collect();
        let unknown = records.iter().filter(|r| r.0 == p && r.1 < 0).count();
        assert!(
            unknown <= gaps.len(),
            "partition {p}: {unknown} acknowledgements without an offset, only {} offsets of \
             0..{e} acknowledged by nothing (seed {seed})",
            gaps.len()
        );
        if gaps.is_empty() {
            continue;
        }
        eprintln!("partition {p}: offsets {gaps:?} named by no acknowledgement ({unknown} without an offset)");
        for gap in gaps {
            let (key, payload) = read_back(topic, p, gap);
            let same = |r: &(i32, i64, String, String)| r.0 == p && r.2 == key && r.3 == payload;
            if let Some(r) = records.iter_mut().find(|r| same(r) && r.1 < 0) {
                r.1 = gap;
            } else if records.iter().any(same) {
                eprintln!("partition {p} offset {gap}: a second copy of an acknowledged record");
                records.push((p, gap, key, payload));
            } else {
                panic!("partition {p} offset {gap} holds a record nobody acknowledged: {key} {payload} (seed {seed})");
            }
        }
        assert!(
            !records.iter().any(|r| r.0 == p && r.1 < 0),
            "partition {p}: an acknowledgement without an offset matches no record of the log (seed {seed})"
        );
    }
}

/// The key and payload of the record at `partition`@`offset`.
fn read_back(topic: &TestTopic, partition: i32, offset: i64) -> (String, String) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &topic.brokers)
        .set("group.id", unique("kpgs_readback"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic.name, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) if m.offset() == offset => return (text(m.key()), text(m.payload())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("reading back {partition}@{offset}: {e}"),
            None => panic!("reading back {partition}@{offset}: nothing within 10 s"),
        }
    }
}

/// Writes `RATE` events per second until `stop`, then flushes.
fn spawn_producer(
    topic: &TestTopic,
    seed: u64,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let producer: ThreadedProducer<AckContext> = ClientConfig::new()
        .set("bootstrap.servers", &topic.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(AckContext(acks))
        .unwrap();
    let name = topic.name.clone();
    std::thread::spawn(move || {
        let mut events = VersionedEvents::new(seed, 2000);
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let due = started.elapsed().as_millis() as u64 * RATE / 1000;
            while sent < due {
                let (key, payload) = events.next_event();
                let rec = BaseRecord::to(&name)
                    .partition(partition_of(&key, PARTITIONS))
                    .key(&key)
                    .payload(&payload);
                let mut rec = Some(rec);
                while let Some(r) = rec.take() {
                    if let Err((e, r)) = producer.send(r) {
                        assert_eq!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            "produce: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                        rec = Some(r);
                    }
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        producer.flush(Duration::from_secs(120)).expect("flush");
        sent
    })
}

/// The longest time one partition's stored position stood still while the
/// producer was writing, which partition, and when it ended (seconds since
/// the monitor started).
#[derive(Debug, Default, Clone, Copy)]
struct Gap {
    longest: Duration,
    partition: i32,
    ended_at: f64,
}

/// Samples `sink_offsets` every 100 ms until `producing` turns false. A
/// partition's gap includes the time Kafka had no leader for it, and also the
/// time records the producer had already got acknowledged waited for the new
/// leader (a follower has them, but only a leader serves them).
fn spawn_monitor(
    db: &TestDb,
    group: &str,
    topic: &str,
    producing: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Gap> {
    let pool = db.pool.clone();
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last: BTreeMap<i32, (i64, Instant)> = BTreeMap::new();
        let mut gap = Gap::default();
        while producing.load(Ordering::SeqCst) {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM sink_offsets \
                 WHERE consumer_group = $1 AND topic = $2",
            )
            .bind(&group)
            .bind(&topic)
            .fetch_all(&pool)
            .await
            .unwrap();
            let now = Instant::now();
            for (p, stored) in rows {
                match last.get(&p) {
                    Some((s, since)) if *s == stored => {
                        if now - *since > gap.longest {
                            gap = Gap {
                                longest: now - *since,
                                partition: p,
                                ended_at: (now - started).as_secs_f64(),
                            };
                        }
                    }
                    _ => {
                        last.insert(p, (stored, now));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gap
    })
}

/// The cluster's settings, from node 1's `server.properties`.
fn cluster_setting(key: &str) -> u64 {
    let dir =
        std::env::var("CLUSTER_STATE_DIR").unwrap_or_else(|_| "/tmp/kafka-pg-sink-cluster".into());
    let text = std::fs::read_to_string(format!("{dir}/node1/server.properties")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in server.properties"))
        .parse()
        .unwrap()
}

/// The longest a partition's stored position may stand still while events
/// arrive, derived from the settings. A SIGKILLed leader stops answering at
/// once; its partitions get a new leader when the controller fences it,
/// `broker.session.timeout.ms` after its last heartbeat. When the killed node
/// is the active controller, a new one is elected first: followers give up
/// on it after `controller.quorum.fetch.timeout.ms`, the election takes up to
/// 2 × `controller.quorum.election.timeout.ms` (randomised), and the new
/// controller fences the dead broker after the session timeout. Then the
/// sink's consumer, whose fetch from the dead leader failed, backs off
/// (`fetch.error.backoff.ms`, 500 ms) and refreshes metadata until it names
/// the new leader (backing off up to `retry.backoff.max.ms`, 1 s); the new
/// leader's high watermark — what it may serve — advances at the followers'
/// next fetch (`replica.fetch.wait.max.ms`, 500 ms); the sink commits within
/// `batch.max_wait` plus one commit. Not included: the sink's
/// `session.timeout.ms` (10 s) — fetching does not depend on the group
/// coordinator, so a coordinator moving with the killed node must not cause
/// a rebalance. On top, 3 s for this shared 2-core machine (JVM pauses,
/// scheduling, the monitor's 100 ms sampling).
fn gap_bound() -> Duration {
    let cluster_ms = cluster_setting("broker.session.timeout.ms")
        + cluster_setting("controller.quorum.fetch.timeout.ms")
        + 2 * cluster_setting("controller.quorum.election.timeout.ms");
    let client_ms = 500 + 1000 + 500;
    Duration::from_millis(cluster_ms + client_ms) + BATCH_MAX_WAIT + Duration::from_secs(3)
}

async fn stored(db: &TestDb, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    db.stored_offsets(group, topic).await
}

/// Waits until the sink has stored, for each given partition, at least the
/// acknowledged end seen now: it consumes what was written after a failover.
async fn wait_consumed_acked(db: &TestDb, group: &str, topic: &str, acks: &Acks, ps: &[i32]) {
    let target: BTreeMap<i32, i64> = ps
        .iter()
        .map(|p| (*p, acks.next[*p as usize].load(Ordering::SeqCst)))
        .collect();
    wait_until(
        Duration::from_secs(60),
        &format!("the sink to consume up to the acknowledged {target:?}"),
        || async {
            let s = stored(db, group, topic).await;
            target
                .iter()
                .all(|(p, t)| s.get(p).copied().unwrap_or(0) >= *t)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_controller_sigkill_during_a_run_is_exact_without_long_stalls() {
    if std::env::var("KPGS_SKIP_KAFKA_CLUSTER").is_ok() {
        eprintln!("skipped: KPGS_SKIP_KAFKA_CLUSTER is set");
        return;
    }
    let seed = test_seed("cluster");
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let at = || format!("[{:>5.1}s]", t0.elapsed().as_secs_f64());
    cluster(&["ensure"]).await;
    let brokers = cluster(&["brokers"]).await;
    eprintln!("{} cluster ready: {brokers}", at());

    let db = TestDb::new().await;
    let topic = TestTopic::on(&brokers, PARTITIONS, 3, &[("min.insync.replicas", "2")]).await;
    let route = format!(
        "[[route]]\ntopic = \"{}\"\ntable = \"events\"\nkey = \"/id\"\nversion = \"/v\"\n",
        topic.name
    );
    let cfg = SinkConfig::with_brokers(&db, &brokers, &route, "");
    let sink = SinkProcess::start(&cfg);
    let acks = Arc::new(Acks::default());
    let stop_producer = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(&topic, seed, acks.clone(), stop_producer.clone());
    let (group, name) = (cfg.group.as_str(), topic.name.as_str());
    wait_until(
        Duration::from_secs(60),
        "the sink to store every partition",
        || async { stored(&db, group, name).await.len() == PARTITIONS as usize },
    )
    .await;
    eprintln!("{} sink consuming", at());
    let producing = Arc::new(AtomicBool::new(true));
    let monitor = spawn_monitor(&db, group, name, producing.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. SIGKILL the leader of a (seeded) partition.
    let p = rng.gen_range(0..PARTITIONS);
    let leaders: serde_json::Value =
        serde_json::from_str(&cluster(&["leaders", name]).await).unwrap();
    let leader = leaders["leaders"][p.to_string()]
        .as_i64()
        .unwrap()
        .to_string();
    cluster(&["kill", &leader]).await;
    eprintln!("{} SIGKILLed node {leader}, leader of partition {p}", at());
    let moved: serde_json::Value =
        serde_json::from_str(&cluster(&["wait-leaders", name, &leader]).await).unwrap();
    eprintln!(
        "{} new leaders {} ({} ms)",
        at(),
        moved["leaders"],
        moved["ms"]
    );
    // Records acknowledged by the new leader, consumed while the old one is dead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_consumed_acked(&db, group, name, &acks, &[p]).await;
    assert_eq!(
        cluster(&["status"])
            .await
            .matches("\"process\":false")
            .count(),
        1,
        "the killed node stayed down while the sink consumed"
    );
    eprintln!("{} sink consumed partition {p} from its new leader", at());
    cluster(&["start", &leader]).await;
    cluster(&["wait-isr", name]).await;
    eprintln!("{} node {leader} back, ISR full", at());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGKILL the active controller (also a broker leading partitions).
    let controller = cluster(&["controller"]).await;
    cluster(&["kill", &controller]).await;
    eprintln!(
        "{} SIGKILLed node {controller}, the active controller",
        at()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let elected = loop {
        let c = cluster(&["controller"]).await;
        if c != controller {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no new controller 60 s after SIGKILL of {controller} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved: serde_json::Value =
        serde_json::from_str(&cluster(&["wait-leaders", name, &controller]).await).unwrap();
    eprintln!(
        "{} controller now {elected}; leaders {} ({} ms)",
        at(),
        moved["leaders"],
        moved["ms"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_consumed_acked(&db, group, name, &acks, &[0, 1, 2, 3]).await;
    eprintln!(
        "{} sink consumed every partition without node {controller}",
        at()
    );
    cluster(&["start", &controller]).await;
    cluster(&["wait-isr", name]).await;
    eprintln!("{} node {controller} back, ISR full", at());
    tokio::time::sleep(Duration::from_secs(3)).await;

    stop_producer.store(true, Ordering::SeqCst);
    producing.store(false, Ordering::SeqCst);
    let gap = monitor.await.unwrap();
    let sent = tokio::task::spawn_blocking(move || producer.join().unwrap())
        .await
        .unwrap();
    wait_caught_up(&db, group, &topic, Duration::from_secs(120)).await;
    eprintln!("{} caught up; sent {sent}", at());

    // What the producer got acknowledged is exactly the log…
    let failed = acks.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "deliveries failed (seed {seed}): {failed:?}"
    );
    let mut records = std::mem::take(&mut *acks.records.lock().unwrap());
    assert_eq!(records.len() as u64, sent, "seed {seed}");
    let end = topic.end_offsets();
    place_unknown_offsets(&topic, &end, &mut records, seed);
    records.sort_by_key(|r| (r.0, r.1));
    for (p, e) in &end {
        let offsets: Vec<i64> = records.iter().filter(|r| r.0 == *p).map(|r| r.1).collect();
        assert_eq!(
            offsets,
            (0..*e).collect::<Vec<i64>>(),
            "partition {p}: acknowledged offsets are not the log 0..{e} (seed {seed})"
        );
    }
    // …so the model computed from it is what the table must hold.
    assert_table_is_model(
        &db,
        records.iter().map(|r| (r.2.as_str(), r.3.as_str())),
        seed,
    )
    .await;
    assert_eq!(stored(&db, group, name).await, end, "seed {seed}");
    let m = sink.metrics().await.expect("the sink is alive");
    assert_metrics_identity(&m);
    assert!(metric(&m, "kafka_pg_sink_messages_consumed_total") >= sent as f64);
    assert!(!sink.logs().contains("panicked"), "{}", sink.logs());

    let bound = gap_bound();
    eprintln!(
        "cluster: seed {seed}, {sent} events, {} rows; longest gap between stored-offset advances \
         {:.2}s (partition {}, ended at {:.1}s of monitoring; bound {:.2}s); total {:.1}s",
        db.count("SELECT count(*) FROM events").await,
        gap.longest.as_secs_f64(),
        gap.partition,
        gap.ended_at,
        bound.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        gap.longest <= bound,
        "partition {}'s stored position did not advance for {:?} > {bound:?} (seed {seed})",
        gap.partition,
        gap.longest
    );
}

/// The read-back of offsets no acknowledgement names, on the single broker:
/// a record acknowledged with -1001 is placed at such an offset; a second
/// copy of an acknowledged record is added as a duplicate; a record nobody
/// acknowledged, or an acknowledgement the log does not hold, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_acknowledged_offsets_are_placed_by_reading_the_log_back() {
    let topic = TestTopic::new(1).await;
    for i in 0..3 {
        topic.send(0, Some(&format!("k{i}")), Some(format!("v{i}").as_bytes()));
    }
    topic.flush();
    let end = topic.end_offsets();
    let acked = |middle: &str| {
        vec![
            (0, 0, "k0".to_string(), "v0".to_string()),
            (0, -1001, "k1".to_string(), middle.to_string()),
            (0, 2, "k2".to_string(), "v2".to_string()),
        ]
    };
    let mut records = acked("v1");
    place_unknown_offsets(&topic, &end, &mut records, 0);
    assert_eq!(records[1].1, 1);
    let mut wrong = acked("not in the log");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        place_unknown_offsets(&topic, &end, &mut wrong, 0)
    }));
    assert!(caught.is_err(), "a record not in the log was placed");

    // Offset 1 repeats offset 0 (a persisted first attempt, then the
    // acknowledged retry); offset 3 is acknowledged by nobody.
    let topic = TestTopic::new(1).await;
    for (k, v) in [("k0", "v0"), ("k0", "v0"), ("k2", "v2"), ("k3", "v3")] {
        topic.send(0, Some(k), Some(v.as_bytes()));
    }
    topic.flush();
    let end = topic.end_offsets();
    let mut records = vec![
        (0, 0, "k0".to_string(), "v0".to_string()),
        (0, 2, "k2".to_string(), "v2".to_string()),
        (0, 3, "k3".to_string(), "v3".to_string()),
    ];
    place_unknown_offsets(&topic, &end, &mut records, 0);
    assert_eq!(records.len(), 4);
    assert_eq!(records[3], (0, 1, "k0".to_string(), "v0".to_string()));
    let mut missing = records[..2].to_vec();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        place_unknown_offsets(&topic, &end, &mut missing, 0)
    }));
    assert!(caught.is_err(), "a record nobody acknowledged was accepted");
}
