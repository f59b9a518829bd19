//! Selection: the one engine a request goes to.
//!
//! The engines are scanned in turn from a start the seed picks, wrapping around: each is put
//! to the filters (feasibility), and each that fits is ranked against the best so far
//! (ranking), or for `random` kept or not by a reservoir draw, until [`sample_size`] have fit.
//! "Nothing fits" is only ever said after every engine was checked. When no engine meets the
//! soft constraints, the scan is made again without them.
//!
//! It may not say why nothing fits (explanation names what it counted), nor allocate, clone
//! or box anything per engine: it runs once per request over up to every engine.

use super::feasible::{ClassMemo, Code};
use super::rank::{beats, score};
use super::{EngineView, Prepared, Strategy};

/// Where a request goes: an index into the view's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub engine: usize,
    pub strategy: Strategy,
    /// No engine met the soft constraints, so they were ignored.
    pub soft_dropped: bool,
}

/// How many feasible engines to score before choosing, as the Kubernetes scheduler's
/// `percentageOfNodesToScore`: a large cluster costs a bounded amount per request. The scan
/// starts at a point derived from the seed, so the sample differs per request; "nothing fits"
/// is only ever said after every engine was checked.
pub fn sample_size(engines: usize) -> usize {
    (engines / 50).clamp(64, 100)
}

/// A small, good mixing function (SplitMix64's finaliser).
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Nothing fits: what ruled the engines out in the last scan, by code, and whether that scan
/// was the one without the soft constraints.
pub(super) struct Refused {
    pub(super) rejections: Vec<(Code, usize)>,
    pub(super) soft_dropped: bool,
}

/// `schedule`'s choice: a scan with the soft constraints, and when no engine meets them, a
/// second without; the class memo is shared, so a class decides each constraint once.
pub(super) fn choose(
    p: &Prepared,
    engines: &[EngineView],
    strategy: Strategy,
    seed: u64,
    sample: usize,
) -> Result<Plan, Refused> {
    let mut memo = ClassMemo::default();
    let first = scan(p, engines, strategy, seed, sample, true, &mut memo);
    if let Some(engine) = first.choice {
        return Ok(Plan {
            engine,
            strategy,
            soft_dropped: false,
        });
    }
    if !p.has_soft() {
        return Err(Refused {
            rejections: first.rejections,
            soft_dropped: false,
        });
    }
    let second = scan(p, engines, strategy, seed, sample, false, &mut memo);
    match second.choice {
        Some(engine) => Ok(Plan {
            engine,
            strategy,
            soft_dropped: true,
        }),
        None => Err(Refused {
            rejections: second.rejections,
            soft_dropped: true,
        }),
    }
}

/// One scan's outcome: the choice, and what ruled out the others.
struct Scan {
    choice: Option<usize>,
    rejections: Vec<(Code, usize)>,
}

/// Scans the engines from `start`, scoring at most `sample` that fit.
fn scan(
    p: &Prepared,
    engines: &[EngineView],
    strategy: Strategy,
    seed: u64,
    sample: usize,
    with_soft: bool,
    memo: &mut ClassMemo,
) -> Scan {
    let n = engines.len();
    let start = if n == 0 {
        0
    } else {
        (splitmix(seed) % n as u64) as usize
    };
    let mut best: Option<(usize, f64)> = None;
    let mut feasible = 0usize;
    let mut chosen_random: Option<usize> = None;
    let mut rejections: Vec<(Code, usize)> = Vec::new();
    for k in 0..n {
        let i = if start + k < n {
            start + k
        } else {
            start + k - n
        };
        let e = &engines[i];
        match p.check(e, with_soft, memo) {
            Err(code) => match rejections.iter_mut().find(|(c, _)| *c == code) {
                Some((_, count)) => *count += 1,
                None => rejections.push((code, 1)),
            },
            Ok(()) => {
                feasible += 1;
                if strategy == Strategy::Random {
                    // Reservoir sampling: one pass, uniform, deterministic in `seed`.
                    let draw = splitmix(seed ^ (feasible as u64).wrapping_mul(0x9E37));
                    if draw.is_multiple_of(feasible as u64) {
                        chosen_random = Some(i);
                    }
                } else {
                    let s = score(e, &p.request, strategy);
                    if best.is_none_or(|(bi, bs)| beats((e, s), (&engines[bi], bs), strategy)) {
                        best = Some((i, s));
                    }
                }
                if feasible >= sample {
                    break;
                }
            }
        }
    }
    Scan {
        choice: chosen_random.or(best.map(|(i, _)| i)),
        rejections,
    }
}

#[cfg(test)]
mod tests {
    use super::super::schedule;
    use super::super::testing::{engine, image, place, request, tenant};
    use super::*;
    use crate::model::{Image, MemoryMb, Millicpus, Request};
    use std::collections::BTreeSet;

    #[test]
    fn the_sample_is_a_fiftieth_of_the_engines_between_64_and_100() {
        let cases = [
            (0, 64),
            (1, 64),
            (3_249, 64),
            (3_250, 65),
            (4_999, 99),
            (5_000, 100),
            (1_000_000, 100),
        ];
        for (engines, want) in cases {
            assert_eq!(sample_size(engines), want, "{engines} engines");
        }
    }

    /// Ten engines e0..e9, each the more loaded the higher its number, e3 and e6 cordoned.
    fn ten() -> Vec<EngineView> {
        (0..10u64)
            .map(|i| {
                let mut e = engine(&format!("e{i}"), 4.0, 4096.0, &[]);
                e.reserve(Millicpus(i * 100), MemoryMb(0), &[]);
                e.cordoned = i == 3 || i == 6;
                e
            })
            .collect()
    }

    #[test]
    fn the_scan_starts_where_the_seed_says_and_scores_at_most_a_sample_that_fit() {
        // (seed, its start on ten engines, sample, the engine spread chooses): the least loaded
        // of the first `sample` engines that fit from the start, wrapping around.
        let cases = [
            (4, 8, 1, 8),
            (4, 8, 2, 8),
            (4, 8, 3, 0),
            (4, 8, usize::MAX, 0),
            (3, 3, 1, 4),
            (3, 3, 3, 4),
            (7, 7, 1, 7),
            (7, 7, 3, 7),
            (7, 7, 4, 0),
            (2, 0, 1, 0),
            (6, 2, 1, 2),
            (6, 2, 2, 2),
        ];
        let es = ten();
        let p = Prepared::new(request(1.0, 1.0, &[], &[])).unwrap();
        for (seed, start, sample, want) in cases {
            assert_eq!(splitmix(seed) % 10, start, "seed {seed}");
            let plan = schedule(&p, &es, Strategy::Spread, seed, sample).unwrap();
            assert_eq!(plan.engine, want, "seed {seed}, sample {sample}");
            let again = schedule(&p, &es, Strategy::Spread, seed, sample).unwrap();
            assert_eq!(
                plan, again,
                "seed {seed}, sample {sample}: the same seed, the same plan"
            );
        }
    }

    #[test]
    fn a_sample_never_stops_the_scan_before_one_fits() {
        // Only engine `k` fits: whatever the start and a sample of one, the scan reaches it.
        let p = Prepared::new(request(1.0, 1.0, &[], &[])).unwrap();
        for k in 0..10 {
            let mut es = ten();
            for (i, e) in es.iter_mut().enumerate() {
                e.cordoned = i != k;
            }
            for seed in 0..10 {
                for strategy in [Strategy::Spread, Strategy::Binpack, Strategy::Random] {
                    let plan = schedule(&p, &es, strategy, seed, 1).unwrap();
                    assert_eq!(plan.engine, k, "{strategy}, seed {seed}");
                }
            }
        }
    }

    #[test]
    fn soft_constraints_are_dropped_only_when_no_engine_meets_them() {
        // Engine 0 has an ssd and holds a redis, and is the more loaded; engine 1 has neither.
        // (labels, affinity, whether engine 0 and engine 1 have room, the plan or the reason)
        type Case = (
            &'static [&'static str],
            &'static [&'static str],
            bool,
            bool,
            Want,
        );
        type Want = Result<(usize, bool), &'static str>;
        let cases: [Case; 9] = [
            (&[], &[], true, true, Ok((1, false))),
            (&["disk==~ssd"], &[], true, true, Ok((0, false))),
            (&["disk==~ssd"], &[], false, true, Ok((1, true))),
            (&["disk!=~ssd"], &[], true, true, Ok((1, false))),
            (&[], &["image==~redis*"], true, true, Ok((0, false))),
            (&[], &["image==~redis*"], false, true, Ok((1, true))),
            (
                &["disk==ssd"],
                &[],
                false,
                true,
                Err("0/2 engines fit: 1 constraint disk==ssd, \
                     1 insufficient cpus (needs 1 cpus, largest free 0 cpus)"),
            ),
            (
                &["disk==~ssd"],
                &[],
                false,
                false,
                Err(
                    "0/2 engines fit: 2 insufficient cpus (needs 1 cpus, largest free 0 cpus) \
                     (soft constraints ignored)",
                ),
            ),
            (
                &["disk==~ssd"],
                &["image==~redis*"],
                true,
                false,
                Ok((0, false)),
            ),
        ];
        for (labels, affinity, room0, room1, want) in cases {
            let mut es = vec![
                engine("e0", 4.0, 4096.0, &["disk=ssd"]),
                engine("e1", 4.0, 4096.0, &[]),
            ];
            tenant(&mut es[0], "db-1", "redis:7");
            es[0].reserve(Millicpus(if room0 { 2000 } else { 4000 }), MemoryMb(0), &[]);
            es[1].reserve(Millicpus(if room1 { 0 } else { 4000 }), MemoryMb(0), &[]);
            let r = Request::from_image(Image {
                affinity: affinity.iter().map(|s| s.to_string()).collect(),
                ..image(1.0, 1.0, labels, &[])
            })
            .unwrap();
            let p = Prepared::new(r).unwrap();
            for seed in 0..4 {
                let got = schedule(&p, &es, Strategy::Spread, seed, usize::MAX)
                    .map(|plan| (plan.engine, plan.soft_dropped))
                    .map_err(|u| u.reason);
                assert_eq!(
                    got,
                    want.map_err(String::from),
                    "{labels:?} {affinity:?}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn random_is_deterministic_in_its_seed_and_only_picks_engines_that_fit() {
        let es: Vec<EngineView> = (0..20)
            .map(|i| {
                engine(
                    &format!("e{i:02}"),
                    if i % 2 == 0 { 1.0 } else { 8.0 },
                    1024.0,
                    &[],
                )
            })
            .collect();
        let r = request(2.0, 1.0, &[], &[]);
        let p = Prepared::new(r.clone()).unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let a = schedule(&p, &es, Strategy::Random, seed, usize::MAX).unwrap();
            let b = schedule(&p, &es, Strategy::Random, seed, usize::MAX).unwrap();
            assert_eq!(a, b);
            assert!(a.engine % 2 == 1, "engine {} has 1 cpu", a.engine);
            seen.insert(a.engine);
        }
        assert!(
            seen.len() > 5,
            "random should spread over the fitting engines: {seen:?}"
        );
    }

    #[test]
    fn soft_constraints_are_preferred_then_dropped() {
        let soft = request(1.0, 1.0, &["disk==~ssd"], &[]);
        let mut es = vec![
            engine("a", 4.0, 4096.0, &["disk=ssd"]),
            engine("b", 4.0, 4096.0, &[]),
        ];
        es[0].reserve(Millicpus(3000), MemoryMb(0), &[]);
        assert_eq!(
            place(&soft, &mut es, Strategy::Spread),
            Ok(0),
            "soft match preferred"
        );
        assert_eq!(
            place(&soft, &mut es, Strategy::Spread),
            Ok(1),
            "a is full: soft dropped"
        );
        let hard = request(1.0, 1.0, &["disk==ssd"], &[]);
        assert!(
            place(&hard, &mut es, Strategy::Spread).is_err(),
            "hard is never dropped"
        );
    }
}
