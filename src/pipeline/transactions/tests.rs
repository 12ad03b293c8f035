use super::*;
use crate::types::Offset;

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
        },
        1,
    )
}

fn change(topic: &str, p: i32, offset: i64, tx: Option<&str>) -> Envelope {
    let tx = tx.map_or("null".to_string(), |t| {
        format!(r#"{{"id":"{t}","total_order":1}}"#)
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
            id: "571".into(),
            end: None
        })
    );
    let with_schema = r#"{"schema":{"type":"struct"},"payload":{"status":"END","id":"571:9","event_count":2,"data_collections":[{"data_collection":"public.a","event_count":2}]}}"#;
    assert_eq!(
        m(with_schema),
        Some(Marker {
            id: "571".into(),
            end: Some(vec![("public.a".into(), 2)])
        })
    );
    assert_eq!(m(r#"{"op":"c","after":{},"source":{}}"#), None);
}

/// Debezium's Postgres connector names a transaction `<xid>:<lsn>` with
/// each event's own LSN; other connectors' ids are kept whole.
#[test]
fn postgres_ids_are_matched_by_xid_and_others_as_written() {
    assert_eq!(transaction_key("7450:650259568".into()), "7450");
    for kept in [
        "mysql-bin.000003:1234",
        "3e11fa47-71ca-11e1-9e33-c80aa9429562:23",
        "0-1-42",
        "00000025:00000d10:0025",
        ":12",
    ] {
        assert_eq!(transaction_key(kept.into()), kept);
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
