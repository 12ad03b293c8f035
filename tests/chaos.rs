//! Fault-injection suite: three sink replicas in one group, a producer writing
//! re-sends, newer and older versions, tombstones and malformed messages,
//! and a seeded schedule of faults: SIGKILL + restart, SIGSTOP/SIGCONT
//! (zombie), scaling 1 → 3 → 1, terminated Postgres backends, one Postgres
//! restart, one broker SIGKILL + restart, one `replay --to-earliest`.
//!
//! At the end the table must equal a model computed from the produced log (not
//! from the sink's code), `sink_offsets` the end offsets, dead letters the
//! malformed set, and the metrics identity must hold on the survivors.
//!
//! CI runs a bounded schedule; `KPGS_CHAOS_ROUNDS=60` soaks longer;
//! `KPGS_CHAOS_SEED=<n>` replays a schedule. Own test binary: it restarts the
//! shared broker and database.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillRestart,
    StopCont,
    ScaleUp,
    ScaleDown,
    TerminateBackends,
    RestartPostgres,
    RestartBroker,
    Replay,
}

/// Independent model of the expected table: per key, messages in produce
/// order (= offset order: one keyed partition, idempotent producer); a
/// tombstone deletes; an upsert applies unless its version is older.
#[derive(Default)]
struct Model {
    rows: BTreeMap<String, (i64, serde_json::Value)>,
    malformed: BTreeSet<String>,
    produced: u64,
}

impl Model {
    fn upsert(&mut self, topic: &TestTopic, id: &str, version: i64, body: &str) {
        let payload = format!(r#"{{"id":"{id}","v":{version},"body":"{body}"}}"#);
        topic.send(
            partition_of(id, topic.partitions),
            Some(id),
            Some(payload.as_bytes()),
        );
        self.produced += 1;
        match self.rows.get(id) {
            Some((v, _)) if version < *v => {}
            _ => {
                self.rows.insert(
                    id.to_string(),
                    (version, serde_json::from_str(&payload).unwrap()),
                );
            }
        }
    }

    fn tombstone(&mut self, topic: &TestTopic, id: &str) {
        topic.send(partition_of(id, topic.partitions), Some(id), None);
        self.produced += 1;
        self.rows.remove(id);
    }

    fn malformed(&mut self, topic: &TestTopic, n: u64) {
        let payload = format!("{{\"id\": \"bad-{n}\", broken");
        topic.send(
            partition_of("bad", topic.partitions),
            Some("bad"),
            Some(payload.as_bytes()),
        );
        self.produced += 1;
        self.malformed.insert(payload);
    }
}

fn produce_round(model: &mut Model, topic: &TestTopic, rng: &mut StdRng, round: u64, n: u64) {
    for i in 0..n {
        let id = format!("k{}", rng.gen_range(0..1500));
        let cur = model.rows.get(&id).map(|(v, _)| *v).unwrap_or(0);
        match rng.gen_range(0..100) {
            0..=59 => model.upsert(topic, &id, cur + 1, &format!("r{round}i{i}")),
            60..=74 => {
                // Exact re-send of the stored state (a producer retry).
                if let Some((v, doc)) = model.rows.get(&id).cloned() {
                    let body = doc["body"].as_str().unwrap().to_string();
                    model.upsert(topic, &id, v, &body);
                } else {
                    model.upsert(topic, &id, 1, "first");
                }
            }
            75..=86 => model.upsert(topic, &id, cur.saturating_sub(1), "late-old-version"),
            87..=96 => model.tombstone(topic, &id),
            _ => model.malformed(topic, round * 100_000 + i),
        }
    }
    topic.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_replicas_seeded_faults() {
    if std::env::var("KPGS_SKIP_CHAOS").is_ok() {
        eprintln!("skipped: KPGS_SKIP_CHAOS is set");
        return;
    }
    let seed: u64 = std::env::var("KPGS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let rounds: usize = std::env::var("KPGS_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut rng = StdRng::seed_from_u64(seed);

    // The schedule: every fault kind at least as often as required, shuffled.
    let mut schedule = vec![
        Fault::RestartPostgres,
        Fault::RestartBroker,
        Fault::Replay,
        Fault::StopCont,
    ];
    schedule.extend([Fault::KillRestart; 10]);
    schedule.extend([Fault::ScaleDown, Fault::ScaleUp, Fault::TerminateBackends]);
    while schedule.len() < rounds {
        schedule.push(match rng.gen_range(0..4) {
            0 => Fault::KillRestart,
            1 => Fault::TerminateBackends,
            2 => Fault::StopCont,
            _ => Fault::KillRestart,
        });
    }
    for i in (1..schedule.len()).rev() {
        let j = rng.gen_range(0..=i);
        schedule.swap(i, j);
    }
    eprintln!("chaos seed = {seed} (replay with KPGS_CHAOS_SEED={seed})");
    eprintln!("schedule = {schedule:?}");

    let db = TestDb::new().await;
    let topic = TestTopic::new(6).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let mut model = Model::default();
    let mut replicas: Vec<SinkProcess> = (0..3)
        .map(|_| SinkProcess::start_with(&cfg, free_port(), &[]))
        .collect();
    let mut retired: Vec<SinkProcess> = Vec::new();
    let started = Instant::now();

    for (round, fault) in schedule.iter().enumerate() {
        produce_round(&mut model, &topic, &mut rng, round as u64, 400);
        eprintln!(
            "[{:>5.1}s] round {round}: {fault:?} ({} replicas)",
            started.elapsed().as_secs_f64(),
            replicas.len()
        );
        match fault {
            Fault::KillRestart => {
                if !replicas.is_empty() {
                    let i = rng.gen_range(0..replicas.len());
                    let mut r = replicas.remove(i);
                    r.kill9();
                    retired.push(r);
                }
                replicas.push(SinkProcess::start_with(&cfg, free_port(), &[]));
            }
            Fault::StopCont => {
                if let Some(r) = replicas.first() {
                    r.signal("STOP");
                    // Longer than the 10 s session timeout: its partitions move.
                    produce_round(&mut model, &topic, &mut rng, 10_000 + round as u64, 200);
                    tokio::time::sleep(Duration::from_secs(12)).await;
                    r.signal("CONT");
                }
            }
            Fault::ScaleDown => {
                while replicas.len() > 1 {
                    let mut r = replicas.pop().unwrap();
                    r.signal("TERM");
                    let _ = r.child.wait();
                    retired.push(r);
                }
            }
            Fault::ScaleUp => {
                while replicas.len() < 3 {
                    replicas.push(SinkProcess::start_with(&cfg, free_port(), &[]));
                }
            }
            Fault::TerminateBackends => {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'kafka-pg-sink'",
                )
                .execute(&db.pool)
                .await;
            }
            Fault::RestartPostgres => {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
                assert!(std::process::Command::new("bash")
                    .arg(script)
                    .arg("restart")
                    .status()
                    .unwrap()
                    .success());
            }
            Fault::RestartBroker => {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
                assert!(std::process::Command::new("bash")
                    .arg(script)
                    .arg("kill")
                    .status()
                    .unwrap()
                    .success());
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert!(std::process::Command::new("bash")
                    .arg(script)
                    .arg("start")
                    .status()
                    .unwrap()
                    .success());
            }
            Fault::Replay => {
                let out = std::process::Command::new(sink_binary())
                    .args([
                        "--config",
                        cfg.path.to_str().unwrap(),
                        "replay",
                        "--to-earliest",
                    ])
                    .env_remove("DATABASE_URL")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "replay: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
    }
    if replicas.is_empty() {
        replicas.push(SinkProcess::start_with(&cfg, free_port(), &[]));
    }
    wait_caught_up(&db, &cfg.group, &topic, Duration::from_secs(240)).await;

    // Invariants, against the independent model.
    let expected: BTreeMap<String, serde_json::Value> = model
        .rows
        .iter()
        .map(|(k, (_, doc))| (k.clone(), doc.clone()))
        .collect();
    let actual = db.rows("events").await;
    let missing = expected.keys().filter(|k| !actual.contains_key(*k)).count();
    let extra = actual.keys().filter(|k| !expected.contains_key(*k)).count();
    let differ = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .count();
    eprintln!(
        "invariants: produced={} rows expected={} actual={} missing={missing} extra={extra} differ={differ}",
        model.produced,
        expected.len(),
        actual.len()
    );
    assert!(
        missing == 0 && extra == 0 && differ == 0,
        "table differs from the model (seed {seed})"
    );
    assert_eq!(
        db.stored_offsets(&cfg.group, &topic.name).await,
        topic.end_offsets(),
        "seed {seed}"
    );
    let dead: BTreeSet<String> =
        sqlx::query_scalar::<_, Vec<u8>>("SELECT payload FROM sink_dead_letters")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
    assert_eq!(
        dead, model.malformed,
        "dead letters differ from the malformed set (seed {seed})"
    );
    for r in &replicas {
        let m = r.metrics().await.expect("survivor serves metrics");
        assert_metrics_identity(&m);
    }
    for r in replicas.iter().chain(&retired) {
        assert!(
            !r.logs().contains("panicked"),
            "a replica panicked (seed {seed}):\n{}",
            r.logs()
        );
    }
    eprintln!(
        "chaos passed: seed {seed}, {} rounds in {:.0}s",
        schedule.len(),
        started.elapsed().as_secs_f64()
    );
}
