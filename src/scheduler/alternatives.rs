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
