//! The parked set: requests the leader found unschedulable, waiting for capacity that could fit
//! them.
//!
//! A parked request is not planned again until capacity grows somewhere it could use: a
//! release, or a new or larger engine. Then only requests whose demand fits into what that
//! engine has free are re-tried, oldest first within each demand, and only as many as that
//! room could hold plus one (whose answer says whether more fit). A change that cannot be
//! placed (a list, a refused batch) re-tries them all. Requests are grouped by their demand,
//! so a change looks at groups, not at every parked request.
//!
//! It may not touch etcd or the scheduler: it is bookkeeping inside the ledger.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{MemoryMb, Millicpus, RequestId};

/// What a request asks of one engine's capacity: the key parked requests are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Demand {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
}

impl Demand {
    /// How many requests of this demand `free` holds (saturating; a zero dimension holds any
    /// number).
    fn fits_times(&self, free: Demand) -> usize {
        let times = |want: u64, have: u64| {
            have.checked_div(want)
                .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        times(self.cpus.0, free.cpus.0).min(times(self.memory.0, free.memory.0))
    }
}

/// At most this many requests are re-tried for one change of capacity on one engine: a burst of
/// tiny releases re-tries a bounded amount of work each.
pub const MAX_RETRIED_PER_CHANGE: usize = 4_096;

/// The parked requests, by demand, oldest (lowest request revision) first within each.
#[derive(Debug, Default)]
pub struct Parked {
    groups: BTreeMap<Demand, BTreeSet<(i64, RequestId)>>,
    len: usize,
}

impl Parked {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, demand: Demand, revision: i64, id: RequestId) {
        if self
            .groups
            .entry(demand)
            .or_default()
            .insert((revision, id))
        {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, demand: Demand, revision: i64, id: &RequestId) {
        let Some(group) = self.groups.get_mut(&demand) else {
            return;
        };
        if group.remove(&(revision, id.clone())) {
            self.len -= 1;
        }
        if group.is_empty() {
            self.groups.remove(&demand);
        }
    }

    /// Every parked request, to be re-tried: capacity may have grown anywhere.
    pub fn take_all(&mut self) -> Vec<RequestId> {
        self.len = 0;
        std::mem::take(&mut self.groups)
            .into_values()
            .flatten()
            .map(|(_, id)| id)
            .collect()
    }

    /// The requests to re-try now that one engine has `free` room: from each demand that fits
    /// into it, the oldest, as many as it holds plus one, and at most
    /// [`MAX_RETRIED_PER_CHANGE`] in all.
    pub fn take_fitting(&mut self, free: Demand) -> Vec<RequestId> {
        let mut taken = Vec::new();
        let fitting: Vec<Demand> = self
            .groups
            .range(
                ..=Demand {
                    cpus: free.cpus,
                    memory: MemoryMb(u64::MAX),
                },
            )
            .map(|(d, _)| *d)
            .filter(|d| d.memory <= free.memory)
            .collect();
        for demand in fitting {
            let room = MAX_RETRIED_PER_CHANGE - taken.len();
            if room == 0 {
                break;
            }
            let Some(group) = self.groups.get_mut(&demand) else {
                continue;
            };
            let n = demand.fits_times(free).saturating_add(1).min(room);
            for _ in 0..n {
                let Some((_, id)) = group.pop_first() else {
                    break;
                };
                self.len -= 1;
                taken.push(id);
            }
            if group.is_empty() {
                self.groups.remove(&demand);
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }

    fn demand(millicpus: u64, memory: u64) -> Demand {
        Demand {
            cpus: Millicpus(millicpus),
            memory: MemoryMb(memory),
        }
    }

    #[test]
    fn only_what_fits_the_room_is_retried_oldest_first() {
        let mut p = Parked::default();
        // Five 1-cpu requests, given in a shuffled order; two 8-cpu ones.
        for (rev, name) in [(14, "e"), (10, "a"), (12, "c"), (11, "b"), (13, "d")] {
            p.insert(demand(1_000, 512), rev, id(name));
        }
        p.insert(demand(8_000, 512), 5, id("big-1"));
        p.insert(demand(8_000, 512), 6, id("big-2"));
        assert_eq!(p.len(), 7);

        // 2 cpus free: the two oldest 1-cpu requests fit, one more to learn whether others do.
        let taken = p.take_fitting(demand(2_000, 4_096));
        assert_eq!(taken, [id("a"), id("b"), id("c")]);
        assert_eq!(p.len(), 4);

        // Memory is a limit too: 16 cpus but 600 MB free fit one of each, plus one.
        let taken = p.take_fitting(demand(16_000, 600));
        assert_eq!(taken, [id("d"), id("e"), id("big-1"), id("big-2")]);
        assert!(p.is_empty());
    }

    #[test]
    fn room_too_small_for_anything_retries_nothing() {
        let mut p = Parked::default();
        p.insert(demand(1_000, 512), 1, id("a"));
        assert!(p.take_fitting(demand(999, 100_000)).is_empty());
        assert!(p.take_fitting(demand(100_000, 511)).is_empty());
        assert_eq!(p.len(), 1);
        assert_eq!(p.take_all(), [id("a")]);
        assert!(p.is_empty());
    }

    #[test]
    fn removed_requests_are_not_retried_and_counts_stay_true() {
        let mut p = Parked::default();
        p.insert(demand(1_000, 512), 1, id("a"));
        p.insert(demand(1_000, 512), 1, id("a"));
        p.insert(demand(1_000, 512), 2, id("b"));
        assert_eq!(p.len(), 2);
        p.remove(demand(1_000, 512), 1, &id("a"));
        p.remove(demand(1_000, 512), 1, &id("a"));
        assert_eq!(p.len(), 1);
        assert_eq!(p.take_fitting(demand(64_000, 64_000)), [id("b")]);
    }

    #[test]
    fn one_change_retries_a_bounded_number() {
        let mut p = Parked::default();
        for n in 0..(MAX_RETRIED_PER_CHANGE + 10) {
            p.insert(demand(1, 1), n as i64, id(&format!("r{n}")));
        }
        let taken = p.take_fitting(demand(u64::MAX, u64::MAX));
        assert_eq!(taken.len(), MAX_RETRIED_PER_CHANGE);
        assert_eq!(taken[0], id("r0"));
        assert_eq!(p.len(), 10);
    }
}
