//! How much history a compaction would drop: the dead revisions, counted as the watch brings
//! them.
//!
//! etcd keeps every key's newest revision through a compaction and drops the older ones (and a
//! deleted key's tombstone). So a put over a key that exists (its version above 1) makes one
//! revision dead, and a delete makes two: the value it deletes and the tombstone itself. A put
//! that creates a key makes none: a million requests submitted and decided leave two million
//! revisions of history and not one of them dead. etcd 3.4 compacts by scanning every kept
//! revision below the target, so a compaction then costs a scan of every key and drops
//! nothing (see `manager/compactor.rs`).
//!
//! The counts are kept per revision mark, one per watch response, so that the dead revisions
//! below a compaction target can be told from those above it. When [`MARKS`] are kept, every
//! other mark of the older half goes: the newest history stays exact, the oldest grows coarse
//! (a count below a target is then that of a mark a little below it). Writes
//! outside the prefix are not seen; after a (re)list, the history below the list is unknown and
//! taken as all dead (its revisions less the keys alive): a new leader compacts it once.

use std::collections::VecDeque;

/// Marks kept at most: a few seconds of a busy leader's watch responses at full resolution,
/// and any history beyond them coarser.
const MARKS: usize = 4_096;

/// Dead revisions seen, by revision.
#[derive(Debug, Default, Clone)]
pub struct Dead {
    total: u64,
    /// (revision, dead revisions up to and including it), oldest first.
    marks: VecDeque<(i64, u64)>,
}

impl Dead {
    /// A list at `revision` found `alive` keys: what lies below is taken as dead.
    pub(super) fn listed(&mut self, revision: i64, alive: usize) {
        self.total = u64::try_from(revision)
            .unwrap_or(0)
            .saturating_sub(alive as u64);
        self.marks.clear();
        self.marks.push_back((0, 0));
        self.marks.push_back((revision, self.total));
    }

    /// The watch applied up to `revision`, and `dead` more revisions died on the way.
    pub(super) fn saw(&mut self, revision: i64, dead: u64) {
        self.total += dead;
        if let Some((rev, total)) = self.marks.back_mut()
            && *rev >= revision
        {
            *total = self.total;
            return;
        }
        if self.marks.len() >= MARKS {
            // Every other mark of the older half goes (amortised: once per MARKS / 4 marks).
            let half = self.marks.len() / 2;
            let mut i = 0;
            self.marks.retain(|_| {
                i += 1;
                i > half || i % 2 == 0
            });
        }
        self.marks.push_back((revision, self.total));
    }

    /// Dead revisions above `from` and at or below `to`, as far as the marks tell: never more
    /// than there are (between coarse marks, the range is narrowed to the marks inside it).
    pub fn between(&self, from: i64, to: i64) -> u64 {
        // Up to the last mark at or below `to` ...
        let upto = match self.marks.partition_point(|(r, _)| *r <= to) {
            0 => return 0,
            n => self.marks[n - 1].1,
        };
        // ... less what died up to the first mark at or above `from`.
        let below = match self
            .marks
            .get(self.marks.partition_point(|(r, _)| *r < from))
        {
            Some((_, total)) => *total,
            None => self.total,
        };
        upto.saturating_sub(below)
    }
}

/// What one watch event makes dead.
pub(super) fn of_event(kind: etcd_client::EventType, version: i64) -> u64 {
    match kind {
        etcd_client::EventType::Delete => 2,
        etcd_client::EventType::Put if version > 1 => 1,
        etcd_client::EventType::Put => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::EventType;

    #[test]
    fn creates_kill_nothing_overwrites_one_and_deletes_two() {
        assert_eq!(of_event(EventType::Put, 1), 0);
        assert_eq!(of_event(EventType::Put, 2), 1);
        assert_eq!(of_event(EventType::Delete, 0), 2);
    }

    #[test]
    fn dead_history_is_counted_below_a_target_and_never_above_it() {
        let mut d = Dead::default();
        // Listed at revision 10,000 with 4,000 keys alive: 6,000 taken as dead below it.
        d.listed(10_000, 4_000);
        assert_eq!(d.between(0, 9_999), 0, "nothing is known below the list");
        assert_eq!(d.between(0, 10_000), 6_000);
        // 5,000 creates: no death.
        d.saw(15_000, 0);
        assert_eq!(d.between(10_000, 15_000), 0);
        // 2,000 overwrites and 100 deletes by revision 17,100.
        d.saw(17_100, 2_200);
        assert_eq!(d.between(10_000, 17_100), 2_200);
        assert_eq!(d.between(0, 17_100), 8_200);
        assert_eq!(
            d.between(10_000, 17_099),
            0,
            "not below the revision they died at"
        );
        d.saw(17_101, 1);
        assert_eq!(d.between(17_100, 17_101), 1);
        assert_eq!(d.between(17_100, 16_000), 0, "a range backwards is empty");
    }

    #[test]
    fn the_older_half_grows_coarse_and_the_newest_stays_exact() {
        let mut d = Dead::default();
        d.listed(0, 0);
        let n = 3 * MARKS as i64;
        for rev in 1..=n {
            d.saw(rev, 1);
        }
        assert!(d.marks.len() <= MARKS);
        // The newest quarter, exact.
        let recent = n - MARKS as i64 / 4;
        assert_eq!(d.between(recent, n), (n - recent) as u64);
        // Older: never more than died, and never far below.
        let old = n / 3;
        let counted = d.between(old, n);
        assert!(counted <= (n - old) as u64);
        assert!(counted + MARKS as u64 >= (n - old) as u64, "{counted}");
        let revs: Vec<i64> = d.marks.iter().map(|m| m.0).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "marks stay in order");
    }
}
