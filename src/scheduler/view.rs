//! One engine as the scheduler sees it: capacity after the overcommit factor, what is reserved,
//! which host ports are taken, its labels, health and class. Every stage reads it; the filters
//! that decide whether it may take a request are the feasibility stage's. Pure: it reads no
//! key and no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Labels;
use crate::model::{
    DiskMb, EngineId, EngineSpec, Held, HostPort, LaunchPolicy, MemoryMb, Millicpus, Request,
    RequestId, Resource,
};

/// The requests placed on one engine: what affinity (`request==web-*`, `image==redis*`), the
/// group rules and preemption are decided on. Shared: the cache, the running view and each
/// round's frozen view hold the same map until one of them changes it.
pub type Tenants = BTreeMap<RequestId, Tenant>;

/// One placement on an engine, as affinity, group rules and preemption read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// What it holds there, its image, priority and group.
    pub held: Held,
    /// The request revision it answers: the lower, the older the work it runs.
    pub revision: i64,
    /// Its decision key's mod revision in etcd; 0 while its write is in flight (it cannot be
    /// evicted before it is known to have landed).
    pub decision: i64,
}

/// One engine as the scheduler sees it: capacity, what is reserved, which ports are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineView {
    pub id: EngineId,
    pub addr: String,
    /// Shared: a view is cloned for every scheduling round, its labels never change.
    pub labels: Arc<Labels>,
    /// Capacity after the overcommit factor.
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    /// As the operator wrote them, for the decision's `resource`.
    pub total_cpus: f64,
    pub total_memory: f64,
    pub reserved_cpus: Millicpus,
    pub reserved_memory: MemoryMb,
    /// Disk in MB (0: the engine offers none), and what is reserved of it.
    pub disk: DiskMb,
    pub reserved_disk: DiskMb,
    pub ports: BTreeSet<HostPort>,
    /// Containers placed on it: exact ties go to fewer (spread) or more (binpack).
    pub containers: u64,
    /// What is placed on it, by request (see [`Tenants`]).
    pub tenants: Arc<Tenants>,
    /// Placements in this view add their tenants (some request asks for affinity).
    pub tracks_tenants: bool,
    pub healthy: bool,
    /// Takes no new placements.
    pub cordoned: bool,
    /// What it lets a launched container do beyond the default, as its agent advertises it
    /// (`Engine.agent.policy`); `None`, the default (nothing beyond an ordinary container),
    /// for an engine without an agent or whose agent permits nothing more. Read from the
    /// record once per engine view; shared by every copy of it.
    pub policy: Option<Arc<LaunchPolicy>>,
    /// The leader launches every request placed (`--launch`), not only those that ask: the
    /// launch policy binds every request then. Set with the usage, from the leader's policy.
    pub launch_all: bool,
    /// Engines with the same labels as written (their own `engine=<id>` aside) share a class,
    /// as Nomad's computed node classes do: a request decides each constraint on any other key
    /// once per class, not once per engine. [`UNCLASSED`] engines are always checked one by one.
    pub class: u32,
    /// How much constrained demand depends on it, in steps (see [`super::scarcity`]): binpack
    /// fills the engines with less first. Set by the leader each round; 0 elsewhere.
    pub scarcity: u16,
}

/// The class of an engine nobody classified (see [`EngineView::class`]).
pub const UNCLASSED: u32 = u32::MAX;

/// The label every engine carries with its own id unless its operator set one: `engine==<id>`
/// pins a request to one engine, like Swarm's `node==`. It is also the one label that tells
/// engines of a class apart.
pub(super) const ENGINE_LABEL: &str = "engine";

impl EngineView {
    pub fn new(spec: &EngineSpec, overcommit: f64) -> Self {
        let mut labels = spec.labels.clone();
        if !labels.iter().any(|l| {
            l.strip_prefix(ENGINE_LABEL)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        }) {
            labels.push(format!("{ENGINE_LABEL}={}", spec.id));
        }
        EngineView {
            id: spec.id.clone(),
            addr: spec.addr.clone(),
            labels: Arc::new(Labels::parse(&labels)),
            cpus: Millicpus((spec.cpus.0 as f64 * overcommit).floor() as u64),
            memory: MemoryMb((spec.memory.0 as f64 * overcommit).floor() as u64),
            total_cpus: spec.wire.cpus,
            total_memory: spec.wire.memory,
            reserved_cpus: Millicpus(0),
            reserved_memory: MemoryMb(0),
            disk: DiskMb((spec.disk.0 as f64 * overcommit).floor() as u64),
            reserved_disk: DiskMb(0),
            ports: BTreeSet::new(),
            containers: 0,
            tenants: Arc::default(),
            tracks_tenants: true,
            healthy: true,
            cordoned: spec.cordoned,
            policy: spec
                .wire
                .agent
                .as_ref()
                .filter(|a| !a.policy.is_default())
                .map(|a| Arc::new(a.policy.clone())),
            launch_all: false,
            class: UNCLASSED,
            scarcity: 0,
        }
    }

    pub fn reserve(&mut self, cpus: Millicpus, memory: MemoryMb, ports: &[HostPort]) {
        self.reserved_cpus.0 = self.reserved_cpus.0.saturating_add(cpus.0);
        self.reserved_memory.0 = self.reserved_memory.0.saturating_add(memory.0);
        self.ports.extend(ports.iter().copied());
    }

    /// Reserves a placement of `id`: its resources, one container more, and it as a tenant
    /// (whose decision is not written yet).
    pub fn hold(&mut self, id: &RequestId, h: &Held) {
        self.hold_at(id, h, 0);
    }

    /// [`EngineView::hold`] for the request revision `revision`.
    pub fn hold_at(&mut self, id: &RequestId, h: &Held, revision: i64) {
        self.reserve(h.cpus, h.memory, &h.ports);
        self.reserved_disk.0 = self.reserved_disk.0.saturating_add(h.disk.0);
        self.containers += 1;
        if self.tracks_tenants {
            Arc::make_mut(&mut self.tenants).insert(
                id.clone(),
                Tenant {
                    held: h.clone(),
                    revision,
                    decision: 0,
                },
            );
        }
    }

    /// Takes a tenant's placement off this view (preemption evicts it): its resources, its
    /// container and it as a tenant. Returns what it held.
    pub fn evict(&mut self, id: &RequestId) -> Option<Tenant> {
        let t = Arc::make_mut(&mut self.tenants).remove(id)?;
        self.release(t.held.cpus, t.held.memory, &t.held.ports);
        self.reserved_disk.0 = self.reserved_disk.0.saturating_sub(t.held.disk.0);
        self.containers = self.containers.saturating_sub(1);
        Some(t)
    }

    /// Puts an evicted tenant back (a gang that could not be placed whole gives back what it
    /// took).
    pub fn restore(&mut self, id: &RequestId, t: Tenant) {
        self.reserve(t.held.cpus, t.held.memory, &t.held.ports);
        self.reserved_disk.0 = self.reserved_disk.0.saturating_add(t.held.disk.0);
        self.containers += 1;
        Arc::make_mut(&mut self.tenants).insert(id.clone(), t);
    }

    pub fn release(&mut self, cpus: Millicpus, memory: MemoryMb, ports: &[HostPort]) {
        self.reserved_cpus.0 = self.reserved_cpus.0.saturating_sub(cpus.0);
        self.reserved_memory.0 = self.reserved_memory.0.saturating_sub(memory.0);
        for p in ports {
            self.ports.remove(p);
        }
    }

    pub fn resource(&self) -> Resource {
        Resource {
            id: self.id.to_string(),
            addr: self.addr.clone(),
            total_cpus: self.total_cpus,
            total_memory: self.total_memory,
        }
    }

    /// The larger of the cpu and memory fractions reserved once `extra` is added.
    pub(super) fn fraction_with(&self, cpus: Millicpus, memory: MemoryMb) -> f64 {
        let frac = |used: u64, extra: u64, cap: u64| {
            if cap == 0 {
                1.0
            } else {
                (used.saturating_add(extra)) as f64 / cap as f64
            }
        };
        frac(self.reserved_cpus.0, cpus.0, self.cpus.0).max(frac(
            self.reserved_memory.0,
            memory.0,
            self.memory.0,
        ))
    }

    /// How many more copies of `r` would fit once it is placed: the engine's room measured in
    /// the request's own shape, so cpus and memory need no exchange rate.
    pub(super) fn copies_left(&self, r: &Request) -> f64 {
        let left = |cap: u64, used: u64, ask: u64| {
            if ask == 0 {
                f64::INFINITY
            } else {
                cap.saturating_sub(used.saturating_add(ask)) as f64 / ask as f64
            }
        };
        left(self.cpus.0, self.reserved_cpus.0, r.cpus.0)
            .min(left(self.memory.0, self.reserved_memory.0, r.memory.0))
            .min(left(self.disk.0, self.reserved_disk.0, r.disk.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overcommit_factor_scales_capacity() {
        let spec = EngineSpec::parse(&EngineId::new("a").unwrap(), br#"{"cpus":2,"memory":1000}"#)
            .unwrap();
        let e = EngineView::new(&spec, 1.5);
        assert_eq!((e.cpus, e.memory), (Millicpus(3000), MemoryMb(1500)));
    }

    #[test]
    fn reservations_add_up_and_release_back() {
        let spec = EngineSpec::parse(&EngineId::new("a").unwrap(), br#"{"cpus":2,"memory":1000}"#)
            .unwrap();
        let mut e = EngineView::new(&spec, 1.0);
        let port = HostPort {
            proto: crate::model::Proto::Tcp,
            port: 80,
        };
        e.reserve(Millicpus(1500), MemoryMb(600), &[port]);
        assert_eq!(
            (e.reserved_cpus, e.reserved_memory),
            (Millicpus(1500), MemoryMb(600))
        );
        assert!(e.ports.contains(&port));
        assert!((e.fraction_with(Millicpus(500), MemoryMb(0)) - 1.0).abs() < 1e-9);
        e.release(Millicpus(1500), MemoryMb(600), &[port]);
        e.release(Millicpus(1), MemoryMb(1), &[]);
        assert_eq!(
            (e.reserved_cpus, e.reserved_memory),
            (Millicpus(0), MemoryMb(0))
        );
        assert!(
            e.ports.is_empty(),
            "a release never goes below zero or keeps a port"
        );
    }

    fn has(labels: &Labels, expr: &str) -> bool {
        super::super::Constraint::parse(expr)
            .map(|c| c.matches(labels))
            .unwrap_or(false)
    }

    #[test]
    fn every_engine_carries_its_own_id_unless_labelled_otherwise() {
        let plain =
            EngineSpec::parse(&EngineId::new("a").unwrap(), br#"{"cpus":1,"memory":1}"#).unwrap();
        assert!(has(&EngineView::new(&plain, 1.0).labels, "engine==a"));
        let set = EngineSpec::parse(
            &EngineId::new("b").unwrap(),
            br#"{"cpus":1,"memory":1,"labels":["engine=gpu"]}"#,
        )
        .unwrap();
        let view = EngineView::new(&set, 1.0);
        assert!(has(&view.labels, "engine==gpu"));
        assert!(!has(&view.labels, "engine==b"));
    }
}
