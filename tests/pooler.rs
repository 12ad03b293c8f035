//! The sink behind PgBouncer in session pooling (docs/deploy.md, "Through a
//! connection pooler"): SIGKILLed mid-stream, it must still leave the
//! table exact, its small batches taking the one-statement path (a
//! temporary function per server session) through the pooler.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_session_pooling_sigkills_lose_and_double_nothing() {
    script("pgbouncer.sh", &["ensure", "session"]);
    let db = TestDb::new().await;
    let topic = TestTopic::new(4).await;
    let pooled = script("pgbouncer.sh", &["url", "session", &db.name]);
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    cfg.rewrite(&db.url, &pooled);

    let mut w = Workload::new();
    let mut seq = 0u64;
    let mut produce = |w: &mut Workload, n: u64| {
        for _ in 0..n {
            seq += 1;
            let id = format!("k{}", seq * 7919 % 1500);
            w.send(&topic, &id, &event(&id, seq % 600));
        }
        topic.flush();
    };
    produce(&mut w, 2000);
    for kill in 0..2 {
        let before = stored_sum(&db, &cfg.group, &topic.name).await;
        produce(&mut w, 1000);
        let mut sink = SinkProcess::start(&cfg);
        wait_until(T, "progress before the kill", || async {
            stored_sum(&db, &cfg.group, &topic.name).await > before
        })
        .await;
        produce(&mut w, 1000);
        sink.kill9();
        assert!(
            !sink.logs().contains("panicked"),
            "kill {kill}: {}",
            sink.logs()
        );
    }
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(
        db.rows("events").await,
        w.expected,
        "through the pooler, after 2 SIGKILLs, the table is not exact"
    );
    assert_eq!(
        db.stored_offsets(&cfg.group, &topic.name).await,
        topic.end_offsets()
    );

    // Small batches went as one statement: the server session the pooler
    // gave the sink holds its temporary function.
    produce(&mut w, 50);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let functions = db
        .count(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname LIKE 'pg_temp%' AND p.proname LIKE 'sink_fence_and_upsert_%'",
        )
        .await;
    assert!(functions >= 1, "no one-statement function in any session");
    assert_eq!(db.rows("events").await, w.expected);
    // The sink reached the database only through the pooler.
    let log = std::fs::read_to_string(format!(
        "{}/session/pgbouncer.log",
        std::env::var("PGBOUNCER_DIR").unwrap_or_else(|_| "/tmp/kafka-pg-sink-pgbouncer".into())
    ))
    .expect("the pooler's log");
    assert!(
        log.contains(&format!("db={}", db.name)),
        "the pooler never saw a login to {}",
        db.name
    );
    drop(sink);
}

async fn stored_sum(db: &TestDb, group: &str, topic: &str) -> i64 {
    db.stored_offsets(group, topic).await.values().sum()
}
