//! Tests of the stages together: what `prepare` makes of messages.

use serde_json::Value;

use super::identity::key_from_pointers;
use super::*;
use crate::config::route::RowKeySource;
use crate::config::test_routes;
use crate::json::hash;
use crate::json::pointer::JsonPointer;
use crate::kafka::message::text_of_bytes;
use crate::types::{EventHash, RowKey, Version};

fn routes(extra: &str) -> Vec<Route> {
    test_routes(&format!(
        "topic = \"t\"\ntable = \"t\"\nkey = \"/id\"\n{extra}"
    ))
    .unwrap()
}

/// Where the borrowed tree answers for a document route, it answers as
/// the `Value` path does: the same key, hash, version and payload, or the
/// same poison reason and text. Where it does not (invalid input, a
/// raw-value member), the `Value` path decides.
#[test]
fn borrowed_and_value_paths_agree() {
    let keys = [
        "key = \"/id\"\nversion = \"/v\"",
        "key = [\"/a\", \"/b\"]",
        "key = \"@kafka_key\"",
        "key = \"@event_hash\"",
    ];
    let payloads: [&[u8]; 16] = [
        br#"{"id":"k1","v":3,"x":1.50,"a":1,"b":"x"}"#,
        br#"{"id":7,"v":"4","a":1.0,"b":true}"#,
        br#"{"id":7.0,"v":4.0}"#,
        br#"{"id":null,"v":1}"#,
        br#"{"id":{"a":1},"v":1,"a":[1],"b":2}"#,
        br#"{"id":"a","id":"b","v":1,"v":2,"a":"x","a":"y","b":0}"#,
        br#"{"id":"\u00e9\n","v":-0,"a":18446744073709551615,"b":1e400}"#,
        br#"{"b":{"z":1,"y":[2,{"x":null}]},"a":"s","id":"k","v":9223372036854775807}"#,
        br#"{"id":"k","v":9223372036854775808}"#,
        br#"[1,2]"#,
        br#""text""#,
        b"not json",
        b"\xff\xfe",
        br#"{"id":"a\u0000","v":1}"#,
        br#"{"id":"k","v":1} trailing"#,
        br#"{"$serde_json::private::RawValue":"{\"id\":\"k\",\"v\":1}"}"#,
    ];
    let (mut borrowed, mut fell_back) = (0, 0);
    let schemas = SchemaSet::default();
    for key in keys {
        let routes = test_routes(&format!("topic = \"t\"\ntable = \"t\"\n{key}\n")).unwrap();
        let route = &routes[0];
        assert!(decode::reads_borrowed(route), "{key}");
        // Excluding a field no payload has changes no hash, and sends the
        // route down the `Value` path.
        let by_value = &test_routes(&format!(
            "topic = \"t\"\ntable = \"t\"\n{key}\nhash_exclude = [\"/absent\"]\n"
        ))
        .unwrap()[0];
        assert!(!decode::reads_borrowed(by_value));
        for payload in payloads {
            let mut m = msg(0, 5, None);
            m.payload = Some(payload.to_vec());
            m.key = Some(b"kafka-key".to_vec());
            let mut v = m.clone();
            let value = decode::decode(by_value, &mut v, &schemas, &mut Default::default())
                .and_then(|e| identity::identify(by_value, e));
            let event = decode::decode(route, &mut m, &schemas, &mut Default::default());
            let read_borrowed = matches!(
                &event,
                Ok(decode::Event { body: decode::Body::Upsert(i), .. })
                    if matches!(i.tree, decode::Tree::Borrowed(_))
            );
            if !read_borrowed {
                fell_back += 1;
                continue;
            }
            borrowed += 1;
            let identified = event.and_then(|e| identity::identify(route, e));
            assert_eq!(
                format!("{identified:?}"),
                format!("{value:?}"),
                "{key}: {}",
                String::from_utf8_lossy(payload)
            );
        }
    }
    // 11 payloads parse on each of the 4 routes; 5 (invalid UTF-8, JSON,
    // trailing text, \u0000, a raw-value member) go to the Value path.
    assert_eq!((borrowed, fell_back), (44, 20));
}

fn msg(p: i32, off: i64, payload: Option<&str>) -> SourceMessage {
    SourceMessage {
        tp: TopicPartition::new("t", p),
        offset: Offset(off),
        key: None,
        payload: payload.map(|s| s.as_bytes().to_vec()),
        timestamp: None,
        headers: Vec::new(),
        source_commit: None,
    }
}

#[test]
fn writes_leave_the_batch_in_key_order() {
    let b = prepare(
        &routes(""),
        vec![
            msg(0, 1, Some(r#"{"id":"c","v":1}"#)),
            msg(0, 2, Some(r#"{"id":"a","v":1}"#)),
            msg(0, 3, Some(r#"{"id":"b","v":1}"#)),
            msg(0, 4, Some(r#"{"id":"c","v":2}"#)),
            msg(0, 5, Some(r#"{"id":"a","v":2}"#)),
            msg(0, 6, Some(r#"{"id":"10","v":1}"#)),
            msg(0, 7, Some(r#"{"id":"9","v":1}"#)),
        ],
    );
    let keys = |rows: &[RowUpsert]| rows.iter().map(|r| r.key.0.clone()).collect::<Vec<_>>();
    let w = &b.writes[0];
    // Byte order, as the document table's `COLLATE "C"` key index.
    assert_eq!(keys(&w.upserts), ["10", "9", "a", "b", "c"]);
    assert_eq!(keys(&w.previous), ["a", "c"]);
    let offsets: Vec<i64> = w.upserts.iter().map(|r| r.offset.0).collect();
    assert_eq!(
        offsets,
        [6, 7, 5, 3, 4],
        "each key keeps its own final state"
    );
}

#[test]
fn duplicates_fold_to_one_row_keeping_first_offset() {
    let b = prepare(
        &routes(""),
        vec![
            msg(0, 10, Some(r#"{"id":1,"v":"a"}"#)),
            msg(0, 11, Some(r#"{ "v":"a", "id":1 }"#)),
            msg(0, 12, Some(r#"{"id":2}"#)),
        ],
    );
    assert_eq!(b.counts.consumed, 3);
    assert_eq!(b.counts.duplicate_in_batch, 1);
    let ups = &b.writes[0].upserts;
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0].key, RowKey("1".into()));
    assert_eq!(ups[0].offset, Offset(10));
    assert_eq!(
        b.ranges[&TopicPartition::new("t", 0)],
        (Offset(10), Offset(12))
    );
}

#[test]
fn excluded_fields_are_left_out_of_the_hash_only() {
    let ev = |off, v: &str, sent: &str| {
        msg(
            0,
            off,
            Some(&format!(r#"{{"id":1,"v":"{v}","sent_at":"{sent}"}}"#)),
        )
    };
    let excluding = routes("hash_exclude = [\"/sent_at\"]");
    // A re-send that differs only in the excluded field is a duplicate…
    let b = prepare(&excluding, vec![ev(1, "a", "t1"), ev(2, "a", "t2")]);
    assert_eq!(b.counts.duplicate_in_batch, 1);
    let row = &b.writes[0].upserts[0];
    let without: Value = serde_json::from_str(r#"{"id":1,"v":"a"}"#).unwrap();
    assert_eq!(row.hash, hash::hash_value(&without));
    // …the stored payload keeps it…
    assert!(row.payload.contains(r#""sent_at":"t1""#));
    // …and a change elsewhere is not a duplicate.
    let b = prepare(&excluding, vec![ev(1, "a", "t1"), ev(2, "b", "t1")]);
    assert_eq!(b.counts.duplicate_in_batch, 0);
    // Without the exclusion the field counts.
    let b = prepare(&routes(""), vec![ev(1, "a", "t1"), ev(2, "a", "t2")]);
    assert_eq!(b.counts.duplicate_in_batch, 0);
    let with: Value = serde_json::from_str(r#"{"id":1,"v":"a","sent_at":"t2"}"#).unwrap();
    assert_eq!(b.writes[0].upserts[0].hash, hash::hash_value(&with));
}

#[test]
fn last_version_wins_and_earlier_is_superseded() {
    let b = prepare(
        &routes(""),
        vec![
            msg(0, 1, Some(r#"{"id":1,"v":1}"#)),
            msg(0, 2, Some(r#"{"id":1,"v":2}"#)),
        ],
    );
    assert_eq!(b.counts.superseded, 1);
    assert_eq!(b.writes[0].upserts.len(), 1);
    assert_eq!(b.writes[0].upserts[0].offset, Offset(2));
}

#[test]
fn version_guard_drops_older_versions_in_batch() {
    let b = prepare(
        &routes(r#"version = "/ver""#),
        vec![
            msg(0, 1, Some(r#"{"id":1,"ver":5,"x":"new"}"#)),
            msg(0, 2, Some(r#"{"id":1,"ver":4,"x":"old"}"#)),
        ],
    );
    assert_eq!(b.counts.stale_in_batch, 1);
    assert_eq!(b.writes[0].upserts[0].version, Some(5));
}

#[test]
fn poison_messages_become_dead_letters_with_reasons() {
    let b = prepare(
        &routes(r#"version = "/ver""#),
        vec![
            msg(0, 1, Some("not json")),
            msg(0, 2, Some(r#"{"no_id":1,"ver":1}"#)),
            msg(0, 3, Some(r#"{"id":1,"ver":"x"}"#)),
            msg(0, 4, Some(r#"{"id":1,"ver":1,"s":"\u0000"}"#)),
        ],
    );
    let reasons: Vec<_> = b
        .dead_letters
        .iter()
        .map(|d| (d.offset.0, d.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, PoisonReason::InvalidJson),
            (2, PoisonReason::MissingKey),
            (3, PoisonReason::BadVersion),
            (4, PoisonReason::InvalidJson)
        ]
    );
    assert!(b.dead_letters[1].error.contains("/id"));
    assert_eq!(b.ranges[&TopicPartition::new("t", 0)].1, Offset(4));
}

#[test]
fn tombstones_delete_and_reinsert_in_order() {
    let mut t = msg(0, 2, None);
    t.key = Some(br#"{"id":1}"#.to_vec());
    let b = prepare(
        &routes(""),
        vec![
            msg(0, 1, Some(r#"{"id":1}"#)),
            t.clone(),
            msg(0, 3, Some(r#"{"id":1}"#)),
        ],
    );
    assert_eq!(b.writes[0].pre_deletes[0].key, RowKey("1".into()));
    assert_eq!(b.writes[0].pre_deletes[0].offset, Offset(2));
    assert_eq!(b.writes[0].upserts[0].offset, Offset(3));
    assert_eq!(b.counts.superseded, 2);

    let b = prepare(&routes(""), vec![msg(0, 1, Some(r#"{"id":1}"#)), t.clone()]);
    assert_eq!(b.writes[0].deletes[0].key, RowKey("1".into()));
    assert!(b.writes[0].upserts.is_empty());

    let b = prepare(&routes(r#"tombstones = "ignore""#), vec![t]);
    assert_eq!(b.counts.tombstone_ignored, 1);
}

#[test]
fn key_rendering() {
    let v: Value = serde_json::from_str(r#"{"a":"x","b":1.0,"c":{"z":1,"y":2}}"#).unwrap();
    assert_eq!(
        key_from_pointers(&v, &[JsonPointer::parse("/a")])
            .unwrap()
            .0,
        "x"
    );
    assert_eq!(
        key_from_pointers(&v, &[JsonPointer::parse("/b")])
            .unwrap()
            .0,
        "1"
    );
    let (reason, error) = key_from_pointers(&v, &[JsonPointer::parse("/c")]).unwrap_err();
    assert_eq!(reason, PoisonReason::InvalidKey);
    assert!(
        error.contains("/c") && error.contains("an object"),
        "{error}"
    );
    assert_eq!(
        key_from_pointers(&v, &[JsonPointer::parse("/a"), JsonPointer::parse("/b")])
            .unwrap()
            .0,
        r#"["x",1]"#
    );
    assert_eq!(text_of_bytes(&[0xff, 0x00]), "\\xff00");
}

#[test]
fn event_hash_key_and_kafka_key() {
    let r = routes("").into_iter().map(|mut r| {
        r.key = RowKeySource::EventHash;
        r
    });
    let r: Vec<_> = r.collect();
    let b = prepare(
        &r,
        vec![
            msg(0, 1, Some(r#"{"a":1}"#)),
            msg(0, 2, Some(r#"{"a": 1}"#)),
        ],
    );
    assert_eq!(b.writes[0].upserts.len(), 1);
    assert_eq!(b.writes[0].upserts[0].key.0.len(), 64);
    assert_eq!(b.counts.duplicate_in_batch, 1);
}

/// Property: folding any split of a message sequence into batches and applying
/// each batch the way `store::commit` does (upsert guarded by hash and
/// version, deletes) gives the same table as applying the messages one at a
/// time. This is what makes results independent of batch boundaries.
mod fold_model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::test_routes;

    #[derive(Clone, Debug, PartialEq)]
    struct Row {
        hash: EventHash,
        version: Option<Version>,
        offset: Offset,
    }

    /// The table and the delete markers of change-event routes.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Table {
        rows: BTreeMap<RowKey, Row>,
        markers: BTreeMap<RowKey, Version>,
    }

    /// A route shape of the property.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        versioned: bool,
        typed: bool,
        /// Debezium change events: versions are source positions, deletes
        /// carry positions and leave markers.
        cdc: bool,
    }

    /// A document route, or a typed one that maps `/v` but not `/c`: events
    /// differing only in `c` are then the same content.
    fn route(s: Shape) -> Vec<Route> {
        let (v, id, vsrc) = if s.cdc {
            ("envelope = \"debezium\"", "/id", "@source:lsn")
        } else if s.versioned {
            ("version = \"/v\"", "/id", "/v")
        } else {
            ("", "/id", "/v")
        };
        let shape = if s.typed {
            format!("key = \"id\"\ncolumns = {{ id = \"{id}\", v = \"{vsrc}\", o = \"@kafka_offset\" }}")
        } else {
            format!("key = \"{id}\"")
        };
        test_routes(&format!("topic = \"t\"\ntable = \"t\"\n{shape}\n{v}")).unwrap()
    }

    /// The table's upsert guard, as in documents.rs / typed.rs / cdc.rs.
    fn upsert(t: &mut Table, key: RowKey, row: Row, cdc: bool) {
        if matches!((t.markers.get(&key), row.version), (Some(m), Some(v)) if v <= *m) {
            return;
        }
        match t.rows.get(&key) {
            Some(cur) if cdc && cur.version == row.version => {}
            Some(cur) if !cdc && cur.hash == row.hash => {}
            Some(cur) if matches!((cur.version, row.version), (Some(c), Some(n)) if n < c) => {}
            _ => {
                t.rows.insert(key, row);
            }
        }
    }

    /// The delete statement: positioned deletes spare newer rows and leave a
    /// marker.
    fn delete(t: &mut Table, d: &RowDelete) {
        let Some(v) = d.version else {
            t.rows.remove(&d.key);
            return;
        };
        if t.rows
            .get(&d.key)
            .is_some_and(|r| r.version.is_some_and(|rv| rv > v))
        {
            return;
        }
        t.rows.remove(&d.key);
        let m = t.markers.entry(d.key.clone()).or_insert(v);
        *m = (*m).max(v);
    }

    fn sequential(routes: &[Route], msgs: &[SourceMessage], t: &mut Table) {
        for m in msgs {
            let b = prepare(routes, vec![m.clone()]);
            apply(&b, t, routes[0].is_cdc());
        }
    }

    fn apply(b: &PreparedBatch, t: &mut Table, cdc: bool) {
        let w = &b.writes[0];
        for d in &w.pre_deletes {
            delete(t, d);
        }
        for r in w.previous.iter().chain(&w.upserts) {
            upsert(
                t,
                r.key.clone(),
                Row {
                    hash: r.hash,
                    version: r.version,
                    offset: r.offset,
                },
                cdc,
            );
        }
        for d in &w.deletes {
            delete(t, d);
        }
    }

    type Spec = Vec<(u8, Option<(u8, u8)>, u8)>;

    fn messages() -> impl Strategy<Value = Spec> {
        // (key, None = tombstone/delete | Some((content, version)), delete position)
        prop::collection::vec(
            (
                0u8..4,
                prop::option::weighted(0.8, (0u8..3, 0u8..5)),
                0u8..5,
            ),
            0..40,
        )
    }

    fn build(spec: &Spec, cdc: bool) -> Vec<SourceMessage> {
        spec.iter()
            .enumerate()
            .map(|(i, (k, body, dpos))| SourceMessage {
                tp: TopicPartition::new("t", 0),
                offset: Offset(i as i64),
                key: Some(
                    if cdc {
                        format!(r#"{{"id":"k{k}"}}"#)
                    } else {
                        format!("k{k}")
                    }
                    .into_bytes(),
                ),
                payload: match (body, cdc) {
                    (Some((c, v)), false) => Some(format!(r#"{{"id":"k{k}","c":{c},"v":{v}}}"#)),
                    (None, false) => None,
                    (Some((c, v)), true) => Some(format!(
                        r#"{{"op":"u","after":{{"id":"k{k}","c":{c}}},"source":{{"lsn":{v}}}}}"#
                    )),
                    (None, true) => Some(format!(
                        r#"{{"op":"d","before":{{"id":"k{k}"}},"source":{{"lsn":{dpos}}}}}"#
                    )),
                }
                .map(String::into_bytes),
                timestamp: None,
                headers: Vec::new(),
                source_commit: None,
            })
            .collect()
    }

    /// How a connector positions its changes (`event::position`).
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Postgres,
        Mysql,
        SqlServer,
        /// Each change its own cluster time (one transaction's changes
        /// share one and are ordered by offset: `event::position` tests).
        Mongo,
    }

    /// The source blocks of a history of `steps` changes. A step's flags:
    /// the change shares the previous one's rows event (MySQL `row`, SQL
    /// Server `event_serial_no`), or the log moves to a new file (a binlog
    /// rotation; a new VLF) where positions restart small.
    fn sources(kind: Kind, steps: &[(bool, bool)]) -> Vec<Value> {
        let (mut file, mut pos, mut row) = (3u64, 4u64, 0u64);
        steps
            .iter()
            .enumerate()
            .map(|(i, &(same_event, rotate))| {
                if i > 0 && same_event && !matches!(kind, Kind::Mongo) {
                    row += 1;
                } else if rotate {
                    (file, pos, row) = (file + 1, 4 + i as u64 % 3, 0);
                } else {
                    (pos, row) = (pos + 150, 0);
                }
                match kind {
                    Kind::Postgres => serde_json::json!({
                        "connector": "postgresql", "lsn": (file << 32) + pos * 8 + row
                    }),
                    Kind::Mysql => serde_json::json!({
                        "connector": "mysql", "file": format!("mysql-bin.{file:06}"),
                        "pos": pos, "row": row
                    }),
                    Kind::Mongo => serde_json::json!({
                        "connector": "mongodb", "ts_ms": (1_700_000_000 + i as u64 / 2) * 1000,
                        "ord": i % 2 + 1, "rs": "rs0"
                    }),
                    Kind::SqlServer => serde_json::json!({
                        "connector": "sqlserver",
                        "change_lsn": format!("{file:08x}:{pos:08x}:0001"),
                        "event_serial_no": row + 1
                    }),
                }
            })
            .collect()
    }

    /// A history's change events; `None` content is a delete.
    fn history(kind: Kind, changes: &[(u8, Option<u8>, bool, bool)]) -> Vec<SourceMessage> {
        let steps: Vec<(bool, bool)> = changes.iter().map(|c| (c.2, c.3)).collect();
        changes
            .iter()
            .zip(sources(kind, &steps))
            .enumerate()
            .map(|(i, ((k, content, _, _), source))| {
                let body = match content {
                    Some(c) => serde_json::json!({"op": "u", "after": {"id": format!("k{k}"), "c": c}, "source": source}),
                    None => serde_json::json!({"op": "d", "before": {"id": format!("k{k}")}, "source": source}),
                };
                SourceMessage {
                    tp: TopicPartition::new("t", 0),
                    offset: Offset(i as i64),
                    key: Some(format!(r#"{{"id":"k{k}"}}"#).into_bytes()),
                    payload: Some(body.to_string().into_bytes()),
                    timestamp: None,
                    headers: Vec::new(),
                    source_commit: None,
                }
            })
            .collect()
    }

    /// A change-event route ordered by the computed source position.
    fn position_route(typed: bool) -> Vec<Route> {
        let shape = if typed {
            "key = \"id\"\ncolumns = { id = \"/id\", c = \"/c\", p = \"@source:position\" }"
        } else {
            "key = \"/id\""
        };
        test_routes(&format!(
            "topic = \"t\"\ntable = \"t\"\nenvelope = \"debezium\"\n{shape}"
        ))
        .unwrap()
    }

    fn kinds() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Postgres),
            Just(Kind::Mysql),
            Just(Kind::SqlServer),
            Just(Kind::Mongo)
        ]
    }

    /// The log with the `resent` changes again, in the order `order` sorts
    /// them into, at consecutive offsets.
    fn deliver(log: &[SourceMessage], resent: &[usize], order: &[u32]) -> Vec<SourceMessage> {
        let all = log.iter().chain(resent.iter().filter_map(|i| log.get(*i)));
        let mut shuffled: Vec<(u32, SourceMessage)> =
            order.iter().copied().zip(all.cloned()).collect();
        shuffled.sort_by_key(|(o, _)| *o);
        shuffled
            .into_iter()
            .enumerate()
            .map(|(i, (_, mut m))| {
                m.offset = Offset(i as i64);
                m
            })
            .collect()
    }

    /// `msgs` cut into batches at `cuts`.
    fn split(msgs: &[SourceMessage], cuts: Vec<usize>) -> Vec<&[SourceMessage]> {
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < msgs.len()).collect();
        cuts.sort();
        cuts.dedup();
        let mut start = 0;
        cuts.into_iter()
            .chain([msgs.len()])
            .map(|end| {
                let batch = &msgs[start..end];
                start = end;
                batch
            })
            .collect()
    }

    /// Each stored row's key and content (`c`), read from the message the
    /// row was written from.
    fn stored_contents(t: &Table, delivered: &[SourceMessage]) -> BTreeMap<String, Option<u8>> {
        t.rows
            .values()
            .map(|r| {
                let m = &delivered[r.offset.0 as usize];
                let v: Value = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
                let key = v["after"]["id"].as_str().unwrap().trim_start_matches('k');
                (key.to_string(), v["after"]["c"].as_u64().map(|c| c as u8))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Property: whatever order a history's changes arrive in, with any
        /// of them re-sent (a connector restart re-sends from its last
        /// stored offset; a replay from anywhere), in any batches, the table
        /// ends as the source: each key's last change, at its position.
        #[test]
        fn any_delivery_order_of_resent_changes_ends_in_the_source_state(
            kind in kinds(),
            changes in prop::collection::vec(
                (0u8..4, prop::option::weighted(0.75, 0u8..3), any::<bool>(), prop::bool::weighted(0.2)),
                1..30,
            ),
            resent in prop::collection::vec(0usize..30, 0..30),
            order in prop::collection::vec(any::<u32>(), 60),
            cuts in prop::collection::vec(0usize..60, 0..6),
            typed in any::<bool>(),
        ) {
            let routes = position_route(typed);
            let log = history(kind, &changes);
            // The source: each key's last change.
            let mut source = BTreeMap::new();
            for (k, content, ..) in &changes {
                source.insert(format!("{k}"), *content);
            }
            let mut in_order = Table::default();
            sequential(&routes, &log, &mut in_order);

            let delivered = deliver(&log, &resent, &order);
            let mut table = Table::default();
            for batch in split(&delivered, cuts) {
                let b = prepare(&routes, batch.to_vec());
                prop_assert!(b.dead_letters.is_empty(), "{:?}", b.dead_letters);
                apply(&b, &mut table, true);
            }
            // Each stored row is the key's last change at the source: its
            // content, read from the message the row was written from.
            let stored = stored_contents(&table, &delivered);
            let present: BTreeMap<String, Option<u8>> =
                source.into_iter().filter(|(_, c)| c.is_some()).collect();
            prop_assert_eq!(stored, present);
            // And at the last change's position (a MongoDB position ends in
            // the Kafka offset, which a re-send changes).
            if !matches!(kind, Kind::Mongo) {
                let versions = |t: &Table| -> Vec<(RowKey, EventHash, Option<Version>)> {
                    t.rows.iter().map(|(k, r)| (k.clone(), r.hash, r.version)).collect()
                };
                prop_assert_eq!(versions(&table), versions(&in_order));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]
        #[test]
        fn any_batch_split_equals_one_at_a_time(
            spec in messages(),
            cuts in prop::collection::vec(0usize..40, 0..6),
            versioned in any::<bool>(),
            typed in any::<bool>(),
            cdc in any::<bool>(),
        ) {
            let routes = route(Shape { versioned, typed, cdc });
            let msgs = build(&spec, cdc);
            let mut expected = Table::default();
            sequential(&routes, &msgs, &mut expected);

            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < msgs.len()).collect();
            cuts.sort();
            cuts.dedup();
            let mut table = Table::default();
            let mut start = 0;
            let mut consumed = 0;
            for end in cuts.into_iter().chain([msgs.len()]) {
                let b = prepare(&routes, msgs[start..end].to_vec());
                consumed += b.counts.consumed;
                prop_assert!(b.dead_letters.is_empty(), "{:?}", b.dead_letters);
                apply(&b, &mut table, cdc);
                start = end;
            }
            prop_assert_eq!(consumed as usize, msgs.len());
            prop_assert_eq!(table.rows, expected.rows);
        }
    }
}
