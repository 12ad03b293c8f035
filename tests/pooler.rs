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

    let mut load = Scattered::new(1500, 600);
    load.produce(&topic, 2000);
    sigkill_rounds(&db, &topic, &cfg, &mut load, 2, (1000, 1000), T).await;
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(
        db.rows("events").await,
        load.w.expected,
        "through the pooler, after 2 SIGKILLs, the table is not exact"
    );
    assert_eq!(
        db.stored_offsets(&cfg.group, &topic.name).await,
        topic.end_offsets()
    );

    // Small batches went as one statement: the server session the pooler
    // gave the sink holds its temporary function.
    load.produce(&topic, 50);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let functions = db
        .count(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname LIKE 'pg_temp%' AND p.proname LIKE 'sink_fence_and_upsert_%'",
        )
        .await;
    assert!(functions >= 1, "no one-statement function in any session");
    assert_eq!(db.rows("events").await, load.w.expected);
    // The sink reached the database only through the pooler.
    let log = std::fs::read_to_string(script("pgbouncer.sh", &["log", "session"]))
        .expect("the pooler's log");
    assert!(
        log.contains(&format!("db={}", db.name)),
        "the pooler never saw a login to {}",
        db.name
    );
    drop(sink);
}
