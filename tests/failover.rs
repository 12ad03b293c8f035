//! Postgres failover to an asynchronous standby that lost the last commits
//! (`scripts/pg-failover.sh`: primary + streaming standby behind a front
//! proxy the sink connects through). The sink runs throughout: batches
//! committed and replicated; replication frozen; more batches committed on
//! the primary only; the primary SIGKILLed (events keep arriving); the
//! standby promoted behind the same address; more events.
//!
//! Checked: the promoted database's stored offsets are those of the freeze,
//! behind what the sink had committed before the kill (the test really lost
//! commits); the sink seeks back to exactly those offsets and the table ends
//! equal to a model computed from the produced log, with `sink_offsets` =
//! end offsets and the metrics identity. After the failover only half of the
//! partitions receive new events: the others must be re-read although no
//! new message (and so no fenced commit) tells the sink that they moved.
//!
//! Own test binary: it kills and promotes its own Postgres pair (ports
//! 5439-5441, never the main cluster on 5432). The test database is created
//! through the front on the primary and reaches the standby by streaming
//! replication (CREATE DATABASE is WAL-logged). `KPGS_SEED` replays the
//! events; `KPGS_SKIP_PG_FAILOVER` skips.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use sqlx::postgres::PgPoolOptions;

const PARTITIONS: i32 = 4;
const T: Duration = Duration::from_secs(120);

struct Producer {
    topic: TestTopic,
    events: VersionedEvents,
    log: Vec<(String, String)>,
}

impl Producer {
    /// `n` events for keys of the partitions `ps`, flushed.
    fn produce(&mut self, n: usize, ps: &[i32]) {
        for _ in 0..n {
            let (key, payload) = self
                .events
                .next_event_where(|k| ps.contains(&partition_of(k, PARTITIONS)));
            self.topic.send(
                partition_of(&key, PARTITIONS),
                Some(&key),
                Some(payload.as_bytes()),
            );
            self.log.push((key, payload));
        }
        self.topic.flush();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_standby_that_lost_commits_resumes_from_its_offsets() {
    if std::env::var("KPGS_SKIP_PG_FAILOVER").is_ok() {
        eprintln!("skipped: KPGS_SKIP_PG_FAILOVER is set");
        return;
    }
    let seed = test_seed("failover");
    let t0 = Instant::now();
    let at = || format!("[{:>5.1}s]", t0.elapsed().as_secs_f64());
    // A fresh primary + streaming standby (rebuilt if an earlier run promoted).
    pgfo(&["ensure"]).await;
    eprintln!("{} primary + standby ready", at());
    let db = TestDb::on(&pgfo(&["url", "front"]).await).await;
    let mut standby_url = url::Url::parse(&pgfo(&["url", "standby"]).await).unwrap();
    standby_url.set_path(&format!("/{}", db.name));
    let all: Vec<i32> = (0..PARTITIONS).collect();
    let mut p = Producer {
        topic: TestTopic::new(PARTITIONS).await,
        events: VersionedEvents::new(seed, 1500),
        log: Vec::new(),
    };
    let cfg = SinkConfig::new(&db, &p.topic.name, "version = \"/v\"", "");
    let (group, name) = (cfg.group.clone(), p.topic.name.clone());
    let sink = SinkProcess::start(&cfg);

    // Committed and replicated.
    p.produce(3000, &all);
    wait_caught_up(&db, &group, &p.topic, T).await;
    let frozen = pgfo(&["freeze-replication"]).await;
    let at_freeze = db.stored_offsets(&group, &name).await;
    eprintln!("{} frozen at {at_freeze:?}: {frozen}", at());

    // Committed on the primary only: lost on failover.
    p.produce(3000, &all);
    wait_caught_up(&db, &group, &p.topic, T).await;
    let at_kill = db.stored_offsets(&group, &name).await;
    let rows_at_kill = db.count("SELECT count(*) FROM events").await;
    pgfo(&["kill-primary"]).await;
    eprintln!(
        "{} primary SIGKILLed; the sink had committed {at_kill:?}",
        at()
    );

    // What the promoted database will hold: the standby, read before promotion.
    let standby = PgPoolOptions::new()
        .max_connections(1)
        .connect(standby_url.as_str())
        .await
        .unwrap();
    let on_standby: BTreeMap<i32, i64> = sqlx::query_as(
        "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(&group)
    .bind(&name)
    .fetch_all(&standby)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let rows_on_standby: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&standby)
        .await
        .unwrap();
    standby.close().await;
    assert_eq!(
        on_standby, at_freeze,
        "the standby holds the freeze's offsets"
    );
    for (part, off) in &at_kill {
        assert!(
            on_standby[part] < *off,
            "partition {part}: the standby's offset {} is not behind the committed {off}: \
             no commit was lost (seed {seed})",
            on_standby[part]
        );
    }
    assert!(
        rows_on_standby < rows_at_kill,
        "{rows_on_standby} rows vs {rows_at_kill}"
    );
    eprintln!(
        "{} standby: offsets {on_standby:?}, {rows_on_standby} rows (primary had {rows_at_kill})",
        at()
    );

    // Events arrive while there is no database; after the promotion only
    // partitions 0 and 1 get new ones.
    let busy: Vec<i32> = vec![0, 1];
    p.produce(1000, &busy);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let promoted = pgfo(&["promote"]).await;
    eprintln!("{} promoted: {promoted}", at());
    p.produce(1000, &busy);

    wait_caught_up(&db, &group, &p.topic, T).await;
    eprintln!("{} caught up", at());
    assert_table_is_model(
        &db,
        p.log.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        seed,
    )
    .await;
    assert_eq!(
        db.stored_offsets(&group, &name).await,
        p.topic.end_offsets()
    );
    // It resumed from the promoted database's offsets: every partition was
    // sought back to exactly the offset the standby held.
    let logs = sink.logs();
    for (part, off) in &on_standby {
        let line = format!("{name}[{part}] offset=Some(Offset({off}))");
        assert!(
            logs.lines()
                .any(|l| l.contains("seeked to stored position") && l.contains(&line)),
            "no seek of partition {part} back to {off} (seed {seed}):\n{logs}"
        );
    }
    let m = sink
        .metrics()
        .await
        .expect("the sink survived the failover");
    assert_metrics_identity(&m);
    assert!(!logs.contains("panicked"), "{logs}");
    eprintln!(
        "failover: seed {seed}, {} events, {} rows, db retries {}, fenced batches {}, total {:.1}s",
        p.log.len(),
        db.count("SELECT count(*) FROM events").await,
        metric(&m, "kafka_pg_sink_db_retries_total"),
        metric(&m, "kafka_pg_sink_fenced_batches_total"),
        t0.elapsed().as_secs_f64()
    );
}
