//! Fault-injection suite: three sink replicas in one group, a producer writing
//! re-sends, newer and older versions, tombstones and malformed messages,
//! and a seeded schedule of faults: SIGKILL + restart, SIGSTOP/SIGCONT
//! (zombie), scaling 1 → 3 → 1, terminated Postgres backends, one Postgres
//! restart, one broker SIGKILL + restart, one `replay --to-earliest`, a
//! table locked by another session, the database read-only for a while.
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
    /// Another session holds `ACCESS EXCLUSIVE` on the versioned table for
    /// a few seconds while events arrive.
    LockTable,
    /// The database turns read-only (a standby's answer) for a few seconds.
    ReadOnly,
}

/// Independent model of the expected tables. Every operation goes to two
/// topics: one routed with a `version` guard (an older version is ignored),
/// one without (Kafka order wins, so a zombie's stale write is visible).
/// Per key, produce order = offset order (one keyed partition, idempotent
/// producer); a tombstone deletes.
#[derive(Default)]
struct Model {
    versioned: BTreeMap<String, (i64, serde_json::Value)>,
    last_write: BTreeMap<String, serde_json::Value>,
    malformed: BTreeSet<String>,
    produced: u64,
}

struct Topics {
    versioned: TestTopic,
    last_write: TestTopic,
}

impl Topics {
    fn flush(&self) {
        self.versioned.flush();
        self.last_write.flush();
    }
}

impl Model {
    fn current_version(&self, id: &str) -> i64 {
        self.versioned.get(id).map(|(v, _)| *v).unwrap_or(0)
    }

    fn upsert(&mut self, t: &Topics, id: &str, version: i64, body: &str) {
        let payload = format!(r#"{{"id":"{id}","v":{version},"body":"{body}"}}"#);
        for topic in [&t.versioned, &t.last_write] {
            topic.send(
                partition_of(id, topic.partitions),
                Some(id),
                Some(payload.as_bytes()),
            );
            self.produced += 1;
        }
        let doc: serde_json::Value = serde_json::from_str(&payload).unwrap();
        match self.versioned.get(id) {
            Some((v, _)) if version < *v => {}
            _ => {
                self.versioned
                    .insert(id.to_string(), (version, doc.clone()));
            }
        }
        self.last_write.insert(id.to_string(), doc);
    }

    fn tombstone(&mut self, t: &Topics, id: &str) {
        for topic in [&t.versioned, &t.last_write] {
            topic.send(partition_of(id, topic.partitions), Some(id), None);
            self.produced += 1;
        }
        self.versioned.remove(id);
        self.last_write.remove(id);
    }

    fn malformed(&mut self, t: &Topics, n: u64) {
        for (tag, topic) in [("v", &t.versioned), ("l", &t.last_write)] {
            let payload = format!("{{\"id\": \"bad-{tag}-{n}\", broken");
            topic.send(
                partition_of("bad", topic.partitions),
                Some("bad"),
                Some(payload.as_bytes()),
            );
            self.produced += 1;
            self.malformed.insert(payload);
        }
    }
}

fn produce_round(model: &mut Model, t: &Topics, rng: &mut StdRng, round: u64, n: u64) {
    for i in 0..n {
        let id = format!("k{}", rng.gen_range(0..1500));
        let cur = model.current_version(&id);
        match rng.gen_range(0..100) {
            0..=59 => model.upsert(t, &id, cur + 1, &format!("r{round}i{i}")),
            60..=74 => {
                // Exact re-send of the current state (a producer retry).
                match model.versioned.get(&id).cloned() {
                    Some((v, doc)) => {
                        let body = doc["body"].as_str().unwrap().to_string();
                        model.upsert(t, &id, v, &body);
                    }
                    None => model.upsert(t, &id, 1, "first"),
                }
            }
            75..=86 => model.upsert(t, &id, cur - 1, &format!("late-old-version-r{round}i{i}")),
            87..=96 => model.tombstone(t, &id),
            _ => model.malformed(t, round * 100_000 + i),
        }
    }
    t.flush();
}

fn compare(
    name: &str,
    expected: &BTreeMap<String, serde_json::Value>,
    actual: &BTreeMap<String, serde_json::Value>,
) -> bool {
    let missing = expected.keys().filter(|k| !actual.contains_key(*k)).count();
    let extra = actual.keys().filter(|k| !expected.contains_key(*k)).count();
    let differ = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .count();
    eprintln!(
        "invariants {name}: rows expected={} actual={} missing={missing} extra={extra} differ={differ}",
        expected.len(),
        actual.len()
    );
    missing == 0 && extra == 0 && differ == 0
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
        Fault::LockTable,
        Fault::ReadOnly,
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
    let topics = Topics {
        versioned: TestTopic::new(6).await,
        last_write: TestTopic::new(3).await,
    };
    let second_route = format!(
        "\n[[route]]\ntopic = \"{}\"\ntable = \"events_lww\"\nkey = \"/id\"\n",
        topics.last_write.name
    );
    let cfg = SinkConfig::new(
        &db,
        &topics.versioned.name,
        "version = \"/v\"",
        &second_route,
    );
    let topic = &topics;
    // Outside a replay, a stored position may only move forward.
    audit_offset_regressions(&db).await;
    let mut model = Model::default();
    let mut replicas: Vec<SinkProcess> = (0..3)
        .map(|_| SinkProcess::start_with(&cfg, free_port(), &[]))
        .collect();
    let mut retired: Vec<SinkProcess> = Vec::new();
    let started = Instant::now();

    for (round, fault) in schedule.iter().enumerate() {
        produce_round(&mut model, topic, &mut rng, round as u64, 400);
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
                // A slow replica that holds each batch 1.5 s before committing
                // is frozen while it holds one, past the 10 s session timeout:
                // its partitions move, and when it resumes its batch must be
                // refused by the fence.
                let slow = SinkProcess::start_with(
                    &cfg,
                    free_port(),
                    &[("KAFKA_PG_SINK_FAULT_COMMIT_DELAY_MS", "1500")],
                );
                let mut extra = 0u64;
                wait_until(
                    Duration::from_secs(60),
                    "slow replica holds a batch",
                    || {
                        extra += 1;
                        produce_round(
                            &mut model,
                            topic,
                            &mut rng,
                            20_000 + round as u64 * 100 + extra,
                            50,
                        );
                        let log = std::fs::read_to_string(&slow.log).unwrap_or_default();
                        async move { log.contains("holding the batch") }
                    },
                )
                .await;
                slow.signal("STOP");
                produce_round(&mut model, topic, &mut rng, 10_000 + round as u64, 200);
                tokio::time::sleep(Duration::from_secs(12)).await;
                slow.signal("CONT");
                replicas.push(slow);
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
                replay_to_earliest(&cfg);
            }
            Fault::LockTable => {
                // Drawn first, it can come before any replica has created
                // the table (seed 11782557744801345956).
                wait_until(Duration::from_secs(60), "the table to lock", || async {
                    db.count("SELECT count(*) FROM pg_tables WHERE tablename = 'events'")
                        .await
                        == 1
                })
                .await;
                let mut tx = db.pool.begin().await.unwrap();
                sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                produce_round(&mut model, topic, &mut rng, 30_000 + round as u64, 200);
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.commit().await.unwrap();
            }
            Fault::ReadOnly => {
                db.set_read_only(true).await;
                produce_round(&mut model, topic, &mut rng, 40_000 + round as u64, 200);
                tokio::time::sleep(Duration::from_secs(4)).await;
                db.set_read_only(false).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
    }
    if replicas.is_empty() {
        replicas.push(SinkProcess::start_with(&cfg, free_port(), &[]));
    }
    wait_caught_up(&db, &cfg.group, &topics.versioned, Duration::from_secs(240)).await;
    wait_caught_up(
        &db,
        &cfg.group,
        &topics.last_write,
        Duration::from_secs(240),
    )
    .await;

    // Invariants, against the independent model.
    eprintln!("produced {} messages", model.produced);
    let regressions = db.count("SELECT count(*) FROM offset_regressions").await;
    eprintln!("invariants offsets: backwards moves outside replay = {regressions}");
    assert_eq!(
        regressions, 0,
        "a stored position moved backwards outside a replay (seed {seed})"
    );
    let expected_v: BTreeMap<String, serde_json::Value> = model
        .versioned
        .iter()
        .map(|(k, (_, doc))| (k.clone(), doc.clone()))
        .collect();
    let ok_v = compare("versioned", &expected_v, &db.rows("events").await);
    let ok_l = compare(
        "last-write",
        &model.last_write,
        &db.rows("events_lww").await,
    );
    assert!(ok_v && ok_l, "tables differ from the model (seed {seed})");
    for t in [&topics.versioned, &topics.last_write] {
        assert_eq!(
            db.stored_offsets(&cfg.group, &t.name).await,
            t.end_offsets(),
            "seed {seed}"
        );
    }
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
