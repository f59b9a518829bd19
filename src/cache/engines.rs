//! The engines as the scheduler sees them, and what each holds, read from the mirror.

use super::mirror::Mirror;
use super::usage::{HealthPolicy, Usage, apply_usage};
use crate::model::*;
use crate::scheduler::EngineView;

/// Every valid engine with its usage applied, sorted by id, and each engine key's mod revision.
#[derive(Debug, Clone, Default)]
pub struct Engines {
    /// The mirror's engine generation they were built at.
    pub generation: u64,
    pub views: Vec<EngineView>,
    pub revisions: Vec<i64>,
    /// Every key under `engines/`, valid or not, and the newest mod revision among them: what
    /// a compare over the whole prefix reads.
    pub keys: usize,
    pub newest: i64,
}

impl Mirror {
    /// What one engine holds, with `policy` applied (health and live use).
    pub fn usage(&self, id: &EngineId, policy: HealthPolicy) -> Usage {
        let mut u = self.usage.get(id).cloned().unwrap_or_default();
        u.tracks_tenants = self.tracks_tenants;
        u.launch_all = policy.launch_all;
        // An engine with an agent is alive while the agent's lease is: whatever the policy.
        if policy.docker || (self.agents > 0 && self.agent(id).is_some()) {
            match self.health.get(id) {
                None => u.unhealthy = true,
                Some(h) if policy.count_live => {
                    u.live_cpus = Millicpus::from_cpus_ceil(h.health.cpus_used.max(0.0));
                    u.live_memory = MemoryMb::from_mb_ceil(h.health.memory_used_mb.max(0.0));
                }
                Some(_) => {}
            }
        }
        u
    }

    /// How many placements `engine` holds.
    pub fn placements_on(&self, engine: &EngineId) -> u64 {
        self.usage.get(engine).map_or(0, |u| u.count)
    }

    /// Every valid engine with its usage under `policy`, from scratch.
    pub fn engines(&self, policy: HealthPolicy) -> Engines {
        let mut views = Vec::with_capacity(self.engines.len());
        let mut revisions = Vec::with_capacity(self.engines.len());
        let mut newest = 0;
        for (id, entry) in &self.engines {
            newest = newest.max(entry.mod_revision);
            if let Ok((_, view)) = &entry.spec {
                let mut view = view.clone();
                apply_usage(&mut view, &self.usage(id, policy));
                views.push(view);
                revisions.push(entry.mod_revision);
            }
        }
        Engines {
            generation: self.engine_generation,
            views,
            revisions,
            keys: self.engines.len(),
            newest,
        }
    }

    /// Bumped whenever an engine is added, changed or removed: views built before are stale.
    pub fn engine_generation(&self) -> u64 {
        self.engine_generation
    }

    /// The keys the mirror holds that etcd keeps a live revision of: what a compaction scans.
    pub fn keys_alive(&self) -> usize {
        self.requests.len() + self.decisions.len() + self.engines.len()
    }

    /// Whether `engine` holds more than its capacity (reservations only; live use aside).
    pub fn over_capacity(&self, engine: &EngineId) -> bool {
        let (Some(view), Some(u)) = (self.engine_view(engine), self.usage.get(engine)) else {
            return false;
        };
        u.cpus > view.cpus || u.memory > view.memory
    }

    /// What a valid `engine` has reserved of cpus and memory (reservations only), and its
    /// capacity after the overcommit factor: `((reserved), (capacity))`.
    pub fn load(
        &self,
        engine: &EngineId,
    ) -> Option<((Millicpus, MemoryMb), (Millicpus, MemoryMb))> {
        let view = self.engine_view(engine)?;
        let reserved = self
            .usage
            .get(engine)
            .map_or((Millicpus(0), MemoryMb(0)), |u| (u.cpus, u.memory));
        Some((reserved, (view.cpus, view.memory)))
    }

    /// The placements on `engine`: each request with the decision's mod revision and what it
    /// holds of cpus and memory.
    pub fn reservations_on(
        &self,
        engine: &EngineId,
    ) -> impl Iterator<Item = (&RequestId, i64, Millicpus, MemoryMb)> + '_ {
        let engine = engine.clone();
        self.reservations
            .iter()
            .filter(move |(_, r)| r.engine == engine)
            .map(|(id, r)| {
                let rev = self.decisions.get(id).map_or(0, |d| d.mod_revision);
                (id, rev, r.cpus, r.memory)
            })
    }

    /// The engine `id`'s decision holds a reservation on, if any.
    pub fn reserved_on(&self, id: &RequestId) -> Option<&EngineId> {
        self.reservations.get(id).map(|r| &r.engine)
    }

    /// Whether `id` mounts a named volume that lives on `engine`: a drain leaves it there, as
    /// it could go nowhere else. Parsed only for requests on an engine that holds volumes.
    pub fn held_by_volume(&self, id: &RequestId, engine: &EngineId) -> bool {
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

    /// Whether the mirror holds a key for `engine`, valid or not.
    pub fn has_engine(&self, engine: &EngineId) -> bool {
        self.engines.contains_key(engine)
    }

    /// One valid engine as the scheduler sees it, before anything is reserved.
    pub(super) fn engine_view(&self, engine: &EngineId) -> Option<&EngineView> {
        match &self.engines.get(engine)?.spec {
            Ok((_, view)) => Some(view),
            Err(_) => None,
        }
    }
}
