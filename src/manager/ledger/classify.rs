//! The work sets: every request sorted, as it changes, into what the leader must do with it
//! (decide it, release its decision, or let it wait for capacity), and what the runner must
//! launch.

use std::collections::HashSet;

use super::Ledger;
use super::parked::Demand;
use crate::cache::Mirror;
use crate::model::{RequestId, Status};

/// A pending request's place in the queue: highest priority first, then oldest revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Queued {
    pub(super) rank: std::cmp::Reverse<i32>,
    pub(super) revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// To decide: its place in the queue (highest priority, then oldest revision first).
    Pending(Queued),
    Release,
    /// Parked (see `parked.rs`), at this request revision, with this demand.
    Waiting(i64, Demand),
}

/// A request the leader found unschedulable: since when, and what it asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Park {
    pub(super) since: Since,
    pub(super) demand: Demand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Since {
    /// Decided unschedulable at this capacity epoch: parked when its decision is seen, unless
    /// capacity changed meanwhile.
    Epoch(u64),
    /// In the parked set until capacity that could fit it appears.
    Parked,
    /// Taken out of the parked set to be tried again.
    Retry,
}

impl Ledger {
    /// Puts a request in the one work set its current state calls for.
    pub(super) fn classify(&mut self, mirror: &Mirror, id: &RequestId) {
        if self.policy.docker {
            if self.wants_launch(mirror, id) {
                self.launchable.insert(id.clone());
            } else {
                self.launchable.remove(id);
            }
        }
        let new = self.class_of(mirror, id);
        let old = self.class.get(id).copied();
        if old == new {
            return;
        }
        match old {
            Some(Class::Pending(q)) => {
                self.pending.remove(&(q, id.clone()));
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
            Some(Class::Pending(q)) => {
                self.pending.insert((q, id.clone()));
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
                self.parses.remove(id);
            }
            None => {}
        }
        self.index_gang(
            mirror,
            id,
            new.is_some_and(|c| !matches!(c, Class::Release)),
        );
        match new {
            Some(c) => self.class.insert(id.clone(), c),
            None => {
                // Decided: the parse is only needed again if the request comes back.
                self.parses.remove(id);
                if !self.parked_in.is_empty() {
                    self.parked_in.remove(id);
                }
                self.class.remove(id)
            }
        };
    }

    fn class_of(&self, mirror: &Mirror, id: &RequestId) -> Option<Class> {
        let reserved = mirror.reserved_on(id).is_some();
        let decision = mirror.decision(id);
        let Some(request) = mirror.request(id) else {
            return (decision.is_some() || reserved).then_some(Class::Release);
        };
        let pending = Class::Pending(Queued {
            rank: std::cmp::Reverse(request.priority),
            revision: request.mod_revision,
        });
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
            Status::Placed if self.displaced(mirror, id).is_some() => Some(pending),
            Status::Placed => None,
            s if s.is_final() => reserved.then_some(Class::Release),
            Status::Pending | Status::Unschedulable | Status::Preempted if reserved => {
                Some(Class::Release)
            }
            // Waiting for room (unschedulable, preempted, or a gang waiting for its members):
            // parked once the leader found it so, until room that could fit it appears.
            Status::Pending | Status::Unschedulable | Status::Preempted => {
                match self.parked_in.get(id) {
                    Some(p)
                        if p.since == Since::Parked
                            || p.since == Since::Epoch(self.capacity_epoch) =>
                    {
                        Some(Class::Waiting(request.mod_revision, p.demand))
                    }
                    _ => Some(pending),
                }
            }
            _ => reserved.then_some(Class::Release),
        }
    }

    /// An odd request key (its segment cannot be a request id) needs its decision written, or
    /// deleted, or neither.
    pub(super) fn classify_odd(&mut self, mirror: &Mirror, segment: Vec<u8>) {
        if mirror.odd(&segment).is_some_and(|e| e.unanswered()) {
            self.odd.insert(segment);
        } else {
            self.odd.remove(&segment);
        }
    }

    /// Placed, current, not launched yet, and asked to be (by the request or `--launch`).
    fn wants_launch(&self, mirror: &Mirror, id: &RequestId) -> bool {
        let (Some(d), Some(r)) = (mirror.decision(id), mirror.request(id)) else {
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
        // An engine's agent launches what is assigned to it: the leader's runner never does.
        if d.engine.as_ref().is_some_and(|e| mirror.agent(e).is_some()) {
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

    /// Whether `id` is placed and waits to be launched.
    pub fn is_launchable(&self, id: &RequestId) -> bool {
        self.launchable.contains(id)
    }

    /// The leader found `id` unschedulable in `epoch` and wrote nothing new: park it until
    /// capacity that could fit it appears (unless some already did after that epoch).
    pub fn park(&mut self, mirror: &Mirror, id: &RequestId, epoch: u64) {
        self.note_unschedulable(id, epoch);
        self.classify(mirror, id);
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
        match self.parses.get(id) {
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
    /// the leader has written for and not seen yet (see [`Ledger::work`]), and repairs.
    pub fn queued(&self) -> usize {
        self.releases.len() + self.pending.len() + self.guard.repairs.len() + self.odd.len()
    }
}
