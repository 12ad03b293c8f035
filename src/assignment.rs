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

use crate::message::SourceMessage;
use crate::types::{Expected, Offset, TopicPartition};

/// Ownership epoch of one partition in this process.
pub type Generation = u64;

/// A polled message stamped with its partition's generation.
#[derive(Debug)]
pub struct Envelope {
    pub msg: SourceMessage,
    pub generation: Generation,
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
}

#[derive(Default)]
struct Owned {
    parts: HashMap<TopicPartition, PartState>,
    next_generation: Generation,
    /// Set once the first assignment happened (readiness).
    joined: bool,
}

impl Owned {
    fn bump(&mut self) -> Generation {
        self.next_generation += 1;
        self.next_generation
    }
}

/// The positions a batch was admitted under, per partition.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    parts: BTreeMap<TopicPartition, (Generation, Option<Offset>)>,
}

impl Claim {
    /// What the fence must find for a batch covering `ranges` (first and
    /// last offset per partition).
    pub fn expected(&self, ranges: &BTreeMap<TopicPartition, (Offset, Offset)>) -> Vec<Expected> {
        ranges
            .iter()
            .map(|(tp, (_, last))| Expected {
                tp: tp.clone(),
                expected: self.parts.get(tp).and_then(|p| p.1),
                new_next: last.next(),
            })
            .collect()
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
            Some(s) if !s.seeking => Some(s.generation),
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
            let Some(s) = a.parts.get(&e.msg.tp) else {
                continue;
            };
            if s.seeking || s.generation != e.generation {
                continue;
            }
            if s.planned.is_some_and(|p| e.msg.offset < p) {
                continue;
            }
            claim
                .parts
                .entry(e.msg.tp.clone())
                .or_insert((s.generation, s.planned));
            messages.push(e.msg);
        }
        (messages, claim)
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
        }
    }

    pub fn owns(&self, tp: &TopicPartition) -> bool {
        self.lock().parts.contains_key(tp)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(tp: &TopicPartition, offset: i64, generation: Generation) -> Envelope {
        Envelope {
            msg: SourceMessage {
                tp: tp.clone(),
                offset: Offset(offset),
                key: None,
                payload: None,
                timestamp: None,
                headers: Vec::new(),
            },
            generation,
        }
    }

    #[test]
    fn only_current_generation_at_or_after_the_plan_is_admitted() {
        let a = Assignment::default();
        let tp = TopicPartition::new("t", 0);
        let stored = HashMap::from([(tp.clone(), Offset(10))]);
        a.assign(std::slice::from_ref(&tp), &stored, true);
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
        let a = Assignment::default();
        let tp = TopicPartition::new("t", 0);
        a.assign(std::slice::from_ref(&tp), &HashMap::new(), true);
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
    fn advance_skips_partitions_reassigned_meanwhile() {
        let a = Assignment::default();
        let tp = TopicPartition::new("t", 0);
        a.assign(std::slice::from_ref(&tp), &HashMap::new(), true);
        let g = a.stamp(&tp).unwrap();
        let (_, claim) = a.admit(vec![env(&tp, 0, g)]);
        a.assign(std::slice::from_ref(&tp), &HashMap::new(), true);
        let ranges = BTreeMap::from([(tp.clone(), (Offset(0), Offset(0)))]);
        a.advance(&claim, &claim.expected(&ranges));
        assert_eq!(a.positions(), vec![(tp, None)]);
        assert_eq!(a.status(), (true, 1));
        assert_eq!(a.revoke(&[TopicPartition::new("t", 0)]), 0);
    }
}
