//! Where the requests stand, counted as they change: a scrape of `/metrics` (or the status
//! page's counts) on a replica that holds a million requests reads these counts instead of
//! walking every request under the cache's lock, which held the leader up for a good part of
//! a second per scrape.
//!
//! Every change to a request or its decision goes through [`Mirror::tallied`]: what the id
//! counted for before, the change, what it counts for after.

use super::mirror::Mirror;
use super::views::Standing;
use crate::model::RequestId;

/// How many requests stand where, and how many decisions have lost their request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Tally {
    /// Requests, by their standing's place in [`Standing::ORDER`].
    by_standing: [usize; Standing::ORDER.len()],
    /// Decisions whose request is gone (released by the leader soon after).
    orphans: usize,
}

/// What one request id counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Part {
    standing: Option<Standing>,
    orphan: bool,
}

fn slot(s: Standing) -> usize {
    Standing::ORDER
        .iter()
        .position(|o| *o == s)
        .unwrap_or(Standing::ORDER.len() - 1)
}

impl Tally {
    fn count(&mut self, part: Part, up: bool) {
        let step = |n: &mut usize| *n = if up { *n + 1 } else { n.saturating_sub(1) };
        if let Some(s) = part.standing {
            step(&mut self.by_standing[slot(s)]);
        }
        if part.orphan {
            step(&mut self.orphans);
        }
    }

    fn change(&mut self, before: Part, after: Part) {
        if before != after {
            self.count(before, false);
            self.count(after, true);
        }
    }

    /// Requests per standing, in [`Standing::ORDER`] (zeros included).
    pub(super) fn counts(&self) -> Vec<(Standing, usize)> {
        Standing::ORDER
            .iter()
            .map(|s| (*s, self.by_standing[slot(*s)]))
            .collect()
    }

    pub(super) fn orphans(&self) -> usize {
        self.orphans
    }
}

impl Mirror {
    /// What `id` counts for now.
    fn part(&self, id: &RequestId) -> Part {
        match self.requests.get(id) {
            Some(r) => Part {
                standing: Some(self.standing(id, r.mod_revision)),
                orphan: false,
            },
            None => Part {
                standing: None,
                orphan: self.decisions.contains_key(id),
            },
        }
    }

    /// Runs `change` on `id`'s request or decision and keeps the tally.
    pub(super) fn tallied<T>(&mut self, id: &RequestId, change: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.part(id);
        let out = change(self);
        let after = self.part(id);
        self.tally.change(before, after);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cache::fed::Fed;

    /// The counts the slow way: every request walked.
    fn recount(m: &Mirror) -> (Vec<(Standing, usize)>, usize) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (id, r) in &m.requests {
            *counts
                .entry(m.standing(id, r.mod_revision).name())
                .or_default() += 1;
        }
        let by_order = Standing::ORDER
            .iter()
            .map(|s| (*s, counts.get(s.name()).copied().unwrap_or(0)))
            .collect();
        let orphans = m
            .decisions
            .keys()
            .filter(|id| !m.requests.contains_key(*id))
            .count();
        (by_order, orphans)
    }

    fn check(f: &Fed, step: &str) {
        let m = f.mirror();
        assert_eq!(
            (m.request_counts(), m.orphaned_decisions()),
            recount(m),
            "after {step}"
        );
    }

    #[test]
    fn the_tally_always_equals_a_walk_over_every_request() {
        let mut f = Fed::new();
        f.engine("e1", 8.0);
        let a = f.request("a", 1.0, "service");
        check(&f, "a request");
        f.place("a", "e1", 1.0, a);
        check(&f, "its placement");
        let b = f.request("b", 1.0, "service");
        f.decide("b", "unschedulable", "0/1 engines fit", b);
        check(&f, "a refusal");
        f.request("b", 2.0, "service");
        check(&f, "a rewrite: its decision is for the old revision");
        f.decide("b", "invalid", "cpus: too many", b);
        check(&f, "a decision for a revision that is gone");
        f.delete("/citadel/requests/a");
        check(&f, "a request deleted under its placement");
        f.release("a");
        check(&f, "its release");
        f.decide("z", "placed", "by hand", 1);
        check(&f, "a decision with no request");
        f.request("z", 1.0, "service");
        check(&f, "its request after it");
        f.delete("/citadel/decisions/z");
        f.delete("/citadel/requests/b");
        check(&f, "deletes");
    }
}
