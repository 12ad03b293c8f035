//! Offsets administration: `offsets show --json` and the replay targets.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

fn cli(cfg: &SinkConfig, args: &[&str]) -> (bool, String) {
    cfg.cli(args, &[])
}

/// The group's positions as Kafka has them (partitions without one left
/// out).
fn kafka_committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return BTreeMap::new();
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_show_and_replay_targets() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let send = |p: i32, i: u64| {
        let id = format!("p{p}-{i}");
        topic.send(p, Some(&id), Some(event(&id, i).as_bytes()));
    };
    for i in 0..60 {
        send(0, i);
    }
    topic.flush();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let split = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 60..100 {
        send(0, i);
    }
    for i in 0..50 {
        send(1, i);
    }
    topic.flush();

    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let mut sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    // The copy to Kafka for lag tools (at most once a second) catches up
    // too, though nothing more arrives to trigger it.
    let stored = db.stored_offsets(&cfg.group, &topic.name).await;
    wait_until(T, "the positions copied to Kafka", || async {
        kafka_committed(&cfg.group, &topic.name, 2) == stored
    })
    .await;
    let checksum = db.checksum("events").await;
    sink.signal("TERM");
    let _ = sink.child.wait();

    let (ok, out) = cli(&cfg, &["offsets", "show", "--json"]);
    assert!(ok, "{out}");
    let json_start = out.find('[').unwrap();
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&out[json_start..out.rfind(']').unwrap() + 1]).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["stored_next_offset"], 100);
    assert_eq!(rows[0]["high_watermark"], 100);
    assert_eq!(rows[0]["lag"], 0);
    assert_eq!(rows[1]["stored_next_offset"], 50);
    let (ok, table) = cli(&cfg, &["offsets", "show"]);
    assert!(ok && table.contains("STORED_NEXT"), "{table}");

    let (ok, out) = cli(
        &cfg,
        &[
            "replay",
            "--to-offset",
            "30",
            "--topic",
            &topic.name,
            "--partition",
            "0",
        ],
    );
    assert!(ok, "{out}");
    let stored = db.stored_offsets(&cfg.group, &topic.name).await;
    assert_eq!((stored[&0], stored[&1]), (30, 50));

    let (ok, out) = cli(
        &cfg,
        &[
            "replay",
            "--to-timestamp",
            &split.to_rfc3339(),
            "--topic",
            &topic.name,
        ],
    );
    assert!(ok, "{out}");
    let stored = db.stored_offsets(&cfg.group, &topic.name).await;
    assert_eq!(
        (stored[&0], stored[&1]),
        (60, 0),
        "first offsets at or after {split}"
    );

    let (ok, out) = cli(
        &cfg,
        &[
            "replay",
            "--to-offset",
            "1000",
            "--topic",
            &topic.name,
            "--partition",
            "0",
        ],
    );
    assert!(!ok && out.contains("outside"), "{out}");
    let (ok, out) = cli(&cfg, &["replay", "--to-earliest", "--topic", "not-routed"]);
    assert!(!ok && out.contains("not consumed"), "{out}");

    // Reprocessing from the rewound positions converges to the same table.
    let _sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.checksum("events").await, checksum);
}

/// A Postgres that refuses connections is named, with its address and the
/// cause, within seconds — not reported as a pool timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_postgres_connections_are_named_at_once() {
    let db = TestDb::new().await;
    let cfg = SinkConfig::new(&db, "unused-topic", "", "");
    let closed = free_port();
    cfg.rewrite(
        &format!(r#"url = "{}""#, db.url),
        &format!(r#"url = "postgres://postgres@127.0.0.1:{closed}/db""#),
    );
    let started = std::time::Instant::now();
    let (ok, out) = cli(&cfg, &["setup"]);
    let took = started.elapsed();
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{closed}")) && out.to_lowercase().contains("refused"),
        "{out}"
    );
    assert!(!out.contains("pool timed out"), "{out}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {out}");
}
