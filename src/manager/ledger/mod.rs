//! The leader's ledger: the books it keeps on the cache's mirror.
//!
//! ```text
//! Mirror ──Change──▶ Ledger::changed ──classify──▶ pending / releases / parked (work.rs, parked.rs)
//!        ──decision event──▶ Ledger::admit ──▶ guard (guard.rs): the leader's own, or held back
//! engines over capacity, removed or drained ──▶ placements to move (capacity.rs)
//! ```
//!
//! Every request is sorted, as it changes, into what the leader must do with it: decide it,
//! release its decision, or let it wait for capacity. While its replica leads, the guard tells
//! the leader's own decisions from anyone else's. Every replica keeps a ledger (it listens to
//! its cache from the start), so a replica that wins an election has its work at hand.
//!
//! It lives under the cache's lock (it is the cache's [`Listener`]); its owner, the manager,
//! reaches it through [`Books`](crate::cache::Books). It may not touch etcd.

mod capacity;
mod classify;
mod gangs;
mod guard;
mod parked;
mod work;

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::cache::{Backlog, Change, EngineChange, Engines, HealthPolicy, Listener, Mirror, Usage};
use crate::model::{EngineId, RequestId};
use crate::scheduler::Parsed;
use classify::{Class, Park};
use guard::Guard;
use parked::Parked;
pub use work::{Decide, Displaced, Work};

/// The leader's books on the mirror.
#[derive(Debug, Default)]
pub struct Ledger {
    /// How engine health weighs in scheduling and which placements are launched.
    policy: HealthPolicy,
    /// This replica leads: decisions are its own, and others' changes are repaired.
    leading: bool,
    guard: Guard,
    /// Each request's work set, if it is in one.
    class: HashMap<RequestId, Class>,
    /// Requests to decide, highest priority first, then oldest revision.
    pending: BTreeSet<(classify::Queued, RequestId)>,
    /// Gangs' members that wait for a decision, by gang.
    gangs: gangs::Gangs,
    /// Members of budgeted groups that preemption took down.
    down: gangs::Down,
    /// Decisions to delete: their request is gone or changed, or they hold what they should not.
    releases: BTreeSet<RequestId>,
    /// Unschedulable requests waiting for room that could fit them.
    waiting: Parked,
    /// Requests the leader found unschedulable: when, and their demand.
    parked_in: HashMap<RequestId, Park>,
    /// Bumped whenever capacity may have grown: what was unschedulable before is not known to
    /// be any more.
    capacity_epoch: u64,
    /// Placements to move off engines that hold more than their capacity.
    evicted: HashSet<RequestId>,
    /// Each waiting request's parse (a decided or parked one is parsed again if it comes back).
    parses: HashMap<RequestId, Parsed>,
    /// Engines whose usage changed since the leader last looked ([`Ledger::take_dirty`]).
    dirty: HashSet<EngineId>,
    /// Placed, asked to be launched, and not launched yet (by the leader's runner).
    launchable: BTreeSet<RequestId>,
    /// Request keys whose segment cannot be a request id, whose `invalid` decision is to be
    /// written (or deleted, once the request is gone).
    odd: BTreeSet<Vec<u8>>,
    /// Requests whose agent assignment or run report changed since the leader's agent side
    /// last looked ([`Ledger::take_agent_dirty`]).
    agent_dirty: BTreeSet<RequestId>,
}

impl Ledger {
    /// Requests whose assignment or run report changed since the last look.
    pub fn take_agent_dirty(&mut self) -> BTreeSet<RequestId> {
        std::mem::take(&mut self.agent_dirty)
    }

    pub fn new(policy: HealthPolicy) -> Self {
        Ledger {
            policy,
            ..Ledger::default()
        }
    }

    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    pub fn capacity_epoch(&self) -> u64 {
        self.capacity_epoch
    }

    /// Every valid engine with its usage under the policy, from scratch; forgets what was dirty.
    pub fn engines(&mut self, mirror: &Mirror) -> Engines {
        self.dirty.clear();
        mirror.engines(self.policy)
    }

    /// Engines whose usage changed since the last look, with their usage now.
    pub fn take_dirty(&mut self, mirror: &Mirror) -> Vec<(EngineId, Usage)> {
        let policy = self.policy;
        self.dirty
            .drain()
            .map(|id| {
                let u = mirror.usage(&id, policy);
                (id, u)
            })
            .collect()
    }

    /// What one engine holds, under the policy.
    pub fn usage(&self, mirror: &Mirror, engine: &EngineId) -> Usage {
        mirror.usage(engine, self.policy)
    }
}

impl Listener for Ledger {
    fn admit(&mut self, mirror: &Mirror, id: &str, rev: i64, value: Option<&[u8]>) -> bool {
        self.admit_decision(mirror, id, rev, value)
    }

    fn changed(&mut self, mirror: &Mirror, change: Change) {
        match change {
            Change::Request { id, parsed } => {
                match parsed {
                    Some(p) => {
                        self.parses.insert(id.clone(), p);
                    }
                    None => {
                        self.parses.remove(&id);
                        self.parked_in.remove(&id);
                    }
                }
                self.classify(mirror, &id);
            }
            Change::Decision {
                id,
                freed,
                held_on,
                own,
            } => {
                if own {
                    self.guard.own(&id);
                }
                self.evicted.remove(&id);
                if mirror.has_agents()
                    && (held_on.as_ref().is_some_and(|e| mirror.agent(e).is_some())
                        || mirror.assignments(&id).next().is_some())
                {
                    self.agent_dirty.insert(id.clone());
                }
                if let Some(engine) = freed {
                    self.capacity_grew_on(mirror, &engine);
                }
                self.classify(mirror, &id);
                // A placement written by hand (or seen before a leader shrank nothing) may
                // overfill its engine; the leader's own never do.
                if let Some(engine) = held_on
                    && mirror.over_capacity(&engine)
                {
                    self.check_capacity(mirror, &engine);
                }
            }
            Change::Usage(engine) => {
                self.dirty.insert(engine);
            }
            Change::Engine { id, how } => {
                if how == EngineChange::Added {
                    // A new engine changes every parked answer ("0/2 engines fit" is "0/3"
                    // now), not only those it could hold: each gets another look, and a
                    // reason whose words changed is written again, as Kubernetes requeues
                    // every unschedulable pod on a node's arrival. Engines arrive rarely.
                    self.capacity_changed(mirror);
                } else {
                    self.capacity_grew_on(mirror, &id);
                }
                // New, gone, drained or undrained: what it holds may have to move, or may stay.
                if how != (EngineChange::Changed { drain: false }) {
                    self.reclassify_on(mirror, &id);
                }
                if how != EngineChange::Removed {
                    self.check_capacity(mirror, &id);
                }
            }
            Change::Health { engine, first } => {
                if first || self.policy.count_live {
                    self.capacity_grew_on(mirror, &engine);
                }
                self.dirty.insert(engine);
            }
            Change::Volumes => self.capacity_changed(mirror),
            Change::Odd(segment) => self.classify_odd(mirror, segment),
            Change::Agent(id) => {
                self.agent_dirty.insert(id);
            }
        }
    }

    fn backlog(&self) -> Backlog {
        Backlog {
            queued: self.queued(),
            parked: self.parked(),
        }
    }

    fn listed(&mut self, mirror: &Mirror, parsed: Vec<(RequestId, Parsed)>) {
        // Anything may have changed while the watch was down: every parked request is tried
        // again once, and nothing is known to be unschedulable any more.
        self.parked_in.retain(|id, _| mirror.request(id).is_some());
        for p in self.parked_in.values_mut() {
            p.since = classify::Since::Retry;
        }
        self.capacity_epoch += 1;
        self.class.clear();
        self.pending.clear();
        self.gangs.clear();
        self.down.clear();
        self.releases.clear();
        self.waiting = Parked::default();
        self.evicted.clear();
        self.launchable.clear();
        self.dirty.clear();
        self.parses = parsed.into_iter().collect();
        let ids: Vec<RequestId> = mirror
            .request_ids()
            .chain(mirror.decision_ids())
            .cloned()
            .collect();
        for id in ids {
            self.classify(mirror, &id);
        }
        let class = &self.class;
        self.parses
            .retain(|id, _| matches!(class.get(id), Some(Class::Pending(_) | Class::Release)));
        let engines: Vec<EngineId> = mirror.engine_ids().cloned().collect();
        for engine in engines {
            self.check_capacity(mirror, &engine);
        }
        self.odd = mirror
            .odd_keys()
            .filter(|(_, e)| e.unanswered())
            .map(|(segment, _)| segment.clone())
            .collect();
    }
}

#[cfg(test)]
mod tests;
