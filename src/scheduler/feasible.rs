//! Feasibility: whether one engine may take a request, and if not, the first filter it fails.
//!
//! The filters, cheapest and most selective first: hard constraints, then soft ones (each
//! decided once per engine class, see [`ClassMemo`]); volume pins; cordoned; unhealthy;
//! cpus, memory, disk and host ports ([`fits_resources`], what the leader verifies again
//! before a commit); affinity, last, as it reads what the engine holds.
//!
//! It may not score or compare engines (ranking does), nor allocate or name a reason
//! on its path: a failure is a [`Code`], named as a [`Rejection`] only to explain.

use std::fmt;

use super::view::ENGINE_LABEL;
use super::{Constraint, EngineView, Prepared};
use crate::model::{EngineId, HostPort, Request};

/// Why one engine cannot take a request: the first filter it failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    Constraint(String),
    Cordoned,
    Unhealthy,
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
    /// A named volume the request mounts lives on another engine.
    Volume {
        name: String,
        engine: EngineId,
    },
    /// An affinity expression (`request!=web-*`, `image==redis*`) the engine fails.
    Affinity(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Constraint(expr) => write!(f, "constraint {expr}"),
            Rejection::Cordoned => f.write_str("cordoned"),
            Rejection::Unhealthy => f.write_str("unhealthy"),
            Rejection::Cpus => f.write_str("insufficient cpus"),
            Rejection::Memory => f.write_str("insufficient memory"),
            Rejection::Disk => f.write_str("insufficient disk"),
            Rejection::Volume { name, engine } => write!(f, "volume {name} is on engine {engine}"),
            Rejection::Affinity(expr) => write!(f, "affinity {expr}"),
            Rejection::Port(p) => write!(f, "port {p} in use"),
        }
    }
}

/// [`Rejection`] without its text: counted per engine, named only when explaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    Constraint(usize),
    Affinity(usize),
    Volume(usize),
    Cordoned,
    Unhealthy,
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
}

impl Prepared {
    /// The resources-and-ports part of the filters: what the leader re-verifies before a commit.
    pub fn fits_resources(&self, e: &EngineView) -> Result<(), Rejection> {
        fits_resources(&self.request, e)
    }

    /// The first filter `e` fails, named, or `Ok` if it fits: the scan's own check, for a dry
    /// run (`citadel plan`) that explains every engine.
    pub fn verdict(&self, e: &EngineView, with_soft: bool) -> Result<(), Rejection> {
        self.check(e, with_soft, &mut ClassMemo::default())
            .map_err(|code| self.rejection(code))
    }

    /// The first filter `e` fails, as a cheap code (no allocation on the hot path).
    pub(super) fn check(
        &self,
        e: &EngineView,
        with_soft: bool,
        memo: &mut ClassMemo,
    ) -> Result<(), Code> {
        for (i, c) in self.hard.iter().enumerate() {
            if !memo.matches(c, i, e) {
                return Err(Code::Constraint(i));
            }
        }
        if with_soft {
            for (i, c) in self.soft.iter().enumerate() {
                let k = self.hard.len() + i;
                if !memo.matches(c, k, e) {
                    return Err(Code::Constraint(k));
                }
            }
        }
        if let Some(i) = self.pins.iter().position(|(_, at)| *at != e.id) {
            return Err(Code::Volume(i));
        }
        if e.cordoned {
            return Err(Code::Cordoned);
        }
        if !e.healthy {
            return Err(Code::Unhealthy);
        }
        if let Some(lack) = lack(&self.request, e) {
            return Err(match lack {
                Lack::Cpus => Code::Cpus,
                Lack::Memory => Code::Memory,
                Lack::Disk => Code::Disk,
                Lack::Port(p) => Code::Port(p),
            });
        }
        self.check_affinity(e, with_soft)
    }

    /// Affinity, decided on what the engine holds (its tenants), after the cheaper filters.
    fn check_affinity(&self, e: &EngineView, with_soft: bool) -> Result<(), Code> {
        let holds = |c: &Constraint| match c.key.as_str() {
            "request" => c.matches_values(e.tenants.keys().map(|id| Some(id.as_str()))),
            _ => c.matches_values(e.tenants.values().map(|image| Some(&**image))),
        };
        for (i, c) in self.affinity_hard.iter().enumerate() {
            if !holds(c) {
                return Err(Code::Affinity(i));
            }
        }
        if with_soft {
            for (i, c) in self.affinity_soft.iter().enumerate() {
                if !holds(c) {
                    return Err(Code::Affinity(self.affinity_hard.len() + i));
                }
            }
        }
        Ok(())
    }

    pub(super) fn rejection(&self, code: Code) -> Rejection {
        match code {
            Code::Constraint(i) => Rejection::Constraint(nth_expr(&self.hard, &self.soft, i)),
            Code::Affinity(i) => {
                Rejection::Affinity(nth_expr(&self.affinity_hard, &self.affinity_soft, i))
            }
            Code::Volume(i) => {
                let (name, engine) = self.pins[i].clone();
                Rejection::Volume { name, engine }
            }
            Code::Cordoned => Rejection::Cordoned,
            Code::Unhealthy => Rejection::Unhealthy,
            Code::Cpus => Rejection::Cpus,
            Code::Memory => Rejection::Memory,
            Code::Disk => Rejection::Disk,
            Code::Port(p) => Rejection::Port(p),
        }
    }
}

/// Whether an engine has room for a request's cpus, memory and host ports.
pub fn fits_resources(r: &Request, e: &EngineView) -> Result<(), Rejection> {
    match lack(r, e) {
        None => Ok(()),
        Some(Lack::Cpus) => Err(Rejection::Cpus),
        Some(Lack::Memory) => Err(Rejection::Memory),
        Some(Lack::Disk) => Err(Rejection::Disk),
        Some(Lack::Port(p)) => Err(Rejection::Port(p)),
    }
}

/// What an engine lacks for a request's resources: the one answer of the resource filter,
/// which the scan's [`Code`] and the leader's [`Rejection`] are each mapped from arm by arm.
/// A resource added here must be named in both, and no other reason can come out of it.
#[derive(Debug, Clone, Copy)]
enum Lack {
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
}

/// The first resource `e` lacks for `r`: cpus, memory, disk, then host ports.
fn lack(r: &Request, e: &EngineView) -> Option<Lack> {
    if e.reserved_cpus.0.saturating_add(r.cpus.0) > e.cpus.0 {
        return Some(Lack::Cpus);
    }
    if e.reserved_memory.0.saturating_add(r.memory.0) > e.memory.0 {
        return Some(Lack::Memory);
    }
    if r.disk.0 > 0 && e.reserved_disk.0.saturating_add(r.disk.0) > e.disk.0 {
        return Some(Lack::Disk);
    }
    r.ports
        .iter()
        .find(|p| e.ports.contains(p))
        .map(|p| Lack::Port(*p))
}

/// One request's constraint results by engine class: bit `k` of `known` says constraint `k`
/// was decided for the class, bit `k` of `pass` that it matched.
#[derive(Default)]
pub(super) struct ClassMemo(Vec<(u32, u32)>);

/// Classes past this many are not numbered: their engines are checked one by one (a cluster
/// where every engine has labels of its own gains nothing from classes).
pub const MAX_CLASSES: u32 = 4096;

impl ClassMemo {
    pub(super) fn matches(&mut self, c: &Constraint, k: usize, e: &EngineView) -> bool {
        // The engine label tells engines of one class apart: never decided per class.
        if k >= 32 || e.class >= MAX_CLASSES || c.key == ENGINE_LABEL {
            return c.matches(&e.labels);
        }
        let class = e.class as usize;
        if self.0.len() <= class {
            self.0.resize(class + 1, (0, 0));
        }
        let bit = 1u32 << k;
        let (known, pass) = &mut self.0[class];
        if *known & bit == 0 {
            *known |= bit;
            if c.matches(&e.labels) {
                *pass |= bit;
            }
        }
        *pass & bit != 0
    }
}

/// The `i`th expression counting the hard ones first, as [`Code`] numbers them.
fn nth_expr(hard: &[Constraint], soft: &[Constraint], i: usize) -> String {
    hard.iter()
        .chain(soft)
        .nth(i)
        .map(|c| c.expr.clone())
        .unwrap_or_default()
}
