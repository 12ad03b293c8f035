//! A whole database replicated through Kafka with one route, by the real
//! Debezium Postgres source (Kafka Connect 4.3.1, scripts/connect.sh):
//! 21 tables at the start — composite keys, mixed-case and reserved-word
//! names, every common column type, one table of 200,000 rows in the initial
//! snapshot — then a seeded random workload of inserts, updates, deletes,
//! primary-key updates and multi-table transactions, `ALTER TABLE … ADD
//! COLUMN` on two tables and a table created mid-run, while the sink is
//! SIGKILLed three times and the connector once. Every table must end equal
//! to its source (every column, compared as Postgres prints it), and stay
//! equal through `replay --to-earliest`.
//!
//! Needs the CDC source cluster (scripts/connect.sh source-db ensure, done
//! by scripts/test.sh); own test binary because it starts a JVM worker.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::capture::{caught_up, source_db, verify, whole_database_route, Connector};
use common::tables::{column_types, primary_key, quote, rows_as_text, try_rows_as_text};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

const T: Duration = Duration::from_secs(300);
const BIG_ROWS: i64 = 200_000;
const SMALL_TABLES: usize = 16;

/// The capture's tables: (name as SQL, DDL).
fn schema() -> Vec<(String, String)> {
    let mut t = vec![
        (
            r#""Orders""#.to_string(),
            r#"CREATE TABLE "Orders" ("Region" text, id int, amount numeric(12,2) NOT NULL,
                placed timestamptz NOT NULL, "Status" varchar(12), PRIMARY KEY ("Region", id))"#
                .to_string(),
        ),
        (
            r#""order""#.into(),
            r#"CREATE TABLE "order" (id int PRIMARY KEY, "select" text, "from" int)"#.into(),
        ),
        (
            r#""user""#.into(),
            r#"CREATE TABLE "user" (id bigint PRIMARY KEY, name varchar(40) NOT NULL, created timestamp(3))"#
                .into(),
        ),
        (
            "types".into(),
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE types (id int PRIMARY KEY, n numeric, n38 numeric(38,10), m money,
                tstz timestamptz, ts3 timestamp(3), tm time, iv interval, u uuid, jb jsonb,
                ta text[], ia int[], ba bytea, e mood, b bool, vc varchar(20), c3 char(3),
                d date, r real, dp double precision, ip inet)"
                .into(),
        ),
        (
            "big".into(),
            "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL, note text)".into(),
        ),
    ];
    for i in 0..SMALL_TABLES {
        t.push((
            format!("t{i:02}"),
            format!(
                "CREATE TABLE t{i:02} (id int PRIMARY KEY, qty int, price numeric(10,2), note text, \
                 updated timestamp(3))"
            ),
        ));
    }
    t
}

/// Rows present before the connector starts (the snapshot).
async fn seed(db: &TestDb) {
    db.exec(&format!(
        "INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {BIG_ROWS}) g"
    ))
    .await;
    for i in 0..SMALL_TABLES {
        db.exec(&format!(
            "INSERT INTO t{i:02} SELECT g, g, g * 1.25, 'seed', '2026-01-01 00:00:00.123' \
             FROM generate_series(1, 20) g"
        ))
        .await;
    }
    db.exec(
        r#"INSERT INTO "Orders" VALUES ('EU', 1, 10.50, '2026-01-01 10:00+00', 'new'),
                                      ('US', 1, 99.99, '2026-01-02 10:00+00', NULL);
           INSERT INTO "order" VALUES (1, 'x', 2);
           INSERT INTO "user" VALUES (1, 'ada', '2026-01-01 01:02:03.456');"#,
    )
    .await;
    db.exec(&types_row(1)).await;
}

/// A row of `types` with values that stress exactness.
fn types_row(id: i64) -> String {
    format!(
        "INSERT INTO types VALUES ({id}, 123456789012345678901234567890.123456789{id}, \
         1234567890123456789012345678.012345678{}, '{id}.25', '2026-11-27 10:00:00.123456+02', \
         '1969-12-31 23:59:59.999', '23:59:59.999999', '-1 year -2 mons +3 days -04:05:06.789', \
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd38{id:04}', '{{\"n\": 1.000000000000000000001, \"k\": [{id}]}}', \
         '{{a,NULL,\"b c\"}}', '{{1,NULL,{id}}}', '\\x00ff{id:02x}', 'happy', true, 'vc-{id}', 'é', \
         '0001-01-01', 0.1, 1e300, '2001:db8::{id}/64') ON CONFLICT (id) DO NOTHING",
        id % 10
    )
}

/// One random step of the workload; `next` is the next id per small table.
async fn step(db: &TestDb, rng: &mut StdRng, next: &mut [i32], extra_col: bool) {
    let i = rng.gen_range(0..SMALL_TABLES);
    let t = format!("t{i:02}");
    let id = rng.gen_range(1..next[i].max(2));
    let price = format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100));
    let sql = match rng.gen_range(0..12) {
        0..=3 => {
            next[i] += 1;
            format!(
                "INSERT INTO {t} (id, qty, price, note, updated) VALUES ({}, 1, {price}, 'n', \
                 '2026-02-03 04:05:06.789')",
                next[i]
            )
        }
        4..=5 => format!(
            "UPDATE {t} SET qty = coalesce(qty, 0) + 1, price = {price}, note = note || '+' WHERE id = {id}"
        ),
        6 => format!("DELETE FROM {t} WHERE id = {id}"),
        7 => {
            next[i] += 1;
            format!("UPDATE {t} SET id = {} WHERE id = {id}", next[i])
        }
        8 => {
            // A transaction across tables.
            let o = rng.gen_range(2..10_000);
            format!(
                r#"BEGIN; INSERT INTO "Orders" VALUES ('EU', {o}, {price}, now(), 'tx') ON CONFLICT DO NOTHING;
                   UPDATE {t} SET note = 'order {o}' WHERE id = {id};
                   UPDATE "user" SET name = 'u{o}' WHERE id = 1; COMMIT"#
            )
        }
        9 => format!(
            "UPDATE big SET v = v + 1, note = 'changed' WHERE id = {}",
            rng.gen_range(1..=BIG_ROWS)
        ),
        10 => types_row(rng.gen_range(1..40)),
        _ if extra_col => format!("UPDATE t05 SET extra = extra + 1 WHERE id = {id}"),
        _ => r#"UPDATE "order" SET "from" = "from" + 1 WHERE id = 1"#.to_string(),
    };
    db.exec(&sql).await;
}

/// How a column is compared: Postgres's text of the value, but the JSON
/// value of json columns and the label of enums.
fn expr(col: &str, ty: &str) -> String {
    let q = quote(col);
    match ty {
        "json" => format!("{q}::jsonb"),
        _ => q,
    }
}

/// The first difference between a source table and its replica, if any.
async fn difference(source: &PgPool, target: &PgPool, table: &str) -> Option<String> {
    let target_table = format!("replica.{table}");
    let cols = column_types(source, table).await;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&target_table)
        .fetch_one(target)
        .await
        .unwrap();
    if exists.is_none() {
        return Some(format!("{target_table} does not exist yet"));
    }
    let key = primary_key(source, table).await;
    let exprs: Vec<String> = cols.iter().map(|(c, t)| expr(c, t)).collect();
    let s = rows_as_text(source, table, &key, &exprs).await;
    let t = match try_rows_as_text(target, &target_table, &key, &exprs).await {
        Ok(t) => t,
        Err(e) => return Some(e),
    };
    if s == t {
        return None;
    }
    let keys: BTreeSet<&String> = s.keys().chain(t.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| s.get(*k) != t.get(*k))
        .take(5)
        .map(|k| format!("{k}: source {:?} target {:?}", s.get(k), t.get(k)))
        .collect();
    Some(format!(
        "{table}: {} source rows, {} target rows; e.g.\n  {}",
        s.len(),
        t.len(),
        diffs.join("\n  ")
    ))
}

async fn differences(source: &PgPool, target: &PgPool, tables: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        if let Some(d) = difference(source, target, t).await {
            out.push(d);
        }
    }
    out
}

/// The Debezium Postgres source over `db`'s public schema.
fn start_connector(db: &TestDb, prefix: &str) -> Connector {
    Connector::start(
        "source-props",
        &[
            "--db",
            &db.name,
            "--tables",
            "public\\..*",
            "--prefix",
            prefix,
            "--schemas",
            "skipped.operations=none",
            "column.propagate.source.type=.*",
            "interval.handling.mode=string",
            // Tables created on the source while the connector runs.
            "publication.autocreate.mode=all_tables",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_database_replicates_with_one_route() {
    let mut rng = StdRng::seed_from_u64(test_seed("cdc_database"));
    let source = source_db().await;
    let tables = schema();
    for (_, ddl) in &tables {
        source.exec(ddl).await;
    }
    seed(&source).await;
    let mut names: Vec<String> = tables.into_iter().map(|(n, _)| n).collect();
    let target = TestDb::new().await;

    let prefix = unique("kpgs_db");
    let connector = start_connector(&source, &prefix);
    let route = whole_database_route(&prefix, "evolve = \"add_columns\"\n");
    // Topics created while running are subscribed within this refresh.
    let cfg = SinkConfig::with_routes(
        &target,
        &route,
        "[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"2000\"",
    );
    let mut sink = SinkProcess::start(&cfg);

    let mut next = vec![20i32; SMALL_TABLES];
    for round in 0..8 {
        if round == 2 {
            connector.wait_offset_with("lsn_proc", T).await;
        }
        for _ in 0..rng.gen_range(30..60) {
            step(&source, &mut rng, &mut next, round >= 3).await;
        }
        match round {
            2 => {
                // DDL follows the source: a column with a default (existing
                // rows take it) and a nullable one.
                source
                    .exec("ALTER TABLE t05 ADD COLUMN extra int NOT NULL DEFAULT 7")
                    .await;
                source
                    .exec(r#"ALTER TABLE "Orders" ADD COLUMN note varchar(30)"#)
                    .await;
                source
                    .exec(r#"UPDATE "Orders" SET note = 'after ddl' WHERE id = 1"#)
                    .await;
                connector.kill9();
                for _ in 0..20 {
                    step(&source, &mut rng, &mut next, true).await;
                }
                connector.restart(T).await;
            }
            4 => {
                // A table created mid-run.
                source
                    .exec(
                        "CREATE TABLE late (id int PRIMARY KEY, label text); \
                           INSERT INTO late VALUES (1, 'first'), (2, 'second')",
                    )
                    .await;
                names.push("late".into());
                sink.kill9();
                sink = SinkProcess::start(&cfg);
            }
            1 | 6 => {
                sink.kill9();
                sink = SinkProcess::start(&cfg);
            }
            _ => {}
        }
    }
    source
        .exec("UPDATE late SET label = 'changed' WHERE id = 2")
        .await;

    if !poll_until(T, || async {
        differences(&source.pool, &target.pool, &names)
            .await
            .is_empty()
    })
    .await
    {
        panic!(
            "timed out after {T:?} waiting for every table to equal its source:\n{}\n\
             ---- connector log tail ----\n{}\n---- sink log ----\n{}",
            differences(&source.pool, &target.pool, &names)
                .await
                .join("\n"),
            connector.log_tail(60),
            sink.logs()
        );
    }
    wait_until(T, "positions at the end of every topic", || {
        caught_up(&target, &cfg.group, &prefix)
    })
    .await;
    let m = sink.metrics().await.unwrap();
    assert_metrics_identity(&m);
    let created: i64 = target
        .count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'replica'")
        .await;
    assert_eq!(created as usize, names.len(), "one table per source table");

    // A replay from the beginning: every table stays equal to its source
    // while the old changes flow again.
    replay_to_earliest(&cfg);
    wait_until(T, "the replay to reach the end of every topic", || async {
        let d = differences(&source.pool, &target.pool, &names).await;
        assert!(
            d.is_empty(),
            "a table moved during the replay:\n{}",
            d.join("\n")
        );
        caught_up(&target, &cfg.group, &prefix).await
    })
    .await;
    let m = sink.metrics().await.unwrap();
    assert_metrics_identity(&m);

    // verify: every created table equals what its topic says, one table
    // alone too; a row changed behind the sink's back is found.
    let (code, report) = verify(&cfg.path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["routes"].as_array().unwrap().len(),
        names.len(),
        "{report}"
    );
    let (code, report) = verify(&cfg.path, &["--route", "replica.t03"]);
    assert_eq!(
        (code, report["routes"].as_array().unwrap().len()),
        (0, 1),
        "{report}"
    );
    target
        .exec(
            "UPDATE replica.t03 SET note = 'tampered' WHERE id = (SELECT min(id) FROM replica.t03)",
        )
        .await;
    let (code, report) = verify(&cfg.path, &["--route", "replica.t03"]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["routes"][0]["different"], 1, "{report}");
}
