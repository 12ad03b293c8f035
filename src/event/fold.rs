//! Stage 3, fold: a batch's identified events, key by key in offset order,
//! become the writes that have the same effect as applying them one by one.
//! Pure: no I/O, so it is tested exhaustively (unit and property tests in
//! `event/tests.rs`).
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
//! (property test `fold_model`).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::BatchCounts;
use crate::config::route::Route;
use crate::types::{EventHash, Offset, RowKey, TopicPartition, Version};

/// A row to upsert into a route's table.
#[derive(Clone, Debug, PartialEq)]
pub struct RowUpsert {
    pub key: RowKey,
    pub hash: EventHash,
    /// The payload exactly as received; Postgres parses it into jsonb.
    pub payload: String,
    /// Typed tables: the `{"column": value}` object Postgres converts.
    pub row: Option<String>,
    pub version: Option<Version>,
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
    pub version: Option<Version>,
    pub tp: TopicPartition,
    pub offset: Offset,
}

/// A truncate change event: every row older than `position` goes.
#[derive(Clone, Debug, PartialEq)]
pub struct RowTruncate {
    pub position: Version,
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
    /// (`encode::document_upserts`); whatever changes `upserts`
    /// must clear it.
    pub upserts_copy: Option<Vec<u8>>,
    /// Final tombstones: delete these keys.
    pub deletes: Vec<RowDelete>,
    /// The latest truncate of the batch, applied after everything else.
    pub truncate: Option<RowTruncate>,
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
pub(super) struct Fold {
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
    pub(super) fn new(route: &Route, capacity: usize) -> Self {
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

    pub(super) fn upsert(&mut self, row: RowUpsert, counts: &mut BatchCounts) {
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

    pub(super) fn tombstone(&mut self, del: RowDelete, counts: &mut BatchCounts) {
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
    pub(super) fn truncate(&mut self, t: RowTruncate, counts: &mut BatchCounts) {
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
    pub(super) fn finish(mut self, w: &mut RouteWrites) {
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
