//! The fence: a zombie that lost its partition cannot commit, and two
//! committers racing for one position never both win.

mod common;

use common::*;
use kafka_pg_sink::event::prepare;
use kafka_pg_sink::kafka::message::SourceMessage;
use kafka_pg_sink::store::{BatchWriter, CommitOutcome};
use kafka_pg_sink::types::{Offset, TopicPartition};

fn msgs(prefix: &str, from: i64, n: i64) -> Vec<SourceMessage> {
    (from..from + n)
        .map(|o| SourceMessage {
            tp: TopicPartition::new("orders", 0),
            offset: Offset(o),
            key: None,
            payload: Some(format!(r#"{{"id":"{prefix}-{o}"}}"#).into_bytes()),
            timestamp: None,
            headers: Vec::new(),
            source_commit: None,
        })
        .collect()
}

async fn setup() -> (TestDb, BatchWriter) {
    let db = TestDb::new().await;
    let writer = db
        .writer_for("topic = \"orders\"\ntable = \"events\"\nkey = \"/id\"")
        .await;
    (db, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_commit_is_refused_after_the_new_owner_commits() {
    let (db, w) = setup().await;
    // First owner commits offsets 0..9.
    let first = prepare(w.routes().all(), msgs("a", 0, 10));
    let r = commit(&w, &first, &orders_position(None, 9)).await;
    assert!(matches!(r, CommitOutcome::Committed(_)));

    // Zombie A holds a batch for 10..19 believing it owns position 10.
    let zombie = prepare(w.routes().all(), msgs("zombie", 10, 10));
    // Meanwhile the partition moved to B, which read 10 and committed 10..14.
    let b = prepare(w.routes().all(), msgs("b", 10, 5));
    let r = commit(&w, &b, &orders_position(Some(10), 14)).await;
    assert!(matches!(r, CommitOutcome::Committed(_)));

    // A wakes up and tries to commit: the compare-and-set refuses it.
    let r = commit(&w, &zombie, &orders_position(Some(10), 19)).await;
    match r {
        CommitOutcome::Fenced(tps) => assert_eq!(tps, vec![TopicPartition::new("orders", 0)]),
        other => panic!("zombie was not fenced: {other:?}"),
    }
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE key LIKE 'zombie-%'")
            .await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM events").await, 15);
    assert_eq!(db.stored_offsets("g", "orders").await[&0], 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_commit_race_has_exactly_one_winner() {
    let (db, w) = setup().await;
    let a = prepare(w.routes().all(), msgs("a", 0, 50));
    let b = prepare(w.routes().all(), msgs("b", 0, 50));
    let e = orders_position(None, 49);
    let (ra, rb) = tokio::join!(commit(&w, &a, &e), commit(&w, &b, &e),);
    let wins = [ra, rb]
        .iter()
        .filter(|r| matches!(r, CommitOutcome::Committed(_)))
        .count();
    assert_eq!(wins, 1);
    assert_eq!(db.count("SELECT count(*) FROM events").await, 50);
    assert_eq!(
        db.count("SELECT count(DISTINCT split_part(key, '-', 1)) FROM events")
            .await,
        1,
        "rows of both committers landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_owners_of_a_stored_position_never_both_commit() {
    let (db, w) = setup().await;
    let seed = prepare(w.routes().all(), msgs("s", 0, 1));
    commit(&w, &seed, &orders_position(None, 0)).await;
    for round in 0..20 {
        let at = db.stored_offsets("g", "orders").await[&0];
        let a = prepare(w.routes().all(), msgs(&format!("a{round}"), at, 3));
        let b = prepare(w.routes().all(), msgs(&format!("b{round}"), at, 3));
        let e = orders_position(Some(at), at + 2);
        let (ra, rb) = tokio::join!(commit(&w, &a, &e), commit(&w, &b, &e),);
        let wins = [ra, rb]
            .iter()
            .filter(|r| matches!(r, CommitOutcome::Committed(_)))
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(db.count("SELECT count(*) FROM events").await, 1 + 20 * 3);
}

/// A small batch of one route commits in one statement
/// (`store/single.rs`). That statement waits on the fence's row locks like
/// the long transaction; when the holder moved one of its two partitions,
/// it is refused with exactly that partition and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_statement_commit_waits_on_the_fence_and_names_the_partition_it_lost() {
    use kafka_pg_sink::store::Expected;
    let (db, w) = setup().await;
    let on = |p: i32, from: i64| {
        let mut m = msgs(&format!("p{p}"), from, 3);
        for m in &mut m {
            m.tp = TopicPartition::new("orders", p);
        }
        m
    };
    let both = |from: i64| {
        [0, 1]
            .map(|p| Expected {
                tp: TopicPartition::new("orders", p),
                expected: (from > 0).then_some(Offset(from)),
                new_next: Offset(from + 3),
            })
            .to_vec()
    };
    let first = prepare(w.routes().all(), [on(0, 0), on(1, 0)].concat());
    let r = commit(&w, &first, &both(0)).await;
    assert!(matches!(r, CommitOutcome::Committed(_)), "{r:?}");

    // A new owner of partition 1 holds its row and moves it on.
    let mut owner = db.pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE sink_offsets SET next_offset = 5 \
         WHERE consumer_group = 'g' AND topic = 'orders' AND partition = 1",
    )
    .execute(&mut *owner)
    .await
    .unwrap();
    let held = prepare(w.routes().all(), [on(0, 3), on(1, 3)].concat());
    let pending = tokio::spawn(async move { w.commit(&held, &both(3)).await });
    wait_for_lock_waiter(
        &db.pool,
        "%pg_temp.sink_fence_and_upsert%",
        "the one-statement commit waits for the new owner",
    )
    .await;
    owner.commit().await.unwrap();
    match pending.await.unwrap() {
        Ok(CommitOutcome::Fenced(tps)) => assert_eq!(tps, [TopicPartition::new("orders", 1)]),
        other => panic!("the batch was not fenced: {other:?}"),
    }
    assert_eq!(db.count("SELECT count(*) FROM events").await, 6);
    let stored = db.stored_offsets("g", "orders").await;
    assert_eq!((stored[&0], stored[&1]), (3, 5));
}
