//! What each engine holds: one placement's reservation, their sum per engine, and how health
//! and live use weigh in (the policy).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::*;
use crate::scheduler::{EngineView, Tenants};

/// How engine health weighs in scheduling (the leader's `--docker` and `--count-live`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Only engines with a `health/<engine>` key are schedulable; placed requests that ask for
    /// it (or all, with `launch_all`) are launched.
    pub docker: bool,
    /// Count max(reserved, live) against capacity instead of reservations alone.
    pub count_live: bool,
    pub launch_all: bool,
}

/// What one placed decision holds, on which engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReservationEntry {
    pub(super) engine: EngineId,
    pub(super) cpus: Millicpus,
    pub(super) memory: MemoryMb,
    pub(super) disk: DiskMb,
    pub(super) ports: Vec<HostPort>,
    pub(super) image: Arc<str>,
    pub(super) rank: Rank,
}

impl ReservationEntry {
    /// It as a tenant of its engine, answering request revision `revision` with a decision
    /// written at `decision`.
    pub(super) fn tenant(&self, revision: i64, decision: i64) -> crate::scheduler::Tenant {
        crate::scheduler::Tenant {
            held: Held {
                cpus: self.cpus,
                memory: self.memory,
                disk: self.disk,
                ports: self.ports.clone(),
                image: self.image.clone(),
                rank: self.rank.clone(),
            },
            revision,
            decision,
        }
    }

    pub(super) fn new(engine: EngineId, r: &Reservation) -> Self {
        let held = r.held();
        ReservationEntry {
            engine,
            cpus: held.cpus,
            memory: held.memory,
            disk: held.disk,
            ports: held.ports,
            image: held.image,
            rank: held.rank,
        }
    }
}

/// What one engine holds, summed over its reservations. Ports are counted so that a (wrong)
/// double booking made by hand does not free the port when one of the two is released.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub disk: DiskMb,
    /// What is placed there, by request, with its image: what affinity is decided on. Kept
    /// only once some request asks for affinity (`tracks_tenants`): copying the map on each
    /// placement would cost every cluster for what few use.
    pub tenants: Arc<Tenants>,
    pub tracks_tenants: bool,
    pub ports: BTreeMap<HostPort, u32>,
    pub count: u64,
    /// Not schedulable: no health key while the policy asks for one.
    pub unhealthy: bool,
    /// Every request placed is launched (the policy's `launch_all`): the engine's launch
    /// policy binds them all (see [`EngineView::launch_all`]).
    pub launch_all: bool,
    /// Live use to count against capacity (zero unless the policy counts it).
    pub live_cpus: Millicpus,
    pub live_memory: MemoryMb,
}

impl Usage {
    pub(super) fn add(&mut self, r: &ReservationEntry) {
        self.cpus.0 = self.cpus.0.saturating_add(r.cpus.0);
        self.memory.0 = self.memory.0.saturating_add(r.memory.0);
        self.disk.0 = self.disk.0.saturating_add(r.disk.0);
        self.count += 1;
        for p in &r.ports {
            *self.ports.entry(*p).or_default() += 1;
        }
    }
}

/// Sets a view's reservations to `u` (what the mirror knows is committed).
pub fn apply_usage(view: &mut EngineView, u: &Usage) {
    view.reserved_cpus = u.cpus.max(u.live_cpus);
    view.reserved_memory = u.memory.max(u.live_memory);
    view.reserved_disk = u.disk;
    view.containers = u.count;
    view.tenants = u.tenants.clone();
    view.tracks_tenants = u.tracks_tenants;
    view.ports = u.ports.keys().copied().collect();
    view.healthy = !u.unhealthy;
    view.launch_all = u.launch_all;
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
