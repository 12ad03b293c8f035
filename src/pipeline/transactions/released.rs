//! The transactions the gate released, to tell a connector's re-sends of
//! them: bounded, as a connector re-sends only what it had not flushed,
//! and each with where its END is, so that a partition read again from an
//! earlier position gates again what it will read again.

use std::collections::{HashMap, VecDeque};

use crate::types::{Offset, TopicPartition, Version};

/// Where a released transaction's END is (`None`: not known — released in
/// parts, or taken for a re-send before its END was read).
pub type EndAt = Option<(TopicPartition, Offset)>;

#[derive(Default)]
pub struct Released {
    order: VecDeque<String>,
    ends: HashMap<String, EndAt>,
    /// The commit of those released whole without a truncate: a re-sent
    /// copy of any of their changes is stamped with it as the last change
    /// of each row was, so it compares equal (a duplicate) where the row
    /// still holds that transaction's change.
    commits: HashMap<String, Version>,
}

impl Released {
    /// Transactions remembered: a connector re-sends at most what it
    /// produced since its last offset flush (a minute by default).
    const CAPACITY: usize = 1 << 18;

    pub fn contains(&self, id: &str) -> bool {
        self.ends.contains_key(id)
    }

    pub fn commit(&self, id: &str) -> Option<Version> {
        self.commits.get(id).copied()
    }

    /// Remembers the commit of `id`, remembered already (`insert`).
    pub fn set_commit(&mut self, id: &str, commit: Version) {
        if self.ends.contains_key(id) {
            self.commits.insert(id.to_string(), commit);
        }
    }

    /// Remembers `id`, its END at the earliest place known (a copy's END
    /// comes later than the original's).
    pub fn insert(&mut self, id: &str, end: EndAt) {
        match self.ends.get_mut(id) {
            Some(known) => {
                if let (Some((tp, at)), Some((_, was))) = (&end, known.as_ref()) {
                    if at < was {
                        *known = Some((tp.clone(), *at));
                    }
                } else if known.is_none() {
                    *known = end;
                }
            }
            None => {
                self.ends.insert(id.to_string(), end);
                self.order.push_back(id.to_string());
                if self.order.len() > Self::CAPACITY {
                    if let Some(old) = self.order.pop_front() {
                        self.ends.remove(&old);
                        self.commits.remove(&old);
                    }
                }
            }
        }
    }

    /// `tp` is read again from `at` (`None`: from wherever): forgets the
    /// transactions whose END is there at or after `at`, and those whose
    /// END is not known.
    pub fn forget_from(&mut self, tp: &TopicPartition, at: Option<Offset>) {
        self.ends.retain(|_, end| match end {
            Some((t, o)) if t == tp => at.is_some_and(|at| *o < at),
            Some(_) => true,
            None => false,
        });
        let ends = &self.ends;
        self.order.retain(|id| ends.contains_key(id));
        self.commits.retain(|id, _| ends.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_read_again_forgets_what_it_will_read_again() {
        let tx = TopicPartition::new("db.transaction", 0);
        let other = TopicPartition::new("other.transaction", 0);
        let mut r = Released::default();
        r.insert("1", Some((tx.clone(), Offset(1))));
        r.insert("5", Some((tx.clone(), Offset(5))));
        r.insert("5", Some((tx.clone(), Offset(9))));
        r.set_commit("5", 500);
        r.set_commit("1", 100);
        r.set_commit("never released", 1);
        assert_eq!(
            (r.commit("5"), r.commit("never released")),
            (Some(500), None)
        );
        r.insert("7", Some((other.clone(), Offset(7))));
        r.insert("split", None);
        r.forget_from(&tx, Some(Offset(5)));
        assert!(r.contains("1") && r.contains("7"));
        assert!(!r.contains("5") && !r.contains("split"));
        assert_eq!((r.commit("1"), r.commit("5")), (Some(100), None));
        r.insert("3", Some((tx.clone(), Offset(3))));
        r.forget_from(&tx, None);
        assert!(!r.contains("1") && !r.contains("3") && r.contains("7"));
    }
}
