use super::*;
use crate::types::{Offset, Version};

fn tp(topic: &str, p: i32) -> TopicPartition {
    TopicPartition::new(topic, p)
}

fn msg(topic: &str, p: i32, offset: i64, value: &str) -> Envelope {
    Envelope::message(
        SourceMessage {
            tp: tp(topic, p),
            offset: Offset(offset),
            key: None,
            payload: Some(value.as_bytes().to_vec()),
            timestamp: None,
            headers: Vec::new(),
            source_commit: None,
        },
        1,
    )
}

fn change(topic: &str, p: i32, offset: i64, tx: Option<&str>) -> Envelope {
    // The order is the id's LSN part, as a connector's copy keeps both.
    let tx = tx.map_or("null".to_string(), |t| {
        let order = t.split_once(':').map_or("null", |(_, lsn)| lsn);
        format!(r#"{{"id":"{t}","total_order":{order}}}"#)
    });
    msg(
        topic,
        p,
        offset,
        &format!(
            r#"{{"op":"c","after":{{"id":{offset}}},"source":{{"lsn":{offset}}},"transaction":{tx}}}"#
        ),
    )
}

fn begin(offset: i64, id: &str) -> Envelope {
    msg(
        "db.transaction",
        0,
        offset,
        &format!(r#"{{"status":"BEGIN","id":"{id}","event_count":null,"data_collections":null}}"#),
    )
}

fn end(offset: i64, id: &str, counts: &[(&str, u64)]) -> Envelope {
    let c: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!(r#"{{"data_collection":"{t}","event_count":{n}}}"#))
        .collect();
    msg(
        "db.transaction",
        0,
        offset,
        &format!(
            r#"{{"status":"END","id":"{id}","event_count":{},"data_collections":[{}]}}"#,
            counts.iter().map(|(_, n)| n).sum::<u64>(),
            c.join(",")
        ),
    )
}

fn gate() -> Gate {
    Gate::new(1000, TransactionOverflow::Split, |t| t != "db.public.audit")
}

/// (topic, partition, offset, is a position) of what was released.
fn released(envs: &[Envelope]) -> Vec<(String, i32, i64, bool)> {
    envs.iter()
        .map(|e| match &e.item {
            Polled::Message(m) => (m.tp.topic.to_string(), m.tp.partition, m.offset.0, false),
            Polled::Skipped { tp, next } => (tp.topic.to_string(), tp.partition, next.0 - 1, true),
            Polled::OutOfRange { tp, .. } => (tp.topic.to_string(), tp.partition, -1, false),
        })
        .collect()
}

#[test]
fn markers_are_read_with_and_without_schemas() {
    let m = |v: &str| match msg("db.transaction", 0, 0, v).item {
        Polled::Message(m) => marker(&m),
        _ => None,
    };
    assert_eq!(
        m(r#"{"status":"BEGIN","id":"571:1","event_count":null,"data_collections":null}"#),
        Some(Marker {
            id: "db/571".into(),
            end: None,
            commit: None,
        })
    );
    let with_schema = r#"{"schema":{"type":"struct"},"payload":{"status":"END","id":"571:9","event_count":2,"data_collections":[{"data_collection":"public.a","event_count":2}]}}"#;
    assert_eq!(
        m(with_schema),
        Some(Marker {
            id: "db/571".into(),
            end: Some(vec![("public.a".into(), 2)]),
            commit: Some(9),
        })
    );
    assert_eq!(m(r#"{"op":"c","after":{},"source":{}}"#), None);
}

/// Debezium's Postgres connector names a transaction `<xid>:<lsn>` with
/// each event's own LSN; other connectors' ids are kept whole.
#[test]
fn postgres_ids_are_matched_by_xid_and_others_as_written() {
    assert_eq!(
        transaction_key("7450:650259568".into()),
        ("7450".to_string(), Some(650259568))
    );
    for kept in [
        "mysql-bin.000003:1234",
        "3e11fa47-71ca-11e1-9e33-c80aa9429562:23",
        "0-1-42",
        "00000025:00000d10:0025",
        ":12",
    ] {
        assert_eq!(transaction_key(kept.into()), (kept.to_string(), None));
    }
    let mut g = gate();
    g.push(begin(0, "7450:100"));
    g.push(change("db.public.orders", 0, 0, Some("7450:120")));
    g.push(change("db.public.orders", 1, 0, Some("7450:180")));
    g.push(end(1, "7450:200", &[("public.orders", 2)]));
    assert_eq!(released(&g.release().unwrap()).len(), 4);
}

#[test]
fn a_transaction_waits_for_its_end_and_every_change_then_goes_whole() {
    let mut g = gate();
    g.push(begin(0, "t1"));
    g.push(change("db.public.orders", 0, 0, Some("t1")));
    assert!(g.release().unwrap().is_empty(), "no END yet");
    g.push(end(1, "t1", &[("public.orders", 1), ("public.lines", 2)]));
    g.push(change("db.public.lines", 0, 0, Some("t1")));
    assert!(g.release().unwrap().is_empty(), "one line still missing");
    g.push(change("db.public.lines", 1, 0, Some("t1")));
    let out = released(&g.release().unwrap());
    assert_eq!(out.len(), 5);
    assert!(
        out.contains(&("db.transaction".into(), 0, 1, true)),
        "the END as a position"
    );
    assert!(out.contains(&("db.public.lines".into(), 1, 0, false)));
    assert_eq!(g.state().held_events, 0);
    assert_eq!(g.applied, 1);
}

#[test]
fn transactions_go_in_commit_order_and_snapshot_reads_pass() {
    let mut g = gate();
    g.push(change("db.public.orders", 0, 0, None));
    g.push(begin(0, "t1"));
    g.push(change("db.public.orders", 0, 1, Some("t1")));
    g.push(end(1, "t1", &[("public.orders", 1), ("public.lines", 1)]));
    g.push(begin(2, "t2"));
    g.push(change("db.public.orders", 0, 2, Some("t2")));
    g.push(end(3, "t2", &[("public.orders", 1)]));
    // t2 is complete, t1 is not (its line is missing): only the snapshot
    // read goes, and t2 waits behind t1.
    assert_eq!(
        released(&g.release().unwrap()),
        vec![("db.public.orders".into(), 0, 0, false)]
    );
    g.push(change("db.public.lines", 0, 0, Some("t1")));
    let out = released(&g.release().unwrap());
    let orders: Vec<i64> = out
        .iter()
        .filter(|(t, ..)| t == "db.public.orders")
        .map(|r| r.2)
        .collect();
    assert_eq!(orders, vec![1, 2], "t1 then t2");
    assert_eq!(g.applied, 2);
}

#[test]
fn tables_the_sink_does_not_read_are_not_waited_for() {
    let mut g = gate();
    g.push(begin(0, "t1"));
    g.push(change("db.public.orders", 0, 0, Some("t1")));
    g.push(end(1, "t1", &[("public.orders", 1), ("public.audit", 5)]));
    assert_eq!(g.release().unwrap().len(), 3);
}

#[test]
fn a_transaction_past_the_bound_goes_in_parts_or_stops() {
    let mut g = Gate::new(3, TransactionOverflow::Split, |_| true);
    g.push(begin(0, "big"));
    for i in 0..5 {
        g.push(change("db.public.orders", 0, i, Some("big")));
    }
    let out = g.release().unwrap();
    assert_eq!(out.len(), 6, "BEGIN and the five changes held so far");
    assert_eq!(g.splits, 1);
    g.push(change("db.public.orders", 0, 5, Some("big")));
    g.push(end(1, "big", &[("public.orders", 6)]));
    assert_eq!(g.release().unwrap().len(), 2, "the rest passes");

    let mut g = Gate::new(3, TransactionOverflow::Stop, |_| true);
    for i in 0..5 {
        g.push(change("db.public.orders", 0, i, Some("big")));
    }
    assert!(g.release().unwrap_err().to_string().contains("big"));
}

#[test]
fn a_rewound_partition_drops_what_it_held() {
    let mut g = gate();
    g.push(begin(0, "t1"));
    g.push(change("db.public.orders", 0, 0, Some("t1")));
    // The partition is read again (a replay): a newer generation.
    let mut again = change("db.public.orders", 0, 0, Some("t1"));
    again.generation = 2;
    g.push(again);
    g.push(end(1, "t1", &[("public.orders", 1)]));
    let out = g.release().unwrap();
    assert_eq!(out.len(), 3, "the change once, not twice");
    assert_eq!(out[1].generation.max(out[0].generation), 2);
}

#[test]
fn markers_on_several_partitions_are_refused() {
    let mut g = gate();
    let mut b = begin(0, "t1");
    if let Polled::Message(m) = &mut b.item {
        m.tp = tp("db.transaction", 1);
    }
    g.push(b);
    assert!(g
        .release()
        .unwrap_err()
        .to_string()
        .contains("one partition"));
}

/// A restarted connector re-sends a transaction in part, under the same
/// id, with an END counting it whole: the copy passes (before or after the
/// original is released) and the transactions behind it go on.
#[test]
fn a_transaction_re_sent_in_part_passes_and_does_not_stall() {
    for resend_first in [true, false] {
        let mut g = gate();
        let mut out = Vec::new();
        g.push(begin(0, "7:10"));
        g.push(change("db.public.a", 0, 0, Some("7:11")));
        g.push(change("db.public.a", 0, 1, Some("7:12")));
        g.push(end(1, "7:13", &[("public.a", 2)]));
        if !resend_first {
            out.extend(released(&g.release().unwrap()));
            assert_eq!(out.len(), 4, "the original, whole");
        }
        // The copy: only the second change, counted as two.
        g.push(begin(2, "7:10"));
        g.push(change("db.public.a", 0, 2, Some("7:12")));
        g.push(end(3, "7:13", &[("public.a", 2)]));
        // Then a transaction of its own.
        g.push(begin(4, "8:20"));
        g.push(change("db.public.a", 0, 3, Some("8:21")));
        g.push(end(5, "8:22", &[("public.a", 1)]));
        out.extend(released(&g.release().unwrap()));
        assert_eq!(out.len(), 10, "resend_first {resend_first}: {out:?}");
        assert_eq!(g.state().held_events, 0);
        assert_eq!(g.applied, 2);
    }
}

/// A connector killed inside a transaction leaves its BEGIN without an
/// END; after the restart the transaction comes again, whole or in part.
/// The orphan BEGIN moves its position and blocks nothing; the original
/// changes and the re-sent ones complete the transaction together.
#[test]
fn a_begin_orphaned_by_a_connector_crash_blocks_nothing() {
    let mut g = gate();
    g.push(begin(0, "9:1"));
    g.push(change("db.public.a", 0, 0, Some("9:2")));
    // The crash; the re-send starts after the change already written.
    g.push(begin(1, "9:1"));
    g.push(change("db.public.a", 1, 0, Some("9:3")));
    g.push(end(2, "9:4", &[("public.a", 2)]));
    g.push(begin(3, "10:1"));
    g.push(change("db.public.a", 0, 1, Some("10:2")));
    g.push(end(4, "10:3", &[("public.a", 1)]));
    let out = released(&g.release().unwrap());
    assert_eq!(out.len(), 8, "{out:?}");
    assert_eq!(g.applied, 2);
    assert_eq!(g.state().held_events, 0);
}

/// A process takes over inside a connector's re-send region. The crash cut
/// B short (its BEGIN and first change written); the restarted connector
/// re-sent X, which the predecessor had applied, then B whole. B's first
/// change stands before X's copy: recalled, X passes as the re-send it is
/// and B waits for all its changes; not recalled, X's copy can only be
/// told from a new transaction by the partitions' order, which takes B for
/// the re-send and applies it in parts.
#[test]
fn a_takeover_inside_a_resend_region_applies_the_transaction_cut_short_whole() {
    for recalled in [true, false] {
        let mut g = gate();
        if recalled {
            // The predecessor committed 8: its END is below the position.
            g.rewind(
                &tp("db.transaction", 0),
                ReadNext::From(Some(Offset(10))),
                vec![("db/8".into(), Offset(3))],
            );
        }
        let mut batches = Vec::new();
        g.push(begin(10, "9:1"));
        g.push(change("db.public.a", 0, 10, Some("9:2")));
        g.push(begin(11, "8:1"));
        g.push(change("db.public.a", 0, 11, Some("8:2")));
        g.push(end(12, "8:3", &[("public.a", 1)]));
        g.push(begin(13, "9:1"));
        g.push(change("db.public.a", 0, 12, Some("9:2")));
        g.push(change("db.public.a", 0, 13, Some("9:4")));
        g.push(end(14, "9:5", &[("public.a", 2), ("public.b", 1)]));
        batches.push(released(&g.release().unwrap()));
        g.push(change("db.public.b", 0, 5, Some("9:3")));
        batches.push(released(&g.release().unwrap()));
        let of_b: Vec<usize> = batches
            .iter()
            .map(|out| {
                out.iter()
                    .filter(|(t, p, o, pos)| {
                        !pos && *p == 0
                            && ((t == "db.public.a" && [10, 12, 13].contains(o))
                                || (t == "db.public.b" && *o == 5))
                    })
                    .count()
            })
            .collect();
        if recalled {
            assert_eq!(of_b, [0, 4], "{batches:?}");
            assert_eq!(g.state().held_events, 0);
        } else {
            assert_eq!(of_b, [3, 1], "the fallback splits B: {batches:?}");
        }
    }
}

/// The connector crashed inside B after writing its first change and
/// re-sent B whole: the copy of that change, held beside its original,
/// counts once, so B waits for its change still to come on another table.
#[test]
fn a_copy_held_beside_its_original_does_not_complete_the_transaction() {
    let mut g = gate();
    g.push(begin(0, "9:1"));
    g.push(change("db.public.a", 0, 0, Some("9:2")));
    g.push(begin(1, "9:1"));
    g.push(change("db.public.a", 0, 1, Some("9:2")));
    g.push(change("db.public.a", 0, 2, Some("9:4")));
    g.push(end(2, "9:5", &[("public.a", 2), ("public.b", 1)]));
    let first = released(&g.release().unwrap());
    assert!(first.iter().all(|(_, _, _, pos)| *pos), "{first:?}");
    g.push(change("db.public.b", 0, 0, Some("9:3")));
    let second = released(&g.release().unwrap());
    assert_eq!(second.iter().filter(|(_, _, _, pos)| !pos).count(), 4);
    assert_eq!(g.state().held_events, 0);
}

/// A rebalance drops what the gate released and the pipeline had not yet
/// committed (its generation ended). Read again, that transaction must be
/// gated again, not let through as a re-send of itself in parts.
#[test]
fn a_transaction_released_but_never_committed_is_gated_again_when_read_again() {
    let mut g = gate();
    let t = |g: &mut Gate| {
        g.push(begin(0, "5:1"));
        g.push(change("db.public.a", 0, 0, Some("5:2")));
    };
    t(&mut g);
    g.push(change("db.public.b", 0, 0, Some("5:3")));
    g.push(end(1, "5:4", &[("public.a", 1), ("public.b", 1)]));
    assert_eq!(released(&g.release().unwrap()).len(), 4);
    // The rebalance: every partition is read again from its stored position.
    for tp in [
        tp("db.transaction", 0),
        tp("db.public.a", 0),
        tp("db.public.b", 0),
    ] {
        g.rewind(&tp, ReadNext::From(Some(Offset(0))), Vec::new());
    }
    t(&mut g);
    let out = released(&g.release().unwrap());
    assert!(out.iter().all(|(_, _, _, pos)| *pos), "{out:?}");
    g.push(change("db.public.b", 0, 0, Some("5:3")));
    g.push(end(1, "5:4", &[("public.a", 1), ("public.b", 1)]));
    // Its BEGIN, both changes and its END, together.
    assert_eq!(released(&g.release().unwrap()).len(), 4);
    assert_eq!(g.state().held_events, 0);
}

/// The same through the admission, as the pipeline runs it: the rebalance
/// ends the generation (messages of the old one still queued are dropped)
/// and the callback's rewinds reach the gate before the new messages.
#[test]
fn after_a_rebalance_the_admission_gates_what_it_reads_again() {
    use crate::kafka::assignment::Assignment;
    let parts = [
        tp("db.transaction", 0),
        tp("db.public.a", 0),
        tp("db.public.b", 0),
    ];
    let assignment = Assignment::default();
    assignment.assign(&parts, &Default::default(), true);
    let rewinds = recall::Inbox::default();
    let mut admission = Admission {
        gate: Some(gate()),
        metrics: crate::ops::metrics::Metrics::new()
            .source_transactions
            .clone(),
        rewinds: rewinds.clone(),
        assignment: assignment.clone(),
    };
    let stamped = |env: Envelope| Envelope {
        generation: assignment.stamp(env.tp()).unwrap(),
        ..env
    };
    let whole = |stamped: &dyn Fn(Envelope) -> Envelope| {
        vec![
            stamped(begin(0, "5:1")),
            stamped(change("db.public.a", 0, 0, Some("5:2"))),
            stamped(change("db.public.b", 0, 0, Some("5:3"))),
            stamped(end(1, "5:4", &[("public.a", 1), ("public.b", 1)])),
        ]
    };
    let mut buf = Vec::new();
    admission.admit(whole(&stamped), &mut buf).unwrap();
    assert_eq!(buf.len(), 4, "released before the rebalance");
    let queued = whole(&stamped); // fetched, not yet taken in
                                  // The rebalance, as the callback does it: new generations, then rewinds.
    assignment.assign(&parts, &Default::default(), true);
    for tp in &parts {
        rewinds.lock().unwrap().push(recall::Rewind {
            tp: tp.clone(),
            next: ReadNext::From(Some(Offset(0))),
            recalled: Vec::new(),
        });
    }
    let mut after = Vec::new();
    admission.admit(queued, &mut after).unwrap();
    assert!(after.is_empty(), "the old generation is dropped: {after:?}");
    let stamped = |env: Envelope| Envelope {
        generation: assignment.stamp(env.tp()).unwrap(),
        ..env
    };
    let mut again = whole(&stamped);
    let rest = again.split_off(2);
    admission.admit(again, &mut after).unwrap();
    assert!(
        released(&after).iter().all(|(_, _, _, pos)| *pos),
        "{after:?}"
    );
    admission.admit(rest, &mut after).unwrap();
    assert_eq!(
        released(&after)
            .iter()
            .filter(|(_, _, _, pos)| !pos)
            .count(),
        2
    );
}

/// A keyed change of `id` (`op` `c` or `t`) in transaction `tx`.
fn keyed(topic: &str, offset: i64, key: Option<&str>, tx: Option<&str>, op: &str) -> Envelope {
    let tx = tx.map_or("null".to_string(), |t| {
        format!(r#"{{"id":"{t}","total_order":{offset}}}"#)
    });
    let mut env = msg(
        topic,
        0,
        offset,
        &format!(r#"{{"op":"{op}","after":{{}},"source":{{"lsn":{offset}}},"transaction":{tx}}}"#),
    );
    if let Polled::Message(m) = &mut env.item {
        m.key = key.map(|k| k.as_bytes().to_vec());
    }
    env
}

/// Each row's last change in a released transaction carries its commit
/// (the END id's LSN); its earlier changes, changes before a truncate (by
/// order, whatever the partition), the truncate and changes outside
/// transactions do not. (`keyed` gives each change its offset as order.)
#[test]
fn the_last_change_of_each_row_carries_its_transactions_commit() {
    let mut g = gate();
    let (a, b) = ("db.public.a", "db.public.b");
    for env in [
        keyed(a, 0, Some("K"), None, "r"),
        begin(0, "7:1"),
        keyed(a, 1, Some("K"), Some("7:2"), "c"),
        keyed(a, 2, Some("J"), Some("7:3"), "c"),
        keyed(a, 3, Some("K"), Some("7:4"), "c"),
        keyed(b, 0, Some("K"), Some("7:5"), "c"),
        end(1, "7:100", &[("public.a", 3), ("public.b", 1)]),
        begin(2, "8:101"),
        keyed(a, 4, Some("K"), Some("8:102"), "c"),
        keyed(a, 5, None, Some("8:103"), "t"),
        keyed(a, 6, Some("J"), Some("8:104"), "c"),
        // Released after `a`'s changes, but before the truncate in 8.
        keyed(b, 1, Some("Z"), Some("8:105"), "c"),
        end(3, "8:200", &[("public.a", 3), ("public.b", 1)]),
    ] {
        g.push(env);
    }
    let out = g.release().unwrap();
    let commits: Vec<(String, i64, Option<Version>)> = out
        .iter()
        .filter_map(|e| match &e.item {
            Polled::Message(m) => Some((m.tp.topic.to_string(), m.offset.0, m.source_commit)),
            _ => None,
        })
        .collect();
    let at = |t: &str, o: i64| {
        commits
            .iter()
            .find(|(topic, offset, _)| topic == t && *offset == o)
            .unwrap_or_else(|| panic!("{t}@{o} released: {commits:?}"))
            .2
    };
    assert_eq!(commits.len(), 9, "{commits:?}");
    assert_eq!(at(a, 0), None, "a snapshot read");
    assert_eq!(at(a, 1), None, "K changed again later in 7");
    assert_eq!(
        (at(a, 2), at(a, 3), at(b, 0)),
        (Some(100), Some(100), Some(100))
    );
    assert_eq!(at(a, 4), None, "before 8's truncate");
    assert_eq!((at(a, 5), at(a, 6)), (None, Some(200)));
    assert_eq!(at(b, 1), None, "before 8's truncate by its order");
}

#[test]
fn only_postgres_ends_carry_a_commit() {
    let commit = |id: &str| match end(0, id, &[("public.a", 1)]).item {
        Polled::Message(m) => marker(&m).unwrap().commit,
        _ => None,
    };
    assert_eq!(commit("756:26511824"), Some(26511824));
    assert_eq!(commit("3e11fa47-71ca-11e1-9e33-c80aa9429562:23"), None);
    assert_eq!(commit("mysql-bin.000003:1234"), None);
    assert_eq!(commit("0000002b:00000be8:0003"), None);
}

/// A connector's re-send of a transaction released whole carries its
/// commit on every change (equal to the stored stamp: a duplicate); one
/// that held a truncate carries none (a row it truncated must stay gone).
#[test]
fn copies_of_a_released_transaction_carry_its_commit_unless_it_truncated() {
    let mut g = gate();
    let a = "db.public.a";
    for env in [
        begin(0, "7:1"),
        keyed(a, 0, Some("K"), Some("7:2"), "c"),
        end(1, "7:100", &[("public.a", 1)]),
        begin(2, "8:101"),
        keyed(a, 1, None, Some("8:102"), "t"),
        keyed(a, 2, Some("J"), Some("8:103"), "c"),
        end(3, "8:200", &[("public.a", 2)]),
    ] {
        g.push(env);
    }
    assert_eq!(g.release().unwrap().len(), 7);
    // The re-send.
    for env in [
        keyed(a, 3, Some("K"), Some("7:2"), "c"),
        keyed(a, 4, None, Some("8:102"), "t"),
        keyed(a, 5, Some("J"), Some("8:103"), "c"),
    ] {
        g.push(env);
    }
    let commits: Vec<(i64, Option<Version>)> = g
        .release()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.item {
            Polled::Message(m) => Some((m.offset.0, m.source_commit)),
            _ => None,
        })
        .collect();
    assert_eq!(commits, vec![(3, Some(100)), (4, None), (5, None)]);
}

/// Two source databases behind one sink count xids of their own: the same
/// xid in two captures is two transactions, each held for its own END, and
/// one released does not let the other's changes pass.
#[test]
fn the_same_xid_in_two_captures_is_two_transactions() {
    let mut g = gate();
    let (one, two) = ("one.public.a", "two.public.a");
    let marker = |topic: &str, offset: i64, env: Envelope| match env.item {
        Polled::Message(mut m) => {
            m.tp = tp(topic, 0);
            m.offset = Offset(offset);
            Envelope::message(m, 1)
        }
        other => Envelope {
            item: other,
            generation: 1,
        },
    };
    for env in [
        marker("one.transaction", 0, begin(0, "7:1")),
        keyed(one, 0, Some("K"), Some("7:2"), "c"),
        marker("one.transaction", 1, end(0, "7:100", &[("public.a", 1)])),
        marker("two.transaction", 0, begin(0, "7:1")),
        keyed(two, 0, Some("K"), Some("7:2"), "c"),
    ] {
        g.push(env);
    }
    let out = released(&g.release().unwrap());
    assert!(
        out.iter().all(|(topic, ..)| !topic.starts_with("two.")),
        "capture two's 7 passed as a re-send of capture one's: {out:?}"
    );
    g.push(keyed(two, 1, Some("J"), Some("7:3"), "c"));
    g.push(marker(
        "two.transaction",
        1,
        end(0, "7:100", &[("public.a", 2)]),
    ));
    let out = released(&g.release().unwrap());
    assert_eq!(out.len(), 4, "{out:?}");
}
