//! The work sets: every request sorted, as it changes, into what the leader must do with it
//! (decide it, release its decision, or let it wait for capacity), and the work handed out.

use std::collections::HashSet;

use super::parked::Demand;
use super::state::*;
use crate::model::*;

impl State {
    /// Puts a request in the one work set its current state calls for.
    pub(super) fn classify(&mut self, id: &RequestId) {
        if self.policy.docker {
            if self.wants_launch(id) {
                self.launchable.insert(id.clone());
            } else {
                self.launchable.remove(id);
            }
        }
        let new = self.class_of(id);
        let old = self.class.get(id).copied();
        if old == new {
            return;
        }
        match old {
            Some(Class::Pending(rev)) => {
                self.pending.remove(&(rev, id.clone()));
            }
            Some(Class::Release) => {
                self.releases.remove(id);
            }
            Some(Class::Waiting(rev, demand)) => {
                self.waiting.remove(demand, rev, id);
            }
            None => {}
        }
        match new {
            Some(Class::Pending(rev)) => {
                self.pending.insert((rev, id.clone()));
            }
            Some(Class::Release) => {
                self.releases.insert(id.clone());
            }
            Some(Class::Waiting(rev, demand)) => {
                self.waiting.insert(demand, rev, id.clone());
                if let Some(p) = self.parked_in.get_mut(id) {
                    p.since = Since::Parked;
                }
                // Parked: as small as a placed request. Parsed again if it is re-tried.
                if let Some(r) = self.requests.get_mut(id) {
                    r.parsed = None;
                }
            }
            None => {}
        }
        match new {
            Some(c) => self.class.insert(id.clone(), c),
            None => {
                // Decided: the parsed form is only needed again if the request comes back.
                if let Some(r) = self.requests.get_mut(id) {
                    r.parsed = None;
                }
                if !self.parked_in.is_empty() {
                    self.parked_in.remove(id);
                }
                self.class.remove(id)
            }
        };
    }

    pub(super) fn class_of(&self, id: &RequestId) -> Option<Class> {
        let reserved = self.reservations.contains_key(id);
        let decision = self.decisions.get(id);
        let Some(request) = self.requests.get(id) else {
            return (decision.is_some() || reserved).then_some(Class::Release);
        };
        let pending = Class::Pending(request.mod_revision);
        let Some(d) = decision else {
            return Some(if reserved { Class::Release } else { pending });
        };
        if d.request_revision != request.mod_revision {
            return Some(if reserved { Class::Release } else { pending });
        }
        match d.status {
            // A placed decision whose reservation is gone is no longer true: decide again.
            Status::Placed if !reserved => Some(Class::Release),
            // Its engine was removed, or holds more than it can: move it.
            Status::Placed if self.displaced(id).is_some() => Some(pending),
            Status::Placed => None,
            s if s.is_final() => reserved.then_some(Class::Release),
            Status::Pending => Some(if reserved { Class::Release } else { pending }),
            Status::Unschedulable if reserved => Some(Class::Release),
            Status::Unschedulable => match self.parked_in.get(id) {
                Some(p)
                    if p.since == Since::Parked || p.since == Since::Epoch(self.capacity_epoch) =>
                {
                    Some(Class::Waiting(request.mod_revision, p.demand))
                }
                _ => Some(pending),
            },
            _ => reserved.then_some(Class::Release),
        }
    }

    /// Placed, current, not launched yet, and asked to be (by the request or `--launch`).
    pub(super) fn wants_launch(&self, id: &RequestId) -> bool {
        let (Some(d), Some(r)) = (self.decisions.get(id), self.requests.get(id)) else {
            return false;
        };
        if d.status != Status::Placed || d.request_revision != r.mod_revision {
            return false;
        }
        if d.run
            .as_ref()
            .is_some_and(|run| !run.container_id.is_empty())
        {
            return false;
        }
        self.policy.launch_all || r.launch
    }

    /// Requests to launch now, oldest id first, leaving out those in `skip`.
    pub fn launchable(&self, max: usize, skip: &HashSet<RequestId>) -> Vec<RequestId> {
        self.launchable
            .iter()
            .filter(|id| !skip.contains(*id))
            .take(max)
            .cloned()
            .collect()
    }

    /// The leader found `id` unschedulable in `epoch` and wrote nothing new: park it until
    /// capacity that could fit it appears (unless some already did after that epoch).
    pub fn park(&mut self, id: &RequestId, epoch: u64) {
        self.note_unschedulable(id, epoch);
        self.classify(id);
    }

    /// Remembers the epoch an unschedulable decision was computed in, before its write is seen.
    pub fn note_unschedulable(&mut self, id: &RequestId, epoch: u64) {
        let demand = self.demand_of(id);
        self.parked_in.insert(
            id.clone(),
            Park {
                since: Since::Epoch(epoch),
                demand,
            },
        );
    }

    /// What `id` asks of an engine: from its parse, or what it was parked with. Unknown, or
    /// with affinity: zero, which any new room re-tries.
    fn demand_of(&self, id: &RequestId) -> Demand {
        let parsed = self.requests.get(id).and_then(|r| r.parsed.as_ref());
        match parsed {
            // Its answer hangs on other placements too: any new room may be the one.
            Some(Ok(p)) if p.depends_on_placements() => Demand::default(),
            Some(Ok(p)) => Demand {
                cpus: p.request.cpus,
                memory: p.request.memory,
            },
            _ => self.parked_in.get(id).map(|p| p.demand).unwrap_or_default(),
        }
    }

    /// How many requests are parked.
    pub fn parked(&self) -> usize {
        self.waiting.len()
    }

    /// How many requests wait for the leader: releases and pending decisions, including any
    /// the leader has written for and not seen yet (see [`State::work`]).
    pub fn queued(&self) -> usize {
        self.releases.len() + self.pending.len() + self.guard.repairs.len()
    }

    /// Up to `max_work` work items: repairs, releases, then pending requests oldest first,
    /// leaving out those in `skip` (written by the leader and not yet seen).
    pub fn work(&self, max_work: usize, skip: &HashSet<RequestId>) -> Vec<Work> {
        let mut work = Vec::new();
        for (id, foreign) in &self.guard.repairs {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id)
                || matches!(self.class.get(id), Some(Class::Pending(_) | Class::Release))
            {
                continue; // its own work writes the key anyway
            }
            if let Some(decision) = self.restoration(id) {
                work.push(Work::Restore {
                    id: id.clone(),
                    decision_fence: foreign.fence(),
                    decision: Box::new(decision),
                });
            } else if !self.requests.contains_key(id) && !self.decisions.contains_key(id) {
                work.push(Work::Release {
                    id: id.clone(),
                    request_revision: None,
                });
            }
        }
        for id in &self.releases {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) {
                continue;
            }
            work.push(Work::Release {
                id: id.clone(),
                request_revision: self.requests.get(id).map(|r| r.mod_revision),
            });
        }
        for (rev, id) in &self.pending {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) {
                continue;
            }
            let Some(r) = self.requests.get(id) else {
                continue;
            };
            let d = self.decisions.get(id);
            // A write of ours whose outcome is unknown may still land: compare the key too.
            let decision_fence = self
                .guard
                .uncertain
                .contains(id)
                .then(|| d.map_or(0, |d| d.mod_revision));
            work.push(Work::Decide {
                id: id.clone(),
                request_revision: *rev,
                decision_fence,
                // Only this revision's own decision counts: a rewritten request is decided
                // anew even when the answer is the same.
                previous: d
                    .filter(|d| d.request_revision == *rev)
                    .map(|d| (d.status, d.reason.clone())),
                raw: r.raw.clone(),
                // Parsed by the leader outside the lock when the cache no longer holds it.
                parsed: r.parsed.clone(),
                lifecycle: r.lifecycle,
                history: d
                    .filter(|d| matches!(d.status, Status::Pending | Status::Unschedulable))
                    .and_then(|d| d.run.clone()),
                displaced: self.displaced(id),
            });
        }
        work
    }

    /// Whether `id` is placed and waits to be launched.
    pub fn is_launchable(&self, id: &RequestId) -> bool {
        self.launchable.contains(id)
    }
}
