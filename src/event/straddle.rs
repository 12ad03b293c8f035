//! Postgres changes that straddle an initial snapshot, found and reported.
//!
//! Debezium stamps every row of a Postgres initial snapshot with the slot's
//! consistent point as its `lsn`. A transaction open while the slot was
//! created commits after that point, so its changes stream after the
//! snapshot, but they sit at LSNs below it. Without whole source
//! transactions (`[sink.source_transactions]`, which orders them by their
//! commit) the position guard takes such a change of a snapshot row for
//! older than the row and refuses it: the row keeps its snapshot value
//! (docs/cdc.md, "What is not covered"). A change event does not carry its
//! commit, so the sink cannot order it right without the gate; it can say
//! so. A streamed change below the consistent point of a snapshot already
//! read in its partition is exactly such a change (every streamed
//! transaction commits after the point). The watch is exact while one
//! process reads a partition on from its snapshot; a process that starts
//! after the snapshot was read has no point to compare with.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::route::Route;
use crate::types::{Offset, TopicPartition, Version};

use super::decode::{Body, Event};

/// The consistent point of the last initial snapshot read per partition
/// (the highest snapshot-row LSN).
pub type SnapshotPoints = HashMap<TopicPartition, Version>;

/// A streamed change below its partition's snapshot point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Straddler {
    pub tp: TopicPartition,
    pub offset: Offset,
    pub lsn: Version,
    /// The consistent point of the snapshot it straddles.
    pub point: Version,
}

/// What one batch found: the points its snapshot rows moved, and the
/// straddlers. Empty unless the batch holds Postgres change events of a
/// route ordered by source position.
#[derive(Clone, Debug, Default)]
pub struct Straddles {
    /// Partitions whose snapshot point this batch raised, with the new point.
    pub points: Vec<(TopicPartition, Version)>,
    pub found: Vec<Straddler>,
}

impl Straddles {
    /// Folds the batch's points into `points` (batches in offset order per
    /// partition).
    pub fn absorb_into(&self, points: &mut SnapshotPoints) {
        for (tp, p) in &self.points {
            let e = points.entry(tp.clone()).or_insert(*p);
            *e = (*e).max(*p);
        }
    }
}

/// Checks a batch's events, one at a time in offset order, against the
/// points of the batches before it.
pub(super) struct Watch<'a> {
    before: &'a SnapshotPoints,
    out: Straddles,
    /// The partition looked at last and its point: messages come in runs
    /// of one partition, and a snapshot is all such messages.
    current: Option<(TopicPartition, Option<Version>)>,
}

impl<'a> Watch<'a> {
    pub fn new(before: &'a SnapshotPoints) -> Self {
        Watch {
            before,
            out: Straddles::default(),
            current: None,
        }
    }

    /// Looks at one decoded event of `route`.
    pub fn observe(&mut self, route: &Route, event: &Event<'_>) {
        if !route.orders_by_source_position() {
            return;
        }
        let Some((lsn, snapshot)) = postgres_lsn(event) else {
            return;
        };
        let tp = &event.msg.tp;
        let point = self.point(tp);
        if snapshot {
            if point.is_none_or(|p| lsn > p) {
                match self.out.points.iter_mut().find(|(t, _)| t == tp) {
                    Some(e) => e.1 = lsn,
                    None => self.out.points.push((tp.clone(), lsn)),
                }
                self.current = Some((tp.clone(), Some(lsn)));
            }
        } else if let Some(point) = point.filter(|p| lsn < *p) {
            self.out.found.push(Straddler {
                tp: tp.clone(),
                offset: event.msg.offset,
                lsn,
                point,
            });
        }
    }

    /// The partition's point: this batch's, else the batches' before it.
    fn point(&mut self, tp: &TopicPartition) -> Option<Version> {
        if let Some((t, p)) = &self.current {
            if t == tp {
                return *p;
            }
        }
        let p = self
            .out
            .points
            .iter()
            .find(|(t, _)| t == tp)
            .map(|(_, p)| *p)
            .or_else(|| self.before.get(tp).copied());
        self.current = Some((tp.clone(), p));
        p
    }

    pub fn finish(self) -> Straddles {
        self.out
    }
}

/// A Postgres change event's `lsn`, and whether it is a row of an initial
/// snapshot (`source.snapshot` set and not `false`; an incremental
/// snapshot's chunks are read at the streaming position, not at a slot's
/// consistent point, and are left out).
fn postgres_lsn(event: &Event<'_>) -> Option<(Version, bool)> {
    let source = match &event.body {
        Body::Upsert(image) => image.source.as_ref()?,
        Body::Delete { source, .. } | Body::Truncate { source } => source,
        Body::Tombstone | Body::Skip(_) => return None,
    };
    if source.get("connector").and_then(Value::as_str) != Some("postgresql") {
        return None;
    }
    let lsn = source.get("lsn").and_then(Value::as_i64)?;
    let snapshot = match source.get("snapshot") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s != "false" && s != "incremental",
        _ => false,
    };
    Some((Version::from(lsn), snapshot))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::config::route_set::RouteSet;
    use crate::config::test_routes;
    use crate::event::prepare_for_commit;
    use crate::format::SchemaSet;
    use crate::kafka::message::SourceMessage;

    fn routes() -> Arc<RouteSet> {
        let r = test_routes("topic = \"t\"\ntable = \"t\"\nenvelope = \"debezium\"\nkey = \"/id\"")
            .unwrap();
        Arc::new(RouteSet::new(r))
    }

    /// A change of row `id` in partition `p` at `offset`, from `connector`.
    fn change(p: i32, offset: i64, id: u32, lsn: i64, snapshot: &str) -> SourceMessage {
        change_from("postgresql", p, offset, id, lsn, snapshot)
    }

    fn change_from(
        connector: &str,
        p: i32,
        offset: i64,
        id: u32,
        lsn: i64,
        snapshot: &str,
    ) -> SourceMessage {
        let op = if snapshot == "false" { "u" } else { "r" };
        let source = json!({"connector": connector, "lsn": lsn, "snapshot": snapshot,
            "file": "binlog.000001", "pos": lsn, "row": 0});
        let body = json!({"op": op, "after": {"id": id, "v": offset}, "source": source});
        SourceMessage {
            tp: TopicPartition::new("t", p),
            offset: Offset(offset),
            key: Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
            payload: Some(body.to_string().into_bytes()),
            timestamp: None,
            headers: Vec::new(),
            source_commit: None,
        }
    }

    fn prepare(messages: Vec<SourceMessage>, points: &SnapshotPoints) -> Straddles {
        prepare_watched(messages, Some(points))
    }

    fn prepare_watched(messages: Vec<SourceMessage>, points: Option<&SnapshotPoints>) -> Straddles {
        let b = prepare_for_commit(&routes(), messages, &SchemaSet::default(), &[false], points);
        assert!(b.dead_letters.is_empty(), "{:?}", b.dead_letters);
        b.straddles
    }

    fn found(s: &Straddles) -> Vec<(i32, i64, Version, Version)> {
        s.found
            .iter()
            .map(|f| (f.tp.partition, f.offset.0, f.lsn, f.point))
            .collect()
    }

    #[test]
    fn a_streamed_change_below_an_earlier_batchs_snapshot_point_is_found() {
        let mut points = SnapshotPoints::new();
        let snapshot = prepare(
            vec![
                change(0, 0, 1, 1000, "first"),
                change(0, 1, 2, 1000, "last"),
            ],
            &points,
        );
        assert!(snapshot.found.is_empty());
        assert_eq!(snapshot.points, vec![(TopicPartition::new("t", 0), 1000)]);
        snapshot.absorb_into(&mut points);

        // The straddler (900), then a later transaction (1100); partition 1
        // read no snapshot, so its low LSN is no straddler.
        let streamed = prepare(
            vec![
                change(0, 2, 1, 900, "false"),
                change(0, 3, 2, 1100, "false"),
                change(1, 0, 3, 5, "false"),
            ],
            &points,
        );
        assert_eq!(found(&streamed), vec![(0, 2, 900, 1000)]);
        assert!(streamed.points.is_empty());
    }

    #[test]
    fn within_one_batch_the_snapshot_rows_before_a_change_set_its_point() {
        let s = prepare(
            vec![
                change(0, 0, 1, 1000, "true"),
                change(0, 1, 1, 990, "false"),
                change(0, 2, 1, 1200, "false"),
            ],
            &SnapshotPoints::new(),
        );
        assert_eq!(found(&s), vec![(0, 1, 990, 1000)]);
    }

    #[test]
    fn a_later_snapshot_raises_the_point() {
        let mut points = SnapshotPoints::new();
        prepare(vec![change(0, 0, 1, 1000, "true")], &points).absorb_into(&mut points);
        let again = prepare(
            vec![
                change(0, 1, 1, 5000, "last"),
                change(0, 2, 1, 4000, "false"),
            ],
            &points,
        );
        assert_eq!(again.points, vec![(TopicPartition::new("t", 0), 5000)]);
        assert_eq!(found(&again), vec![(0, 2, 4000, 5000)]);
        // An older snapshot point does not lower it.
        again.absorb_into(&mut points);
        Straddles {
            points: vec![(TopicPartition::new("t", 0), 10)],
            found: Vec::new(),
        }
        .absorb_into(&mut points);
        assert_eq!(points[&TopicPartition::new("t", 0)], 5000);
    }

    #[test]
    fn incremental_snapshots_and_other_connectors_set_no_point() {
        let s = prepare(
            vec![
                change(0, 0, 1, 1000, "incremental"),
                change(0, 1, 1, 900, "false"),
                change_from("mysql", 1, 0, 2, 1000, "true"),
                change_from("mysql", 1, 1, 2, 900, "false"),
            ],
            &SnapshotPoints::new(),
        );
        assert!(s.points.is_empty());
        assert!(s.found.is_empty());
    }

    #[test]
    fn without_points_nothing_is_watched() {
        let s = prepare_watched(
            vec![change(0, 0, 1, 1000, "true"), change(0, 1, 1, 900, "false")],
            None,
        );
        assert!(s.points.is_empty() && s.found.is_empty());
    }
}
