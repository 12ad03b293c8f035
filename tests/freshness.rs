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
