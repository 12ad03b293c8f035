//! End-to-end exactly-once tests against the real broker and real Postgres.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_collapse_to_one_row_per_key() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(4).await;
    let mut w = Workload::new();
    for round in 0..2 {
        for k in 0..300 {
            let id = format!("k{k}");
            w.send(&topic, &id, &event(&id, k));
            if round == 1 && k % 10 == 0 {
                for _ in 0..3 {
                    w.send(&topic, &id, &event(&id, k));
                }
            }
        }
    }
    topic.flush();
    assert_eq!(w.produced, 690);

    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;

    assert_eq!(
        db.rows("events").await,
        w.expected,
        "table differs from the expected final state"
    );
    let m = sink.metrics().await.expect("metrics endpoint");
    assert_eq!(metric(&m, "kafka_pg_sink_messages_consumed_total"), 690.0);
    assert_eq!(metric(&m, "kafka_pg_sink_duplicates_total"), 390.0, "{m}");
    assert_eq!(metric(&m, "kafka_pg_sink_rows_inserted_total"), 300.0);
    assert_metrics_identity(&m);
    assert_eq!(db.count("SELECT count(*) FROM sink_dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_input_twice_gives_identical_tables() {
    let topic = TestTopic::new(3).await;
    let mut w = Workload::new();
    for i in 0..1500u64 {
        let id = format!("k{}", i % 400);
        // Re-sends and changed versions of the same key, interleaved.
        w.send(&topic, &id, &event(&id, i % 700));
    }
    topic.flush();
    let mut sums = Vec::new();
    for _ in 0..2 {
        let db = TestDb::new().await;
        let cfg = SinkConfig::new(&db, &topic.name, "", "");
        let _sink = SinkProcess::start(&cfg);
        wait_caught_up(&db, &cfg.group, &topic, T).await;
        assert_eq!(db.rows("events").await, w.expected);
        sums.push(db.checksum("events").await);
    }
    assert!(!sums[0].is_empty());
    assert_eq!(sums[0], sums[1], "two runs over the same input differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_five_times_loses_and_doubles_nothing() {
    sigkill_five_times("", "commit_lanes=1").await;
}

/// The same with three commit lanes: the 4 partitions' batches commit on
/// three connections concurrently, each partition in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_with_three_commit_lanes_loses_and_doubles_nothing() {
    sigkill_five_times(
        "commit_lanes = 3\n[postgres]\nmax_connections = 5",
        "commit_lanes=3",
    )
    .await;
}

/// SIGKILLs the sink five times while events arrive; `lanes_log` is the
/// startup log naming the lanes the settings must give.
async fn sigkill_five_times(sink_settings: &str, lanes_log: &str) {
    let db = TestDb::new().await;
    let topic = TestTopic::new(4).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", sink_settings);
    let mut load = Scattered::new(3000, 1200);
    load.produce(&topic, 4000);
    sigkill_rounds(&db, &topic, &cfg, &mut load, 5, (2000, 3000), T).await;
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    // The killed sinks may have committed everything already: then the
    // offsets are at the end before this one has even started.
    wait_until(T, "the startup log naming the commit lanes", || async {
        sink.logs().contains(lanes_log)
    })
    .await;
    assert_eq!(
        db.rows("events").await,
        load.w.expected,
        "after 5 SIGKILLs the table is not exact"
    );
    assert_eq!(
        db.stored_offsets(&cfg.group, &topic.name).await,
        topic.end_offsets()
    );
    drop(sink);

    // Byte-identical to an uninterrupted run (same rows, hashes, source offsets).
    assert_same_as_clean_run(&db, &topic, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_events_update_and_old_versions_follow_the_route_policy() {
    let topic = TestTopic::new(1).await;
    let v1 = r#"{"id":"order-1","v":1,"status":"created"}"#;
    let v2 = r#"{"id":"order-1","v":2,"status":"paid"}"#;
    for p in [v1, v2, v1] {
        topic.send(0, Some("order-1"), Some(p.as_bytes()));
    }
    topic.flush();

    // With a version guard the late re-delivery of v1 is stale: v2 stays.
    let db = TestDb::new().await;
    let cfg = SinkConfig::new(&db, &topic.name, r#"version = "/v""#, "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let rows = db.rows("events").await;
    assert_eq!(rows["order-1"]["status"], "paid");
    let m = sink.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "kafka_pg_sink_messages_skipped_total"),
        2.0,
        "{m}"
    ); // v1 superseded in batch or updated, plus stale
    assert_metrics_identity(&m);

    // Without it, Kafka order wins: the last message (v1 again) is the state.
    let db2 = TestDb::new().await;
    let cfg2 = SinkConfig::new(&db2, &topic.name, "", "");
    let _sink2 = SinkProcess::start(&cfg2);
    wait_caught_up(&db2, &cfg2.group, &topic, T).await;
    assert_eq!(db2.rows("events").await["order-1"]["status"], "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_become_dead_letters_and_the_rest_flows() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(1).await;
    let bad_at = [3i64, 17, 31, 50, 64, 88, 99];
    let mut expected_rows = 0;
    for i in 0..100i64 {
        let id = format!("k{i}");
        let payload = match bad_at.iter().position(|b| *b == i) {
            Some(0) => "not json at all".to_string(),
            Some(1) => r#"{"no_id": true}"#.to_string(),
            Some(2) => r#"{"id": null}"#.to_string(),
            Some(3) => "{\"id\": \"k50\", \"trunc".to_string(),
            Some(4) => r#"{"id":"k64","s":"\u0000"}"#.to_string(),
            Some(5) => "[1,2".to_string(),
            Some(_) => String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).to_string(),
            None => {
                expected_rows += 1;
                event(&id, i as u64)
            }
        };
        topic.send(0, Some(&id), Some(payload.as_bytes()));
    }
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(expected_rows, 93);
    assert_eq!(db.count("SELECT count(*) FROM events").await, 93);
    let offsets: Vec<i64> =
        sqlx::query_scalar("SELECT kafka_offset FROM sink_dead_letters ORDER BY kafka_offset")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(offsets, bad_at.to_vec());
    let errors: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, error FROM sink_dead_letters ORDER BY kafka_offset")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(errors[0].0, "invalid_json");
    assert_eq!(errors[1].0, "missing_key");
    assert!(errors[1].1.contains("/id"), "{:?}", errors[1]);
    assert!(errors[4].1.contains("\\u0000"), "{:?}", errors[4]);
    let m = sink.metrics().await.unwrap();
    assert_eq!(metric(&m, "kafka_pg_sink_dead_letters_total"), 7.0);
    assert_metrics_identity(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_earliest_on_a_running_sink_converges_to_the_same_table() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let mut w = Workload::new();
    for i in 0..800u64 {
        let id = format!("k{}", i % 250);
        // One content per key, re-sent: the replay is pure duplicates.
        w.send(&topic, &id, &event(&id, i % 250));
    }
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let before = db.checksum("events").await;
    let m = sink.metrics().await.unwrap();
    let consumed_before = metric(&m, "kafka_pg_sink_messages_consumed_total");
    let dups_before = metric(&m, "kafka_pg_sink_duplicates_total");

    replay_to_earliest(&cfg);

    // The running sink re-reads every message: all of them are duplicates now.
    wait_until(T, "replayed messages consumed", || async {
        match sink.metrics().await {
            Some(m) => {
                metric(&m, "kafka_pg_sink_messages_consumed_total") >= consumed_before + 800.0
            }
            None => false,
        }
    })
    .await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let m = sink.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "kafka_pg_sink_messages_consumed_total"),
        consumed_before + 800.0
    );
    // Every replayed message repeats a stored event: all are duplicates.
    assert_eq!(
        metric(&m, "kafka_pg_sink_duplicates_total"),
        dups_before + 800.0,
        "{m}"
    );
    assert_eq!(metric(&m, "kafka_pg_sink_rows_inserted_total"), 250.0);
    assert_eq!(metric(&m, "kafka_pg_sink_rows_updated_total"), 0.0);
    assert_eq!(
        db.checksum("events").await,
        before,
        "replay changed the table"
    );
    assert_eq!(db.rows("events").await, w.expected);
    assert_metrics_identity(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_quickly_and_restart_completes() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let mut w = Workload::new();
    for i in 0..3000u64 {
        let id = format!("k{}", i % 1000);
        w.send(&topic, &id, &event(&id, i));
    }
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let mut sink = SinkProcess::start(&cfg);
    wait_until(T, "some progress", || async {
        !db.stored_offsets(&cfg.group, &topic.name).await.is_empty()
    })
    .await;
    sink.signal("TERM");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = sink.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit within the 10 s bound"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}\n{}", sink.logs());
    let _again = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.rows("events").await, w.expected);
}

const SINK_BACKENDS_PIDS: &str = "SELECT pid FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid() \
       AND application_name = 'kafka-pg-sink'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_survived() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    // Backends are terminated in steady state; a connection lost during
    // setup (migrations) ends the process, for its supervisor to restart.
    sink.wait_ready(T).await;
    let mut w = Workload::new();
    for round in 0..6u64 {
        for i in 0..1000u64 {
            let id = format!("k{}", (round * 1000 + i) % 1700);
            w.send(&topic, &id, &event(&id, round * 1000 + i));
        }
        topic.flush();
        // The sink may be reconnecting after the previous round's kill:
        // wait for a backend instead of guessing a delay.
        wait_until(T, "a sink connection to terminate", || async {
            db.count(&format!("SELECT count(*) FROM ({SINK_BACKENDS_PIDS}) b"))
                .await
                > 0
        })
        .await;
        let killed: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM ({SINK_BACKENDS_PIDS}) b) t"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(killed > 0, "round {round}: no sink connection terminated");
    }
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.rows("events").await, w.expected);
    let m = sink.metrics().await.expect("sink still serving metrics");
    assert_metrics_identity(&m);
    assert!(sink.child.id() > 0);
}
