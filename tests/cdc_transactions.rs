//! Source transactions applied whole: the real Debezium Postgres source
//! with `provide.transaction.metadata=true`, a workload whose every
//! transaction keeps invariants across tables — transfers keep the total
//! balance; an order's total is the sum of its lines, which reference it —
//! and two sinks on the same topics, each with a reader sampling its
//! target in one snapshot after another:
//!
//! * `[sink.source_transactions] enabled`: two replicas (one active, one
//!   standing by), the target's lines with a foreign key to their order
//!   (deferrable), the active replica SIGKILLed twice (the standby takes
//!   over), the connector once, then `replay --to-earliest`. Its reader must
//!   never see an invariant broken.
//! * the same without it, in small batches: its reader must see one broken
//!   (so the first reader's check can fail).
//!
//! Both targets end equal to the source. Own test binary: it starts a JVM.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::capture::{caught_up, source_db, whole_database_route, Connector};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

const T: Duration = Duration::from_secs(240);
const ACCOUNTS: i64 = 20;
const INITIAL: i64 = 1_000;

const SCHEMA: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
    CREATE TABLE orders (id int PRIMARY KEY, total bigint NOT NULL); \
    CREATE TABLE lines (order_id int NOT NULL REFERENCES orders, n int NOT NULL, \
                        amount bigint NOT NULL, PRIMARY KEY (order_id, n))";

/// The target, as the route would create it, plus the foreign key the
/// source has (deferrable: the sink writes table by table).
const TARGET: &str = "CREATE SCHEMA replica; \
    CREATE TABLE replica.accounts (id int PRIMARY KEY, balance bigint NOT NULL, __source_position numeric); \
    CREATE TABLE replica.orders (id int PRIMARY KEY, total bigint NOT NULL, __source_position numeric); \
    CREATE TABLE replica.lines (order_id int NOT NULL, n int NOT NULL, amount bigint NOT NULL, \
        __source_position numeric, PRIMARY KEY (order_id, n), \
        FOREIGN KEY (order_id) REFERENCES replica.orders DEFERRABLE INITIALLY DEFERRED)";

/// One source transaction keeping both invariants.
fn transaction(rng: &mut StdRng, next_order: &mut i32) -> String {
    match rng.gen_range(0..4) {
        0 | 1 => {
            let (a, b) = (rng.gen_range(1..=ACCOUNTS), rng.gen_range(1..=ACCOUNTS));
            let x = rng.gen_range(1..50);
            format!(
                "BEGIN; UPDATE accounts SET balance = balance - {x} WHERE id = {a}; \
                 UPDATE accounts SET balance = balance + {x} WHERE id = {b}; COMMIT"
            )
        }
        2 => {
            *next_order += 1;
            let o = *next_order;
            let amounts: Vec<i64> = (0..rng.gen_range(1..5))
                .map(|_| rng.gen_range(1..100))
                .collect();
            let lines: Vec<String> = amounts
                .iter()
                .enumerate()
                .map(|(n, a)| format!("({o}, {n}, {a})"))
                .collect();
            format!(
                "BEGIN; INSERT INTO orders VALUES ({o}, {}); INSERT INTO lines VALUES {}; COMMIT",
                amounts.iter().sum::<i64>(),
                lines.join(", ")
            )
        }
        _ => {
            let o = rng.gen_range(1..=(*next_order).max(1));
            if rng.gen_bool(0.5) {
                format!(
                    "BEGIN; UPDATE lines SET amount = amount + 7 WHERE order_id = {o} AND n = 0; \
                     UPDATE orders SET total = total + 7 WHERE id = {o} AND EXISTS \
                       (SELECT FROM lines WHERE order_id = {o} AND n = 0); COMMIT"
                )
            } else {
                format!(
                    "BEGIN; DELETE FROM lines WHERE order_id = {o}; DELETE FROM orders WHERE id = {o}; COMMIT"
                )
            }
        }
    }
}

/// Samples `target` in one snapshot after another until `stop`; counts
/// snapshots with an invariant broken.
fn reader(
    target: PgPool,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut tx = target.begin().await.unwrap();
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .unwrap();
            let row: Result<(i64, i64, i64, i64), _> = sqlx::query_as(
                "SELECT (SELECT count(*) FROM replica.accounts), \
                        (SELECT coalesce(sum(balance), 0)::bigint FROM replica.accounts), \
                        (SELECT count(*) FROM replica.orders o WHERE o.total <> \
                           (SELECT coalesce(sum(amount), 0) FROM replica.lines l WHERE l.order_id = o.id)), \
                        (SELECT count(*) FROM replica.lines l WHERE NOT EXISTS \
                           (SELECT FROM replica.orders o WHERE o.id = l.order_id))",
            )
            .fetch_one(&mut *tx)
            .await;
            drop(tx);
            if let Ok((accounts, sum, bad_orders, orphans)) = row {
                samples += 1;
                let broken_now = (accounts == ACCOUNTS && sum != ACCOUNTS * INITIAL)
                    || bad_orders > 0
                    || orphans > 0;
                if broken_now {
                    broken.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    })
}

/// The tables whose replica differs from the source (rows as text).
async fn differs(source: &PgPool, target: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for (t, cols, key) in [
        ("accounts", "id, balance", "id"),
        ("orders", "id, total", "id"),
        ("lines", "order_id, n, amount", "order_id, n"),
    ] {
        let rows = |schema: &str| {
            format!(
                "SELECT coalesce(string_agg(row({cols})::text, ';' ORDER BY {key}), '') FROM {schema}.{t}"
            )
        };
        let src: String = sqlx::query_scalar(&rows("public"))
            .fetch_one(source)
            .await
            .unwrap();
        let dst: Option<String> = sqlx::query_scalar(&rows("replica"))
            .fetch_one(target)
            .await
            .ok();
        if dst.as_deref() != Some(src.as_str()) {
            out.push(format!("{t}: source {src:.200} vs replica {dst:.200?}"));
        }
    }
    out
}

/// The replica that holds the active-member lock (the one whose log says
/// so and is still running).
async fn active_replica(replicas: &[SinkProcess]) -> usize {
    let mut found = None;
    wait_until(T, "an active member", || {
        found = replicas.iter().position(|r| {
            r.logs()
                .contains("active member for whole source transactions")
        });
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_transactions_are_never_seen_in_part() {
    let mut rng = StdRng::seed_from_u64(test_seed("cdc_transactions"));
    let source = source_db().await;
    sqlx::raw_sql(SCHEMA).execute(&source.pool).await.unwrap();
    sqlx::raw_sql(&format!(
        "INSERT INTO accounts SELECT g, {INITIAL} FROM generate_series(1, {ACCOUNTS}) g"
    ))
    .execute(&source.pool)
    .await
    .unwrap();
    let (whole, parts) = (TestDb::new().await, TestDb::new().await);
    sqlx::raw_sql(TARGET).execute(&whole.pool).await.unwrap();
    // In parts a line can arrive before its order: no foreign key there.
    let no_fk = TARGET.replace(
        ", FOREIGN KEY (order_id) REFERENCES replica.orders DEFERRABLE INITIALLY DEFERRED",
        "",
    );
    assert_ne!(no_fk, TARGET);
    sqlx::raw_sql(&no_fk).execute(&parts.pool).await.unwrap();

    let prefix = unique("kpgs_tx");
    let connector = Connector::start(
        "source-props",
        &[
            "--db",
            &source.name,
            "--tables",
            "public\\..*",
            "--prefix",
            &prefix,
            "--schemas",
            "--partitions",
            "2",
            "provide.transaction.metadata=true",
            // The transaction topic in one partition: its ENDs in commit order.
            "topic.creation.groups=tx",
            "topic.creation.tx.include=.*\\.transaction",
            "topic.creation.tx.partitions=1",
            "topic.creation.tx.replication.factor=1",
        ],
    );
    let route = whole_database_route(&prefix, "");
    let refresh = "[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"2000\"";
    let on = SinkConfig::with_routes(
        &whole,
        &route,
        &format!("[sink.source_transactions]\nenabled = true\n{refresh}"),
    );
    let off = SinkConfig::with_routes(&parts, &route, refresh);
    off.rewrite("max_messages = 500", "max_messages = 2");

    let stop = Arc::new(AtomicBool::new(false));
    let (broken_on, broken_off) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader_on = reader(whole.pool.clone(), stop.clone(), broken_on.clone());
    let reader_off = reader(parts.pool.clone(), stop.clone(), broken_off.clone());
    let mut replicas = vec![
        SinkProcess::start(&on),
        SinkProcess::start_with(&on, free_port(), &[]),
    ];
    let _parts_sink = SinkProcess::start(&off);

    let mut next_order = 0;
    for round in 0..6 {
        for _ in 0..rng.gen_range(40..80) {
            let sql = transaction(&mut rng, &mut next_order);
            sqlx::raw_sql(&sql).execute(&source.pool).await.unwrap();
        }
        match round {
            1 | 3 => {
                // The active member dies; the standby takes over, and a
                // new standby joins.
                let i = active_replica(&replicas).await;
                replicas.remove(i).kill9();
                replicas.push(SinkProcess::start_with(&on, free_port(), &[]));
            }
            2 => {
                connector.wait_offset_with("lsn_proc", T).await;
                connector.kill9();
                connector.run();
            }
            _ => {}
        }
    }
    for (db, cfg, what) in [(&whole, &on, "whole"), (&parts, &off, "in parts")] {
        if !poll_until(T, || async {
            differs(&source.pool, &db.pool).await.is_empty()
        })
        .await
        {
            panic!(
                "{what}: timed out waiting for the target to equal the source:\n{}\n{}",
                differs(&source.pool, &db.pool).await.join("\n"),
                connector.log_tail(40)
            );
        }
        wait_until(T, "positions at the end of every topic", || {
            caught_up(db, &cfg.group, &prefix)
        })
        .await;
    }
    // A replay from the beginning: whole transactions again, never part.
    replay_to_earliest(&on);
    wait_until(T, "the replay to reach the end", || {
        caught_up(&whole, &on.group, &prefix)
    })
    .await;
    assert!(differs(&source.pool, &whole.pool).await.is_empty());

    stop.store(true, Ordering::Relaxed);
    let (samples_on, samples_off) = (reader_on.await.unwrap(), reader_off.await.unwrap());
    let active = &replicas[active_replica(&replicas).await];
    let m = active.metrics().await.unwrap_or_default();
    assert!(
        metric(&m, "kafka_pg_sink_source_transactions_released_total") > 0.0,
        "{m}"
    );
    eprintln!(
        "cdc_transactions: {samples_on} samples whole, {samples_off} in parts ({} broken); \
         presumed re-sends {}, split {}",
        broken_off.load(Ordering::Relaxed),
        metric(
            &m,
            "kafka_pg_sink_source_transactions_presumed_resent_total"
        ),
        metric(&m, "kafka_pg_sink_source_transactions_split_total"),
    );
    assert_eq!(
        broken_on.load(Ordering::Relaxed),
        0,
        "a reader saw part of a source transaction ({samples_on} samples)"
    );
    assert!(
        broken_off.load(Ordering::Relaxed) > 0,
        "without whole transactions a reader should see part of one ({samples_off} samples)"
    );
}
