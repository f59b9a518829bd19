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

/// [`beats`] as an ordering, the better first: how engines that fit are sorted by it.
pub(super) fn order(a: (&EngineView, f64), b: (&EngineView, f64), strategy: Strategy) -> Ordering {
    if beats(a, b, strategy) {
        Ordering::Less
    } else if beats(b, a, strategy) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}
