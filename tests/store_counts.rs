//! The upsert's duplicate pre-filter (used when re-deliveries dominate) is an
//! optimisation only: with or without it, the same batch gives the same
//! outcome counts and the same table.

mod common;

use common::*;
use kafka_pg_sink::event::prepare;
use kafka_pg_sink::kafka::message::SourceMessage;
use kafka_pg_sink::store::{BatchWriter, CommitOutcome, TableCounts};
use kafka_pg_sink::types::{Offset, TopicPartition};

const ROUTE: &str = "topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"\nversion = \"/v\"";
/// The same without `version`: an older event is applied (last write wins).
const UNVERSIONED: &str = "topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"";

fn msg(offset: i64, id: u32, v: i64, body: &str) -> SourceMessage {
    SourceMessage {
        tp: TopicPartition::new("orders", 0),
        offset: Offset(offset),
        key: None,
        payload: Some(format!(r#"{{"id":"k{id}","v":{v},"body":"{body}"}}"#).into_bytes()),
        timestamp: None,
        headers: Vec::new(),
        source_commit: None,
    }
}

/// Prepares and commits `msgs`, which continue from stored position `from`.
async fn commit_messages(
    writer: &BatchWriter,
    msgs: Vec<SourceMessage>,
    from: Option<i64>,
) -> TableCounts {
    let last = msgs.last().unwrap().offset.0;
    let batch = prepare(writer.routes().all(), msgs);
    let mut c = match commit(writer, &batch, &orders_position(from, last)).await {
        CommitOutcome::Committed(c) => c,
        other => panic!("{other:?}"),
    };
    // One table: its own counts are the batch's.
    let by_table = std::mem::take(&mut c.by_table);
    let ours = by_table.get("events").copied().unwrap_or_default();
    assert_eq!(ours, [c.inserted, c.updated, c.deleted], "{by_table:?}");
    assert!(by_table.len() <= 1, "{by_table:?}");
    c
}

async fn run(route: &str, filter: bool) -> (TableCounts, String) {
    let db = TestDb::new().await;
    let writer = db.writer_for(route).await;
    let first: Vec<SourceMessage> = (0..20).map(|i| msg(i as i64, i, 2, "a")).collect();
    commit_messages(&writer, first, None).await;

    let mut second = Vec::new();
    let mut offset = 20;
    let mut push = |id: u32, v: i64, body: &str| {
        second.push(msg(offset, id, v, body));
        offset += 1;
    };
    for id in 0..5 {
        push(id, 2, "a"); // exact re-delivery
    }
    for id in 5..10 {
        push(id, 1, "old"); // older version: stale
    }
    for id in 10..15 {
        push(id, 3, "new"); // newer version: update
    }
    for id in 20..25 {
        push(id, 1, "fresh"); // new key
    }
    writer.set_duplicate_heavy(0, filter);
    let counts = commit_messages(&writer, second, Some(20)).await;
    (counts, db.checksum("events").await)
}

/// The batch of `run` on `route` gives `want` and the same table with and
/// without the pre-filter.
async fn assert_prefilter_neutral(route: &str, want: TableCounts) {
    let (plain, plain_sum) = run(route, false).await;
    let (filtered, filtered_sum) = run(route, true).await;
    assert_eq!(plain, want);
    assert_eq!(filtered, want);
    assert_eq!(plain_sum, filtered_sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_prefilter_changes_nothing_but_speed() {
    let want = TableCounts {
        inserted: 5,
        updated: 5,
        duplicate_in_table: 5,
        stale_in_table: 5,
        ..Default::default()
    };
    assert_prefilter_neutral(ROUTE, want).await;
}

/// Without `version` an older event is a change like any other: the
/// pre-filter keeps it (only same-hash rows are left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unversioned_prefilter_keeps_older_events() {
    let want = TableCounts {
        inserted: 5,
        updated: 10,
        duplicate_in_table: 5,
        ..Default::default()
    };
    assert_prefilter_neutral(UNVERSIONED, want).await;
}

/// `rows_inserted_total` counts rows new to the table: a key created and
/// changed within one batch is one inserted row (its first state superseded),
/// not an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_and_changed_in_one_batch_counts_as_one_insert() {
    let db = TestDb::new().await;
    let writer = db.writer_for(ROUTE).await;
    let first = vec![msg(0, 1, 1, "a"), msg(1, 1, 2, "b"), msg(2, 2, 1, "c")];
    let counts = commit_messages(&writer, first, None).await;
    assert_eq!(
        counts,
        TableCounts {
            inserted: 2,
            ..Default::default()
        }
    );
    let second = vec![msg(3, 2, 2, "d"), msg(4, 3, 1, "e"), msg(5, 3, 2, "f")];
    let counts = commit_messages(&writer, second, Some(3)).await;
    assert_eq!(
        counts,
        TableCounts {
            inserted: 1,
            updated: 1,
            ..Default::default()
        }
    );
    assert_eq!(db.count("SELECT count(*) FROM events").await, 3);
}

/// Document routes share one staging table. In a batch for two routes, each
/// table gets exactly its own rows: the stage is emptied before the second
/// route's rows are loaded into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_document_routes_in_one_batch_write_only_their_own_rows() {
    use kafka_pg_sink::store::Expected;
    let db = TestDb::new().await;
    let writer = db
        .writer_for(&format!(
            "{UNVERSIONED}\n\n[[route]]\ntopic = \"payments\"\ntable = \"payments\"\nkey = \"/id\""
        ))
        .await;
    let mut msgs: Vec<SourceMessage> = (0..4).map(|i| msg(i, i as u32, 1, "order")).collect();
    for i in 0..3 {
        let mut m = msg(i, 100 + i as u32, 1, "payment");
        m.tp = TopicPartition::new("payments", 0);
        msgs.push(m);
    }
    let batch = prepare(writer.routes().all(), msgs);
    let expected = [("orders", 3), ("payments", 2)].map(|(topic, last)| Expected {
        tp: TopicPartition::new(topic, 0),
        expected: None,
        new_next: Offset(last + 1),
    });
    match commit(&writer, &batch, &expected).await {
        CommitOutcome::Committed(c) => assert_eq!(c.inserted, 7, "{c:?}"),
        other => panic!("{other:?}"),
    }
    let keys = |rows: std::collections::BTreeMap<String, _>| rows.into_keys().collect::<Vec<_>>();
    assert_eq!(keys(db.rows("events").await), ["k0", "k1", "k2", "k3"]);
    assert_eq!(keys(db.rows("payments").await), ["k100", "k101", "k102"]);
}

/// A typed batch small enough to travel bound (not COPYed), whose first
/// attempt on a new connection meets a value Postgres refuses: that attempt
/// rolls back the staging table it created, and the retry (and the batch
/// after it) must work against the table created again — a statement that
/// named only the stage's row type failed there with "cache lookup failed
/// for type".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_value_in_the_first_batch_of_a_connection_is_a_dead_letter() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE events (id text PRIMARY KEY, n integer)")
        .await;
    let writer = db
        .writer_for("topic = \"orders\"\ntable = \"events\"\nkey = \"id\"\ncolumns = { id = \"/id\", n = \"/n\" }")
        .await;
    let item = |offset: i64, n: &str| SourceMessage {
        tp: TopicPartition::new("orders", 0),
        offset: Offset(offset),
        key: None,
        payload: Some(format!(r#"{{"id":"i{offset}","n":{n}}}"#).into_bytes()),
        timestamp: None,
        headers: Vec::new(),
        source_commit: None,
    };
    let first = vec![item(0, "1"), item(1, "\"many\""), item(2, "3")];
    let c = commit_messages(&writer, first, None).await;
    assert_eq!((c.inserted, c.rejected.len()), (2, 1), "{c:?}");
    let c = commit_messages(&writer, vec![item(3, "4")], Some(3)).await;
    assert_eq!(c.inserted, 1, "{c:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE n IN (1, 3, 4)")
            .await,
        3
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sink_dead_letters WHERE error LIKE '%many%'")
            .await,
        1
    );
}

/// A batch too large to bind travels by COPY into the connection's staging
/// table; the small batches after it travel bound, on the same kept
/// connection, and their statement reads that table beside their own rows
/// (`stage.rs`, `Loaded::source_sql`). The copied rows must be gone by then:
/// left there, they would be applied again with each later batch, undoing
/// newer changes (last write wins here) and counting as its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_copied_into_a_stage_are_gone_when_the_next_batch_reads_it() {
    let db = TestDb::new().await;
    let writer = db.writer_for(UNVERSIONED).await;
    let body = "x".repeat(100);
    // ~180 KiB of COPY text: over the 64 KiB bound of a bound chunk.
    let big: Vec<SourceMessage> = (0..1200).map(|i| msg(i, i as u32, 1, &body)).collect();
    let c = commit_messages(&writer, big, None).await;
    assert_eq!((c.inserted, c.updated), (1200, 0), "{c:?}");
    let c = commit_messages(&writer, vec![msg(1200, 0, 2, "changed")], Some(1200)).await;
    assert_eq!(
        (c.inserted, c.updated, c.duplicate_in_table),
        (0, 1, 0),
        "{c:?}"
    );
    let c = commit_messages(&writer, vec![msg(1201, 5000, 1, "new")], Some(1201)).await;
    assert_eq!(
        (c.inserted, c.updated, c.duplicate_in_table),
        (1, 0, 0),
        "{c:?}"
    );
    let rows = db.rows("events").await;
    assert_eq!(rows.len(), 1201);
    assert_eq!(rows["k0"]["body"], "changed", "the copied row came back");
    assert_eq!(rows["k5000"]["body"], "new");
}
