//! What each engine holds: reservations summed per engine, live use under the health policy,
//! and the placements that must move (their engine was removed, or holds more than it can).

use std::collections::HashMap;
use std::sync::Arc;

use super::parked::Demand;
use super::state::*;
use crate::model::*;
use crate::scheduler::EngineView;

impl State {
    /// Reclassifies the requests placed on `engine` (it came or went).
    pub(super) fn reclassify_on(&mut self, engine: &EngineId) {
        let on: Vec<RequestId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, _)| id.clone())
            .collect();
        for id in on {
            self.classify(&id);
        }
    }

    /// If `engine` holds more than its capacity (changed by hand, or a smaller `--overcommit`),
    /// its newest placements are moved until the rest fit. Live use does not count here.
    pub(super) fn check_capacity(&mut self, engine: &EngineId) {
        let Some(Ok((_, view))) = self.engines.get(engine).map(|e| &e.spec) else {
            return;
        };
        let (cap_c, cap_m) = (view.cpus, view.memory);
        let (used_c, used_m) = self
            .usage
            .get(engine)
            .map_or((Millicpus(0), MemoryMb(0)), |u| (u.cpus, u.memory));
        let fits = used_c <= cap_c && used_m <= cap_m;
        if fits && self.evicted.is_empty() {
            return;
        }
        // Choose afresh: capacity may have grown back since earlier evictions.
        let mut held: Vec<(i64, RequestId, Millicpus, MemoryMb)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, r)| {
                let rev = self.decisions.get(id).map_or(0, |d| d.mod_revision);
                (rev, id.clone(), r.cpus, r.memory)
            })
            .collect();
        let before: Vec<RequestId> = held
            .iter()
            .filter(|(_, id, _, _)| self.evicted.remove(id))
            .map(|(_, id, _, _)| id.clone())
            .collect();
        if !fits {
            held.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let (mut c, mut m) = (used_c, used_m);
            for (_, id, hc, hm) in &held {
                if c <= cap_c && m <= cap_m {
                    break;
                }
                self.evicted.insert(id.clone());
                c.0 = c.0.saturating_sub(hc.0);
                m.0 = m.0.saturating_sub(hm.0);
            }
            tracing::warn!(engine = %engine,
                reserved = format!("{}/{} cpus, {}/{} MB", used_c, cap_c, used_m.0, cap_m.0),
                moving = self.evicted.len(),
                "engine holds more than its capacity: moving its newest placements until the rest fit");
        }
        for id in before.iter().chain(held.iter().map(|(_, id, _, _)| id)) {
            self.classify(id);
        }
    }

    /// Why a placed request must move, if it must.
    pub(super) fn displaced(&self, id: &RequestId) -> Option<Displaced> {
        let r = self.reservations.get(id)?;
        if !self.engines.contains_key(&r.engine) {
            Some(Displaced::Removed(r.engine.clone()))
        } else if self.evicted.contains(id) {
            Some(Displaced::Shrunk(r.engine.clone()))
        } else if self.is_drained(&r.engine)
            && self
                .requests
                .get(id)
                .is_some_and(|q| q.lifecycle == Lifecycle::Service)
            && !self.held_by_volume(id, &r.engine)
        {
            Some(Displaced::Drained(r.engine.clone()))
        } else {
            None
        }
    }

    /// Whether `id` mounts a named volume that lives on `engine`: a drain leaves it there, as
    /// it could go nowhere else. Parsed only for requests on an engine that holds volumes.
    fn held_by_volume(&self, id: &RequestId, engine: &EngineId) -> bool {
        if !self.volumes.values().any(|e| e == engine) {
            return false;
        }
        self.requests
            .get(id)
            .and_then(|q| Request::parse(q.raw()).ok())
            .is_some_and(|r| {
                r.volumes
                    .iter()
                    .any(|v| self.volumes.get(v) == Some(engine))
            })
    }

    /// Whether `engine` is being drained: its services are placed again elsewhere.
    pub fn is_drained(&self, engine: &EngineId) -> bool {
        self.engines
            .get(engine)
            .is_some_and(|e| matches!(&e.spec, Ok((s, _)) if s.drained))
    }

    pub(super) fn over_capacity(&self, engine: &EngineId) -> bool {
        let (Some(Ok((_, view))), Some(u)) = (
            self.engines.get(engine).map(|e| &e.spec),
            self.usage.get(engine),
        ) else {
            return false;
        };
        u.cpus > view.cpus || u.memory > view.memory
    }

    /// Sets what `id`'s decision holds, keeping every engine's sum. Freeing capacity gives
    /// unschedulable requests another look.
    pub(super) fn hold(&mut self, id: &RequestId, new: Option<ReservationEntry>) {
        if let Some(n) = &new {
            let u = self.usage.entry(n.engine.clone()).or_default();
            u.cpus.0 = u.cpus.0.saturating_add(n.cpus.0);
            u.memory.0 = u.memory.0.saturating_add(n.memory.0);
            u.disk.0 = u.disk.0.saturating_add(n.disk.0);
            u.count += 1;
            for p in &n.ports {
                *u.ports.entry(*p).or_default() += 1;
            }
            self.dirty.insert(n.engine.clone());
        }
        let old = match new {
            Some(n) => self.reservations.insert(id.clone(), n),
            None => self.reservations.remove(id),
        };
        if let Some(old) = old {
            release_usage(&mut self.usage, id, &old);
            if self.reservations.get(id) != Some(&old) {
                self.capacity_grew_on(&old.engine);
            }
            self.dirty.insert(old.engine);
        }
        if self.tracks_tenants
            && let Some(n) = self.reservations.get(id)
            && let Some(u) = self.usage.get_mut(&n.engine)
        {
            Arc::make_mut(&mut u.tenants).insert(id.clone(), n.image.clone());
        }
    }

    /// From now on engines keep their tenants (a request asked for affinity): what they hold
    /// already is filled in, and the leader's views are rebuilt with it.
    pub(super) fn track_tenants(&mut self) {
        self.tracks_tenants = true;
        for (id, r) in &self.reservations {
            if let Some(u) = self.usage.get_mut(&r.engine) {
                Arc::make_mut(&mut u.tenants).insert(id.clone(), r.image.clone());
            }
        }
        self.engine_generation += 1;
    }

    /// A placement the leader planned did not commit: refusals made beside it get another look.
    pub fn retry_waiting(&mut self) {
        self.capacity_changed();
    }

    /// Capacity may have grown anywhere: every parked request gets another look.
    pub(super) fn capacity_changed(&mut self) {
        self.capacity_epoch += 1;
        let all = self.waiting.take_all();
        self.retry(all);
    }

    /// `engine` may have more room than before (a release, a new or larger engine, its health
    /// back): parked requests that fit into what it has free get another look, oldest first.
    /// Any change starts a new capacity epoch: what the leader found unschedulable before it
    /// is no longer known to be.
    pub(super) fn capacity_grew_on(&mut self, engine: &EngineId) {
        self.capacity_epoch += 1;
        if self.waiting.is_empty() {
            return;
        }
        let Some(Ok((_, view))) = self.engines.get(engine).map(|e| &e.spec) else {
            return;
        };
        let used = self.usage.get(engine).cloned().unwrap_or_default();
        let free = Demand {
            cpus: Millicpus(view.cpus.0.saturating_sub(used.cpus.0)),
            memory: MemoryMb(view.memory.0.saturating_sub(used.memory.0)),
        };
        let fitting = self.waiting.take_fitting(free);
        self.retry(fitting);
    }

    /// Takes requests out of the parked set to be decided again.
    fn retry(&mut self, ids: Vec<RequestId>) {
        for id in ids {
            if let Some(p) = self.parked_in.get_mut(&id) {
                p.since = Since::Retry;
            }
            self.class.remove(&id);
            self.classify(&id);
        }
    }

    /// What one engine holds, with the health policy applied.
    pub(super) fn effective(&self, id: &EngineId) -> Usage {
        let mut u = self.usage.get(id).cloned().unwrap_or_default();
        u.tracks_tenants = self.tracks_tenants;
        if self.policy.docker {
            match self.health.get(id) {
                None => u.unhealthy = true,
                Some(h) if self.policy.count_live => {
                    u.live_cpus = Millicpus::from_cpus_ceil(h.health.cpus_used.max(0.0));
                    u.live_memory = MemoryMb::from_mb_ceil(h.health.memory_used_mb.max(0.0));
                }
                Some(_) => {}
            }
        }
        u
    }

    pub fn engine_generation(&self) -> u64 {
        self.engine_generation
    }

    /// Every valid engine with its usage, from scratch; forgets the dirty set.
    pub fn engines(&mut self) -> Engines {
        self.dirty.clear();
        let mut views = Vec::with_capacity(self.engines.len());
        let mut revisions = Vec::with_capacity(self.engines.len());
        for (id, entry) in &self.engines {
            if let Ok((_, view)) = &entry.spec {
                let mut view = view.clone();
                apply_usage(&mut view, &self.effective(id));
                views.push(view);
                revisions.push(entry.mod_revision);
            }
        }
        Engines {
            generation: self.engine_generation,
            views,
            revisions,
        }
    }

    /// Engines whose usage changed since the last call, with their usage now.
    pub fn take_dirty(&mut self) -> Vec<(EngineId, Usage)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let u = self.effective(&id);
                (id, u)
            })
            .collect()
    }

    /// What the cache knows one engine holds.
    pub fn usage(&self, engine: &EngineId) -> Usage {
        self.effective(engine)
    }

    /// The keys this cache holds that etcd keeps a live revision of: what a compaction scans.
    pub fn keys_alive(&self) -> usize {
        self.requests.len() + self.decisions.len() + self.engines.len()
    }

    pub fn capacity_epoch(&self) -> u64 {
        self.capacity_epoch
    }
}

/// Sets a view's reservations to `u` (what the cache knows is committed).
pub fn apply_usage(view: &mut EngineView, u: &Usage) {
    view.reserved_cpus = u.cpus.max(u.live_cpus);
    view.reserved_memory = u.memory.max(u.live_memory);
    view.reserved_disk = u.disk;
    view.containers = u.count;
    view.tenants = u.tenants.clone();
    view.tracks_tenants = u.tracks_tenants;
    view.ports = u.ports.keys().copied().collect();
    view.healthy = !u.unhealthy;
}

pub(super) fn release_usage(
    usage: &mut HashMap<EngineId, Usage>,
    id: &RequestId,
    r: &ReservationEntry,
) {
    if let Some(u) = usage.get_mut(&r.engine) {
        u.cpus.0 = u.cpus.0.saturating_sub(r.cpus.0);
        u.memory.0 = u.memory.0.saturating_sub(r.memory.0);
        u.disk.0 = u.disk.0.saturating_sub(r.disk.0);
        if u.tenants.contains_key(id) {
            Arc::make_mut(&mut u.tenants).remove(id);
        }
        u.count = u.count.saturating_sub(1);
        for p in &r.ports {
            if let Some(n) = u.ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    u.ports.remove(p);
                }
            }
        }
        if u.count == 0 {
            usage.remove(&r.engine);
        }
    }
}
