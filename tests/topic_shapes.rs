//! Real topic shapes: transactional producers (committed and aborted
//! transactions between plain writes), partitions added while the sink runs,
//! and stored positions that fell out of the log (retention deleted unread
//! records; the topic was deleted and recreated). Each run is checked against
//! a model computed from what was produced; seeds are printed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn transactional_producer() -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("kpgs_tx"))
        .set("linger.ms", "5")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

fn send_tx(p: &ThreadedProducer<DefaultProducerContext>, topic: &TestTopic, id: &str, body: &str) {
    let partition = partition_of(id, topic.partitions);
    let rec = BaseRecord::to(&topic.name)
        .partition(partition)
        .key(id)
        .payload(body);
    p.send(rec).map_err(|(e, _)| e).unwrap();
}

/// Every partition's stored position is its end offset and `offsets show`
/// reports no lag.
fn assert_no_lag(cfg: &SinkConfig) {
    for row in cfg.offsets_json() {
        assert_eq!(row["lag"], 0, "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_topic_is_exact_and_positions_pass_the_markers() {
    let mut rng = StdRng::seed_from_u64(test_seed("transactional"));
    let db = TestDb::new().await;
    let topic = TestTopic::new(3).await;
    let tx = transactional_producer();
    let mut w = Workload::new();
    let mut aborted = 0;
    for round in 0..30u64 {
        match rng.gen_range(0..3) {
            0 => {
                for i in 0..rng.gen_range(1..20u64) {
                    let id = format!("plain-{}", rng.gen_range(0..40));
                    w.send(&topic, &id, &event(&id, round * 100 + i));
                }
                topic.flush();
            }
            1 => {
                tx.begin_transaction().unwrap();
                for i in 0..rng.gen_range(1..20u64) {
                    let id = format!("tx-{}", rng.gen_range(0..40));
                    let body = event(&id, round * 100 + i);
                    send_tx(&tx, &topic, &id, &body);
                    w.expected.insert(id, serde_json::from_str(&body).unwrap());
                }
                tx.commit_transaction(Duration::from_secs(30)).unwrap();
            }
            _ => {
                tx.begin_transaction().unwrap();
                for i in 0..rng.gen_range(1..20u64) {
                    let id = format!("aborted-{}", rng.gen_range(0..40));
                    send_tx(&tx, &topic, &id, &event(&id, round * 100 + i));
                    aborted += 1;
                }
                tx.abort_transaction(Duration::from_secs(30)).unwrap();
            }
        }
    }
    // End every partition with a transaction marker: the case where a
    // position that stops after the last record never reaches the end.
    tx.begin_transaction().unwrap();
    for p in 0..topic.partitions {
        let id = (0..)
            .map(|i| format!("last-{i}"))
            .find(|id| partition_of(id, topic.partitions) == p)
            .unwrap();
        let body = event(&id, 9999);
        send_tx(&tx, &topic, &id, &body);
        w.expected.insert(id, serde_json::from_str(&body).unwrap());
    }
    tx.commit_transaction(Duration::from_secs(30)).unwrap();
    eprintln!("aborted records: {aborted}");

    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.rows("events").await, w.expected);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE key LIKE 'aborted-%'")
            .await,
        0
    );
    assert_no_lag(&cfg);
    let m = sink.metrics().await.unwrap();
    assert!(
        metric(&m, "kafka_pg_sink_offsets_skipped_total") > 0.0,
        "{m}"
    );
    assert_metrics_identity(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_are_consumed_from_the_start() {
    let mut rng = StdRng::seed_from_u64(test_seed("added partitions"));
    let db = TestDb::new().await;
    let mut topic = TestTopic::new(2).await;
    let mut w = Workload::new();
    let mut produce = |topic: &TestTopic, w: &mut Workload, n: u64| {
        for i in 0..n {
            let id = format!("k{}", rng.gen_range(0..200));
            w.send(topic, &id, &event(&id, i));
        }
        topic.flush();
    };
    produce(&topic, &mut w, 300);
    // Metadata is refreshed every 30 s by default; the test does not wait that long.
    let cfg = SinkConfig::new(
        &db,
        &topic.name,
        "",
        "[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"1000\"\n",
    );
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    topic.add_partitions(4).await;
    produce(&topic, &mut w, 600);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.stored_offsets(&cfg.group, &topic.name).await.len(), 4);
    assert_eq!(db.rows("events").await, w.expected);
    assert_metrics_identity(&sink.metrics().await.unwrap());
}

/// Produces `n` events keyed `{prefix}{i}` into `partition`; returns them.
fn fill(
    topic: &TestTopic,
    partition: i32,
    prefix: &str,
    range: std::ops::Range<u64>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for i in range {
        let id = format!("{prefix}{i}");
        let body = event(&id, i);
        topic.send(partition, Some(&id), Some(body.as_bytes()));
        out.insert(id, serde_json::from_str(&body).unwrap());
    }
    topic.flush();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_deleted_by_retention_stops_its_partition_until_a_replay() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let mut want = fill(&topic, 0, "a", 0..100);
    want.extend(fill(&topic, 1, "b", 0..50));
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let mut sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    sink.kill9();

    // While the sink is down, 100..200 arrive on partition 0 and retention
    // deletes everything before 150: 100..150 were never read.
    let unread = fill(&topic, 0, "a", 100..200);
    assert_eq!(topic.delete_records_before(0, 150).await, 150);
    want.extend(fill(&topic, 1, "b", 50..80));

    let sink = SinkProcess::start(&cfg);
    // Partition 1 flows; partition 0 stops at its stored position, loudly.
    wait_until(T, "partition 1 to catch up", || async {
        db.stored_offsets(&cfg.group, &topic.name).await.get(&1) == Some(&80)
    })
    .await;
    wait_until(T, "partition 0 to be reported stalled", || async {
        sink.metrics().await.is_some_and(|m| {
            m.contains(&format!(
                "kafka_pg_sink_partition_stalled{{partition=\"0\",topic=\"{}\"}} 1",
                topic.name
            ))
        })
    })
    .await;
    assert_eq!(db.stored_offsets(&cfg.group, &topic.name).await[&0], 100);
    assert_eq!(
        db.rows("events").await,
        want,
        "nothing of the gap, nothing after it"
    );
    let logs = sink.logs();
    assert!(
        logs.contains("outside the partition's log") && logs.contains("log_start=150"),
        "{logs}"
    );

    // The operator moves the partition on: it resumes at the log start.
    let (ok, out) = cfg.cli(
        &[
            "replay",
            "--to-earliest",
            "--topic",
            &topic.name,
            "--partition",
            "0",
        ],
        &[],
    );
    assert!(ok, "{out}");
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    for (k, v) in unread
        .into_iter()
        .filter(|(k, _)| k[1..].parse::<u64>().unwrap() >= 150)
    {
        want.insert(k, v);
    }
    assert_eq!(db.rows("events").await, want);
    let m = sink.metrics().await.unwrap();
    assert!(!m.contains("kafka_pg_sink_partition_stalled{"), "{m}");
    assert_eq!(metric(&m, "kafka_pg_sink_offsets_out_of_range_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_earliest_moves_on_and_records_what_was_lost() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(1).await;
    let mut want = fill(&topic, 0, "a", 0..100);
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    cfg.rewrite(
        "on_offset_out_of_range = \"fail\"",
        "on_offset_out_of_range = \"earliest\"",
    );
    let mut sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    sink.kill9();

    // Retention deleted 100..130 unread.
    let unread = fill(&topic, 0, "a", 100..160);
    assert_eq!(topic.delete_records_before(0, 130).await, 130);
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    want.extend(
        unread
            .into_iter()
            .filter(|(k, _)| k[1..].parse::<u64>().unwrap() >= 130),
    );
    assert_eq!(db.rows("events").await, want);
    let m = sink.metrics().await.unwrap();
    assert_eq!(metric(&m, "kafka_pg_sink_offsets_lost_total"), 30.0, "{m}");
    let resets = db
        .count("SELECT count(*) FROM sink_offset_resets WHERE from_offset = 100 AND to_offset = 130 AND lost = 30 AND policy = 'earliest'")
        .await;
    assert_eq!(resets, 1);
    drop(sink);

    // The topic is deleted and recreated with fewer records than the stored
    // position: the sink starts the new log from its beginning.
    topic.recreate().await;
    let fresh = fill(&topic, 0, "new", 0..40);
    let _sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    want.extend(fresh);
    assert_eq!(db.rows("events").await, want);
    assert_eq!(
        db.count("SELECT count(*) FROM sink_offset_resets WHERE from_offset = 160 AND to_offset = 0 AND lost = 0")
            .await,
        1
    );
}

/// Offsets of `topic`'s partition 0 that a plain consumer reads from the
/// beginning, up to the end offset.
fn readable_offsets(topic: &TestTopic) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let end = topic.end_offsets()[&0];
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("kpgs_probe"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic.name, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.last().is_none_or(|o| o + 1 < end) && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.offset());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topic_with_offset_gaps_is_exact() {
    let mut rng = StdRng::seed_from_u64(test_seed("compacted"));
    let db = TestDb::new().await;
    // The log cleaner may run soon and often: small segments, no lag.
    let topic = TestTopic::with_config(
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.001"),
            ("min.compaction.lag.ms", "0"),
            ("max.compaction.lag.ms", "2000"),
            ("delete.retention.ms", "1000"),
        ],
    )
    .await;
    let mut w = Workload::new();
    for round in 0..8u64 {
        for i in 0..40u64 {
            let id = format!("k{}", rng.gen_range(0..15));
            if rng.gen_ratio(1, 8) {
                topic.send(0, Some(&id), None);
                w.expected.remove(&id);
            } else {
                w.send(&topic, &id, &event(&id, round * 100 + i));
            }
        }
        topic.flush();
        // segment.ms rolls on the next append: keep appending for a while.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    wait_until(
        Duration::from_secs(90),
        "the log cleaner to leave offset gaps",
        || async {
            let read = readable_offsets(&topic);
            read.windows(2).any(|p| p[1] != p[0] + 1) && read.first() != Some(&0)
        },
    )
    .await;
    // The last record is never compacted (active segment).
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.rows("events").await, w.expected);
    assert_no_lag(&cfg);
    assert_metrics_identity(&sink.metrics().await.unwrap());
}
