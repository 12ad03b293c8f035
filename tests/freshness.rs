//! How old the data is: a batch closes as soon as nothing more is queued
//! and no commit is in flight (not at `max_wait`), and the age of events is
//! exported and stored with the positions.
//!
//! Timing targets live in the bench (docs/performance.md); the margins
//! here are ten times what the behaviour needs, so only a batch that waits
//! out `max_wait` fails them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_event_is_written_without_waiting_out_max_wait() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // max_wait far beyond the deadline below: only closing the batch when
    // the consumer is idle makes the row visible in time.
    cfg.rewrite("max_wait = \"50ms\"", "max_wait = \"120s\"");
    let sink = SinkProcess::start(&cfg);
    sink.wait_ready(Duration::from_secs(60)).await;
    for i in 0..3 {
        let sent = Instant::now();
        topic.send(
            0,
            Some(&format!("k{i}")),
            Some(event(&format!("k{i}"), 1).as_bytes()),
        );
        topic.flush();
        wait_until(Duration::from_secs(12), "the event's row", || async {
            db.count(&format!("SELECT count(*) FROM events WHERE key = 'k{i}'"))
                .await
                == 1
        })
        .await;
        eprintln!("event {i} visible after {:?}", sent.elapsed());
    }
    let m = sink.metrics().await.unwrap();
    assert!(
        metric(&m, "kafka_pg_sink_event_age_seconds_count") >= 3.0,
        "{m}"
    );
    assert!(
        metric(&m, "kafka_pg_sink_last_event_timestamp_seconds") > 1.7e9,
        "{m}"
    );
    let offsets = cfg.offsets_json();
    let p0 = offsets
        .iter()
        .find(|r| r["partition"] == 0)
        .expect("partition 0");
    let age = p0["last_event_age_seconds"].as_f64().expect("an age");
    assert!((0.0..600.0).contains(&age), "{p0}");
    assert_eq!(p0["behind_seconds"], 0.0, "caught up: {p0}");
}

/// The lag gauges come from a thread of their own: while the table is
/// locked and the consumer thread waits for room in a full pipeline, the
/// backlog and its stall are still reported — the moment an operator needs
/// them. (On the consumer thread, the gauges froze at their last value.)
#[tokio::test(flavor = "multi_thread")]
async fn lag_and_stall_are_reported_while_the_pipeline_is_blocked() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(1).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    sink.wait_ready(Duration::from_secs(60)).await;
    topic.send(0, Some("first"), Some(event("first", 1).as_bytes()));
    topic.flush();
    wait_until(Duration::from_secs(30), "the first row", || async {
        db.count("SELECT count(*) FROM events").await == 1
    })
    .await;

    let mut colleague = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut colleague).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut colleague)
        .await
        .unwrap();
    // More than the pipeline holds (its channel, a batch, a prepared one,
    // librdkafka's 1 MB queue): the consumer thread ends up waiting.
    const BACKLOG: usize = 40_000;
    // The gauge counts from the next offset to be batched: the batch that
    // waits on the lock and the one prepared behind it (max_messages = 500
    // in the tests' configuration) are not lag.
    const LEAST_LAG: usize = BACKLOG - 2 * 500;
    for i in 0..BACKLOG {
        let id = format!("k{i}");
        topic.send(0, Some(&id), Some(event(&id, 1).as_bytes()));
    }
    topic.flush();
    let lag = || async {
        let m = sink.metrics().await.unwrap_or_default();
        (
            metric(&m, "kafka_pg_sink_consumer_lag"),
            metric(&m, "kafka_pg_sink_partition_stall_seconds"),
        )
    };
    // Updated every 5 s; the stall counts from the last commit.
    wait_until(
        Duration::from_secs(30),
        "the backlog and its stall",
        || async {
            let (backlog, stall) = lag().await;
            (LEAST_LAG..=BACKLOG).contains(&(backlog as usize)) && stall >= 5.0
        },
    )
    .await;

    sqlx::query("COMMIT").execute(&mut colleague).await.unwrap();
    wait_until(Duration::from_secs(60), "the backlog written", || async {
        db.count("SELECT count(*) FROM events").await == BACKLOG as i64 + 1
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "lag and stall back to 0",
        || async { lag().await == (0.0, 0.0) },
    )
    .await;
}
