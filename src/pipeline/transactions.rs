//! Source transactions applied whole (`[sink.source_transactions]`).
//!
//! With `provide.transaction.metadata=true` Debezium writes a BEGIN and an
//! END marker per source transaction to `<prefix>.transaction` (the END
//! with its number of changes per table) and names the transaction in
//! every change event (`transaction.id`). The gate holds the changes it
//! reads until their transaction is complete — its END read and as many of
//! its changes as the END counts for the tables the sink consumes — and
//! releases whole transactions in the order of their ENDs, the source's
//! commit order. The pipeline commits what is released as one batch: one
//! Postgres transaction holds whole source transactions and the positions
//! just past them, so no reader sees part of one, and after a crash or a
//! replay every partition resumes at a transaction boundary.
//!
//! Debezium writes each partition in commit order, so the changes of the
//! next transaction to release are at the front of every partition's queue.
//! Changes without a transaction (snapshot reads) pass when they reach the
//! front. Markers are released as positions (`Polled::Skipped`), not rows.
//! A connector restarted re-sends what it had not flushed — changes and
//! markers again, under the same ids, its transactions sometimes in part
//! with an END that counts them whole — so a transaction's id, once
//! released, lets its later copies pass freely (positions make them no-ops).
//!
//! Memory is bounded: past `max_buffered_events` the oldest transaction is
//! released in parts (`split`, counted and logged) or the sink stops.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::route_set::RouteSet;
use crate::config::TransactionOverflow;
use crate::kafka::assignment::{Assignment, Envelope, Generation, Polled};
use crate::kafka::message::SourceMessage;
use crate::kafka::rebalance::ReadNext;
use crate::ops::metrics::SourceTransactions as SourceTransactionMetrics;
use crate::types::{Offset, TopicPartition, Version};
use released::{EndAt, Released};

/// An END's changes per data collection.
type Counts = Vec<(String, u64)>;

/// How long the first END's transaction may stay incomplete before it is
/// taken for a connector's partial re-send.
pub const PRESUME_RESENT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A transaction marker on `<prefix>.transaction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub id: String,
    /// `None` for BEGIN; for END, the changes per data collection.
    pub end: Option<Counts>,
    /// An END's commit position, where the connector writes one: Postgres
    /// ids are `<xid>:<lsn>`, and the END's LSN is the end of its commit
    /// record (Debezium takes the position it received the COMMIT at).
    pub commit: Option<Version>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    data_collections: Option<Vec<Collection>>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    transaction: Option<TxBlock>,
    #[serde(default)]
    source: Option<SourceName>,
}

/// A change's `source.name`: the connector's `topic.prefix`.
#[derive(Deserialize)]
struct SourceName {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Collection {
    data_collection: String,
    event_count: u64,
}

#[derive(Deserialize)]
struct TxBlock {
    id: String,
    /// The change's place among its transaction's events: a connector
    /// restarted gives a re-sent copy its original's (the count lives in
    /// its offsets), so copies count once towards the END.
    #[serde(default)]
    total_order: Option<u64>,
}

/// The message's value as the JSON converter wrote it, schemas or not.
fn wire(m: &SourceMessage) -> Option<Wire<'_>> {
    wire_of(m.payload.as_deref()?)
}

fn wire_of(bytes: &[u8]) -> Option<Wire<'_>> {
    let outer: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    match outer.payload {
        Some(inner) if outer.status.is_none() && outer.op.is_none() => {
            serde_json::from_str(inner.get()).ok()
        }
        _ => Some(outer),
    }
}

/// The marker `m` is, if it is one.
pub fn marker(m: &SourceMessage) -> Option<Marker> {
    marker_in(&m.tp.topic, m.payload.as_deref()?)
}

/// The marker a message value on `topic` is, if it is one.
pub fn marker_in(topic: &str, value: &[u8]) -> Option<Marker> {
    let w = wire_of(value)?;
    if w.op.is_some() {
        return None;
    }
    let raw = w.id?;
    let (key, commit) = transaction_key(raw);
    let capture = topic.strip_suffix(".transaction").unwrap_or(topic);
    let id = scoped(capture, key);
    match w.status.as_deref()? {
        "BEGIN" => Some(Marker {
            id,
            end: None,
            commit: None,
        }),
        "END" => Some(Marker {
            id,
            commit,
            end: Some(
                w.data_collections
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| (c.data_collection, c.event_count))
                    .collect(),
            ),
        }),
        _ => None,
    }
}

/// Whether a topic may carry markers (Debezium's `<prefix>.transaction`).
pub fn may_carry_markers(topic: &str) -> bool {
    topic.ends_with(".transaction")
}

/// A message as the gate holds it.
struct Held {
    env: Envelope,
    /// The source transaction it belongs to.
    tx: Option<String>,
    /// A marker: released as a position, not a row.
    marker: Option<Marker>,
    /// A change's order in its transaction (`transaction.total_order`).
    order: Option<u64>,
    /// A truncate (`op = "t"`): changes before it in its transaction keep
    /// their own positions when the rest is stamped with the commit.
    truncate: bool,
}

/// The first END held (`Gate::first_end`): where it is, its transaction,
/// its counts and commit.
struct FirstEnd {
    tp: TopicPartition,
    offset: Offset,
    id: String,
    counts: Counts,
    commit: Option<Version>,
}

/// What the gate reads of a change event.
struct Change {
    id: String,
    order: Option<u64>,
    truncate: bool,
}

/// The source transaction a change event names, if any: its id, the
/// change's order in it, whether it is a truncate.
fn change_of(m: &SourceMessage) -> Option<Change> {
    let w = wire(m)?;
    let truncate = w.op.as_deref() == Some("t");
    let name = w.source.and_then(|s| s.name);
    // Without a name, the prefix of Debezium's `<prefix>.<schema>.<table>`.
    let capture = name.as_deref().unwrap_or_else(|| {
        let topic: &str = &m.tp.topic;
        topic.rsplitn(3, '.').nth(2).unwrap_or(topic)
    });
    w.transaction.map(|t| Change {
        id: scoped(capture, transaction_key(t.id).0),
        order: t.total_order,
        truncate,
    })
}

/// A transaction id within its capture (`topic.prefix`): two source
/// databases behind one sink count their own xids, so the same id from
/// two captures names two transactions.
fn scoped(capture: &str, id: String) -> String {
    format!("{capture}/{id}")
}

/// A change of a transaction as released: where in the output, whether a
/// truncate, its order in the transaction.
struct Popped {
    at: usize,
    truncate: bool,
    order: Option<u64>,
}

/// Stamps a released transaction's commit on the last change of each row
/// (`changes`: its changes in `out`), so a Postgres change sorts by its
/// commit where LSNs would misorder it (`event::position`). Rows are told
/// by topic and Kafka key (the connector keys each row by its primary key,
/// so one row's changes are in one partition, in order). Changes before the
/// transaction's last truncate (by `total_order`: a truncate may sit in
/// another partition) keep their positions, below the truncate's, which
/// must still remove them; without orders, a truncate stamps nothing.
fn stamp_commit(out: &mut [Envelope], changes: &[Popped], commit: Version) {
    let truncates: Vec<Option<u64>> = changes
        .iter()
        .filter(|c| c.truncate)
        .map(|c| c.order)
        .collect();
    if truncates.contains(&None) {
        return;
    }
    let after = truncates.into_iter().flatten().max();
    let mut stamped = std::collections::HashSet::new();
    for c in changes.iter().rev() {
        if after.is_some_and(|a| c.order.is_none_or(|o| o <= a)) {
            continue;
        }
        let Polled::Message(m) = &mut out[c.at].item else {
            continue;
        };
        let (Some(key), Some(_)) = (&m.key, &m.payload) else {
            continue;
        };
        if stamped.insert((m.tp.topic.clone(), key.clone())) {
            m.source_commit = Some(commit);
        }
    }
}

fn stamp(env: &mut Envelope, commit: Version) {
    if let Polled::Message(m) = &mut env.item {
        m.source_commit = Some(commit);
    }
}

/// What [`Gate::push`] and [`Gate::release`] report for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GateState {
    pub held_events: usize,
    pub open_transactions: usize,
    pub oldest_held_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum Overflow {
    #[error(
        "source transaction {id} holds {held} buffered changes, past \
         sink.source_transactions.max_buffered_events ({max}), and on_overflow = \"stop\""
    )]
    Buffer { id: String, held: usize, max: usize },
    /// ENDs on several partitions have no commit order between them.
    #[error(
        "transaction markers on {topic} partition {partition}: whole source transactions need \
         the transaction topic in one partition (its ENDs in commit order)"
    )]
    PartitionedMarkers { topic: String, partition: i32 },
}

/// Holds changes until their source transaction is complete.
pub struct Gate {
    queues: BTreeMap<TopicPartition, (Generation, VecDeque<Held>)>,
    /// Changes held per transaction.
    held_per_tx: HashMap<String, u64>,
    /// Transactions released (whole or in parts): their later changes and
    /// markers are re-sends and pass freely.
    done: Released,
    held: usize,
    oldest: VecDeque<Instant>,
    max_held: usize,
    overflow: TransactionOverflow,
    consumes: Box<dyn Fn(&str) -> bool + Send + Sync>,
    pub applied: u64,
    pub splits: u64,
    pub presumed: u64,
    /// The first END's transaction while it is incomplete, and since when.
    stuck: Option<(String, Instant)>,
    /// A marker on a partition other than 0 (reported by `release`).
    partitioned: Option<TopicPartition>,
}

impl Gate {
    /// `consumes(topic)`: whether the sink reads a data collection's topic
    /// (an END counts only the changes of those).
    pub fn new(
        max_held: usize,
        overflow: TransactionOverflow,
        consumes: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Gate {
        Gate {
            queues: BTreeMap::new(),
            held_per_tx: HashMap::new(),
            done: Released::default(),
            held: 0,
            oldest: VecDeque::new(),
            max_held,
            overflow,
            consumes: Box::new(consumes),
            applied: 0,
            splits: 0,
            presumed: 0,
            stuck: None,
            partitioned: None,
        }
    }

    pub fn push(&mut self, mut env: Envelope) {
        let tp = env.tp().clone();
        let (marker, change) = match &env.item {
            Polled::Message(m) if may_carry_markers(&m.tp.topic) => match marker(m) {
                Some(mk) => (Some(mk), None),
                None => (None, change_of(m)),
            },
            Polled::Message(m) => (None, change_of(m)),
            _ => (None, None),
        };
        let (order, truncate, change_id) = match change {
            Some(c) => (c.order, c.truncate, Some(c.id)),
            None => (None, false, None),
        };
        let tx = marker
            .as_ref()
            .map(|mk| mk.id.clone())
            .or(change_id.clone());
        if marker.is_some() && tp.partition != 0 {
            self.partitioned.get_or_insert(tp.clone());
        }
        let generation = env.generation;
        let entry = self
            .queues
            .entry(tp)
            .or_insert_with(|| (generation, VecDeque::new()));
        if generation > entry.0 {
            // Rewound or assigned again: what was held is read again.
            let dropped: Vec<Held> = entry.1.drain(..).collect();
            entry.0 = generation;
            for h in dropped {
                self.forget(&h);
            }
        }
        let tx = tx.filter(|id| !self.done.contains(id));
        if let (None, Some(id)) = (&tx, &change_id) {
            // A copy of a change of a transaction already released.
            if let Some(commit) = self.done.commit(id) {
                stamp(&mut env, commit);
            }
        }
        if let (Some(id), None) = (&tx, &marker) {
            *self.held_per_tx.entry(id.clone()).or_default() += 1;
        }
        self.held += 1;
        self.oldest.push_back(Instant::now());
        let entry = self.queues.get_mut(env.tp()).expect("just inserted");
        entry.1.push_back(Held {
            env,
            tx,
            marker,
            order,
            truncate,
        });
    }

    fn forget(&mut self, h: &Held) {
        self.held -= 1;
        self.oldest.pop_front();
        if let (Some(id), None) = (&h.tx, &h.marker) {
            if let Some(n) = self.held_per_tx.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.held_per_tx.remove(id);
                }
            }
        }
    }

    /// What may be applied now, in order: changes without a transaction
    /// at the front of their partitions, then whole transactions in commit
    /// order.
    pub fn release(&mut self) -> Result<Vec<Envelope>, Overflow> {
        if let Some(tp) = &self.partitioned {
            return Err(Overflow::PartitionedMarkers {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            });
        }
        let mut out = Vec::new();
        loop {
            self.free_orphan_begins();
            self.release_free(&mut out);
            if let Some(first) = self.next_complete() {
                let truncated = self.release_tx(&first.id, first.commit, &mut out);
                let commit = first.commit.filter(|_| !truncated);
                self.free_rest_of(&first.id, Some((first.tp, first.offset)), commit);
                self.applied += 1;
            } else if !self.free_resends_before_first() && !self.presume_resent() {
                break;
            }
        }
        if self.held > self.max_held {
            self.release_oldest_in_parts(&mut out)?;
        }
        Ok(out)
    }

    /// Everything held, partition by partition, markers as positions.
    pub fn drain(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        self.pop_fronts(&mut out, false, |_| true);
        out
    }

    pub fn state(&self) -> GateState {
        // Changes are counted per transaction; markers live on the
        // transaction topics only (scanning every held change per batch
        // would cost as much as the changes).
        let mut open: Vec<&String> = self.held_per_tx.keys().collect();
        for (tp, (_, q)) in &self.queues {
            if may_carry_markers(&tp.topic) {
                open.extend(q.iter().filter_map(|h| h.tx.as_ref()));
            }
        }
        open.sort();
        open.dedup();
        GateState {
            held_events: self.held,
            open_transactions: open.len(),
            oldest_held_seconds: self
                .oldest
                .front()
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
        }
    }

    /// Pops `tp`'s front into `out`; what it was if a change of a
    /// transaction.
    fn pop(&mut self, tp: &TopicPartition, out: &mut Vec<Envelope>) -> Option<Popped> {
        let held = self
            .queues
            .get_mut(tp)
            .and_then(|(_, q)| q.pop_front())
            .expect("a held front");
        self.forget(&held);
        let change = (held.tx.is_some() && held.marker.is_none()).then_some(Popped {
            at: out.len(),
            truncate: held.truncate,
            order: held.order,
        });
        out.push(match held.marker {
            // A marker moves its partition's position, nothing else.
            Some(_) => as_position(held.env),
            None => held.env,
        });
        change
    }

    /// Releases the fronts that belong to no transaction.
    fn release_free(&mut self, out: &mut Vec<Envelope>) {
        self.pop_fronts(out, false, |h| h.tx.is_none());
    }

    /// Pops, partition by partition, the fronts `take` accepts, stopping
    /// after an END when `to_end`. Returns the changes of transactions it
    /// popped.
    fn pop_fronts(
        &mut self,
        out: &mut Vec<Envelope>,
        to_end: bool,
        take: impl Fn(&Held) -> bool,
    ) -> Vec<Popped> {
        let mut changes = Vec::new();
        let tps: Vec<TopicPartition> = self.queues.keys().cloned().collect();
        for tp in tps {
            while let Some(h) = self.queues.get(&tp).and_then(|(_, q)| q.front()) {
                if !take(h) {
                    break;
                }
                let is_end = matches!(&h.marker, Some(Marker { end: Some(_), .. }));
                changes.extend(self.pop(&tp, out));
                if to_end && is_end {
                    break;
                }
            }
        }
        changes
    }

    /// The transaction whose END is first among the markers held and whose
    /// counted changes are all held at the fronts.
    fn next_complete(&self) -> Option<FirstEnd> {
        let first = self.first_end()?;
        let id = &first.id;
        let expected: u64 = first
            .counts
            .iter()
            .filter(|(collection, _)| (self.consumes)(&data_topic(&first.tp.topic, collection)))
            .map(|(_, n)| n)
            .sum();
        let held = self.held_per_tx.get(id).copied().unwrap_or(0);
        if held < expected {
            return None;
        }
        // Its changes must be at the fronts of their partitions (commit
        // order per partition). More than the END counts can be held: a
        // connector restarted re-sends transactions, in part, under the
        // same id, further back in the partitions — and a copy of a change
        // held beside its original counts once (by its order), or the
        // copies would stand in for changes still to come.
        let mut orders = std::collections::HashSet::new();
        let mut unordered = 0u64;
        for (_, q) in self.queues.values() {
            let reachable = q
                .iter()
                .take_while(|h| h.tx.as_ref() == Some(id) || h.tx.is_none())
                .filter(|h| h.marker.is_none() && h.tx.as_ref() == Some(id));
            for h in reachable {
                match h.order {
                    Some(o) => {
                        orders.insert(o);
                    }
                    None => unordered += 1,
                }
            }
        }
        (orders.len() as u64 + unordered >= expected).then_some(first)
    }

    /// The first END marker held whose partition holds nothing of another
    /// transaction before it (where it is, its id and counts).
    fn first_end(&self) -> Option<FirstEnd> {
        let mut marker_queues = self
            .queues
            .iter()
            .filter(|(tp, _)| may_carry_markers(&tp.topic));
        marker_queues.find_map(|(tp, (_, q))| {
            let (at, offset, marker, counts) =
                q.iter()
                    .enumerate()
                    .find_map(|(i, h)| match (&h.marker, &h.env.item) {
                        (Some(mk @ Marker { end: Some(c), .. }), Polled::Message(m))
                            if h.tx.is_some() =>
                        {
                            Some((i, m.offset, mk, c))
                        }
                        _ => None,
                    })?;
            q.iter()
                .take(at)
                .all(|h| h.tx.is_none() || h.tx.as_ref() == Some(&marker.id))
                .then(|| FirstEnd {
                    tp: tp.clone(),
                    offset,
                    id: marker.id.clone(),
                    counts: counts.clone(),
                    commit: marker.commit,
                })
        })
    }

    /// Releases `id` up to its END; whether it holds a truncate.
    fn release_tx(&mut self, id: &str, commit: Option<Version>, out: &mut Vec<Envelope>) -> bool {
        // Up to its END: the transaction topic's next one waits its turn.
        let changes = self.pop_fronts(out, true, |h| h.tx.as_deref() == Some(id) || h.tx.is_none());
        if let Some(commit) = commit {
            stamp_commit(out, &changes, commit);
        }
        changes.iter().any(|c| c.truncate)
    }

    /// Over the buffer bound: the oldest held transaction goes out as far
    /// as its partitions' fronts allow, and its later changes pass freely.
    fn release_oldest_in_parts(&mut self, out: &mut Vec<Envelope>) -> Result<(), Overflow> {
        let Some(id) = self
            .queues
            .values()
            .filter_map(|(_, q)| q.front())
            .find_map(|h| h.tx.clone())
        else {
            return Ok(());
        };
        if self.overflow == TransactionOverflow::Stop {
            return Err(Overflow::Buffer {
                id,
                held: self.held,
                max: self.max_held,
            });
        }
        tracing::warn!(
            transaction = %id,
            held = self.held,
            max = self.max_held,
            "a source transaction is larger than sink.source_transactions.max_buffered_events: \
             applying it in parts; readers can see part of it"
        );
        self.splits += 1;
        self.free_rest_of(&id, None, None);
        self.release_free(out);
        Ok(())
    }

    /// A connector alone writes BEGIN, END, BEGIN, END…; a BEGIN followed
    /// by another transaction's marker lost its END in a connector crash
    /// (the transaction is sent again after the restart). It moves its
    /// position only; its changes wait for the END of the re-send.
    fn free_orphan_begins(&mut self) {
        let marker_queues = self
            .queues
            .iter_mut()
            .filter(|(tp, _)| may_carry_markers(&tp.topic));
        for (_, (_, q)) in marker_queues {
            let mut orphans = Vec::new();
            let mut open: Option<(usize, &str)> = None;
            for (i, h) in q.iter().enumerate() {
                let Some(m) = &h.marker else { continue };
                if let Some((b, id)) = open {
                    if id != m.id || m.end.is_none() {
                        orphans.push(b);
                    }
                }
                open = (m.end.is_none() && h.tx.is_some()).then_some((i, m.id.as_str()));
            }
            for b in orphans {
                q[b].tx = None;
            }
        }
    }

    /// The first END's transaction waits behind changes of others in some
    /// partition: those committed before it (per-partition commit order),
    /// so their ENDs were read before its END and they were applied — by
    /// this process or one before it. They are re-sends: let them pass.
    fn free_resends_before_first(&mut self) -> bool {
        let Some(FirstEnd { id, .. }) = self.first_end() else {
            return false;
        };
        let mut resent = Vec::new();
        for (_, q) in self.queues.values() {
            let Some(at) = q
                .iter()
                .position(|h| h.marker.is_none() && h.tx.as_deref() == Some(&id))
            else {
                continue;
            };
            resent.extend(
                q.iter()
                    .take(at)
                    .filter_map(|h| h.tx.clone())
                    .filter(|t| *t != id),
            );
        }
        resent.sort();
        resent.dedup();
        if !resent.is_empty() {
            tracing::info!(
                before = %id,
                transactions = ?resent,
                "changes standing before the next transaction's taken for a connector's re-sends"
            );
        }
        for t in &resent {
            self.free_rest_of(t, None, None);
        }
        !resent.is_empty()
    }

    /// A connector re-sends a transaction in part with an END that counts
    /// it whole: its END stays incomplete at the front for good. After
    /// [`PRESUME_RESENT_AFTER`] without completing, it is taken for one (a
    /// warning, a metric) and let through; were it an original whose
    /// changes were that late, readers could see part of it.
    fn presume_resent(&mut self) -> bool {
        let Some(FirstEnd {
            tp: end_tp,
            offset: end,
            id,
            ..
        }) = self.first_end()
        else {
            self.stuck = None;
            return false;
        };
        match &self.stuck {
            Some((s, since)) if *s == id && since.elapsed() >= PRESUME_RESENT_AFTER => {
                tracing::warn!(
                    transaction = %id,
                    waited = ?since.elapsed(),
                    "a source transaction's END stayed incomplete: taken for a connector's \
                     partial re-send and let through"
                );
                self.stuck = None;
                self.presumed += 1;
                self.free_rest_of(&id, Some((end_tp, end)), None);
                true
            }
            Some((s, _)) if *s == id => false,
            _ => {
                self.stuck = Some((id, Instant::now()));
                false
            }
        }
    }

    /// `tp` will be read next as `next` says (a rebalance, a seek): what it
    /// held goes. Read again here from `at`, so do the transactions whose
    /// END is there at or after `at` — released perhaps, but not committed,
    /// or committed and now replayed; read again, they are gated again.
    /// `recalled`: the ENDs below `at`, released by an earlier process
    /// (`recall.rs`).
    pub fn rewind(&mut self, tp: &TopicPartition, next: ReadNext, recalled: Vec<(String, Offset)>) {
        if let Some((_, q)) = self.queues.remove(tp) {
            for h in &q {
                self.forget(h);
            }
        }
        let ReadNext::From(at) = next else {
            return;
        };
        if !may_carry_markers(&tp.topic) {
            return;
        }
        self.stuck = None;
        self.done.forget_from(tp, at);
        for (id, end) in &recalled {
            self.done.insert(id, Some((tp.clone(), *end)));
            self.held_per_tx.remove(id);
        }
        let ids: std::collections::HashSet<&str> =
            recalled.iter().map(|(id, _)| id.as_str()).collect();
        self.pass_freely(|t| ids.contains(t));
    }

    /// Marks `id` released: what is still held of it (a re-send, or the
    /// rest of a transaction applied in parts) and what comes later passes
    /// freely — re-sent changes never move a row back (source positions).
    /// `commit`: a transaction released whole, without a truncate; copies
    /// of its changes are stamped with it.
    fn free_rest_of(&mut self, id: &str, end: EndAt, commit: Option<Version>) {
        self.done.insert(id, end);
        if let Some(c) = commit {
            self.done.set_commit(id, c);
        }
        self.held_per_tx.remove(id);
        self.pass_freely(|t| t == id);
    }

    /// What is held of the transactions `released` names passes freely,
    /// copies of changes stamped with their commit where it is known.
    fn pass_freely(&mut self, released: impl Fn(&str) -> bool) {
        for (_, q) in self.queues.values_mut() {
            for h in q.iter_mut() {
                let Some(id) = h.tx.take_if(|id| released(id)) else {
                    continue;
                };
                if let (None, Some(commit)) = (&h.marker, self.done.commit(&id)) {
                    stamp(&mut h.env, commit);
                }
            }
        }
    }
}

/// What stands between the consumer and the batches: the gate when
/// source transactions are applied whole; otherwise markers only become
/// positions (a `^prefix\..*` route also reads `<prefix>.transaction`).
pub struct Admission {
    gate: Option<Gate>,
    metrics: SourceTransactionMetrics,
    /// Partitions assigned or revoked, for the gate to take in before the
    /// next messages (`recall.rs`).
    rewinds: recall::Inbox,
    /// Tells which messages belong to an ended generation.
    assignment: Assignment,
}

impl Admission {
    /// `rewinds`: where the rebalance callback leaves the partitions it
    /// assigned or revoked (`recall.rs`).
    pub fn new(
        cfg: &crate::config::SourceTransactions,
        routes: Arc<RouteSet>,
        metrics: SourceTransactionMetrics,
        rewinds: recall::Inbox,
        assignment: Assignment,
    ) -> Admission {
        let gate = cfg.enabled.then(|| {
            Gate::new(cfg.max_buffered_events, cfg.on_overflow, move |topic| {
                routes.matching(topic).is_some()
            })
        });
        Admission {
            gate,
            metrics,
            rewinds,
            assignment,
        }
    }

    /// Partitions about to be read again from the given positions (a seek).
    pub fn rewound(&mut self, seeks: &[(TopicPartition, Option<Offset>)]) {
        if let Some(gate) = &mut self.gate {
            for (tp, at) in seeks {
                gate.rewind(tp, ReadNext::From(*at), Vec::new());
            }
        }
    }

    /// Batches must hold whole released runs (no split at `max_messages`).
    pub fn whole_batches(&self) -> bool {
        self.gate.is_some()
    }

    /// Takes `chunk` in; appends to `buf` what may be applied now.
    pub fn admit(&mut self, chunk: Vec<Envelope>, buf: &mut Vec<Envelope>) -> Result<(), Overflow> {
        let Some(gate) = &mut self.gate else {
            buf.extend(chunk.into_iter().map(|env| match &env.item {
                Polled::Message(m) if is_marker(m) => {
                    self.metrics.markers.inc();
                    as_position(env)
                }
                _ => env,
            }));
            return Ok(());
        };
        for r in std::mem::take(&mut *self.rewinds.lock().expect("rewinds")) {
            gate.rewind(&r.tp, r.next, r.recalled);
        }
        // Messages of an ended generation never enter a batch: released now,
        // their transactions would count as released and, read again, pass
        // as re-sends of themselves.
        let chunk = self.assignment.current(chunk);
        let (applied, splits, presumed) = (gate.applied, gate.splits, gate.presumed);
        for env in chunk {
            if let Polled::Message(m) = &env.item {
                if is_marker(m) {
                    self.metrics.markers.inc();
                }
            }
            gate.push(env);
        }
        let released = gate.release();
        self.metrics.released.inc_by(gate.applied - applied);
        self.metrics.split.inc_by(gate.splits - splits);
        self.metrics
            .presumed_resent
            .inc_by(gate.presumed - presumed);
        let state = gate.state();
        self.metrics.held_events.set(state.held_events as f64);
        self.metrics.open.set(state.open_transactions as f64);
        self.metrics.oldest_held.set(state.oldest_held_seconds);
        buf.extend(released?);
        Ok(())
    }
}

/// `collection` (`schema.table`, `db.table`) as a topic beside the
/// transaction topic `<prefix>.transaction`.
fn data_topic(transaction_topic: &str, collection: &str) -> String {
    let prefix = transaction_topic
        .strip_suffix(".transaction")
        .unwrap_or(transaction_topic);
    format!("{prefix}.{collection}")
}

/// What names one source transaction in its markers and changes alike, and
/// the LSN the id carries (an END's: its commit position). Debezium's
/// Postgres connector writes `<xid>:<lsn>` with the LSN of the event at
/// hand — BEGIN, END and each change differ — so there the xid alone names
/// the transaction (unique among those in flight). Other connectors' ids
/// are stable as written (MySQL's GTID or `file:pos` of its BEGIN, SQL
/// Server's three-part commit LSN) and carry no LSN.
fn transaction_key(id: String) -> (String, Option<Version>) {
    let postgres = id.split_once(':').and_then(|(xid, lsn)| {
        let xid_ok = !xid.is_empty() && xid.bytes().all(|b| b.is_ascii_digit());
        let lsn = lsn.parse::<u64>().ok().filter(|_| xid_ok)?;
        Some((xid.to_string(), Version::from(lsn)))
    });
    match postgres {
        Some((xid, lsn)) => (xid, Some(lsn)),
        None => (id, None),
    }
}

/// Whether `m` is a transaction marker (on `<prefix>.transaction`).
pub fn is_marker(m: &SourceMessage) -> bool {
    may_carry_markers(&m.tp.topic) && marker(m).is_some()
}

/// A marker's envelope as the position past it.
fn as_position(env: Envelope) -> Envelope {
    match env.item {
        Polled::Message(m) => Envelope {
            item: Polled::Skipped {
                tp: m.tp,
                next: crate::types::Offset(m.offset.0 + 1),
            },
            generation: env.generation,
        },
        _ => env,
    }
}

mod read_back;
pub mod recall;
mod released;

pub use read_back::ReadBack;
#[cfg(test)]
mod tests;
