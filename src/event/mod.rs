//! A message's way from bytes to the writes of a commit, as a straight line
//! of pure stages. Each takes the previous one's output and never calls
//! back:
//!
//! ```text
//! SourceMessage ─ decode ──▶ Event        format + envelope → row image, op, source, key
//!               ─ identity ▶ Identified   row key, event hash, version (typed: the projected row)
//!               ─ fold ────▶ RouteWrites  last writer per key, in offset order, rounds, key order
//!               ─ encode ──▶ COPY text    the upserts as Postgres loads them
//! ```
//!
//! [`prepare`] runs decode, identity and fold message by message (nothing
//! of a message is kept but its identified row), then encodes per route.
//! The commit (`store::commit`) takes the [`PreparedBatch`]. What a route
//! does differently — format, envelope, key, version, typed columns — is
//! data the stages read from its [`Route`], not a path of its own.
//!
//! No I/O: the writer schemas of schema'd messages are fetched by the
//! pipeline before the batch is prepared (`pipeline::schemas`).

pub mod copy_text;
pub mod debezium;
pub mod decode;
pub mod encode;
pub mod fold;
pub mod identity;
pub mod position;
pub mod row;
pub mod straddle;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use fold::{RouteWrites, RowDelete, RowTruncate, RowUpsert};

use crate::config::route::Route;
use crate::config::route_set::RouteSet;
use crate::format::connect::ConnectCache;
use crate::format::SchemaSet;
use crate::kafka::message::{DeadLetter, Poison, PoisonReason, SourceMessage};
use crate::types::{LastEvents, Offset, TableName, TopicPartition};
use decode::{Body, Event, EventSchema, Skip};
use fold::Fold;
use identity::Identified;
use straddle::{SnapshotPoints, Straddles};

/// Per-message outcomes decided before the database is involved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub consumed: u64,
    pub duplicate_in_batch: u64,
    pub superseded: u64,
    pub stale_in_batch: u64,
    pub tombstone_ignored: u64,
    /// Truncate events: applied, or ignored by `on_truncate = "ignore"`.
    pub truncates: u64,
    pub truncates_ignored: u64,
    /// Change events by Debezium op (c, r, u, d, t).
    pub change_ops: [u64; 5],
}

#[derive(Clone, Debug, Default)]
pub struct PreparedBatch {
    /// Indexed by write slot (`RouteSet::all`).
    pub writes: Vec<RouteWrites>,
    pub dead_letters: Vec<DeadLetter>,
    /// First and last offset seen per partition; the batch end is last + 1.
    pub ranges: BTreeMap<TopicPartition, (Offset, Offset)>,
    pub counts: BatchCounts,
    /// The routes the batch was prepared with, which it must be committed
    /// with (a table evolving meanwhile does not change what its rows hold);
    /// `None`: the writer's.
    pub routes: Option<Arc<RouteSet>>,
    /// Tables the batch's messages need that the routes do not have yet (a
    /// table met for the first time, or a schema its table was not shaped
    /// for). A batch with demands is incomplete: their messages were left
    /// out. The pipeline creates or evolves the tables and prepares the
    /// batch again.
    pub demands: Vec<Demand>,
    /// The embedded schemas known after this batch.
    pub connect: ConnectCache,
    /// The Kafka timestamp (ms) of every message with one, by configured
    /// route: the age of events at commit.
    pub event_times: Vec<Vec<i64>>,
    /// The timestamp of each partition's last message.
    pub last_events: LastEvents,
    /// Postgres changes below their partition's snapshot point, and the
    /// points this batch's snapshot rows set (`straddle.rs`).
    pub straddles: Straddles,
}

impl PreparedBatch {
    pub fn message_count(&self) -> u64 {
        self.counts.consumed
    }
}

/// A table a templated (or table-creating) route needs for a message.
#[derive(Clone, Debug)]
pub struct Demand {
    /// The configured route (its slot).
    pub route: usize,
    pub table: TableName,
    pub topic: Arc<str>,
    /// The change event's schemas, for tables created from them.
    pub schema: Option<EventSchema>,
}

/// Prepares a batch of messages of fixed routes, leaving the encoding to the
/// commit (tests, `verify`).
pub fn prepare(routes: &[Route], messages: Vec<SourceMessage>) -> PreparedBatch {
    let set = RouteSet::new(routes.to_vec());
    fold_batch(&set, messages, &SchemaSet::default(), None)
}

/// Prepares a batch as the committer takes it: decoded, identified, folded,
/// and each document route's upserts encoded for COPY unless the route's
/// last batch was mostly no-ops (`duplicate_heavy[i]`: the commit's
/// pre-filter would leave most of it unsent). `messages` must be in offset
/// order within each partition; `schemas` holds the writer schemas their
/// schema'd values and keys name. With `snapshot_points` (the points of the
/// batches before, in order) Postgres changes that straddle a snapshot are
/// looked for (`straddle.rs`).
pub fn prepare_for_commit(
    routes: &Arc<RouteSet>,
    messages: Vec<SourceMessage>,
    schemas: &SchemaSet,
    duplicate_heavy: &[bool],
    snapshot_points: Option<&SnapshotPoints>,
) -> PreparedBatch {
    let mut b = fold_batch(routes, messages, schemas, snapshot_points);
    for ((w, route), heavy) in b.writes.iter_mut().zip(routes.all()).zip(duplicate_heavy) {
        w.upserts_copy = encode::document_upserts(route, &w.upserts, *heavy);
    }
    b.routes = Some(routes.clone());
    b
}

/// Decode, identity and fold, message by message.
fn fold_batch(
    set: &RouteSet,
    messages: Vec<SourceMessage>,
    schemas: &SchemaSet,
    snapshot_points: Option<&SnapshotPoints>,
) -> PreparedBatch {
    let routes = set.all();
    let mut batch = PreparedBatch {
        writes: vec![RouteWrites::default(); routes.len()],
        connect: schemas.connect.clone(),
        event_times: vec![Vec::new(); set.configured().len()],
        ..Default::default()
    };
    let capacity = messages.len();
    let mut folds: Vec<Fold> = routes.iter().map(|r| Fold::new(r, capacity)).collect();
    let mut route_of = RouteCache::default();
    let mut straddles = snapshot_points.map(straddle::Watch::new);
    for mut m in messages {
        let ri = route_of.lookup(set, &m.tp.topic);
        note_message(&mut batch, &m, ri);
        let Some(ri) = ri else {
            let error = format!("no [[route]] matches topic `{}`", m.tp.topic);
            batch
                .dead_letters
                .push(DeadLetter::of(m, PoisonReason::NoRoute, error));
            continue;
        };
        let route = &routes[ri];
        let event = match decode::decode(route, &mut m, schemas, &mut batch.connect) {
            Ok(event) => event,
            Err((reason, error)) => {
                batch.dead_letters.push(DeadLetter::of(m, reason, error));
                continue;
            }
        };
        if let Some(op) = event.op {
            batch.counts.change_ops[op as usize] += 1;
        }
        if let Some(w) = &mut straddles {
            w.observe(route, &event);
        }
        let slot = match slot_of(set, ri, &event) {
            Ok(Slot::At(slot)) => slot,
            Ok(Slot::Missing(demand)) => {
                if !batch.demands.iter().any(|d| same_demand(d, &demand)) {
                    batch.demands.push(demand);
                }
                continue;
            }
            Err(e) => {
                drop(event);
                batch.dead_letters.push(DeadLetter::of(m, e.0, e.1));
                continue;
            }
        };
        let identified = identity::identify(&routes[slot], event);
        fold_one(&mut folds[slot], identified, m, &mut batch);
    }
    for (fold, writes) in folds.into_iter().zip(&mut batch.writes) {
        fold.finish(writes);
    }
    batch.straddles = straddles.map(straddle::Watch::finish).unwrap_or_default();
    batch
}

/// Counts the message, extends its partition's range, and records its
/// Kafka timestamp: its partition's last, and among its route's
/// (configured route `ri`) for the age of events at commit.
fn note_message(batch: &mut PreparedBatch, m: &SourceMessage, ri: Option<usize>) {
    batch.counts.consumed += 1;
    // Looked up before inserting: an entry would clone the partition's
    // shared topic name per message.
    match batch.ranges.get_mut(&m.tp) {
        Some(r) => r.1 = m.offset,
        None => {
            batch.ranges.insert(m.tp.clone(), (m.offset, m.offset));
        }
    }
    let Some(ts) = m.timestamp else { return };
    match batch.last_events.get_mut(&m.tp) {
        Some(t) => *t = ts,
        None => {
            batch.last_events.insert(m.tp.clone(), ts);
        }
    }
    if let Some(ri) = ri {
        batch.event_times[ri].push(ts);
    }
}

/// Where an event of configured route `ri` is written.
enum Slot {
    At(usize),
    Missing(Demand),
}

/// The write slot of an event: the route's own, or its instance for the
/// event's table (and schema version, for tables created from events) —
/// missing when the table, or the version, is new.
fn slot_of(set: &RouteSet, ri: usize, event: &Event<'_>) -> Result<Slot, Poison> {
    let route = &set.all()[ri];
    if !route.is_dynamic() || matches!(event.body, Body::Skip(_)) {
        return Ok(Slot::At(ri));
    }
    let topic = &event.msg.tp.topic;
    let table = match &route.template {
        Some(t) => t
            .render(topic, source_of(event))
            .map_err(|e| (PoisonReason::TableName, e))?,
        None => route.table.clone(),
    };
    if let Some(reason) = set.refusal(ri, &table) {
        return Err((
            PoisonReason::TableRefused,
            format!("table {table}: {reason}"),
        ));
    }
    let missing = || {
        Slot::Missing(Demand {
            route: ri,
            table: table.clone(),
            topic: topic.clone(),
            schema: event.schema.clone(),
        })
    };
    let schema = match &event.schema {
        Some(s) if route.from_schema => Some(s.value.id),
        _ => None,
    };
    Ok(match set.instance(ri, &table, schema) {
        None => missing(),
        Some(slot) => Slot::At(slot),
    })
}

fn source_of<'e>(event: &'e Event<'_>) -> Option<&'e serde_json::Value> {
    match &event.body {
        Body::Upsert(image) => image.source.as_ref(),
        Body::Delete { source, .. } | Body::Truncate { source } => Some(source),
        Body::Tombstone | Body::Skip(_) => None,
    }
}

fn same_demand(a: &Demand, b: &Demand) -> bool {
    let id = |d: &Demand| d.schema.as_ref().map(|s| s.value.id);
    a.route == b.route && a.table == b.table && id(a) == id(b)
}
/// Folds one identified message (or files its dead letter).
fn fold_one(
    fold: &mut Fold,
    identified: Result<Identified, Poison>,
    m: SourceMessage,
    batch: &mut PreparedBatch,
) {
    let counts = &mut batch.counts;
    match identified {
        Ok(Identified::Upsert(row)) => fold.upsert(row.into_row(m), counts),
        Ok(Identified::Delete { key, version }) => {
            let (tp, offset) = (m.tp, m.offset);
            fold.tombstone(
                RowDelete {
                    key,
                    version,
                    tp,
                    offset,
                },
                counts,
            )
        }
        Ok(Identified::Truncate { position }) => {
            let (tp, offset) = (m.tp, m.offset);
            fold.truncate(
                RowTruncate {
                    position,
                    tp,
                    offset,
                },
                counts,
            )
        }
        Ok(Identified::Skip(Skip::Tombstone)) => counts.tombstone_ignored += 1,
        Ok(Identified::Skip(Skip::Truncate)) => counts.truncates_ignored += 1,
        Err((reason, error)) => batch.dead_letters.push(DeadLetter::of(m, reason, error)),
    }
}

/// The route of the last topic seen: a batch holds few topics, and a
/// pattern route would otherwise run its regex per message.
#[derive(Default)]
struct RouteCache {
    last: Option<(Arc<str>, Option<usize>)>,
}

impl RouteCache {
    fn lookup(&mut self, set: &RouteSet, topic: &Arc<str>) -> Option<usize> {
        match &self.last {
            Some((t, i)) if t == topic => *i,
            _ => {
                let i = set.matching(topic);
                self.last = Some((topic.clone(), i));
                i
            }
        }
    }
}
