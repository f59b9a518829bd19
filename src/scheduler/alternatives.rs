//! Alternatives: every engine that fits a request, best first, with its score, at most a
//! limit of them: what a placed decision's `alternatives` lists and what a plan preview
//! (`citadel plan`) shows.
//!
//! Unlike selection it takes no sample and makes no draw: it checks the whole view, and soft
//! constraints count when any engine meets them. It may not choose: the plan is selection's.

use super::feasible::ClassMemo;
use super::rank::{self, score};
use super::{EngineView, Prepared, Strategy};

/// Every engine that fits `p`, ordered by [`rank::beats`], the first `limit`.
pub(super) fn ranked(
    p: &Prepared,
    engines: &[EngineView],
    strategy: Strategy,
    limit: usize,
) -> Vec<(usize, f64)> {
    let mut memo = ClassMemo::default();
    let fitting = |with_soft: bool, memo: &mut ClassMemo| -> Vec<(usize, f64)> {
        engines
            .iter()
            .enumerate()
            .filter(|(_, e)| p.check(e, with_soft, memo).is_ok())
            .map(|(i, e)| (i, score(e, &p.request, strategy)))
            .collect()
    };
    let mut all = fitting(true, &mut memo);
    if all.is_empty() && p.has_soft() {
        all = fitting(false, &mut memo);
    }
    all.sort_by(|a, b| rank::order((&engines[a.0], a.1), (&engines[b.0], b.1), strategy));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::super::schedule;
    use super::super::testing::{engine, request};
    use super::*;
    use crate::model::{MemoryMb, Millicpus, Request};

    /// e0..e4 of 4 cpus with 2, 0, 3 and 1 cpus reserved and e3 cordoned; `scarce` marked so.
    fn five(scarce: &[usize]) -> Vec<EngineView> {
        [2000, 0, 3000, 0, 1000]
            .iter()
            .enumerate()
            .map(|(i, used)| {
                let mut e = engine(&format!("e{i}"), 4.0, 4096.0, &[]);
                e.reserve(Millicpus(*used), MemoryMb(0), &[]);
                e.cordoned = i == 3;
                e.scarcity = u16::from(scarce.contains(&i));
                e
            })
            .collect()
    }

    #[test]
    fn every_engine_that_fits_best_first_up_to_the_limit() {
        // (strategy, scarce engines, limit, the engines listed)
        let cases: [(Strategy, &[usize], usize, &[usize]); 8] = [
            (Strategy::Spread, &[], 10, &[1, 4, 0, 2]),
            (Strategy::Spread, &[], 2, &[1, 4]),
            (Strategy::Spread, &[], 0, &[]),
            (Strategy::Spread, &[1], 10, &[1, 4, 0, 2]),
            (Strategy::Random, &[], 10, &[1, 4, 0, 2]),
            (Strategy::Binpack, &[], 10, &[2, 0, 4, 1]),
            (Strategy::Binpack, &[], 3, &[2, 0, 4]),
            (Strategy::Binpack, &[2], 10, &[0, 4, 1, 2]),
        ];
        let p = Prepared::new(request(1.0, 1.0, &[], &[])).unwrap();
        for (strategy, scarce, limit, want) in cases {
            let es = five(scarce);
            let got = ranked(&p, &es, strategy, limit);
            let engines: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
            assert_eq!(
                engines, want,
                "{strategy}, scarce {scarce:?}, limit {limit}"
            );
            for (i, s) in got {
                assert_eq!(
                    s,
                    score(&es[i], &p.request, strategy),
                    "{strategy}: e{i}'s score"
                );
            }
        }
    }

    #[test]
    fn exact_ties_go_by_containers_then_id_not_by_place_in_the_view() {
        // (strategy, containers on "b" and on "a", listed first and second)
        let cases = [
            (Strategy::Spread, (0, 0), [1, 0]),
            (Strategy::Binpack, (0, 0), [1, 0]),
            (Strategy::Spread, (0, 1), [0, 1]),
            (Strategy::Binpack, (0, 1), [1, 0]),
            (Strategy::Binpack, (1, 0), [0, 1]),
        ];
        let p = Prepared::new(request(1.0, 1.0, &[], &[])).unwrap();
        for (strategy, (on_b, on_a), want) in cases {
            let mut es = vec![engine("b", 4.0, 4096.0, &[]), engine("a", 4.0, 4096.0, &[])];
            es[0].containers = on_b;
            es[1].containers = on_a;
            let got: Vec<usize> = ranked(&p, &es, strategy, 2).iter().map(|x| x.0).collect();
            assert_eq!(got, want, "{strategy}, containers {on_b} on b, {on_a} on a");
        }
    }

    #[test]
    fn soft_constraints_count_when_any_engine_meets_them() {
        // (the ssd engine e0 cordoned, labels, the engines listed)
        let cases: [(bool, &[&str], &[usize]); 5] = [
            (false, &["disk==~ssd"], &[0]),
            (true, &["disk==~ssd"], &[1, 2]),
            (false, &["disk!=~ssd"], &[1, 2]),
            (true, &["disk==ssd"], &[]),
            (false, &[], &[1, 2, 0]),
        ];
        for (cordoned, labels, want) in cases {
            let mut es = vec![
                engine("e0", 4.0, 4096.0, &["disk=ssd"]),
                engine("e1", 4.0, 4096.0, &[]),
                engine("e2", 4.0, 4096.0, &[]),
            ];
            es[0].reserve(Millicpus(1000), MemoryMb(0), &[]);
            es[0].cordoned = cordoned;
            let p = Prepared::new(request(1.0, 1.0, labels, &[])).unwrap();
            let got: Vec<usize> = ranked(&p, &es, Strategy::Spread, 10)
                .iter()
                .map(|x| x.0)
                .collect();
            assert_eq!(got, want, "{labels:?}, e0 cordoned {cordoned}");
        }
    }

    #[test]
    fn the_first_alternative_is_what_an_unsampled_schedule_chooses() {
        let requests: [Request; 3] = [
            request(1.0, 1.0, &[], &[]),
            request(2.5, 1.0, &[], &[]),
            request(1.0, 1.0, &["engine!=e1"], &[]),
        ];
        for scarce in [&[][..], &[2], &[0, 4]] {
            let es = five(scarce);
            for r in &requests {
                let p = Prepared::new(r.clone()).unwrap();
                for strategy in [Strategy::Spread, Strategy::Binpack] {
                    let first = ranked(&p, &es, strategy, 1).first().map(|x| x.0);
                    for seed in 0..5 {
                        let plan = schedule(&p, &es, strategy, seed, usize::MAX).ok();
                        assert_eq!(plan.map(|p| p.engine), first, "{strategy}, seed {seed}");
                    }
                }
            }
        }
    }
}
