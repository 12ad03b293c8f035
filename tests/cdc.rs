//! Database replication through Kafka with the real Debezium Postgres source
//! connector (Kafka Connect 4.3.1 standalone, scripts/connect.sh): a seeded
//! random workload on a source table — inserts, updates, deletes, primary-key
//! updates, multi-row transactions, a truncate — while the sink is SIGKILLed
//! several times and the connector once (it then re-sends what it had not
//! flushed). The target table must end identical to the source (checksum),
//! and again after `replay --to-earliest`.
//!
//! Needs the CDC source cluster (scripts/connect.sh source-db ensure, done
//! by scripts/test.sh); own test binary because it starts a JVM worker.

mod common;

use std::time::Duration;

use common::capture::{source_db, Connector};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

const T: Duration = Duration::from_secs(180);

const COLUMNS: &str = "id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2), \
                       updated timestamptz, tags jsonb";

/// One row of `items` as text (timestamps as epoch, so the two clusters'
/// time zone settings do not matter; `name` is NOT NULL, so never empty).
const ROW_TEXT: &str = "concat_ws('|', name, qty, price, extract(epoch FROM updated), tags::text)";

/// Order-independent content of `items` (timestamps as epoch, so the two
/// clusters' time zone settings do not matter).
async fn checksum(pool: &PgPool) -> String {
    sqlx::query_scalar::<_, Option<String>>(&format!(
        "SELECT md5(string_agg(concat_ws('|', id, {ROW_TEXT}), E'\\n' ORDER BY id)) FROM items"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

/// The rows of `items` that differ between the two databases, at most 20.
async fn differences(source: &PgPool, target: &PgPool) -> String {
    async fn rows(pool: &PgPool) -> std::collections::BTreeMap<i32, String> {
        sqlx::query_as::<_, (i32, String)>(&format!("SELECT id, {ROW_TEXT} FROM items"))
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }
    let (s, t) = (rows(source).await, rows(target).await);
    let ids: std::collections::BTreeSet<i32> = s.keys().chain(t.keys()).copied().collect();
    ids.into_iter()
        .filter(|id| s.get(id) != t.get(id))
        .take(20)
        .map(|id| format!("{id}: {:?} | {:?}", s.get(&id), t.get(&id)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One random step of the source workload.
async fn step(db: &TestDb, rng: &mut StdRng, next_id: &mut i32) {
    let id = rng.gen_range(1..*next_id.max(&mut 2));
    let price = format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100));
    match rng.gen_range(0..10) {
        0..=3 => {
            *next_id += 1;
            db.exec(&format!(
                "INSERT INTO items VALUES ({next_id}, 'item {next_id}', {}, {price}, now(), '{{\"k\": [{next_id}]}}')",
                rng.gen_range(0..9)
            ))
            .await
        }
        4..=6 => {
            db.exec(&format!(
                "UPDATE items SET qty = coalesce(qty, 0) + 1, price = {price}, updated = now() WHERE id = {id}"
            ))
            .await
        }
        7 => db.exec(&format!("DELETE FROM items WHERE id = {id}")).await,
        8 => {
            // A primary-key update: a delete of the old key and an insert of the new.
            *next_id += 1;
            db.exec(&format!("UPDATE items SET id = {next_id} WHERE id = {id}"))
                .await
        }
        _ => {
            let a = rng.gen_range(1..*next_id.max(&mut 2));
            db.exec(&format!(
                "BEGIN; UPDATE items SET name = name || '+' WHERE id = {a}; \
                 DELETE FROM items WHERE id = {id} AND id <> {a}; \
                 UPDATE items SET tags = '{{\"tx\": true}}' WHERE id = {a}; COMMIT"
            ))
            .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_replicated_through_debezium_stays_identical() {
    let mut rng = StdRng::seed_from_u64(test_seed("cdc"));
    let source = source_db().await;
    source
        .exec(&format!("CREATE TABLE items ({COLUMNS})"))
        .await;
    let mut next_id = 0;
    for _ in 0..40 {
        next_id += 1;
        source
            .exec(&format!(
                "INSERT INTO items VALUES ({next_id}, 'seed {next_id}', 1, 1.50, now(), '[]')"
            ))
            .await;
    }
    let db = TestDb::new().await;
    db.exec(&format!(
        "CREATE TABLE items ({COLUMNS}, src_lsn bigint NOT NULL)"
    ))
    .await;

    let prefix = unique("kpgs_cdc");
    let topic = format!("{prefix}.public.items");
    let connector = Connector::start(
        "source-props",
        &[
            "--db",
            &source.name,
            "--tables",
            "public.items",
            "--prefix",
            &prefix,
            "--schemas",
            "--partitions",
            "3",
            "skipped.operations=none",
        ],
    );
    let route = format!(
        "[[route]]\ntopic = \"{topic}\"\ntable = \"items\"\nkey = \"id\"\nenvelope = \"debezium\"\n\
         columns = {{ id = \"/id\", name = \"/name\", qty = \"/qty\", price = \"/price\", \
         updated = \"/updated\", tags = \"/tags\", src_lsn = \"@source:lsn\" }}\n"
    );
    let cfg = SinkConfig::with_routes(&db, &route, "");
    // Small batches: history crosses many batch boundaries, so re-sends and
    // the replay meet rows written by earlier transactions (the table's
    // guards and delete markers), not only the in-batch fold.
    cfg.rewrite("max_messages = 500", "max_messages = 7");
    let mut sink = SinkProcess::start(&cfg);

    // An early truncate, then the workload with faults between rounds.
    source.exec("TRUNCATE items").await;
    for round in 0..8 {
        if round == 2 {
            // The kill below must find a streamed position flushed: a
            // connector killed before its first offset flush snapshots again
            // on restart, and a snapshot cannot express the deletes it
            // missed (Debezium's behaviour, not the sink's). What it re-sends
            // after this point is what the test is about.
            connector.wait_offset_with("lsn_proc", T).await;
        }
        for _ in 0..rng.gen_range(20..40) {
            step(&source, &mut rng, &mut next_id).await;
        }
        match round {
            2 => {
                connector.kill9();
                for _ in 0..20 {
                    step(&source, &mut rng, &mut next_id).await;
                }
                connector.restart(T).await;
            }
            1 | 4 | 6 => {
                sink.kill9();
                sink = SinkProcess::start(&cfg);
            }
            _ => {}
        }
    }
    let want = checksum(&source.pool).await;
    if !poll_until(T, || async { checksum(&db.pool).await == want }).await {
        panic!(
            "timed out after {T:?} waiting for the target to equal the source\n\
             rows that differ (id: source | target):\n{}\n\
             ---- connector log tail ----\n{}\n---- sink log ----\n{}",
            differences(&source.pool, &db.pool).await,
            connector.log_tail(80),
            sink.logs()
        );
    }
    let rows = db.count("SELECT count(*) FROM items").await;
    eprintln!("replicated {rows} rows; source ids up to {next_id}");
    let m = sink.metrics().await.unwrap();
    assert_metrics_identity(&m);
    assert!(metric(&m, "kafka_pg_sink_change_events_total") > 0.0, "{m}");

    // A replay from the beginning never moves a row backwards: the table
    // equals the source at every moment while the old changes flow again.
    let end = end_offsets(&topic);
    replay_to_earliest(&cfg);
    wait_until(T, "the replay to reach the end offsets again", || async {
        assert_eq!(
            checksum(&db.pool).await,
            want,
            "a row moved backwards during the replay"
        );
        db.stored_offsets(&cfg.group, &topic).await == end
    })
    .await;
    let m = sink.metrics().await.unwrap();
    assert!(
        metric(&m, "kafka_pg_sink_messages_skipped_total") > 0.0
            || metric(&m, "kafka_pg_sink_duplicates_total") > 0.0
    );
}
