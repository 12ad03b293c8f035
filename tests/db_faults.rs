//! A database that blocks or refuses writes without being down: another
//! session holding `ACCESS EXCLUSIVE` on the target table, and a database
//! turned read-only (a standby after a misconfigured failover). The sink
//! waits, says on what (the blocking pid), shows it in metrics and
//! `/readyz`, dead-letters nothing, and catches up when the cause goes.

mod common;

use std::time::Duration;

use common::role::Role;
use common::*;
use sqlx::Connection;

const T: Duration = Duration::from_secs(90);

fn produce(topic: &TestTopic, log: &mut Vec<(String, String)>, n: u32) {
    send_versioned(topic, log, n, 40);
}

/// The sink running on `cfg`, caught up with 100 events.
async fn running(
    db: &TestDb,
    topic: &TestTopic,
    cfg: &SinkConfig,
) -> (SinkProcess, Vec<(String, String)>) {
    let sink = SinkProcess::start(cfg);
    let mut log = Vec::new();
    produce(topic, &mut log, 100);
    wait_caught_up(db, &cfg.group, topic, T).await;
    (sink, log)
}

async fn assert_exact(db: &TestDb, log: &[(String, String)]) {
    assert_table_is_model(db, log.iter().map(|(k, p)| (k.as_str(), p.as_str())), 0).await;
    assert_eq!(
        db.count("SELECT count(*) FROM sink_dead_letters").await,
        0,
        "nothing is the messages' fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_by_another_session_is_waited_out_naming_it() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let (sink, mut log) = running(&db, &topic, &cfg).await;

    // A colleague's maintenance: the table locked inside an open transaction.
    let mut colleague = sqlx::PgConnection::connect(&format!(
        "{}{}application_name=maintenance",
        db.url,
        if db.url.contains('?') { '&' } else { '?' }
    ))
    .await
    .unwrap();
    sqlx::query("BEGIN").execute(&mut colleague).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut colleague)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut colleague)
        .await
        .unwrap();
    produce(&topic, &mut log, 200);

    let named = format!("blocked by pid {pid} (user postgres, application maintenance");
    wait_until(T, "the log to name the blocking session", || {
        std::future::ready(sink.logs().contains(&named))
    })
    .await;
    let m = sink.metrics().await.unwrap_or_default();
    assert!(
        metric(&m, "kafka_pg_sink_commit_in_flight_seconds") >= 5.0,
        "{m}"
    );
    assert!(
        metric(&m, "kafka_pg_sink_commit_lock_waits_total") >= 1.0,
        "{m}"
    );
    let ready = http_get(sink.http_port, "/readyz")
        .await
        .unwrap_or_default();
    assert!(ready.contains("commit: in flight for"), "{ready}");

    sqlx::query("COMMIT").execute(&mut colleague).await.unwrap();
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_exact(&db, &log).await;
    let m = sink.metrics().await.unwrap_or_default();
    assert_eq!(metric(&m, "kafka_pg_sink_commit_in_flight_seconds"), 0.0);
    let ready = http_get(sink.http_port, "/readyz")
        .await
        .unwrap_or_default();
    assert!(ready.contains("commit: ok"), "{ready}");
}

/// Ends the sink's sessions so its pool reconnects with the database's
/// current defaults.
async fn reconnect_sink(db: &TestDb) {
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'kafka-pg-sink'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_waited_out() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let (sink, mut log) = running(&db, &topic, &cfg).await;

    // What a standby answers: 25006, cannot execute … in a read-only transaction.
    db.set_read_only(true).await;
    produce(&topic, &mut log, 200);
    let retried = poll_until(T, || async {
        sink.logs().contains("read-only transaction")
            && metric(
                &sink.metrics().await.unwrap_or_default(),
                "kafka_pg_sink_db_retries_total",
            ) >= 2.0
    })
    .await;
    assert!(
        retried,
        "commits retried against the read-only database; the sink's log:\n{}",
        sink.logs()
    );

    db.set_read_only(false).await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_exact(&db, &log).await;
}

/// `max_connections` reached, as far as the sink can tell: its sessions
/// ended and no new one admitted (53300). It waits, naming the cause, and
/// goes on once connections are admitted again. As a role of its own: the
/// limit does not apply to superusers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_for_lack_of_slots_are_waited_out() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let _role = Role::after_setup(&db, &cfg, &cfg).await;
    let (sink, mut log) = running(&db, &topic, &cfg).await;

    db.exec(&format!(
        "ALTER DATABASE \"{}\" CONNECTION LIMIT 0",
        db.name
    ))
    .await;
    reconnect_sink(&db).await;
    produce(&topic, &mut log, 200);
    let waited = poll_until(T, || {
        std::future::ready(sink.logs().contains("too many connections"))
    })
    .await;
    assert!(waited, "the sink's log names the cause:\n{}", sink.logs());
    let ready = http_get(sink.http_port, "/readyz").await;
    assert!(ready.is_none(), "not ready while no connection is admitted");

    db.exec(&format!(
        "ALTER DATABASE \"{}\" CONNECTION LIMIT -1",
        db.name
    ))
    .await;
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_exact(&db, &log).await;
}

/// A tablespace small enough to fill: a tmpfs of `mb` MiB mounted for the
/// server's OS user, registered as a tablespace; unmounted and removed on
/// drop. `None` where this machine cannot mount (not root, no
/// CAP_SYS_ADMIN), said on stderr.
struct SmallTablespace {
    name: String,
    dir: std::path::PathBuf,
}

impl SmallTablespace {
    async fn create(db: &TestDb, mb: u32) -> Option<SmallTablespace> {
        use std::os::unix::fs::MetadataExt;
        let name = unique("kpgs_small");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}M,mode=0700")])
            .arg("tmpfs")
            .arg(&dir)
            .output()
            .unwrap();
        if !mounted.status.success() {
            let _ = std::fs::remove_dir(&dir);
            eprintln!(
                "SKIPPED: this machine cannot mount a tmpfs to fill ({}); \
                 the full-tablespace case did not run",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let owner = std::fs::metadata(&data_dir).unwrap_or_else(|e| {
            panic!("the server's data directory {data_dir} is not on this machine: {e}")
        });
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).unwrap();
        let t = SmallTablespace { name, dir };
        db.exec(&format!(
            "CREATE TABLESPACE {} LOCATION '{}'",
            t.name,
            t.dir.display()
        ))
        .await;
        Some(t)
    }

    fn resize(&self, mb: u32) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mb}M")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {}", self.dir.display());
    }
}

impl Drop for SmallTablespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The target's tablespace full (53100, "could not extend file … No space
/// left on device"): commits are retried — nothing is dead-lettered, the
/// stored positions stay behind — until space is added, then the sink
/// catches up and the table is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tablespace_is_waited_out_until_space_is_added() {
    let db = TestDb::new().await;
    let Some(space) = SmallTablespace::create(&db, 4).await else {
        return;
    };
    let topic = TestTopic::new(2).await;
    let cfg = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let (sink, mut log) = running(&db, &topic, &cfg).await;
    db.exec(&format!("ALTER TABLE events SET TABLESPACE {}", space.name))
        .await;

    // Rows that do not compress, 3× what the tablespace holds.
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for i in 0..6_000 {
        let id = format!("big{i}");
        let blob: String = (0..1_200)
            .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
            .collect::<String>()
            .replace(['"', '\\'], "x");
        let payload = format!(r#"{{"id":"{id}","v":1,"blob":"{blob}"}}"#);
        send_logged(&topic, &mut log, id, payload);
    }
    topic.flush();
    let named = format!("tablespace {} is full (writing events)", space.name);
    let waited = poll_until(T, || async {
        let m = sink.metrics().await.unwrap_or_default();
        sink.logs().contains(&named)
            && metric(&m, "kafka_pg_sink_db_retries_total") >= 2.0
            && metric(&m, "kafka_pg_sink_commit_in_flight_seconds") >= 2.0
    })
    .await;
    assert!(
        waited,
        "commits retried, the cause named, the batch shown in flight:\n{}",
        sink.logs()
    );
    let (_, ready) = http_get_status(sink.http_port, "/readyz").await.unwrap();
    assert!(ready.contains("commit: in flight for"), "{ready}");
    assert_eq!(
        db.count("SELECT count(*) FROM sink_dead_letters").await,
        0,
        "a full disk is not the messages' fault"
    );
    let stored: i64 = db
        .count(&format!(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets WHERE topic = '{}'",
            topic.name
        ))
        .await;
    let end: i64 = topic.end_offsets().values().sum();
    assert!(stored < end, "positions stay behind what is not written");

    space.resize(64);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_exact(&db, &log).await;
    drop(sink);
    db.exec("DROP TABLE events").await;
    db.exec(&format!("DROP TABLESPACE {}", space.name)).await;
}
