//! A thousand partitions: 100 topics of 10 partitions, one route and one
//! table each, in one sink process. Every partition gets events (some
//! re-sent), the sink is SIGKILLed once mid-way and started again, and
//! every table ends equal to its topic's model with every position at the
//! end of its partition. Prints how long startup and catching up took and
//! the peak RSS (for docs/operations.md, not asserted: timing is not a
//! unit test's business on a shared machine).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const TOPICS: usize = 100;
const PARTITIONS: i32 = 10;
const PER_TOPIC: u32 = 120;
const T: Duration = Duration::from_secs(300);

/// Peak resident memory of a process, from /proc (MB).
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partitions_over_a_hundred_routes() {
    let db = TestDb::new().await;
    let mut topics = Vec::with_capacity(TOPICS);
    for _ in 0..TOPICS {
        topics.push(TestTopic::new(PARTITIONS).await);
    }
    let routes: String = topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "[[route]]\ntopic = \"{}\"\ntable = \"s_{i}\"\nkey = \"/id\"\nversion = \"/v\"\n",
                t.name
            )
        })
        .collect();
    let cfg = SinkConfig::with_routes(&db, &routes, "");
    let mut logs: Vec<Vec<(String, String)>> = vec![Vec::new(); TOPICS];
    let produce = |logs: &mut Vec<Vec<(String, String)>>, n: u32| {
        for (t, log) in topics.iter().zip(logs.iter_mut()) {
            send_versioned(t, log, n, 50);
        }
    };
    produce(&mut logs, PER_TOPIC / 2);

    let started = Instant::now();
    let mut sink = SinkProcess::start(&cfg);
    wait_until(T, "every partition assigned", || async {
        let m = sink.metrics().await.unwrap_or_default();
        metric(&m, "kafka_pg_sink_assigned_partitions") == f64::from(PARTITIONS) * TOPICS as f64
    })
    .await;
    let assigned = started.elapsed();
    // Mid-way: a kill while the second half arrives, then a restart.
    produce(&mut logs, PER_TOPIC / 4);
    let rss_before_kill = peak_rss_mb(sink.child.id());
    sink.kill9();
    produce(&mut logs, PER_TOPIC / 4);
    let restarted = Instant::now();
    let sink = SinkProcess::start(&cfg);
    for t in &topics {
        wait_caught_up(&db, &cfg.group, t, T).await;
    }
    let caught_up = restarted.elapsed();
    let rss = peak_rss_mb(sink.child.id()).max(rss_before_kill);

    for (i, log) in logs.iter().enumerate() {
        let expected: BTreeMap<String, serde_json::Value> =
            versioned_model(log.iter().map(|(k, p)| (k.as_str(), p.as_str())));
        assert_eq!(db.rows(&format!("s_{i}")).await, expected, "table s_{i}");
    }
    let positions = db
        .count(&format!(
            "SELECT count(*) FROM sink_offsets WHERE consumer_group = '{}'",
            cfg.group
        ))
        .await;
    assert_eq!(positions, i64::from(PARTITIONS) * TOPICS as i64);
    assert_eq!(db.count("SELECT count(*) FROM sink_dead_letters").await, 0);
    eprintln!(
        "scale: {} partitions, {} routes: all assigned {:.1} s after start; \
         after a SIGKILL and a restart, caught up in {:.1} s; peak RSS {rss:.0} MB",
        i64::from(PARTITIONS) * TOPICS as i64,
        TOPICS,
        assigned.as_secs_f64(),
        caught_up.as_secs_f64()
    );
}
