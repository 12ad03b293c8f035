//! Typed tables (`columns = { … }`): two topics into two existing typed tables
//! with every common type, Kafka headers/keys/offsets as columns, composite
//! keys, a hostile column name, tombstones, bad values dead-lettered with
//! column and value named, startup validation, and `on_error = "stop"` for
//! rows Postgres rejects.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sqlx::Row;

const T: Duration = Duration::from_secs(120);

const ORDERS_DDL: &str = "CREATE TABLE orders ( \
    order_id   uuid PRIMARY KEY, \
    amount     numeric(12,2) NOT NULL, \
    created    timestamptz NOT NULL, \
    paid       bool, \
    tags       text[], \
    qty        int[], \
    customer   jsonb, \
    note       text, \
    version    bigint, \
    src_offset bigint, \
    trace      text, \
    loaded_at  timestamptz DEFAULT '2000-01-01')";

/// The hostile column name, as stored in the catalog.
const HOSTILE: &str = r#"we"ird; DROP TABLE orders; --"#;

fn payments_ddl() -> String {
    format!(
        r#"CREATE TABLE "Payment Events" ("tenant id" text NOT NULL, seq bigint NOT NULL, raw jsonb, "kafka key" text, {} text, PRIMARY KEY ("tenant id", seq))"#,
        kafka_pg_sink::types::quote_ident(HOSTILE)
    )
}

fn routes(orders: &str, payments: &str) -> String {
    format!(
        r#"
[[route]]
topic = "{orders}"
table = "orders"
key = "order_id"
version = "/version"
columns = {{ order_id = "/id", amount = "/amount", created = "/created", paid = "/paid", tags = "/tags", qty = "/qty", customer = "/customer", note = "/customer/note", version = "/version", src_offset = "@kafka_offset", trace = "@header:trace" }}

[[route]]
topic = "{payments}"
table = '"Payment Events"'
key = ["tenant id", "seq"]
columns = {{ "tenant id" = "@header:tenant", seq = "/seq", raw = "@payload", "kafka key" = "@kafka_key", '{HOSTILE}' = "/memo" }}
"#
    )
}

fn uuid(i: u32) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// What the test expects in `orders` for one id (computed here, not by the sink).
#[derive(Clone, Debug, PartialEq)]
struct Order {
    amount: String,
    created_ms: i64,
    paid: bool,
    tags: Vec<String>,
    qty: Vec<i32>,
    customer: Value,
    note: String,
    version: i64,
    trace: String,
}

fn order_event(i: u32, version: i64) -> (Value, Order) {
    let cents = i * 125 + 1 + if version > 1 { 1000 } else { 0 };
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    let day = i % 28 + 1;
    let created = format!("2026-01-{day:02}T10:00:00.5Z");
    let created_ms = chrono::DateTime::parse_from_rfc3339(&created)
        .unwrap()
        .timestamp_millis();
    let customer = json!({"name": format!("c{i}"), "note": format!("n{i}-{version}")});
    let payload = serde_json::from_str(&format!(
        r#"{{"id":"{}","amount":{amount},"created":"{created}","paid":{},"tags":["a","b{i}"],"qty":[{i},{}],"customer":{customer},"version":{version},"sent_at":"{}"}}"#,
        uuid(i),
        version > 1,
        i + 1,
        version * 1000 + i as i64,
    ))
    .unwrap();
    let order = Order {
        amount,
        created_ms,
        paid: version > 1,
        tags: vec!["a".into(), format!("b{i}")],
        qty: vec![i as i32, i as i32 + 1],
        note: format!("n{i}-{version}"),
        customer,
        version,
        trace: format!("tr-{i}-{version}"),
    };
    (payload, order)
}

async fn orders_table(db: &TestDb) -> BTreeMap<String, Order> {
    sqlx::query(
        "SELECT order_id::text, amount::text, (extract(epoch FROM created) * 1000)::bigint, paid, \
                tags, qty, customer::text, note, version, trace FROM orders",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<String, _>(0),
            Order {
                amount: r.get(1),
                created_ms: r.get(2),
                paid: r.get(3),
                tags: r.get(4),
                qty: r.get(5),
                customer: serde_json::from_str(&r.get::<String, _>(6)).unwrap(),
                note: r.get(7),
                version: r.get(8),
                trace: r.get(9),
            },
        )
    })
    .collect()
}

/// Whole-table checksum of a typed table (every column, key order).
async fn table_checksum(db: &TestDb, table: &str) -> String {
    sqlx::query_scalar::<_, Option<String>>(&format!(
        "SELECT md5(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY to_jsonb(t)::text)) FROM {table} t"
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

async fn create_tables(db: &TestDb) {
    db.exec(ORDERS_DDL).await;
    db.exec(&payments_ddl()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_into_two_typed_tables() {
    let db = TestDb::new().await;
    create_tables(&db).await;
    let orders = TestTopic::new(2).await;
    let payments = TestTopic::new(1).await;

    // Orders: every order twice (a duplicate), every third gets version 2,
    // every fifteenth then a late version 1 (stale), three are deleted.
    let mut expected: BTreeMap<String, Order> = BTreeMap::new();
    let mut duplicates = 0;
    let send = |i: u32, version: i64, payload: &Value| {
        let id = uuid(i);
        orders.send_with_headers(
            partition_of(&id, 2),
            Some(&id),
            Some(payload.to_string().as_bytes()),
            &[("trace", &format!("tr-{i}-{version}"))],
        );
    };
    for i in 0..60u32 {
        let (p1, o1) = order_event(i, 1);
        send(i, 1, &p1);
        send(i, 1, &p1);
        duplicates += 1;
        expected.insert(uuid(i), o1);
        if i % 3 == 0 {
            let (p2, o2) = order_event(i, 2);
            send(i, 2, &p2);
            expected.insert(uuid(i), o2);
            if i % 15 == 0 {
                send(i, 1, &p1);
            }
        }
    }
    for i in [1u32, 2, 4] {
        let id = uuid(i);
        orders.send(partition_of(&id, 2), Some(&id), None);
        expected.remove(&id);
    }
    // Values Postgres cannot store: (column, bad value, what the error shows).
    let bad: Vec<(&str, Value, &str)> = vec![
        ("amount", json!("abc"), "abc"),
        ("created", json!("2026-13-45"), "2026-13-45"),
        // Postgres would accept this, relative to the clock: refused so a
        // replay cannot write a different value.
        ("created", json!("yesterday"), "yesterday"),
        ("qty", json!([1, "x"]), r#"[1,"x"]"#),
        ("tags", json!({"x": 1}), r#"{"x":1}"#),
        ("amount", Value::Null, "not-null"),
    ];
    for (n, (column, value, _)) in bad.iter().enumerate() {
        let i = 1000 + n as u32;
        let (mut payload, _) = order_event(i, 1);
        payload[*column] = value.clone();
        let id = uuid(i);
        orders.send(
            partition_of(&id, 2),
            Some(&id),
            Some(payload.to_string().as_bytes()),
        );
    }
    let bad_key = r#"{"id":"not-a-uuid","amount":1,"created":"2026-01-01T00:00:00Z","version":1}"#;
    orders.send(0, Some("not-a-uuid"), Some(bad_key.as_bytes()));
    orders.send(1, Some("also-not-a-uuid"), None); // tombstone with a bad key
    orders.flush();

    // Payments: composite key from a header and a field, the payload as
    // jsonb, the Kafka key and a hostile column; duplicates and a tombstone.
    let mut pay_expected: BTreeMap<(String, i64), String> = BTreeMap::new();
    for seq in 0..30i64 {
        let tenant = if seq % 2 == 0 { "t1" } else { "t2" };
        let body = json!({"seq": seq, "memo": format!("m{seq}'; DROP TABLE orders; --")});
        let copies = if seq % 3 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            payments.send_with_headers(
                0,
                Some(&format!("pay-{seq}")),
                Some(body.to_string().as_bytes()),
                &[("tenant", tenant)],
            );
        }
        duplicates += copies - 1;
        pay_expected.insert((tenant.into(), seq), body["memo"].as_str().unwrap().into());
    }
    payments.send_with_headers(0, Some(r#"{"seq":4}"#), None, &[("tenant", "t1")]);
    pay_expected.remove(&("t1".to_string(), 4));
    payments.flush();

    let cfg = SinkConfig::with_routes(&db, &routes(&orders.name, &payments.name), "");
    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &orders, T).await;
    wait_caught_up(&db, &cfg.group, &payments, T).await;

    assert_eq!(orders_table(&db).await, expected);

    let pay: BTreeMap<(String, i64), String> = sqlx::query(&format!(
        r#"SELECT "tenant id", seq, {} FROM "Payment Events""#,
        kafka_pg_sink::types::quote_ident(HOSTILE)
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect();
    assert_eq!(pay, pay_expected);
    assert_eq!(
        db.count(r#"SELECT count(*) FROM "Payment Events" WHERE raw->>'seq' = seq::text AND "kafka key" = 'pay-' || seq"#)
            .await,
        29,
        "raw payload and Kafka key columns"
    );

    // Dead letters: one per bad value, naming column and value.
    let dead: Vec<(String, String)> = sqlx::query(
        "SELECT convert_from(coalesce(message_key, ''), 'UTF8'), error FROM sink_dead_letters \
         WHERE consumer_group = $1 ORDER BY kafka_offset",
    )
    .bind(&cfg.group)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(dead.len(), bad.len() + 2, "{dead:#?}");
    for (n, (column, _, shown)) in bad.iter().enumerate() {
        let id = uuid(1000 + n as u32);
        let (_, error) = dead
            .iter()
            .find(|(k, _)| k.contains(&id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {dead:#?}"));
        assert!(error.contains(&format!("\"{column}\"")), "{error}");
        if *shown == "not-null" {
            assert!(error.contains("not-null constraint"), "{error}");
        } else {
            assert!(error.contains(shown), "{error} should show {shown}");
        }
    }
    assert!(
        dead.iter()
            .any(|(_, e)| e.contains("\"order_id\"") && e.contains("not-a-uuid")),
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .any(|(_, e)| e.contains("tombstone key rejected") && e.contains("uuid")),
        "{dead:#?}"
    );

    let text = sink.metrics().await.unwrap();
    assert_metrics_identity(&text);
    assert_eq!(
        metric(&text, "kafka_pg_sink_duplicates_total"),
        duplicates as f64
    );
    assert_eq!(
        metric(&text, "kafka_pg_sink_dead_letters_total"),
        (bad.len() + 2) as f64
    );
    drop(sink);

    // Batch boundaries leave no trace: one message per batch gives the same
    // tables, source-offset column included.
    let single = TestDb::new().await;
    create_tables(&single).await;
    let one_cfg = SinkConfig::with_routes(&single, &routes(&orders.name, &payments.name), "");
    one_cfg.rewrite("max_messages = 500", "max_messages = 1");
    let _one = SinkProcess::start(&one_cfg);
    wait_caught_up(&single, &one_cfg.group, &orders, T).await;
    wait_caught_up(&single, &one_cfg.group, &payments, T).await;
    for table in ["orders", r#""Payment Events""#] {
        assert_eq!(
            table_checksum(&db, table).await,
            table_checksum(&single, table).await,
            "{table} differs between batched and one-by-one runs"
        );
    }
}

/// Runs `kafka-pg-sink setup`: (success, output).
fn setup(cfg: &SinkConfig) -> (bool, String) {
    cfg.cli(&["setup"], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_tables_are_validated_at_startup() {
    let db = TestDb::new().await;
    let route = |table: &str, key: &str, columns: &str| {
        format!("[[route]]\ntopic = \"t\"\ntable = \"{table}\"\nkey = {key}\ncolumns = {columns}\n")
    };
    // Missing table.
    let cfg = SinkConfig::with_routes(&db, &route("nope", "\"id\"", r#"{ id = "/id" }"#), "");
    let (ok, err) = setup(&cfg);
    assert!(
        !ok && err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );

    db.exec(
        "CREATE TABLE t1 (id int, v text, must text NOT NULL, gen int GENERATED ALWAYS AS (id * 2) STORED)",
    )
    .await;
    let cfg = SinkConfig::with_routes(
        &db,
        &route(
            "t1",
            "\"id\"",
            r#"{ id = "/id", v = "/v", missing = "/m", gen = "/g" }"#,
        ),
        "",
    );
    let (ok, err) = setup(&cfg);
    assert!(!ok, "{err}");
    for want in [
        r#"no column "missing""#,
        r#"column "gen" is generated"#,
        r#"column "must" is NOT NULL without a default"#,
        r#"key ("id") needs a primary key or unique index"#,
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }

    // A good table passes; a partial unique index does not count.
    db.exec("CREATE TABLE t2 (id int, v text)").await;
    db.exec("CREATE UNIQUE INDEX ON t2 (id) WHERE v IS NOT NULL")
        .await;
    let cfg = SinkConfig::with_routes(
        &db,
        &route("t2", "\"id\"", r#"{ id = "/id", v = "/v" }"#),
        "",
    );
    let (ok, err) = setup(&cfg);
    assert!(
        !ok && err.contains("needs a primary key or unique index"),
        "{err}"
    );
    db.exec("CREATE UNIQUE INDEX ON t2 (id)").await;
    let (ok, err) = setup(&cfg);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_stop_halts_before_a_value_postgres_rejects() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE m (id text PRIMARY KEY, n int NOT NULL)")
        .await;
    let topic = TestTopic::new(1).await;
    for i in 0..40 {
        let n = if i == 25 {
            r#""many""#.to_string()
        } else {
            i.to_string()
        };
        topic.send(
            0,
            None,
            Some(format!(r#"{{"id":"k{i}","n":{n}}}"#).as_bytes()),
        );
    }
    topic.flush();
    let route = format!(
        "[[route]]\ntopic = \"{}\"\ntable = \"m\"\nkey = \"id\"\ncolumns = {{ id = \"/id\", n = \"/n\" }}\n",
        topic.name
    );
    let cfg = SinkConfig::with_routes(&db, &route, "on_error = \"stop\"");
    cfg.rewrite("max_messages = 500", "max_messages = 10");
    let mut sink = SinkProcess::start(&cfg);
    let mut status = None;
    wait_until(T, "the sink to stop on the bad value", || {
        status = sink.child.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    assert!(!status.unwrap().success(), "stop must exit non-zero");
    let logs = sink.logs();
    assert!(
        logs.contains(r#"column \"n\""#) || logs.contains(r#"column "n""#),
        "{logs}"
    );
    // Batches of at most 10: everything before the batch holding offset 25
    // is committed, that batch is not, and rows match the stored offset.
    let stored = db.stored_offsets(&cfg.group, &topic.name).await[&0];
    assert!((16..=25).contains(&stored), "stored offset {stored}");
    assert_eq!(db.count("SELECT count(*) FROM m").await, stored);
    assert_eq!(db.count("SELECT count(*) FROM sink_dead_letters").await, 0);
}
