//! Change events applied by source position, never by arrival: re-sent older
//! changes after newer ones, a re-sent insert after its delete, and a
//! truncate leave each row as the source database has it — batched or one
//! message per batch alike, for typed and document tables.

mod common;

use common::*;
use kafka_pg_sink::event::prepare;
use kafka_pg_sink::kafka::message::SourceMessage;
use kafka_pg_sink::store::{BatchWriter, CommitOutcome, TableCounts};
use kafka_pg_sink::types::{Offset, TopicPartition};
use serde_json::json;

const TYPED: &str = "topic = \"orders\"\ntable = \"orders\"\nkey = \"id\"\nenvelope = \"debezium\"\n\
    columns = { id = \"/id\", customer = \"/customer\", amount = \"/amount\", src_lsn = \"@source:lsn\" }";
const DOCUMENT: &str =
    "topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"\nenvelope = \"debezium\"";

fn change(offset: i64, op: &str, id: i64, customer: &str, lsn: i64) -> SourceMessage {
    let row = json!({"id": id, "customer": customer, "amount": format!("{id}.50")});
    let (before, after) = match op {
        "d" => (
            json!({"id": id, "customer": "", "amount": null}),
            json!(null),
        ),
        "t" => (json!(null), json!(null)),
        _ => (json!(null), row),
    };
    let value =
        json!({"before": before, "after": after, "op": op, "source": {"lsn": lsn, "txId": lsn}});
    SourceMessage {
        tp: TopicPartition::new("orders", 0),
        offset: Offset(offset),
        key: (op != "t").then(|| json!({"id": id}).to_string().into_bytes()),
        payload: Some(value.to_string().into_bytes()),
        timestamp: None,
        headers: Vec::new(),
        source_commit: None,
    }
}

/// The log: what the source did (c1@10, u1@20, c2@25, d2@30, c3@35), then
/// what a connector restart re-sends (older changes), a truncate @40 with
/// more re-sends behind it, and new changes after it.
fn log() -> Vec<SourceMessage> {
    let spec: [(&str, i64, &str, i64); 13] = [
        ("c", 1, "ann", 10),
        ("u", 1, "ann-2", 20),
        ("c", 2, "bob", 25),
        ("d", 2, "", 30),
        ("c", 3, "cy", 35),
        // re-sent after a connector restart: older than what is stored
        ("c", 1, "ann", 10),
        ("c", 2, "bob", 25),
        ("u", 1, "ann-2", 20),
        ("t", 0, "", 40),
        ("u", 1, "ann-2", 20),
        ("c", 3, "cy", 35),
        ("c", 4, "dee", 45),
        ("u", 3, "cy-2", 50),
    ];
    spec.iter()
        .enumerate()
        .map(|(i, (op, id, c, lsn))| change(i as i64, op, *id, c, *lsn))
        .collect()
}

/// Commits `msgs` in batches of `batch`, the partition's stored position
/// being `from` before the first.
async fn run_at(
    writer: &BatchWriter,
    msgs: &[SourceMessage],
    batch: usize,
    from: Option<i64>,
) -> TableCounts {
    let mut total = TableCounts::default();
    let mut next = from;
    for chunk in msgs.chunks(batch) {
        let b = prepare(writer.routes().all(), chunk.to_vec());
        let last = chunk.last().unwrap().offset.0;
        match commit(writer, &b, &orders_position(next, last)).await {
            CommitOutcome::Committed(c) => total.absorb(c),
            other => panic!("{other:?}"),
        }
        next = Some(last + 1);
    }
    total
}

async fn run(writer: &BatchWriter, msgs: &[SourceMessage], batch: usize) -> TableCounts {
    run_at(writer, msgs, batch, None).await
}

async fn typed_rows(db: &TestDb) -> Vec<(i32, String, String, i64)> {
    sqlx::query_as("SELECT id, customer, amount::text, src_lsn FROM orders ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_rows_follow_source_positions_whatever_the_batches() {
    let mut results = Vec::new();
    for batch in [1, 4, 100] {
        let db = TestDb::new().await;
        db.exec("CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), src_lsn bigint NOT NULL)")
            .await;
        let writer = db.writer_for(TYPED).await;
        run(&writer, &log(), batch).await;
        let rows = typed_rows(&db).await;
        // After the truncate @40 only changes newer than it remain.
        assert_eq!(
            rows,
            vec![
                (3, "cy-2".into(), "3.50".into(), 50),
                (4, "dee".into(), "4.50".into(), 45)
            ],
            "batch size {batch}"
        );
        results.push(rows);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_insert_after_its_delete_stays_deleted() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), src_lsn bigint NOT NULL)")
        .await;
    let writer = db.writer_for(TYPED).await;
    let first = vec![
        change(0, "c", 7, "eve", 100),
        change(1, "u", 7, "eve-2", 110),
        change(2, "d", 7, "", 120),
    ];
    let counts = run(&writer, &first, 1).await;
    assert_eq!((counts.inserted, counts.updated, counts.deleted), (1, 1, 1));
    // The connector restarts and sends all three again, then the insert alone.
    let mut again: Vec<SourceMessage> = first
        .iter()
        .cloned()
        .chain([change(0, "c", 7, "eve", 100)])
        .collect();
    for (i, m) in again.iter_mut().enumerate() {
        m.offset = Offset(3 + i as i64);
    }
    let counts = run_at(&writer, &again, 1, Some(3)).await;
    assert!(typed_rows(&db).await.is_empty(), "the delete is remembered");
    assert_eq!(counts.inserted + counts.updated + counts.deleted, 0);
    assert_eq!(
        db.count("SELECT position::bigint FROM sink_delete_markers")
            .await,
        120
    );
    // A newer insert of the same key is a real re-insert.
    let back = vec![change(7, "c", 7, "eve-3", 130)];
    run_at(&writer, &back, 1, Some(7)).await;
    assert_eq!(
        typed_rows(&db).await,
        vec![(7, "eve-3".into(), "7.50".into(), 130)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_tables_follow_source_positions_too() {
    let mut tables = Vec::new();
    for batch in [1, 5, 100] {
        let db = TestDb::new().await;
        let writer = db.writer_for(DOCUMENT).await;
        let counts = run(&writer, &log(), batch).await;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT key, payload->>'customer', version::bigint FROM events ORDER BY key",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![
                ("3".into(), "cy-2".into(), 50),
                ("4".into(), "dee".into(), 45)
            ],
            "batch size {batch}: {counts:?}"
        );
        tables.push(rows);
    }
    assert!(tables.windows(2).all(|w| w[0] == w[1]));
}
