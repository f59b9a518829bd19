//! Ranking: how good an engine that fits is for a request under each strategy ([`score`]),
//! and which of two comes first ([`beats`]): for binpack the engine fewer constrained requests
//! depend on (its scarcity), then the higher score, then the container count, then the id.
//!
//! It may not filter: it is handed only engines that fit. Pure arithmetic on the view, with
//! no allocation, as selection calls it for every engine of its sample.

use std::cmp::Ordering;

use super::{EngineView, Prepared, Strategy};
use crate::model::Request;

impl Prepared {
    /// What `spread` and `binpack` rank `e` by: its reserved fraction once this request is
    /// placed there (spread takes the lowest, binpack the highest).
    pub fn score(&self, e: &EngineView) -> f64 {
        e.fraction_with(self.request.cpus, self.request.memory)
    }
}

/// How good an engine that fits is for a request under a strategy: higher is better.
///
/// - `spread`: one minus the larger of the cpu and memory fractions reserved once placed, so
///   the engine left least loaded on its fuller side wins.
/// - `binpack`: an engine already in use beats an empty one (scores in (1, 2] against [0, 1));
///   among engines in use, the best fit (the fewest further copies of this request would fit,
///   the tightest), and among empty ones the largest (the most copies): first-fit decreasing's
///   "largest bins first", decided online. Engines that constrained requests depend on come
///   after the others whatever their score (see [`beats`] and [`super::Scarcity`]).
/// - `random`: scored as spread, for ranking only.
pub fn score(e: &EngineView, r: &Request, strategy: Strategy) -> f64 {
    match strategy {
        Strategy::Spread | Strategy::Random => 1.0 - e.fraction_with(r.cpus, r.memory),
        Strategy::Binpack => {
            if e.reserved_cpus.0 > 0 || e.reserved_memory.0 > 0 {
                1.0 + e.fraction_with(r.cpus, r.memory).min(1.0)
            } else {
                1.0 - 1.0 / (2.0 + e.copies_left(r).min(1e12))
            }
        }
    }
}

/// Whether `a` beats `b` for `strategy`: for binpack, the engine fewer constrained requests
/// depend on first (its [`EngineView::scarcity`]); then the higher score; on an exact tie,
/// fewer containers (spread) or more (binpack); then the lower engine id, whatever the scan's
/// start.
pub(super) fn beats(a: (&EngineView, f64), b: (&EngineView, f64), strategy: Strategy) -> bool {
    let (ea, sa) = a;
    let (eb, sb) = b;
    if strategy == Strategy::Binpack && ea.scarcity != eb.scarcity {
        return ea.scarcity < eb.scarcity;
    }
    if sa != sb {
        return sa > sb;
    }
    if ea.containers != eb.containers {
        return match strategy {
            Strategy::Binpack => ea.containers > eb.containers,
            _ => ea.containers < eb.containers,
        };
    }
    ea.id < eb.id
}

/// [`beats`] as an ordering, the better first: how engines that fit are sorted by it. Inline,
/// as the comparison was when the sort spelled it out: it runs for every pair the sort compares.
#[inline]
pub(super) fn order(a: (&EngineView, f64), b: (&EngineView, f64), strategy: Strategy) -> Ordering {
    if beats(a, b, strategy) {
        Ordering::Less
    } else if beats(b, a, strategy) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{engine, place, request};
    use super::super::{Prepared, schedule};
    use super::*;
    use crate::model::{MemoryMb, Millicpus};

    #[test]
    fn each_strategy_scores_an_engine_that_fits() {
        // (strategy, the engine's cpus and MB, reserved millicpus and MB, the score of a
        // request for 1 cpu and 1024 MB)
        let cases = [
            (Strategy::Spread, (4.0, 4096.0), (0, 0), 0.75),
            (Strategy::Spread, (4.0, 4096.0), (2000, 0), 0.25),
            (Strategy::Spread, (4.0, 4096.0), (0, 3072), 0.0),
            (Strategy::Spread, (8.0, 4096.0), (0, 0), 0.75),
            (Strategy::Random, (4.0, 4096.0), (2000, 0), 0.25),
            // In use: one plus the fraction reserved once placed, at most two.
            (Strategy::Binpack, (4.0, 4096.0), (2000, 0), 1.75),
            (
                Strategy::Binpack,
                (4.0, 4096.0),
                (0, 1),
                1.0 + 1025.0 / 4096.0,
            ),
            (Strategy::Binpack, (4.0, 4096.0), (3000, 0), 2.0),
            (Strategy::Binpack, (4.0, 4096.0), (3500, 0), 2.0),
            // Empty: below one, the more copies of the request it would still take the higher.
            (Strategy::Binpack, (4.0, 4096.0), (0, 0), 1.0 - 1.0 / 5.0),
            (Strategy::Binpack, (8.0, 8192.0), (0, 0), 1.0 - 1.0 / 9.0),
            (Strategy::Binpack, (2.0, 8192.0), (0, 0), 1.0 - 1.0 / 3.0),
        ];
        let p = Prepared::new(request(1.0, 1024.0, &[], &[])).unwrap();
        for (strategy, (cpus, memory), (used_cpus, used_memory), want) in cases {
            let mut e = engine("e", cpus, memory, &[]);
            e.reserve(Millicpus(used_cpus), MemoryMb(used_memory), &[]);
            let got = score(&e, &p.request, strategy);
            assert!(
                (got - want).abs() < 1e-12,
                "{strategy} on {cpus} cpus {memory} MB with {used_cpus}m {used_memory} MB: {got}, not {want}"
            );
            if strategy != Strategy::Binpack {
                assert!(
                    (p.score(&e) - (1.0 - want)).abs() < 1e-12,
                    "the fraction spread ranks by"
                );
            }
        }
    }

    #[test]
    fn beats_orders_by_scarcity_for_binpack_then_score_then_containers_then_id() {
        // (strategy, a and b as (scarcity, score, containers, id), whether a comes first)
        let cases = [
            (Strategy::Binpack, (0, 1.1, 0, "b"), (1, 1.9, 5, "a"), true),
            (Strategy::Binpack, (2, 1.9, 9, "a"), (1, 1.1, 0, "b"), false),
            (Strategy::Binpack, (1, 1.5, 0, "b"), (1, 1.4, 9, "a"), true),
            (Strategy::Binpack, (0, 1.5, 3, "b"), (0, 1.5, 2, "a"), true),
            (Strategy::Binpack, (0, 1.5, 2, "a"), (0, 1.5, 2, "b"), true),
            (Strategy::Spread, (5, 0.6, 9, "b"), (0, 0.5, 0, "a"), true),
            (Strategy::Spread, (0, 0.5, 2, "b"), (0, 0.5, 3, "a"), true),
            (Strategy::Spread, (0, 0.5, 2, "a"), (0, 0.5, 2, "b"), true),
            (Strategy::Random, (3, 0.5, 1, "b"), (0, 0.5, 2, "a"), true),
            (Strategy::Random, (0, 0.5, 1, "a"), (0, 0.5, 1, "b"), true),
        ];
        let view = |(scarcity, _, containers, id): (u16, f64, u64, &str)| {
            let mut e = engine(id, 4.0, 4096.0, &[]);
            e.scarcity = scarcity;
            e.containers = containers;
            e
        };
        for (strategy, a, b, a_first) in cases {
            let (ea, eb) = (view(a), view(b));
            let (a, b) = ((&ea, a.1), (&eb, b.1));
            assert_eq!(
                beats(a, b, strategy),
                a_first,
                "{strategy}: {a:?} over {b:?}"
            );
            assert_eq!(
                beats(b, a, strategy),
                !a_first,
                "{strategy}: {b:?} over {a:?}"
            );
            assert!(!beats(a, a, strategy), "{strategy}: nothing beats itself");
            let want = if a_first {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            assert_eq!(order(a, b, strategy), want, "{strategy}");
            assert_eq!(order(a, a, strategy), Ordering::Equal, "{strategy}");
        }
    }

    #[test]
    fn binpack_fills_engines_fewer_constrained_requests_depend_on_first() {
        // The scarce engine is in use and the tightest fit, yet the empty one comes first.
        let mut es = vec![engine("a", 4.0, 4096.0, &[]), engine("b", 4.0, 4096.0, &[])];
        es[0].reserve(Millicpus(2000), MemoryMb(0), &[]);
        es[0].scarcity = 1;
        let p = Prepared::new(request(1.0, 1.0, &[], &[])).unwrap();
        let plan = |es: &[EngineView], s| schedule(&p, es, s, 0, usize::MAX).unwrap().engine;
        assert_eq!(plan(&es, Strategy::Binpack), 1);
        es[0].scarcity = 0;
        assert_eq!(plan(&es, Strategy::Binpack), 0);
        es[1].scarcity = 1;
        es[0].scarcity = 1;
        assert_eq!(
            plan(&es, Strategy::Binpack),
            0,
            "alike scarce: the score decides"
        );
    }

    #[test]
    fn spread_goes_to_the_least_loaded_engine() {
        let mut es = vec![engine("a", 4.0, 4096.0, &[]), engine("b", 4.0, 4096.0, &[])];
        es[0].reserve(Millicpus(2000), MemoryMb(0), &[]);
        assert_eq!(
            place(&request(1.0, 1.0, &[], &[]), &mut es, Strategy::Spread),
            Ok(1)
        );
    }

    #[test]
    fn binpack_fills_the_fullest_engine_that_fits() {
        let mut es = vec![engine("a", 4.0, 4096.0, &[]), engine("b", 4.0, 4096.0, &[])];
        es[1].reserve(Millicpus(2000), MemoryMb(0), &[]);
        assert_eq!(
            place(&request(1.0, 1.0, &[], &[]), &mut es, Strategy::Binpack),
            Ok(1)
        );
        assert_eq!(
            place(&request(1.0, 1.0, &[], &[]), &mut es, Strategy::Binpack),
            Ok(1)
        );
        // b is now full (4 of 4): the next one must go to a.
        assert_eq!(
            place(&request(1.0, 1.0, &[], &[]), &mut es, Strategy::Binpack),
            Ok(0)
        );
    }
}
