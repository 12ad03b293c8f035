//! Turning a slice of Kafka messages into one prepared batch: parse, derive the
//! row key and event hash, fold messages with the same key (in offset order)
//! into the one write that has the same effect, and classify every message.
//!
//! Pure: no I/O, so it is tested exhaustively (unit + property tests).
//!
//! The fold mirrors applying the messages one by one to the table, so batch
//! boundaries never change the result (see docs/guarantees.md):
//! * same hash as the key's current state → duplicate (the earlier message
//!   stays; its offset is the row's source position, as it would be if the two
//!   had been in different batches);
//! * older version than the current state (routes with `version`) → stale;
//! * otherwise the new message replaces the state; the old one is superseded.
//! * A tombstone followed by an upsert of the same key deletes first, then
//!   inserts, exactly like the sequence would.
//!
//! One write per key is not enough to be exact: for `A, B, A` the table (which
//! may hold `A` from an earlier batch) must see the change to `B` and back, or
//! the row keeps the old source offset and the result depends on where the
//! batch boundary fell. So a key whose state changed within the batch is
//! written in two rounds: its previous distinct state, then its final state.
//! Two rounds are exactly equivalent to applying every message in turn
//! (property test `fold_model` below).

pub mod copy_text;
pub mod debezium;

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use serde_json::Value;

use crate::config::columns::EventView;
use crate::config::route::{Route, RowKeySource, TombstonePolicy, TruncatePolicy};
use crate::event::debezium::{Change, Op};
use crate::format::{self, SchemaSet};
use crate::json::borrowed::BorrowedJson;
use crate::json::hash::{self, JsonKind, JsonTree};
use crate::json::pointer::JsonPointer;
use crate::kafka::message::{text_of_bytes, DeadLetter, PoisonReason, SourceMessage};
use crate::types::{EventHash, Offset, RowKey, TopicPartition};

/// A row to upsert into a route's table.
#[derive(Clone, Debug, PartialEq)]
pub struct RowUpsert {
    pub key: RowKey,
    pub hash: EventHash,
    /// The payload exactly as received; Postgres parses it into jsonb.
    pub payload: String,
    /// Typed tables: the `{"column": value}` object Postgres converts.
    pub row: Option<String>,
    pub version: Option<i64>,
    pub tp: TopicPartition,
    pub offset: Offset,
}

/// A key to delete, with the tombstone that asked for it (named if the
/// database rejects the key).
#[derive(Clone, Debug, PartialEq)]
pub struct RowDelete {
    pub key: RowKey,
    /// The delete's source position (change events): it applies only over
    /// older rows, and is remembered to refuse older changes re-sent later.
    pub version: Option<i64>,
    pub tp: TopicPartition,
    pub offset: Offset,
}

/// A truncate change event: every row older than `position` goes.
#[derive(Clone, Debug, PartialEq)]
pub struct RowTruncate {
    pub position: i64,
    pub tp: TopicPartition,
    pub offset: Offset,
}

/// The writes for one route's table.
#[derive(Clone, Debug, Default)]
pub struct RouteWrites {
    /// Keys deleted before the upserts (a tombstone followed by a re-insert).
    pub pre_deletes: Vec<RowDelete>,
    /// Round 1: the state before the final one, for keys that changed within
    /// the batch (already counted as superseded).
    pub previous: Vec<RowUpsert>,
    /// Round 2: the final state of every upserted key, in key order (as
    /// are the other writes: `Fold::finish`).
    pub upserts: Vec<RowUpsert>,
    /// `upserts` in COPY text, when encoded ahead of the commit
    /// (`store::documents::encode_upserts`); whatever changes `upserts`
    /// must clear it.
    pub upserts_copy: Option<Vec<u8>>,
    /// Final tombstones: delete these keys.
    pub deletes: Vec<RowDelete>,
    /// The latest truncate of the batch, applied after everything else.
    pub truncate: Option<RowTruncate>,
}

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
    /// Indexed like the configured routes.
    pub writes: Vec<RouteWrites>,
    pub dead_letters: Vec<DeadLetter>,
    /// First and last offset seen per partition; the batch end is last + 1.
    pub ranges: BTreeMap<TopicPartition, (Offset, Offset)>,
    pub counts: BatchCounts,
}

impl PreparedBatch {
    pub fn message_count(&self) -> u64 {
        self.counts.consumed
    }
}

/// Prepares a batch of schema-less messages (see [`prepare_with`]).
pub fn prepare(routes: &[Route], messages: Vec<SourceMessage>) -> PreparedBatch {
    prepare_with(routes, messages, &SchemaSet::default())
}

/// Prepares a batch. `messages` must be in offset order within each
/// partition; `schemas` holds the writer schemas their schema'd values and
/// keys name.
pub fn prepare_with(
    routes: &[Route],
    messages: Vec<SourceMessage>,
    schemas: &SchemaSet,
) -> PreparedBatch {
    let mut batch = PreparedBatch {
        writes: vec![RouteWrites::default(); routes.len()],
        ..Default::default()
    };
    let capacity = messages.len();
    let mut folds: Vec<Fold> = routes.iter().map(|r| Fold::new(r, capacity)).collect();
    let mut route_of = RouteCache::default();
    for mut m in messages {
        batch.counts.consumed += 1;
        // Looked up before inserting: an entry would clone the partition's
        // shared topic name per message.
        match batch.ranges.get_mut(&m.tp) {
            Some(r) => r.1 = m.offset,
            None => {
                batch.ranges.insert(m.tp.clone(), (m.offset, m.offset));
            }
        }
        let Some(ri) = route_of.lookup(routes, &m.tp.topic) else {
            let error = format!("no [[route]] matches topic `{}`", m.tp.topic);
            batch
                .dead_letters
                .push(DeadLetter::of(m, PoisonReason::NoRoute, error));
            continue;
        };
        let parsed = match decode_schemad(&routes[ri], &mut m, schemas) {
            Ok(value) => parse(&routes[ri], &m, value, &mut batch.counts),
            Err(e) => Parsed::poison(e),
        };
        match parsed {
            Parsed::Ignored => batch.counts.tombstone_ignored += 1,
            Parsed::TruncateIgnored => batch.counts.truncates_ignored += 1,
            Parsed::Truncate(t) => folds[ri].truncate(t, &mut batch.counts),
            Parsed::Poison(reason, error) => {
                batch.dead_letters.push(DeadLetter::of(m, reason, error))
            }
            Parsed::Upsert(p) => folds[ri].upsert(p.into_row(m), &mut batch.counts),
            Parsed::Tombstone(del) => folds[ri].tombstone(del, &mut batch.counts),
        }
    }
    for (fold, writes) in folds.into_iter().zip(&mut batch.writes) {
        fold.finish(writes);
    }
    batch
}

/// The route of the last topic seen: a batch holds few topics, and a
/// pattern route would otherwise run its regex per message.
#[derive(Default)]
struct RouteCache {
    last: Option<(std::sync::Arc<str>, Option<usize>)>,
}

impl RouteCache {
    fn lookup(&mut self, routes: &[Route], topic: &std::sync::Arc<str>) -> Option<usize> {
        match &self.last {
            Some((t, i)) if t == topic => *i,
            _ => {
                let i = routes.iter().position(|r| r.topic.matches(topic));
                self.last = Some((topic.clone(), i));
                i
            }
        }
    }
}

/// The state of one key within a batch.
enum KeyState {
    Upsert(RowUpsert),
    Delete(RowDelete),
}

struct KeyFold {
    state: KeyState,
    /// The previous distinct upsert state since the last tombstone. Boxed,
    /// as is `pre_delete`: most keys have neither, and a smaller fold is
    /// cheaper to move into the batch's vector.
    previous: Option<Box<RowUpsert>>,
    /// A tombstone to apply before the final upsert.
    pre_delete: Option<Box<RowDelete>>,
}

impl KeyFold {
    fn new(state: KeyState) -> Self {
        Self {
            state,
            previous: None,
            pre_delete: None,
        }
    }

    fn key(&self) -> &RowKey {
        match &self.state {
            KeyState::Upsert(r) => &r.key,
            KeyState::Delete(d) => &d.key,
        }
    }
}

/// The hash [`Fold`]'s index files a key under.
fn key_hash(key: &RowKey) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The fold of one route's messages, key by key, in offset order.
struct Fold {
    versioned: bool,
    /// Change events: a change is identified by its source position, so the
    /// same position is a duplicate and a newer one always applies (even with
    /// the same content: it moves the row's position forward).
    cdc: bool,
    /// Each key's index in `folds`, found through the fold's own key. FxHash:
    /// keys are ours, not an attacker's, and SipHash was a visible share of
    /// the profile. The table holds indexes, not folds: folds were ~400
    /// bytes each, and moving them on every insert and rehash was a tenth of
    /// the sink's CPU (`perf`, typed route). Nor keys: a map keyed by
    /// `RowKey` cost a clone of every new key, an allocation and a copy per
    /// event.
    index: HashTable<usize>,
    /// In first-seen order of keys; sorted by key when the batch is
    /// finished ([`Fold::finish`]).
    folds: Vec<KeyFold>,
    truncate: Option<RowTruncate>,
    /// Messages in the batch: the most keys this fold can see, reserved on
    /// first use so a route without messages allocates nothing.
    capacity: usize,
}

impl Fold {
    fn new(route: &Route, capacity: usize) -> Self {
        Self {
            versioned: route.version.is_some(),
            cdc: route.is_cdc(),
            index: HashTable::new(),
            folds: Vec::new(),
            truncate: None,
            capacity,
        }
    }

    /// The index of `key`'s fold (`hash` is [`key_hash`]), if the batch has
    /// seen it.
    fn find(&self, hash: u64, key: &RowKey) -> Option<usize> {
        let folds = &self.folds;
        self.index.find(hash, |&i| folds[i].key() == key).copied()
    }

    /// Starts the fold of a key not seen before in this batch.
    fn insert(&mut self, hash: u64, state: KeyState) {
        let first = self.folds.is_empty();
        if first {
            self.folds.reserve(self.capacity);
        }
        let folds = &self.folds;
        let rehash = |&i: &usize| key_hash(folds[i].key());
        if first {
            self.index.reserve(self.capacity, rehash);
        }
        self.index.insert_unique(hash, folds.len(), rehash);
        self.folds.push(KeyFold::new(state));
    }

    fn upsert(&mut self, row: RowUpsert, counts: &mut BatchCounts) {
        let hash = key_hash(&row.key);
        let Some(i) = self.find(hash, &row.key) else {
            self.insert(hash, KeyState::Upsert(row));
            return;
        };
        let f = &mut self.folds[i];
        match &f.state {
            KeyState::Upsert(cur) if self.cdc && row.version == cur.version => {
                counts.duplicate_in_batch += 1
            }
            KeyState::Upsert(cur) if !self.cdc && cur.hash == row.hash => {
                counts.duplicate_in_batch += 1
            }
            KeyState::Upsert(cur) if self.versioned && row.version < cur.version => {
                counts.stale_in_batch += 1
            }
            // A change older than (or at) a delete's position is a re-send:
            // the table would refuse it by the delete marker, so must the fold.
            KeyState::Delete(d) if d.version.is_some() && row.version <= d.version => {
                counts.stale_in_batch += 1
            }
            KeyState::Upsert(_) => {
                counts.superseded += 1;
                if let KeyState::Upsert(prev) =
                    std::mem::replace(&mut f.state, KeyState::Upsert(row))
                {
                    f.previous = Some(Box::new(prev));
                }
            }
            KeyState::Delete(_) => {
                counts.superseded += 1;
                f.previous = None;
                if let KeyState::Delete(d) = std::mem::replace(&mut f.state, KeyState::Upsert(row))
                {
                    f.pre_delete = Some(Box::new(d));
                }
            }
        }
    }

    fn tombstone(&mut self, del: RowDelete, counts: &mut BatchCounts) {
        let hash = key_hash(&del.key);
        let Some(i) = self.find(hash, &del.key) else {
            self.insert(hash, KeyState::Delete(del));
            return;
        };
        let f = &mut self.folds[i];
        let positioned = del.version.is_some();
        match &f.state {
            KeyState::Delete(d) if d.version == del.version => counts.duplicate_in_batch += 1,
            KeyState::Delete(d) if !positioned || del.version < d.version => {
                counts.stale_in_batch += 1
            }
            KeyState::Upsert(cur) if positioned && del.version < cur.version => {
                counts.stale_in_batch += 1
            }
            KeyState::Delete(_) | KeyState::Upsert(_) => {
                counts.superseded += 1;
                f.pre_delete = None;
                f.previous = None;
                f.state = KeyState::Delete(del);
            }
        }
    }

    /// Truncates apply after the batch's other writes (rows older than the
    /// truncate's position go, newer ones stay), so only the latest counts.
    fn truncate(&mut self, t: RowTruncate, counts: &mut BatchCounts) {
        counts.truncates += 1;
        if self
            .truncate
            .as_ref()
            .is_none_or(|cur| cur.position < t.position)
        {
            self.truncate = Some(t);
        }
    }

    /// The batch's writes, in key order: Postgres then walks the key index
    /// in order (random keys: 5–19% less backend CPU per upsert than in
    /// arrival order, docs/performance.md), and two commits writing the same
    /// keys (a key in two partitions, on two lanes or replicas) lock their
    /// rows in the same order. Each key has one fold, so the order changes
    /// no result.
    fn finish(mut self, w: &mut RouteWrites) {
        w.truncate = self.truncate;
        self.folds
            .sort_unstable_by(|a, b| a.key().0.cmp(&b.key().0));
        w.upserts.reserve(self.folds.len());
        for f in self.folds {
            w.pre_deletes.extend(f.pre_delete.map(|d| *d));
            w.previous.extend(f.previous.map(|p| *p));
            match f.state {
                KeyState::Upsert(row) => w.upserts.push(row),
                KeyState::Delete(d) => w.deletes.push(d),
            }
        }
    }
}

/// What a single message turned into.
#[cfg_attr(test, derive(Debug))]
enum Parsed {
    Upsert(ParsedUpsert),
    Tombstone(RowDelete),
    Truncate(RowTruncate),
    Ignored,
    TruncateIgnored,
    Poison(PoisonReason, String),
}

impl Parsed {
    fn poison((reason, error): (PoisonReason, String)) -> Parsed {
        Parsed::Poison(reason, error)
    }

    /// An upsert's payload is `text`, not the message as received (a
    /// decoded schema'd record, a change event's row image).
    fn with_text(mut self, text: String) -> Parsed {
        if let Parsed::Upsert(p) = &mut self {
            p.text = Some(text);
        }
        self
    }
}

/// An upsert as parsed from a borrowed message; [`Self::into_row`] then
/// moves the message's position and bytes into the row instead of copying
/// them: preparing order events like the bench's took 1,135–1,174 ns each
/// with the copy, 1,054–1,085 ns without (scratch loop, three runs each).
#[cfg_attr(test, derive(Debug))]
struct ParsedUpsert {
    key: RowKey,
    hash: EventHash,
    row: Option<String>,
    version: Option<i64>,
    /// The payload to store; `None`: the message's payload, which parsing
    /// read as UTF-8.
    text: Option<String>,
}

impl ParsedUpsert {
    fn into_row(self, m: SourceMessage) -> RowUpsert {
        let payload = match self.text {
            Some(text) => text,
            None => String::from_utf8(m.payload.unwrap_or_default())
                .expect("an upsert's payload was parsed as UTF-8"),
        };
        RowUpsert {
            key: self.key,
            hash: self.hash,
            payload,
            row: self.row,
            version: self.version,
            tp: m.tp,
            offset: m.offset,
        }
    }
}

/// Decodes a schema'd key in place (into its JSON text, which key sources
/// and tombstones read) and a schema'd value (returned).
fn decode_schemad(
    route: &Route,
    m: &mut SourceMessage,
    schemas: &SchemaSet,
) -> Result<Option<Value>, (PoisonReason, String)> {
    let poison = |(code, e): (&'static str, String)| (PoisonReason::Schema(code), e);
    if route.key_format.is_schemad() {
        if let Some(k) = &m.key {
            let key = schemas.decode(route.key_format, k).map_err(poison)?;
            m.key = Some(key_text(&key).into_bytes());
        }
    }
    match (&m.payload, route.format.is_schemad()) {
        (Some(p), true) => schemas.decode(route.format, p).map(Some).map_err(poison),
        _ => Ok(None),
    }
}

/// A decoded key as the text key sources read: strings as is, anything else
/// as JSON (a struct key stays addressable by pointers in tombstones).
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse(
    route: &Route,
    m: &SourceMessage,
    decoded: Option<Value>,
    counts: &mut BatchCounts,
) -> Parsed {
    let Some(payload) = &m.payload else {
        if route.is_cdc() {
            // The tombstone after a delete event: the delete already did it.
            return Parsed::Ignored;
        }
        return parse_tombstone(route, m);
    };
    if decoded.is_none() && reads_borrowed(route) {
        if let Some(parsed) = parse_document(route, m, payload) {
            return parsed;
        }
    }
    parse_value(route, m, payload, decoded, counts)
}

/// [`parse`] through a `serde_json::Value` (or the decoded schema'd record).
fn parse_value(
    route: &Route,
    m: &SourceMessage,
    payload: &[u8],
    decoded: Option<Value>,
    counts: &mut BatchCounts,
) -> Parsed {
    let mut decoded_text = None;
    let (text, value) = match decoded {
        Some(v) => (decoded_text.insert(v.to_string()).as_str(), v),
        None => match parse_json(payload) {
            Ok(v) => v,
            Err(e) => return Parsed::Poison(PoisonReason::InvalidJson, e),
        },
    };
    if route.is_cdc() {
        return parse_change(route, m, value, counts);
    }
    let parsed = match version_of(route, &value, None) {
        Ok(version) => upsert(route, m, text, &value, None, version),
        Err(e) => Parsed::poison(e),
    };
    match decoded_text {
        Some(text) => parsed.with_text(text),
        None => parsed,
    }
}

/// A plain-JSON document route reads only a key, a version and the whole
/// event's hash: the borrowed tree has all of that. Typed routes, change
/// events and hash exclusions read the `Value`.
fn reads_borrowed(route: &Route) -> bool {
    !route.is_cdc() && route.columns.is_none() && route.hash_exclude.is_empty()
}

/// [`parse`] for a route [`reads_borrowed`], or `None` when the payload is
/// not UTF-8 JSON the borrowed tree takes: the `Value` path then decides,
/// and names the error.
fn parse_document(route: &Route, m: &SourceMessage, payload: &[u8]) -> Option<Parsed> {
    let text = std::str::from_utf8(payload).ok()?;
    let tree = BorrowedJson::parse(text).ok()?;
    if has_nul_escape(text) {
        return None;
    }
    let version = match version_of(route, &tree, None) {
        Ok(v) => v,
        Err(e) => return Some(Parsed::poison(e)),
    };
    let row = document_key(route, m, &tree).map(|key| {
        let h = hash::hash_value(&tree);
        (key.unwrap_or_else(|| RowKey(h.to_string())), h, None)
    });
    Some(finish_upsert(row, version))
}

/// A Debezium change event: an upsert of `after`, a delete of the row it
/// identifies, or a truncate, each ordered by its source position.
fn parse_change(
    route: &Route,
    m: &SourceMessage,
    value: Value,
    counts: &mut BatchCounts,
) -> Parsed {
    let key = m
        .key
        .as_deref()
        .and_then(|k| serde_json::from_slice::<Value>(k).ok());
    let change = match debezium::decode(key.as_ref(), value) {
        Ok(c) => c,
        Err(e) => return Parsed::Poison(PoisonReason::InvalidChange, e),
    };
    counts.change_ops[change.op as usize] += 1;
    let version = match version_of(route, &change.row, Some(&change.source)) {
        Ok(v) => v,
        Err(e) => return Parsed::poison(e),
    };
    match change.op {
        Op::Truncate if route.on_truncate == TruncatePolicy::Ignore => Parsed::TruncateIgnored,
        Op::Truncate => Parsed::Truncate(RowTruncate {
            position: version.unwrap_or(i64::MAX),
            tp: m.tp.clone(),
            offset: m.offset,
        }),
        Op::Delete => match change_key(route, m, &change) {
            Ok(key) => Parsed::Tombstone(RowDelete {
                key,
                version,
                tp: m.tp.clone(),
                offset: m.offset,
            }),
            Err(e) => Parsed::poison(e),
        },
        Op::Create | Op::Read | Op::Update => {
            let text = change.row.to_string();
            upsert(route, m, &text, &change.row, Some(&change.source), version).with_text(text)
        }
    }
}

/// The key of the row a delete event identifies.
fn change_key(
    route: &Route,
    m: &SourceMessage,
    c: &Change,
) -> Result<RowKey, (PoisonReason, String)> {
    match &route.columns {
        Some(map) => {
            let text = c.row.to_string();
            map.key_of(&EventView {
                msg: m,
                text: &text,
                value: &c.row,
                source: Some(&c.source),
            })
        }
        None => document_key_and_hash(route, m, &c.row).map(|(k, _)| k),
    }
}

/// The route's version (or source position) of an event; an error when the
/// route has one and the event does not carry it as an integer.
fn version_of<T: JsonTree>(
    route: &Route,
    value: &T,
    source: Option<&Value>,
) -> Result<Option<i64>, (PoisonReason, String)> {
    let Some(p) = &route.version else {
        return Ok(None);
    };
    let found = match (p.strip_prefix("@source:"), &route.version_pointer) {
        (Some(field), _) => source.and_then(|s| s.get(field)).and_then(as_integer),
        (None, Some(pointer)) => pointer.get(value).and_then(as_integer),
        (None, None) => None,
    };
    match found {
        Some(v) => Ok(Some(v)),
        None => Err((
            PoisonReason::BadVersion,
            format!("version {p} is missing or not an integer"),
        )),
    }
}

/// The upsert of one event's row image.
fn upsert(
    route: &Route,
    m: &SourceMessage,
    text: &str,
    value: &Value,
    source: Option<&Value>,
    version: Option<i64>,
) -> Parsed {
    let row = match &route.columns {
        Some(map) => {
            let ev = EventView {
                msg: m,
                text,
                value,
                source,
            };
            map.row(&ev, &route.hash_exclude)
                .map(|r| (r.key, r.content_hash, Some(r.doc)))
        }
        None => document_key_and_hash(route, m, value).map(|(k, h)| (k, h, None)),
    };
    finish_upsert(row, version)
}

type RowImage = (RowKey, EventHash, Option<String>);

fn finish_upsert(row: Result<RowImage, (PoisonReason, String)>, version: Option<i64>) -> Parsed {
    match row {
        Ok((key, hash, row)) => Parsed::Upsert(ParsedUpsert {
            key,
            hash,
            row,
            version,
            text: None,
        }),
        Err(e) => Parsed::poison(e),
    }
}

fn parse_tombstone(route: &Route, m: &SourceMessage) -> Parsed {
    if route.tombstones == TombstonePolicy::Ignore {
        return Parsed::Ignored;
    }
    let key = match &route.columns {
        Some(map) => map.tombstone_key(m),
        None => tombstone_key(route, m.key.as_deref()),
    };
    match key {
        Ok(key) => Parsed::Tombstone(RowDelete {
            key,
            version: None,
            tp: m.tp.clone(),
            offset: m.offset,
        }),
        Err(e) => Parsed::poison(e),
    }
}

/// The payload as UTF-8 text and parsed JSON.
fn parse_json(payload: &[u8]) -> Result<(&str, Value), String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    let value = serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    // jsonb cannot hold U+0000; reject here with a clear message rather than
    // failing the statement.
    if has_nul_escape(text) {
        return Err("payload contains \\u0000, which PostgreSQL jsonb cannot store".into());
    }
    Ok((text, value))
}

fn has_nul_escape(text: &str) -> bool {
    text.contains("\\u0000")
}

/// A document route's row key, unless it is the event hash (`None`).
fn document_key<T: JsonTree>(
    route: &Route,
    m: &SourceMessage,
    value: &T,
) -> Result<Option<RowKey>, (PoisonReason, String)> {
    Ok(match &route.key {
        RowKeySource::Pointers(ps) => Some(key_from_pointers(value, ps)?),
        RowKeySource::KafkaKey => match m.key.as_deref() {
            Some(k) => Some(RowKey(text_of_bytes(k))),
            None => return Err((PoisonReason::MissingKey, "message has no Kafka key".into())),
        },
        RowKeySource::EventHash | RowKeySource::Columns(_) => None,
    })
}

/// A document route's row key and event hash.
fn document_key_and_hash(
    route: &Route,
    m: &SourceMessage,
    value: &Value,
) -> Result<(RowKey, EventHash), (PoisonReason, String)> {
    let key = document_key(route, m, value)?;
    // The value is copied only when the hashed view differs from it (a
    // whole-tree clone per message was a visible share of the profile).
    let h = if route.format.is_schemad() {
        // Absent and null are the same in a schema'd record: an event encoded
        // under a version with an added (null) field is still a duplicate.
        let mut view = format::hash_view(value);
        hash::remove_pointers(&mut view, &route.hash_exclude);
        hash::hash_value(&view)
    } else if route.hash_exclude.is_empty() {
        hash::hash_value(value)
    } else {
        let mut view = value.clone();
        hash::remove_pointers(&mut view, &route.hash_exclude);
        hash::hash_value(&view)
    };
    Ok((key.unwrap_or_else(|| RowKey(h.to_string())), h))
}

/// A version: an integer number, or a string holding one.
fn as_integer<T: JsonTree + ?Sized>(v: &T) -> Option<i64> {
    match v.kind() {
        JsonKind::Number => v.as_i64(),
        JsonKind::String => v.as_str()?.parse().ok(),
        _ => None,
    }
}

/// Renders the row key from JSON pointers: one string value is used as is,
/// other scalars (numbers, booleans) and several pointers as canonical JSON,
/// so `1` and `1.0` are the same key and composite keys cannot collide by
/// concatenation. Objects and arrays are not keys.
pub fn key_from_pointers<T: JsonTree>(
    value: &T,
    pointers: &[JsonPointer],
) -> Result<RowKey, (PoisonReason, String)> {
    let mut parts = Vec::with_capacity(pointers.len());
    for p in pointers {
        let Some(v) = p.get(value).filter(|v| v.kind() != JsonKind::Null) else {
            return Err((
                PoisonReason::MissingKey,
                format!("key pointer {p} is missing or null"),
            ));
        };
        if matches!(v.kind(), JsonKind::Object | JsonKind::Array) {
            return Err((
                PoisonReason::InvalidKey,
                format!(
                    "key pointer {p} holds {}; keys must be strings, numbers or booleans",
                    hash::json_kind(v)
                ),
            ));
        }
        parts.push(v);
    }
    Ok(RowKey(match parts.as_slice() {
        [v] => match v.as_str() {
            Some(s) => s.to_string(),
            None => hash::canonical_string(*v),
        },
        many => {
            // The canonical form of the array of parts.
            let mut text = Vec::new();
            hash::write_array(many.iter().copied(), &mut text);
            String::from_utf8(text).expect("canonical JSON is UTF-8")
        }
    }))
}

/// The key a tombstone deletes. Pointer-keyed routes read the pointers from
/// the Kafka key parsed as JSON (e.g. `{"order_id": 7}`), or, with a single
/// pointer, take the Kafka key text itself.
fn tombstone_key(route: &Route, key: Option<&[u8]>) -> Result<RowKey, (PoisonReason, String)> {
    let missing = |e: &str| (PoisonReason::MissingKey, e.to_string());
    let Some(k) = key else {
        return Err(missing("tombstone without a Kafka key"));
    };
    match &route.key {
        RowKeySource::KafkaKey => Ok(RowKey(text_of_bytes(k))),
        RowKeySource::EventHash => Err(missing(
            "tombstones cannot address rows keyed by @event_hash",
        )),
        RowKeySource::Columns(_) => unreachable!("typed routes derive keys in columns.rs"),
        RowKeySource::Pointers(ps) => {
            if let Ok(v) = serde_json::from_slice::<Value>(k) {
                if let Ok(rk) = key_from_pointers(&v, ps) {
                    return Ok(rk);
                }
            }
            if ps.len() == 1 {
                Ok(RowKey(text_of_bytes(k)))
            } else {
                Err(missing(
                    "tombstone key is not a JSON object holding the key pointers",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_routes;

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
        for key in keys {
            let routes = test_routes(&format!("topic = \"t\"\ntable = \"t\"\n{key}\n")).unwrap();
            let route = &routes[0];
            assert!(reads_borrowed(route), "{key}");
            for payload in payloads {
                let mut m = msg(0, 5, None);
                m.payload = Some(payload.to_vec());
                m.key = Some(b"kafka-key".to_vec());
                let value = parse_value(route, &m, payload, None, &mut BatchCounts::default());
                match parse_document(route, &m, payload) {
                    Some(p) => {
                        borrowed += 1;
                        assert_eq!(
                            format!("{p:?}"),
                            format!("{value:?}"),
                            "{key}: {}",
                            String::from_utf8_lossy(payload)
                        );
                    }
                    None => fell_back += 1,
                }
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
}

/// Property: folding any split of a message sequence into batches and applying
/// each batch the way `store::commit` does (upsert guarded by hash and
/// version, deletes) gives the same table as applying the messages one at a
/// time. This is what makes results independent of batch boundaries.
#[cfg(test)]
mod fold_model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::test_routes;

    #[derive(Clone, Debug, PartialEq)]
    struct Row {
        hash: EventHash,
        version: Option<i64>,
        offset: Offset,
    }

    /// The table and the delete markers of change-event routes.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Table {
        rows: BTreeMap<RowKey, Row>,
        markers: BTreeMap<RowKey, i64>,
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
            })
            .collect()
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
