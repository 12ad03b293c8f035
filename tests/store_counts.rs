//! The upsert's duplicate pre-filter (used when re-deliveries dominate) is an
//! optimisation only: with or without it, the same batch gives the same
//! outcome counts and the same table.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use kafka_pg_sink::batch::{prepare, SourceMessage};
use kafka_pg_sink::config::Route;
use kafka_pg_sink::store::{CommitOutcome, TableCounts};
use kafka_pg_sink::types::{Offset, TopicPartition};

fn routes() -> Vec<Route> {
    direct_routes("topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"\nversion = \"/v\"")
}

fn msg(offset: i64, id: u32, v: i64, body: &str) -> SourceMessage {
    SourceMessage {
        tp: TopicPartition::new("orders", 0),
        offset: Offset(offset),
        key: None,
        payload: Some(format!(r#"{{"id":"k{id}","v":{v},"body":"{body}"}}"#).into_bytes()),
        timestamp: None,
        headers: Vec::new(),
    }
}

/// Prepares and commits `msgs`, which continue from stored position `from`.
async fn commit_messages(
    db: &TestDb,
    routes: &[Route],
    msgs: Vec<SourceMessage>,
    from: Option<i64>,
) -> TableCounts {
    let last = msgs.last().unwrap().offset.0;
    let batch = prepare(routes, msgs);
    match commit(db, routes, &batch, &orders_position(from, last)).await {
        CommitOutcome::Committed(c) => c,
        other => panic!("{other:?}"),
    }
}

async fn run(filter: bool) -> (TableCounts, String) {
    let db = TestDb::new().await;
    let routes = routes();
    db.prepare_for(&routes).await;
    let first: Vec<SourceMessage> = (0..20).map(|i| msg(i as i64, i, 2, "a")).collect();
    commit_messages(&db, &routes, first, None).await;

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
    routes[0].duplicate_heavy.store(filter, Ordering::Relaxed);
    let counts = commit_messages(&db, &routes, second, Some(20)).await;
    (counts, db.checksum("events").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_prefilter_changes_nothing_but_speed() {
    let (plain, plain_sum) = run(false).await;
    let (filtered, filtered_sum) = run(true).await;
    let want = TableCounts {
        inserted: 5,
        updated: 5,
        duplicate_in_table: 5,
        stale_in_table: 5,
        ..Default::default()
    };
    assert_eq!(plain, want);
    assert_eq!(filtered, want);
    assert_eq!(plain_sum, filtered_sum);
}
