//! Exactly once into Citus distributed tables (scripts/citus.sh: a
//! coordinator and two workers built from the vendored Citus 13.2.2 source).
//! `setup` distributes the route's table on its key and keeps the sink's
//! own tables on the coordinator, so every batch commits its rows on the
//! workers and its positions on the coordinator in one two-phase commit.
//!
//! While a producer writes versioned events with re-sends, two replicas
//! share the partitions; one is SIGKILLed twice, worker 2 crashes
//! (`pg_ctl stop -m immediate`) mid-stream and comes back, the coordinator
//! restarts once. The table must equal a model computed from the produced
//! log, the stored positions the end offsets, no prepared transaction may
//! be left on any node, and `verify` must be clean. Own test binary: it
//! stops and restarts nodes of the Citus cluster.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T: Duration = Duration::from_secs(180);

/// The Citus cluster's prepared transactions left, per node (`status`).
fn prepared_transactions() -> i64 {
    let status: serde_json::Value = serde_json::from_str(&citus_sh(&["status"])).unwrap();
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["prepared_xacts"].as_i64().unwrap_or(0))
        .sum()
}

/// Produces `n` versioned events (a tenth of them re-sent, some older
/// versions) and records them in `log`.
fn produce(topic: &TestTopic, rng: &mut StdRng, log: &mut Vec<(String, String)>, n: usize) {
    for _ in 0..n {
        let id = format!("k{}", rng.gen_range(0..400));
        let v = rng.gen_range(1..1_000);
        let payload = format!(r#"{{"id":"{id}","v":{v},"body":"b{}"}}"#, rng.gen::<u16>());
        let copies = if rng.gen_bool(0.1) { 2 } else { 1 };
        for _ in 0..copies {
            topic.send(
                partition_of(&id, topic.partitions),
                Some(&id),
                Some(payload.as_bytes()),
            );
            log.push((id.clone(), payload.clone()));
        }
    }
    topic.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_into_distributed_tables_through_node_and_sink_crashes() {
    let seed = test_seed("citus");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::citus().await;
    let topic = TestTopic::new(4).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let (ok, out) = cfg.cli(&["setup"], &[]);
    assert!(ok, "{out}");
    let distributed: i64 = db
        .count("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'events'::regclass")
        .await;
    assert_eq!(distributed, 1, "setup distributes the route's table");

    let mut log = Vec::new();
    let mut a = SinkProcess::start(&cfg);
    let mut b = SinkProcess::start(&cfg);
    for round in 0..6 {
        produce(&topic, &mut rng, &mut log, 600);
        match round {
            1 | 4 => {
                a.kill9();
                a = SinkProcess::start(&cfg);
            }
            2 => {
                // A worker crashes mid-stream: batches touching its shards
                // fail and are retried until it is back.
                citus_sh(&["stop-worker", "2"]);
                produce(&topic, &mut rng, &mut log, 600);
                let down = Instant::now();
                wait_until(T, "a retried commit while worker 2 is down", || async {
                    let m = a.metrics().await.unwrap_or_default();
                    let n = b.metrics().await.unwrap_or_default();
                    metric(&m, "kafka_pg_sink_db_retries_total")
                        + metric(&n, "kafka_pg_sink_db_retries_total")
                        > 0.0
                })
                .await;
                citus_sh(&["start-worker", "2"]);
                eprintln!("worker 2 was down {:?}", down.elapsed());
            }
            3 => {
                citus_sh(&["restart-coordinator", "immediate"]);
            }
            _ => {}
        }
    }
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_table_is_model(&db, log.iter().map(|(k, p)| (k.as_str(), p.as_str())), seed).await;
    for s in [&a, &b] {
        if let Some(m) = s.metrics().await {
            assert_metrics_identity(&m);
        }
    }
    // Prepared transactions a crash left are resolved by Citus's recovery
    // (at the coordinator's start, then every citus.recover_2pc_interval).
    sqlx::query("SELECT recover_prepared_transactions()")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(T, "no prepared transaction left on any node", || async {
        prepared_transactions() == 0
    })
    .await;
    a.kill9();
    b.kill9();
    let (ok, out) = cfg.cli(&["verify"], &[]);
    assert!(ok, "verify: {out}");
}
