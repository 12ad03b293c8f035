//! Partition ownership: which partitions this process owns, where it will
//! commit from, and which fetched messages may still enter a batch. This is
//! the state exactly-once rests on, so it lives here alone, behind methods;
//! the consumer thread (rebalances, seeks), the pipeline (batches, fences,
//! replays) and the HTTP readiness probe only call them.
//!
//! Every partition carries a *generation*, bumped on assignment and on every
//! seek. Messages are stamped with the generation current when they were
//! polled, and [`Assignment::admit`] drops messages of an older generation:
//! after a fence or a replay nothing fetched before the seek can slip into a
//! batch. While a seek is pending the partition admits nothing at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kafka::message::SourceMessage;
use crate::types::{Expected, Offset, TopicPartition};

/// Ownership epoch of one partition in this process.
pub type Generation = u64;

/// What the consumer thread hands to the pipeline, stamped with the
/// partition's generation when it was polled.
#[derive(Debug)]
pub struct Envelope {
    pub item: Polled,
    pub generation: Generation,
}

#[derive(Debug)]
pub enum Polled {
    Message(SourceMessage),
    /// Every record of `tp` before `next` has been delivered or was skipped by
    /// librdkafka (transaction markers, aborted transactions, compacted-away
    /// offsets): once what was delivered is committed, `next` may be stored.
    Skipped {
        tp: TopicPartition,
        next: Offset,
    },
    /// The position to resume from is outside the partition's log
    /// (`[low, high]`): retention deleted unread records, or the topic was
    /// deleted and recreated.
    OutOfRange {
        tp: TopicPartition,
        position: Offset,
        low: Offset,
        high: Offset,
    },
}

impl Envelope {
    pub fn message(msg: SourceMessage, generation: Generation) -> Self {
        Envelope {
            item: Polled::Message(msg),
            generation,
        }
    }

    pub fn tp(&self) -> &TopicPartition {
        match &self.item {
            Polled::Message(m) => &m.tp,
            Polled::Skipped { tp, .. } | Polled::OutOfRange { tp, .. } => tp,
        }
    }
}

/// What this process knows about one partition it owns.
#[derive(Clone, Debug)]
struct PartState {
    generation: Generation,
    /// Next offset to commit from: the stored position plus what this process
    /// has committed (or handed to the committer) since. `None`: no row in
    /// `sink_offsets` yet.
    planned: Option<Offset>,
    /// A seek was requested and has not happened yet: admit nothing.
    seeking: bool,
    /// The stored position cannot be resumed (out of range, policy `fail`):
    /// admit nothing until a seek (a replay) moves it.
    stalled: bool,
}

#[derive(Default)]
struct Owned {
    /// FxHash: looked up for every message the consumer thread polls.
    parts: rustc_hash::FxHashMap<TopicPartition, PartState>,
    next_generation: Generation,
    /// Set once the first assignment happened (readiness).
    joined: bool,
}

impl Owned {
    fn bump(&mut self) -> Generation {
        self.next_generation += 1;
        self.next_generation
    }

    /// Whether `generation` is still the current one of `tp` (owned, and
    /// no seek pending).
    fn is_current(&self, tp: &TopicPartition, generation: Generation) -> bool {
        self.parts
            .get(tp)
            .is_some_and(|s| s.generation == generation && !s.seeking)
    }
}

/// The positions a batch was admitted under, per partition.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    parts: BTreeMap<TopicPartition, (Generation, Option<Offset>)>,
    /// Partitions whose records up to (excluding) this offset were delivered
    /// or skipped: the batch may store it even without a message there.
    skipped_to: BTreeMap<TopicPartition, Offset>,
}

impl Claim {
    /// What the fence must find and set for a batch covering `ranges` (first
    /// and last message offset per partition), including partitions that
    /// only advance past skipped records.
    pub fn expected(&self, ranges: &BTreeMap<TopicPartition, (Offset, Offset)>) -> Vec<Expected> {
        let mut ends: BTreeMap<&TopicPartition, Offset> = ranges
            .iter()
            .map(|(tp, (_, last))| (tp, last.next()))
            .collect();
        for (tp, next) in &self.skipped_to {
            let end = ends.entry(tp).or_insert(*next);
            *end = (*end).max(*next);
        }
        ends.into_iter()
            .map(|(tp, new_next)| Expected {
                tp: tp.clone(),
                expected: self.parts.get(tp).and_then(|p| p.1),
                new_next,
            })
            .collect()
    }

    /// Whether the batch must be committed even without messages.
    pub fn advances_past_skipped(&self) -> bool {
        !self.skipped_to.is_empty()
    }

    /// The claimed partitions of `topic`, with the generation they were
    /// admitted under.
    pub fn partitions_of<'c>(
        &'c self,
        topic: &'c str,
    ) -> impl Iterator<Item = (&'c TopicPartition, Generation)> + 'c {
        self.parts
            .iter()
            .filter(move |(tp, _)| &*tp.topic == topic)
            .map(|(tp, (g, _))| (tp, *g))
    }

    /// Leaves `topic`'s partitions out: the batch neither stores nor plans
    /// positions for them (their messages were taken out of it).
    pub fn forget_topic(&mut self, topic: &str) {
        self.parts.retain(|tp, _| &*tp.topic != topic);
        self.skipped_to.retain(|tp, _| &*tp.topic != topic);
    }
}

/// Shared handle to this process's partition ownership.
#[derive(Clone, Default)]
pub struct Assignment(Arc<Mutex<Owned>>);

impl Assignment {
    fn lock(&self) -> MutexGuard<'_, Owned> {
        self.0.lock().expect("assignment lock is never poisoned")
    }

    /// A rebalance assigned `tps`, to be consumed from their stored positions.
    /// `replace` (eager protocol) first drops every partition owned before.
    /// Returns how many partitions are owned now.
    pub fn assign(
        &self,
        tps: &[TopicPartition],
        stored: &HashMap<TopicPartition, Offset>,
        replace: bool,
    ) -> usize {
        let mut a = self.lock();
        if replace {
            a.parts.clear();
        }
        for tp in tps {
            let generation = a.bump();
            a.parts.insert(
                tp.clone(),
                PartState {
                    generation,
                    planned: stored.get(tp).copied(),
                    seeking: false,
                    stalled: false,
                },
            );
        }
        a.joined = true;
        a.parts.len()
    }

    /// A rebalance revoked `tps`. Returns how many partitions remain.
    pub fn revoke(&self, tps: &[TopicPartition]) -> usize {
        let mut a = self.lock();
        for tp in tps {
            a.parts.remove(tp);
        }
        a.parts.len()
    }

    /// The generation to stamp on a message just polled from `tp`; `None`
    /// when the message must be dropped (not owned, or a seek is pending).
    pub fn stamp(&self, tp: &TopicPartition) -> Option<Generation> {
        match self.lock().parts.get(tp) {
            Some(s) if !s.seeking && !s.stalled => Some(s.generation),
            _ => None,
        }
    }

    /// Keeps the messages that may enter a batch — owned partition, current
    /// generation, at or after the planned position — and returns them with
    /// the positions they were admitted under.
    pub fn admit(&self, envs: Vec<Envelope>) -> (Vec<SourceMessage>, Claim) {
        let a = self.lock();
        let mut claim = Claim::default();
        let mut messages = Vec::with_capacity(envs.len());
        for e in envs {
            let Some(s) = a.parts.get(e.tp()) else {
                continue;
            };
            if s.seeking || s.stalled || s.generation != e.generation {
                continue;
            }
            let at = match &e.item {
                Polled::Message(m) => m.offset,
                Polled::Skipped { next, .. } => *next,
                Polled::OutOfRange { .. } => continue,
            };
            if s.planned.is_some_and(|p| at < p) {
                continue;
            }
            claim
                .parts
                .entry(e.tp().clone())
                .or_insert((s.generation, s.planned));
            match e.item {
                Polled::Message(m) => messages.push(m),
                Polled::Skipped { tp, next } => {
                    claim.skipped_to.insert(tp, next);
                }
                Polled::OutOfRange { .. } => unreachable!("filtered above"),
            }
        }
        (messages, claim)
    }

    /// The partition's position cannot be resumed and the policy is to stop
    /// it: admit nothing until a seek. Ignored if `generation` is outdated
    /// (a seek already happened). Returns whether it stalled.
    pub fn stall(&self, tp: &TopicPartition, generation: Generation) -> bool {
        let mut a = self.lock();
        match a.parts.get_mut(tp) {
            Some(s) if s.generation == generation => {
                s.stalled = true;
                true
            }
            _ => false,
        }
    }

    /// The envelopes whose generation is still current (one lock for all).
    pub fn current(&self, mut envs: Vec<Envelope>) -> Vec<Envelope> {
        let a = self.lock();
        envs.retain(|e| a.is_current(e.tp(), e.generation));
        envs
    }

    /// Whether `generation` is still the current one of `tp`.
    pub fn is_current(&self, tp: &TopicPartition, generation: Generation) -> bool {
        self.lock().is_current(tp, generation)
    }

    /// The planned position of `tp`, if owned.
    pub fn planned(&self, tp: &TopicPartition) -> Option<Option<Offset>> {
        self.while_owned(tp, |planned| planned)
    }

    /// A batch admitted under `claim` was handed to the committer: the next
    /// batch continues where it ends (optimistic; a fence resets it). Skipped
    /// for partitions that were re-assigned or are seeking meanwhile.
    pub fn advance(&self, claim: &Claim, expected: &[Expected]) {
        let mut a = self.lock();
        for e in expected {
            let Some(&(generation, _)) = claim.parts.get(&e.tp) else {
                continue;
            };
            if let Some(s) = a.parts.get_mut(&e.tp) {
                if s.generation == generation && !s.seeking {
                    s.planned = Some(e.new_next);
                }
            }
        }
    }

    /// After a fence or a replay: plan from the stored positions again and
    /// stop admitting until the consumer has sought there. Returns the seeks
    /// to request (partitions no longer owned are left out).
    pub fn begin_seek(
        &self,
        tps: &[TopicPartition],
        stored: &HashMap<TopicPartition, Offset>,
    ) -> Vec<(TopicPartition, Option<Offset>)> {
        let mut a = self.lock();
        let mut seeks = Vec::with_capacity(tps.len());
        for tp in tps {
            if let Some(s) = a.parts.get_mut(tp) {
                s.planned = stored.get(tp).copied();
                s.seeking = true;
                seeks.push((tp.clone(), s.planned));
            }
        }
        seeks
    }

    /// The consumer has sought `tp`: messages polled from now on carry a new
    /// generation and are admitted again.
    pub fn finish_seek(&self, tp: &TopicPartition) {
        let mut a = self.lock();
        let generation = a.bump();
        if let Some(s) = a.parts.get_mut(tp) {
            s.generation = generation;
            s.seeking = false;
            s.stalled = false;
        }
    }

    pub fn owns(&self, tp: &TopicPartition) -> bool {
        self.lock().parts.contains_key(tp)
    }

    /// Runs `f` with `tp`'s planned position if `tp` is still owned, under
    /// the ownership lock. A revocation removes the partition before it
    /// forgets the partition's metrics, so a gauge set here from another
    /// thread cannot outlive it.
    pub fn while_owned<R>(
        &self,
        tp: &TopicPartition,
        f: impl FnOnce(Option<Offset>) -> R,
    ) -> Option<R> {
        self.lock().parts.get(tp).map(|s| f(s.planned))
    }

    /// Owned partitions with their planned positions.
    pub fn positions(&self) -> Vec<(TopicPartition, Option<Offset>)> {
        self.lock()
            .parts
            .iter()
            .map(|(tp, s)| (tp.clone(), s.planned))
            .collect()
    }

    /// Whether the first assignment happened, and how many partitions are owned.
    pub fn status(&self) -> (bool, usize) {
        let a = self.lock();
        (a.joined, a.parts.len())
    }

    /// Owned partitions that are stalled (position cannot be resumed).
    pub fn stalled(&self) -> Vec<TopicPartition> {
        let a = self.lock();
        let mut v: Vec<TopicPartition> = a
            .parts
            .iter()
            .filter(|(_, s)| s.stalled)
            .map(|(tp, _)| tp.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(tp: &TopicPartition, offset: i64, generation: Generation) -> Envelope {
        Envelope::message(
            SourceMessage {
                tp: tp.clone(),
                offset: Offset(offset),
                key: None,
                payload: None,
                timestamp: None,
                headers: Vec::new(),
                source_commit: None,
            },
            generation,
        )
    }

    /// An assignment owning partition t/0, planned at `stored` (`None`: no
    /// stored position).
    fn owning_t0(stored: Option<i64>) -> (Assignment, TopicPartition) {
        let a = Assignment::default();
        let tp = TopicPartition::new("t", 0);
        let stored: HashMap<_, _> = stored
            .map(|o| (tp.clone(), Offset(o)))
            .into_iter()
            .collect();
        a.assign(std::slice::from_ref(&tp), &stored, true);
        (a, tp)
    }

    #[test]
    fn only_current_generation_at_or_after_the_plan_is_admitted() {
        let (a, tp) = owning_t0(Some(10));
        let g = a.stamp(&tp).unwrap();
        let (msgs, claim) = a.admit(vec![env(&tp, 9, g), env(&tp, 10, g), env(&tp, 11, g - 1)]);
        assert_eq!(msgs.iter().map(|m| m.offset.0).collect::<Vec<_>>(), [10]);
        let ranges = BTreeMap::from([(tp.clone(), (Offset(10), Offset(10)))]);
        let expected = claim.expected(&ranges);
        assert_eq!(expected[0].expected, Some(Offset(10)));
        assert_eq!(expected[0].new_next, Offset(11));

        a.advance(&claim, &expected);
        assert_eq!(a.positions(), vec![(tp.clone(), Some(Offset(11)))]);
    }

    #[test]
    fn a_seek_blocks_admission_until_it_is_done_and_changes_the_generation() {
        let (a, tp) = owning_t0(None);
        let before = a.stamp(&tp).unwrap();
        let stored = HashMap::from([(tp.clone(), Offset(3))]);
        assert_eq!(
            a.begin_seek(std::slice::from_ref(&tp), &stored),
            vec![(tp.clone(), Some(Offset(3)))]
        );
        assert_eq!(a.stamp(&tp), None, "nothing is stamped while seeking");
        let (msgs, _) = a.admit(vec![env(&tp, 5, before)]);
        assert!(msgs.is_empty());
        a.finish_seek(&tp);
        let after = a.stamp(&tp).unwrap();
        assert_ne!(before, after);
        let (msgs, _) = a.admit(vec![
            env(&tp, 2, after),
            env(&tp, 3, after),
            env(&tp, 4, before),
        ]);
        assert_eq!(msgs.iter().map(|m| m.offset.0).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn skipped_records_extend_the_batch_end_or_make_a_batch_alone() {
        let (a, tp) = owning_t0(Some(4));
        let g = a.stamp(&tp).unwrap();
        let skipped = |next: i64| Envelope {
            item: Polled::Skipped {
                tp: tp.clone(),
                next: Offset(next),
            },
            generation: g,
        };
        // A message at 4, then a commit marker at 5: the batch stores 6.
        let (msgs, claim) = a.admit(vec![env(&tp, 4, g), skipped(6)]);
        assert_eq!(msgs.len(), 1);
        let ranges = BTreeMap::from([(tp.clone(), (Offset(4), Offset(4)))]);
        let expected = claim.expected(&ranges);
        assert_eq!(
            (expected[0].expected, expected[0].new_next),
            (Some(Offset(4)), Offset(6))
        );
        a.advance(&claim, &expected);
        // Only a skip, e.g. an aborted transaction 6..9 and its marker.
        let (msgs, claim) = a.admit(vec![skipped(10)]);
        assert!(msgs.is_empty() && claim.advances_past_skipped());
        let expected = claim.expected(&BTreeMap::new());
        assert_eq!(
            (expected[0].expected, expected[0].new_next),
            (Some(Offset(6)), Offset(10))
        );
        // A stale skip (behind the plan) is not admitted.
        a.advance(&claim, &expected);
        let (_, claim) = a.admit(vec![skipped(8)]);
        assert!(!claim.advances_past_skipped());
    }

    #[test]
    fn a_stalled_partition_admits_nothing_until_a_seek() {
        let (a, tp) = owning_t0(None);
        let g = a.stamp(&tp).unwrap();
        assert!(
            !a.stall(&tp, g - 1),
            "an outdated generation does not stall"
        );
        assert!(a.stall(&tp, g));
        assert_eq!(a.stalled(), vec![tp.clone()]);
        assert_eq!(a.stamp(&tp), None);
        assert!(a.admit(vec![env(&tp, 0, g)]).0.is_empty());
        a.begin_seek(std::slice::from_ref(&tp), &HashMap::new());
        a.finish_seek(&tp);
        assert!(a.stalled().is_empty());
        assert!(a.stamp(&tp).is_some());
    }

    #[test]
    fn advance_skips_partitions_reassigned_meanwhile() {
        let (a, tp) = owning_t0(None);
        let g = a.stamp(&tp).unwrap();
        let (_, claim) = a.admit(vec![env(&tp, 0, g)]);
        a.assign(std::slice::from_ref(&tp), &HashMap::new(), true);
        let ranges = BTreeMap::from([(tp.clone(), (Offset(0), Offset(0)))]);
        a.advance(&claim, &claim.expected(&ranges));
        assert_eq!(a.positions(), vec![(tp, None)]);
        assert_eq!(a.status(), (true, 1));
        assert_eq!(a.revoke(&[TopicPartition::new("t", 0)]), 0);
    }

    #[test]
    fn while_owned_runs_only_for_an_owned_partition() {
        let (a, tp) = owning_t0(Some(7));
        assert_eq!(a.while_owned(&tp, |planned| planned), Some(Some(Offset(7))));
        a.revoke(std::slice::from_ref(&tp));
        assert_eq!(a.while_owned(&tp, |_| unreachable!("revoked")), None::<()>);
    }
}
