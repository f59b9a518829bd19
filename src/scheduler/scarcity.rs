//! Which engines constrained requests depend on, so that binpack fills the others first.
//!
//! A request whose hard constraints hold on only some engines (`region==eu-*` and `disk==ssd`) can go
//! nowhere else. Binpack's "fullest first" aims straight at those engines: that very demand
//! makes them the fullest, so unconstrained requests fill them up and the constrained ones that
//! arrive later find no room, on a cluster with room to spare elsewhere.
//!
//! The leader counts recent demand (cpus and memory, halved every [`HALF_LIFE`] requests) by
//! *hard-constraint set*, as written. A set that only some engines satisfy presses on each of
//! them with its share of all demand over those engines' share of all capacity: `1.0` means
//! that its requests alone fill those engines as fast as all requests fill the cluster. An
//! engine's *scarcity* is the sum of what presses on it, in steps of [`STEP`]; binpack ranks
//! engines by it before anything else (see [`super::score`]). Uniform pressure (every zone
//! asked for alike) is no preference at all, and a set every engine satisfies presses on none.
//!
//! Pure: the leader hands it the requests it plans and the view it plans on.

use std::collections::HashMap;

use super::view::ENGINE_LABEL;
use super::{Constraint, EngineView, MAX_CLASSES, Prepared};

/// Constraint sets past this many replace the one with the least demand.
const MAX_SETS: usize = 32;
/// Requests after which what an earlier one asked for counts half.
pub const HALF_LIFE: f64 = 20_000.0;
/// Scarcity is counted in steps of this much pressure: engines within a step are alike.
pub const STEP: f64 = 0.05;
/// Requests observed between two recomputations of the engines' scarcity.
const RECOMPUTE_EVERY: u64 = 1_024;

/// Cpus (millicpus) and memory (MB), as decayed sums.
#[derive(Debug, Default, Clone, Copy)]
struct Amount {
    cpus: f64,
    memory: f64,
}

impl Amount {
    fn add(&mut self, cpus: u64, memory: u64) {
        self.cpus += cpus as f64;
        self.memory += memory as f64;
    }

    fn scale(&mut self, by: f64) {
        self.cpus *= by;
        self.memory *= by;
    }

    /// The larger of the two shares of `of`.
    fn share_of(&self, of: &Amount) -> f64 {
        let part = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        part(self.cpus, of.cpus).max(part(self.memory, of.memory))
    }
}

/// One hard-constraint set and the demand that asked for it.
#[derive(Debug)]
struct Set {
    /// Its expressions, as written, are the set's identity.
    constraints: Vec<Constraint>,
    demand: Amount,
    /// Whether engine `i` of the view satisfies every constraint.
    eligible: Vec<bool>,
    /// The eligible engines' share of all capacity, the smaller of cpus and memory.
    capacity: f64,
}

impl Set {
    /// Which engines satisfy the set, each label class decided once.
    fn place(&mut self, views: &[EngineView], total: &Amount) {
        let per_engine = self.constraints.iter().any(|c| c.key == ENGINE_LABEL);
        let mut by_class: HashMap<u32, bool> = HashMap::new();
        let mut eligible = Amount::default();
        self.eligible = views
            .iter()
            .map(|v| {
                let ok = if per_engine || v.class >= MAX_CLASSES {
                    self.constraints.iter().all(|c| c.matches(&v.labels))
                } else {
                    *by_class
                        .entry(v.class)
                        .or_insert_with(|| self.constraints.iter().all(|c| c.matches(&v.labels)))
                };
                if ok {
                    eligible.add(v.cpus.0, v.memory.0);
                }
                ok
            })
            .collect();
        let part = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        self.capacity = part(eligible.cpus, total.cpus).min(part(eligible.memory, total.memory));
    }

    /// What it presses on each engine it holds on with: 0 when it holds on all or on none.
    fn pressure(&self, all: &Amount) -> f64 {
        if self.capacity <= 0.0 || self.eligible.iter().all(|e| *e) {
            return 0.0;
        }
        self.demand.share_of(all) / self.capacity
    }
}

/// Recent demand by hard-constraint set, and each engine's scarcity from it.
#[derive(Debug, Default)]
pub struct Scarcity {
    sets: Vec<Set>,
    /// All demand observed, decayed alike.
    all: Amount,
    /// Requests observed since the scarcity was last computed.
    pending: u64,
    /// The engine generation the sets were placed on.
    generation: Option<u64>,
    /// By view position.
    tiers: Vec<u16>,
    stale: bool,
}

impl Scarcity {
    /// Counts one request's demand, under its hard-constraint set if it has one.
    pub fn observe(&mut self, p: &Prepared) {
        let r = &p.request;
        self.all.add(r.cpus.0, r.memory.0);
        self.pending += 1;
        if p.hard.is_empty() {
            return;
        }
        let same = |s: &Set| {
            s.constraints.len() == p.hard.len()
                && s.constraints
                    .iter()
                    .zip(&p.hard)
                    .all(|(a, b)| a.expr == b.expr)
        };
        if let Some(s) = self.sets.iter_mut().find(|s| same(s)) {
            s.demand.add(r.cpus.0, r.memory.0);
            return;
        }
        if self.sets.len() >= MAX_SETS
            && let Some(least) = (0..self.sets.len()).min_by(|a, b| {
                let (a, b) = (&self.sets[*a].demand, &self.sets[*b].demand);
                a.share_of(&self.all).total_cmp(&b.share_of(&self.all))
            })
        {
            self.sets.swap_remove(least);
        }
        let mut demand = Amount::default();
        demand.add(r.cpus.0, r.memory.0);
        self.sets.push(Set {
            constraints: p.hard.clone(),
            demand,
            eligible: Vec::new(),
            capacity: 0.0,
        });
        // Placed on the engines at the next `apply`.
        self.generation = None;
    }

    /// Sets each view's `scarcity`. `generation` names the engine set `views` holds (it changes
    /// whenever an engine is added, changed or removed); between changes, and until enough new
    /// demand was observed, the last figures are written again.
    pub fn apply(&mut self, views: &mut [EngineView], generation: u64) {
        if self.generation != Some(generation) || self.tiers.len() != views.len() {
            let mut total = Amount::default();
            for v in views.iter() {
                total.add(v.cpus.0, v.memory.0);
            }
            for s in &mut self.sets {
                s.place(views, &total);
            }
            self.generation = Some(generation);
            self.stale = true;
        }
        if self.stale || self.pending >= RECOMPUTE_EVERY {
            self.recompute(views.len());
        }
        for (v, t) in views.iter_mut().zip(&self.tiers) {
            v.scarcity = *t;
        }
    }

    fn recompute(&mut self, engines: usize) {
        let decay = 0.5f64.powf(self.pending as f64 / HALF_LIFE);
        self.all.scale(decay);
        let mut pressure = vec![0.0f64; engines];
        for s in &mut self.sets {
            s.demand.scale(decay);
            let p = s.pressure(&self.all);
            if p > 0.0 {
                for (i, _) in s.eligible.iter().enumerate().filter(|(_, e)| **e) {
                    pressure[i] += p;
                }
            }
        }
        self.tiers = pressure
            .into_iter()
            .map(|p| (p / STEP).round().min(f64::from(u16::MAX)) as u16)
            .collect();
        self.pending = 0;
        self.stale = false;
    }

    /// The sets tracked, for tests and logs.
    pub fn sets(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{engine_in_class, prepared};
    use super::*;

    /// Six engines of 4 cpus and 4 GB, one in three with an ssd (class 1, the others class 0).
    fn fleet() -> Vec<EngineView> {
        (0..6)
            .map(|i| {
                let disk = if i % 3 == 0 { "disk=ssd" } else { "disk=hdd" };
                let class = u32::from(i % 3 == 0);
                engine_in_class(&format!("e{i}"), 4.0, 4096.0, &[disk, "zone=a"], class)
            })
            .collect()
    }

    #[test]
    fn engines_a_constrained_set_needs_are_scarce_in_proportion_to_its_demand() {
        let mut views = fleet();
        let mut s = Scarcity::default();
        // One request in ten asks for an ssd, which a third of the capacity has: pressure
        // 0.1 / (1/3) = 0.3, six steps.
        for n in 0..100 {
            let labels: &[&str] = if n % 10 == 0 { &["disk==ssd"] } else { &[] };
            s.observe(&prepared(0.5, 256.0, labels, &[]));
        }
        s.apply(&mut views, 1);
        let tiers: Vec<u16> = views.iter().map(|v| v.scarcity).collect();
        assert_eq!(tiers, [6, 0, 0, 6, 0, 0]);
        assert_eq!(s.sets(), 1);
    }

    #[test]
    fn a_set_every_engine_or_no_engine_satisfies_presses_on_none() {
        let mut views = fleet();
        let mut s = Scarcity::default();
        for _ in 0..10 {
            s.observe(&prepared(0.5, 256.0, &["zone==a"], &[]));
            s.observe(&prepared(0.5, 256.0, &["zone==b"], &[]));
        }
        s.apply(&mut views, 1);
        assert!(views.iter().all(|v| v.scarcity == 0));
    }

    #[test]
    fn scarcity_follows_the_engines_and_fades_with_the_demand() {
        let mut views = fleet();
        let mut s = Scarcity::default();
        s.observe(&prepared(0.5, 256.0, &["disk==ssd"], &[]));
        s.apply(&mut views, 1);
        assert!(views[0].scarcity > 0 && views[1].scarcity == 0);
        // The views are rebuilt (their scarcity reset): the figures are written again.
        let mut rebuilt = fleet();
        s.apply(&mut rebuilt, 1);
        assert_eq!(rebuilt[0].scarcity, views[0].scarcity);
        // An engine changes its labels: the sets are placed on the new engines.
        rebuilt[1] = engine_in_class("e1", 4.0, 4096.0, &["disk=ssd", "zone=a"], 1);
        s.apply(&mut rebuilt, 2);
        assert!(rebuilt[1].scarcity > 0);
        // Ten half-lives of unconstrained demand later, the ssd engines are like the others.
        let before = rebuilt[0].scarcity;
        for _ in 0..(10.0 * HALF_LIFE) as usize {
            s.observe(&prepared(0.5, 256.0, &[], &[]));
        }
        s.apply(&mut rebuilt, 2);
        assert!(rebuilt[0].scarcity < before);
        assert_eq!(rebuilt[0].scarcity, 0);
    }

    #[test]
    fn the_set_with_the_least_demand_makes_way_for_a_new_one() {
        let mut s = Scarcity::default();
        for i in 0..MAX_SETS {
            for _ in 0..=i {
                s.observe(&prepared(0.5, 256.0, &[&format!("zone==z{i}")], &[]));
            }
        }
        s.observe(&prepared(0.5, 256.0, &["zone==new"], &[]));
        assert_eq!(s.sets(), MAX_SETS);
        let holds = |expr: &str| s.sets.iter().any(|x| x.constraints[0].expr == expr);
        assert!(holds("zone==new"));
        assert!(!holds("zone==z0"));
    }
}
