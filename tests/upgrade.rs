//! A rolling upgrade under load. Two replicas of the previous version
//! (`scripts/previous-version.sh`: a fixed earlier commit, two migrations
//! behind) set up the database and consume; two replicas of this version
//! join the group — applying the two migrations while the old ones commit —
//! then the old ones stop, one with SIGTERM, one with SIGKILL. A probe reads
//! the stored positions throughout: no partition's position ever moves
//! back. At the end the table equals the model of everything produced,
//! nothing is dead-lettered, and the previous binary, started again, stops
//! at startup on the newer schema instead of writing.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

fn previous_binary() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(format!(
            "{}/scripts/previous-version.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("path")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the previous version is not built: run `scripts/previous-version.sh build` \
         before building this one (scripts/test.sh does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A configuration both versions read: only settings the previous one knows.
fn shared_config(db: &TestDb, topic: &TestTopic) -> SinkConfig {
    let dir = tempfile::tempdir().unwrap();
    let group = unique("kpgs_group");
    let http_port = free_port();
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{group}\"\nauto_offset_reset = \"earliest\"\n\
         [postgres]\nurl = \"{}\"\nmax_connections = 4\n\
         [batch]\nmax_messages = 500\nmax_wait = \"50ms\"\n\
         [http]\nbind = \"127.0.0.1:{http_port}\"\n\
         [sink]\nshutdown_timeout = \"10s\"\n\
         [[route]]\ntopic = \"{}\"\ntable = \"events\"\nkey = \"/id\"\nversion = \"/v\"\n",
        brokers(),
        db.url,
        topic.name
    );
    let path = dir.path().join("sink.toml");
    std::fs::write(&path, text).unwrap();
    SinkConfig {
        dir,
        path,
        group,
        http_port,
    }
}

/// Stored positions sampled every 50 ms: the highest seen per partition,
/// and every time one was lower than that.
#[derive(Default)]
struct Probe {
    highest: BTreeMap<i32, i64>,
    backwards: Vec<String>,
}

fn probe_positions(
    db: &TestDb,
    topic: &str,
    stop: tokio_util::sync::CancellationToken,
) -> Arc<Mutex<Probe>> {
    let probe = Arc::new(Mutex::new(Probe::default()));
    let (pool, topic, out) = (db.pool.clone(), topic.to_string(), probe.clone());
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let rows: Vec<(i32, i64)> =
                sqlx::query_as("SELECT partition, next_offset FROM sink_offsets WHERE topic = $1")
                    .bind(&topic)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            record(&mut out.lock().unwrap(), rows);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    probe
}

fn record(p: &mut Probe, rows: Vec<(i32, i64)>) {
    for (partition, next) in rows {
        let high = p.highest.entry(partition).or_insert(next);
        if next < *high {
            let seen = *high;
            p.backwards
                .push(format!("partition {partition}: {next} after {seen}"));
        } else {
            *high = next;
        }
    }
}

async fn applied(db: &TestDb) -> i64 {
    db.count("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .await
}

async fn stored_total(db: &TestDb, topic: &str) -> i64 {
    db.count(&format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets WHERE topic = '{topic}'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_under_load_keeps_the_table_exact() {
    let previous = previous_binary();
    let db = TestDb::new().await;
    let topic = TestTopic::new(6).await;
    let cfg = shared_config(&db, &topic);
    let (ok, out) = cfg.cli_of(&previous, &["setup"], &[]);
    assert!(ok, "the previous version's setup: {out}");
    let before = applied(&db).await;

    let mut old_a = SinkProcess::start_binary(&previous, &cfg, free_port(), &[]);
    let mut old_b = SinkProcess::start_binary(&previous, &cfg, free_port(), &[]);
    let stop = tokio_util::sync::CancellationToken::new();
    let probe = probe_positions(&db, &topic.name, stop.clone());
    let mut log = Vec::new();
    send_versioned(&topic, &mut log, 2_000, 300);
    wait_until(T, "the previous version to commit", || async {
        stored_total(&db, &topic.name).await > 0
    })
    .await;

    // This version joins while events keep coming.
    let new_c = SinkProcess::start(&cfg);
    let new_d = SinkProcess::start_with(&cfg, free_port(), &[]);
    for _ in 0..10 {
        send_versioned(&topic, &mut log, 300, 300);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = applied(&db).await;
    assert!(
        after > before,
        "this version applied its migrations ({before} → {after})"
    );
    wait_until(T, "both versions to hold partitions", || async {
        new_c.logs().contains("assigned") || new_d.logs().contains("assigned")
    })
    .await;

    // The old replicas go: one drained, one killed mid-stream.
    old_a.signal("TERM");
    send_versioned(&topic, &mut log, 2_000, 300);
    old_b.kill9();
    assert!(
        old_a.child.wait().unwrap().success(),
        "the previous version stops cleanly beside this one:\n{}",
        old_a.logs()
    );
    send_versioned(&topic, &mut log, 2_000, 300);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    stop.cancel();

    assert_table_is_model(&db, log.iter().map(|(k, p)| (k.as_str(), p.as_str())), 0).await;
    assert_eq!(db.count("SELECT count(*) FROM sink_dead_letters").await, 0);
    let probe = std::mem::take(&mut *probe.lock().unwrap());
    assert!(
        probe.backwards.is_empty(),
        "positions moved back: {:?}",
        probe.backwards
    );
    assert_eq!(probe.highest.len(), 6, "every partition was probed");
    for p in [&old_a, &old_b] {
        assert!(
            !p.logs().contains("PANIC") && !p.logs().contains("panicked"),
            "{}",
            p.logs()
        );
    }

    // The previous binary does not run against the schema it does not know.
    let mut again = SinkProcess::start_binary(&previous, &cfg, free_port(), &[]);
    let status = wait_exit(&mut again.child, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the previous version refuses the newer schema at startup:\n{}",
        again.logs()
    );
    // Versions from 9e018c5 on name the version they need; this one is
    // older and stops on sqlx's check of the applied migrations.
    assert!(
        again
            .logs()
            .contains("was previously applied but is missing in the resolved migrations"),
        "{}",
        again.logs()
    );
    assert_table_is_model(&db, log.iter().map(|(k, p)| (k.as_str(), p.as_str())), 0).await;
}

/// The child's exit status, `None` if it still runs after `timeout`.
fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
