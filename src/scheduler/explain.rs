//! Explanation: the reason given when no engine fits a request, e.g.
//! `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`. Each engine is counted
//! under the first filter it failed; the counts go largest first, equal ones in the order of
//! [`Rejection`]'s kinds; a scan made without the soft constraints says so at the end.
//!
//! It runs only once nothing fits, so it may allocate; it may not change what was decided,
//! only name it.

use std::collections::BTreeMap;

use super::select::Refused;
use super::{Prepared, Rejection};

/// No engine fits. The reason reads `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub reason: String,
}

/// Why nothing fits `p` among `total` engines: the codes the scan counted, named.
pub(super) fn unschedulable(p: &Prepared, total: usize, refused: Refused) -> Unschedulable {
    let mut named: BTreeMap<Rejection, usize> = BTreeMap::new();
    for (code, count) in refused.rejections {
        *named.entry(p.rejection(code)).or_default() += count;
    }
    Unschedulable {
        reason: explain(total, named, refused.soft_dropped),
    }
}

/// The reason text: `0/{total} engines fit: ` and the counts, largest first.
fn explain(total: usize, rejections: BTreeMap<Rejection, usize>, dropped_soft: bool) -> String {
    if total == 0 {
        return "0/0 engines fit: no engines registered".to_string();
    }
    let mut counts: Vec<(Rejection, usize)> = rejections.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let mut reason = format!("0/{total} engines fit: {}", parts.join(", "));
    if dropped_soft {
        reason.push_str(" (soft constraints ignored)");
    }
    reason
}
