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
