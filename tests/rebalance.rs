//! Several replicas in one consumer group: partitions are shared, a killed
//! replica's partitions move to the survivor, and a frozen replica (SIGSTOP
//! past the session timeout) comes back as a zombie that cannot commit.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

async fn assigned(s: &SinkProcess) -> f64 {
    match s.metrics().await {
        Some(m) => metric(&m, "kafka_pg_sink_assigned_partitions"),
        None => -1.0,
    }
}

fn produce(topic: &TestTopic, w: &mut Workload, from: u64, n: u64) {
    for i in from..from + n {
        let id = format!("k{}", i * 7919 % 2500);
        w.send(topic, &id, &event(&id, i));
    }
    topic.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_hands_its_partitions_to_the_survivor_exactly() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(4).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    let mut a = SinkProcess::start_with(&cfg, free_port(), &[]);
    let b = SinkProcess::start_with(&cfg, free_port(), &[]);
    wait_until(T, "both replicas own partitions", || async {
        assigned(&a).await > 0.0 && assigned(&b).await > 0.0
    })
    .await;
    assert_eq!(assigned(&a).await + assigned(&b).await, 4.0);

    let mut w = Workload::new();
    produce(&topic, &mut w, 0, 4000);
    wait_until(T, "replica A commits something", || async {
        a.metrics()
            .await
            .map(|m| metric(&m, "kafka_pg_sink_batches_total"))
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    a.kill9();
    produce(&topic, &mut w, 4000, 4000);

    wait_until(T, "survivor owns all partitions", || async {
        assigned(&b).await == 4.0
    })
    .await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.rows("events").await, w.expected);

    assert_same_as_clean_run(&db, &topic, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_replica_returns_as_a_harmless_zombie() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(4).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // A holds every prepared batch for 2 s before committing, so when it is
    // frozen it almost surely holds one.
    let a = SinkProcess::start_with(
        &cfg,
        free_port(),
        &[("KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS", "2000")],
    );
    let b = SinkProcess::start_with(&cfg, free_port(), &[]);
    wait_until(T, "both replicas own partitions", || async {
        assigned(&a).await > 0.0 && assigned(&b).await > 0.0
    })
    .await;
    let mut w = Workload::new();
    produce(&topic, &mut w, 0, 3000);
    wait_until(T, "A is holding a batch", || async {
        std::fs::read_to_string(&a.log)
            .unwrap_or_default()
            .contains("holding the batch")
    })
    .await;

    // Freeze A mid-stream, longer than the 10 s session timeout: the group
    // moves its partitions to B while A may still hold a fetched batch.
    a.signal("STOP");
    produce(&topic, &mut w, 3000, 3000);
    wait_until(T, "B takes over every partition", || async {
        assigned(&b).await == 4.0
    })
    .await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    a.signal("CONT");

    produce(&topic, &mut w, 6000, 2000);
    wait_until(T, "A rejoins the group", || async {
        assigned(&a).await > 0.0 && assigned(&b).await > 0.0
    })
    .await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(
        db.rows("events").await,
        w.expected,
        "zombie changed the result"
    );
    let fenced = metric(
        &a.metrics().await.unwrap(),
        "kafka_pg_sink_fenced_batches_total",
    );
    assert!(
        fenced >= 1.0,
        "the zombie's held batch was not fenced\n{}",
        a.logs()
    );

    for s in [&a, &b] {
        let m = s.metrics().await.expect("replica alive");
        assert_metrics_identity(&m);
    }
}
