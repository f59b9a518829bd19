//! The scheduling core: pure functions from a request and a view of the cluster to a plan.
//!
//! No I/O, no clock, no randomness that is not passed in. The leader's cluster manager calls
//! [`fits_resources`] again on the one engine a plan names before it commits anything, so a plan
//! made on a stale view can never overcommit.
//!
//! It may not touch etcd, Docker, the cache or a clock: it sees only the [`EngineView`]s and the
//! request it is handed.
//!
//! # The pipeline
//!
//! A request meets one stage per file, as in Nomad's `scheduler/feasible`. The entry points
//! below chain them: [`schedule`] hands it to selection, whose scan puts each engine to the
//! filters and ranks those that fit, then to explanation when none does; [`rank()`] hands it to
//! alternatives, which filters and ranks every engine; [`sample_size`] is selection's bound.
//!
//! ```text
//!   a request's bytes            EngineView (view.rs): capacity, reserved, ports, labels, class
//!      │                              │
//!      ▼                              │
//!   parsed.rs     prepare: the bytes parsed and checked as a Request (model), then
//!   prepared.rs   Prepared: constraints and affinity parsed once, Shape
//!      │                              │
//!      ▼                              ▼  a group's: once per round, over every engine
//!   group.rs      a group's members counted once per round (GroupCounts), kept current as
//!                 it places them; a member held to max_per_engine and spread (rules_for)
//!      │                              │
//!      ▼                              ▼  each engine in turn, from a start the seed picks
//!   feasible.rs   constraints (hard, then soft; once per class) → volume pins → group
//!                 rules (per engine) → launch policy (a launched request's privileges)
//!                 → cordoned → unhealthy → cpus, memory, disk, ports (fits_resources)
//!                 → affinity
//!      │ fits                                  │ fails: a Code, counted
//!      ▼                                       │
//!   rank.rs       score by strategy; beats: scarcity (binpack), score, containers, id
//!      │                                       │
//!      ▼                                       │
//!   select.rs     the best of the first sample_size that fit (random: a reservoir draw);
//!                 none meeting the soft constraints: the scan again without them
//!      │ one fits                              │ none fits, every engine checked
//!      ▼                                       ▼
//!    Plan                        explain.rs   Unschedulable: "0/12 engines fit:
//!                                             7 insufficient memory, 5 constraint zone==a"
//!
//!   rank():  alternatives.rs   every engine that passes feasible.rs, in rank.rs's order,
//!                              the first `limit` (no sample, no draw)
//!
//!   preempt(): preemption.rs   when nothing fits: per engine, evict every eligible tenant
//!                              (settled, preemptible, lower by the gap), give back the most
//!                              important while feasible.rs still passes; the engine whose
//!                              victims disturb least (highest priority, sum, count, newest)
//! ```
//!
//! Beside the pipeline: `constraint.rs` parses and matches label expressions, `strategy.rs`
//! names the strategies and which container type each schedules, `scarcity.rs` counts which
//! engines constrained requests depend on (the leader sets [`EngineView::scarcity`] from it).

mod alternatives;
pub mod constraint;
mod explain;
mod feasible;
mod group;
mod parsed;
mod preemption;
mod prepared;
#[cfg(test)]
mod props;
mod rank;
mod scarcity;
mod select;
mod strategy;
#[cfg(test)]
pub(crate) mod testing;
mod view;

pub use constraint::{Constraint, ConstraintError, Labels};
pub use explain::{Unschedulable, same_but_sizes};
pub use feasible::{MAX_CLASSES, Rejection, fits_resources};
pub use group::{GroupCounts, GroupFilter};
pub use parsed::{Parsed, prepare};
pub use preemption::{PreemptOptions, Preemption, candidates_for, preempt, victims_on};
pub use prepared::{Prepared, Shape};
pub use rank::score;
pub use scarcity::Scarcity;
pub use select::{Plan, sample_size, splitmix};
pub use strategy::{Schedulers, Strategy};
pub use view::{EngineView, Tenant, Tenants, UNCLASSED};

/// Why a request cannot be scheduled at all, or a scheduler setting is wrong. Its text is what
/// an `invalid` decision's reason (or a one-line CLI error) says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown strategy {0:?}: expected spread, binpack or random")]
    UnknownStrategy(String),
    #[error("--scheduler {0:?}: expected TYPE=STRATEGY")]
    NotTypeEqualsStrategy(String),
    #[error("--scheduler {0:?}: the type is empty")]
    NoType(String),
    /// The type is not quoted back: it goes into an `invalid` decision's reason.
    #[error("type: no scheduler for this type; known types: {known}")]
    UnknownType { known: String },
    #[error("labels: {count} /regex/ constraints, the limit is {limit}")]
    TooManyRegexes { count: usize, limit: usize },
    #[error("labels[{index}]: {source}")]
    Constraint {
        index: usize,
        #[source]
        source: ConstraintError,
    },
    #[error("affinity[{index}]: {source}")]
    Affinity {
        index: usize,
        #[source]
        source: ConstraintError,
    },
    #[error("affinity[{index}]: the key is request or image")]
    AffinityKey { index: usize },
    /// A host path no launch policy could permit (`..` in it). The model's checks refuse it
    /// first; this is for a request built without them.
    #[error("volumes: {0}")]
    HostPath(String),
}

/// Chooses an engine for a request, or says why none fits.
///
/// Scores at most `sample` feasible engines (see [`sample_size`]; `usize::MAX` scores all).
/// `seed` picks where the scan starts and, for [`Strategy::Random`], the draw.
pub fn schedule(
    p: &Prepared,
    engines: &[EngineView],
    strategy: Strategy,
    seed: u64,
    sample: usize,
) -> Result<Plan, Unschedulable> {
    // feasible → rank → select, over the engines from the seed's start (select.rs)
    select::choose(p, engines, strategy, seed, sample)
        // → explain, once every engine was checked and none fits (explain.rs)
        .map_err(|refused| explain::unschedulable(p, engines, refused))
}

/// Every engine that fits, best first, with its [`score`], at most `limit` of them: what a
/// placed decision's `alternatives` lists and what a plan preview shows. Soft constraints
/// count when any engine meets them, as in [`schedule`]. Scans the whole view.
pub fn rank(
    p: &Prepared,
    engines: &[EngineView],
    strategy: Strategy,
    limit: usize,
) -> Vec<(usize, f64)> {
    // feasible → rank over every engine, best first, cut at `limit` (alternatives.rs)
    alternatives::ranked(p, engines, strategy, limit)
}

/// A stable 64-bit hash of a string (FNV-1a), for seeds derived from request ids.
pub use crate::model::fnv1a;

#[cfg(test)]
mod tests {
    use super::feasible::ClassMemo;
    use super::testing::{engine, request};
    use super::*;
    use crate::model::HostPort;
    use std::collections::BTreeSet;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn engines() -> impl proptest::strategy::Strategy<Value = Vec<(u32, u32, u8)>> {
            proptest::collection::vec((1u32..16_000, 1u32..64_000, 0u8..3), 0..12)
        }
        fn requests() -> impl proptest::strategy::Strategy<Value = Vec<(u32, u32, Option<u16>, u8)>>
        {
            proptest::collection::vec(
                (
                    1u32..6_000,
                    1u32..20_000,
                    proptest::option::of(1u16..6),
                    0u8..4,
                ),
                0..80,
            )
        }

        proptest! {
            /// Whatever the engines and the requests, placing them one after another never
            /// overcommits an engine nor binds a host port twice, and a request is only called
            /// unschedulable when truly no engine could take it.
            #[test]
            fn no_overcommit_no_double_port_and_no_false_refusal(
                es in engines(),
                rs in requests(),
                strategy in 0u8..3,
                seed in any::<u64>(),
                sample in prop_oneof![Just(usize::MAX), 1usize..4],
            ) {
                let strategy = [super::Strategy::Spread, super::Strategy::Binpack, super::Strategy::Random][strategy as usize];
                let mut view: Vec<EngineView> = es
                    .iter()
                    .enumerate()
                    .map(|(i, (c, m, z))| {
                        let zone = format!("zone={}", ["a", "b", "c"][*z as usize]);
                        let mut e = engine(&format!("e{i}"), f64::from(*c) / 1000.0, f64::from(*m), &[zone.as_str()]);
                        // Engines of one zone have the same labels: one class (see ClassMemo).
                        e.class = u32::from(*z);
                        e
                    })
                    .collect();
                let mut bound: Vec<BTreeSet<HostPort>> = vec![BTreeSet::new(); view.len()];
                for (n, (c, m, port, zone)) in rs.iter().enumerate() {
                    let zone_c = match zone { 0 => vec!["zone==a"], 1 => vec!["zone!=b"], 2 => vec!["zone==~c"], _ => vec![] };
                    let ports: Vec<u16> = port.iter().map(|p| 8000 + p).collect();
                    let r = request(f64::from(*c) / 1000.0, f64::from(*m), &zone_c, &ports);
                    let p = Prepared::new(r.clone()).unwrap();
                    match schedule(&p, &view, strategy, seed ^ n as u64, sample) {
                        Ok(plan) => {
                            let e = &mut view[plan.engine];
                            prop_assert!(fits_resources(&r, e).is_ok());
                            let one_by_one = EngineView { class: UNCLASSED, ..e.clone() };
                            prop_assert!(p.check(&one_by_one, false, &mut ClassMemo::default()).is_ok());
                            e.reserve(r.cpus, r.memory, &r.ports);
                            for hp in &r.ports {
                                prop_assert!(bound[plan.engine].insert(*hp), "port {} bound twice", hp);
                            }
                        }
                        Err(_) => {
                            for e in &view {
                                let one_by_one = EngineView { class: UNCLASSED, ..e.clone() };
                                let hard_ok = p.check(&one_by_one, false, &mut ClassMemo::default()).is_ok();
                                prop_assert!(!hard_ok, "{} could take request {}", e.id, n);
                            }
                        }
                    }
                }
                for e in &view {
                    prop_assert!(e.reserved_cpus <= e.cpus, "{} cpus overcommitted", e.id);
                    prop_assert!(e.reserved_memory <= e.memory, "{} memory overcommitted", e.id);
                }
            }
        }
    }
}
