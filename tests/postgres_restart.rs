//! Postgres restarts while the sink runs: the sink retries, re-reads its
//! offsets and ends exact. Its own test binary, because restarting the
//! shared server would disturb tests running in parallel.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_survives_a_postgres_restart() {
    if std::env::var("KPGS_SKIP_PG_RESTART").is_ok() {
        eprintln!(
            "skipped: KPGS_SKIP_PG_RESTART is set (Postgres not managed by scripts/postgres.sh)"
        );
        return;
    }
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let sink = SinkProcess::start(&cfg);
    let mut w = Workload::new();
    for i in 0..2000u64 {
        let id = format!("k{}", i % 900);
        w.send(&topic, &id, &event(&id, i));
    }
    topic.flush();
    wait_until(Duration::from_secs(60), "progress", || async {
        !db.stored_offsets(&cfg.group, &topic.name).await.is_empty()
    })
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg("restart")
        .status()
        .unwrap();
    assert!(st.success(), "restart failed");
    for i in 2000..4000u64 {
        let id = format!("k{}", i % 900);
        w.send(&topic, &id, &event(&id, i));
    }
    topic.flush();

    wait_caught_up(&db, &cfg.group, &topic, Duration::from_secs(120)).await;
    assert_eq!(db.rows("events").await, w.expected);
    let m = sink.metrics().await.expect("sink alive after the restart");
    assert_metrics_identity(&m);
    assert!(metric(&m, "kafka_pg_sink_db_retries_total") >= 0.0);
}
