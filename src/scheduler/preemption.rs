//! Preemption: when no engine fits a request, the engine where evicting placements of lower
//! priority makes room for it, and the fewest and least important of them to evict — what
//! Kubernetes' default preemption does (`SelectVictimsOnNode`, then the choice among
//! candidate nodes).
//!
//! On each engine, the eligible tenants (settled, preemptible, and lower in priority than the
//! request by at least the gap) are all taken off; if the request then passes every filter,
//! they are given back one by one, the most important first (highest priority, then oldest),
//! each kept if the request still fits beside it. Those that cannot be given back are the
//! victims. Among the engines where that works, the one chosen disturbs the least: the lowest
//! highest-victim priority, then the smallest sum of priorities, then the fewest victims, then
//! the newest work.
//!
//! It may not evict anything itself, read a clock or draw at random: it says which engine and
//! which placements, and the caller evicts them (and re-verifies, as for any plan).

use std::cmp::Reverse;

use super::feasible::{ClassMemo, Code};
use super::{EngineView, Prepared, Tenant};
use crate::model::RequestId;

/// Where a request goes by preemption, and what must leave first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    /// The index of the engine in the view.
    pub engine: usize,
    /// The placements to evict, in eviction order (least important first).
    pub victims: Vec<RequestId>,
}

/// How far preemption may go and how much of the view it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptOptions {
    /// A victim's priority must be at most the request's priority minus `gap` (taken as 1 when
    /// 0, so that two requests can never evict each other in turn; `--preempt-gap`).
    pub gap: u32,
    /// Evaluate at most this many engines where preemption could make room (see
    /// [`candidates_for`]).
    pub max_candidates: usize,
    /// Where the scan starts (a seed-derived offset), so that work spreads over the engines.
    pub start: usize,
}

/// How many candidate engines a preemption evaluates among `n_engines`: a tenth of them, at
/// least 100 (never more than there are), as Kubernetes' `minCandidateNodesPercentage` and
/// `minCandidateNodesAbsolute` say by default.
pub fn candidates_for(n_engines: usize) -> usize {
    (n_engines / 10).max(100).min(n_engines)
}

/// The engine and victims that make room for `prepared` disturbing the least, or `None` if no
/// engine would fit it even with every eligible placement evicted (or only by taking more
/// members of a group than `budget_left` allows).
///
/// Scans from `opts.start`, wrapping, and stops after `opts.max_candidates` candidates. Among
/// them it chooses: the lowest highest-victim priority; then the smallest sum of victims'
/// priorities; then the fewest victims; then the engine whose highest-priority victims are
/// newest (whose oldest of them has the highest request revision, as Kubernetes compares the
/// earliest start time among them); then the first in scan order. An engine that fits with no
/// victim at all is returned at once, with none.
///
/// `budget_left(group)`: how many more members of that group may be taken down now (`None`:
/// no budget).
pub fn preempt(
    prepared: &Prepared,
    engines: &[EngineView],
    opts: &PreemptOptions,
    budget_left: &dyn Fn(&str) -> Option<u32>,
) -> Option<Preemption> {
    let n = engines.len();
    if n == 0 {
        return None;
    }
    let want = opts.max_candidates.max(1);
    let mut memo = ClassMemo::default();
    let mut found = 0;
    let mut best: Option<(Cost, usize, Vec<&RequestId>)> = None;
    // One pair of buffers for the whole scan: hundreds of candidates cost no allocation each.
    let (mut order, mut victims) = (Vec::new(), Vec::new());
    for k in 0..n {
        let i = (opts.start % n + k) % n;
        let e = &engines[i];
        if !select_into(
            prepared,
            e,
            opts.gap,
            budget_left,
            &mut memo,
            &mut order,
            &mut victims,
        ) {
            continue;
        }
        if victims.is_empty() {
            return Some(Preemption {
                engine: i,
                victims: Vec::new(),
            });
        }
        let cost = Cost::of(&victims, k);
        if best.as_ref().is_none_or(|(b, _, _)| cost < *b) {
            match &mut best {
                Some((c, at, ids)) => {
                    *c = cost;
                    *at = i;
                    ids.clear();
                    ids.extend(victims.iter().map(|(id, _)| *id));
                }
                None => best = Some((cost, i, victims.iter().map(|(id, _)| *id).collect())),
            }
        }
        found += 1;
        if found >= want {
            break;
        }
    }
    best.map(|(_, engine, victims)| Preemption {
        engine,
        victims: victims.into_iter().cloned().collect(),
    })
}

/// The victims on engine `e` that would make room for `prepared` (empty if it fits as is), in
/// eviction order; `None` if evicting every eligible tenant would still not make it pass every
/// filter, or the victims would take more members of a group than `budget_left` allows.
pub fn victims_on(
    prepared: &Prepared,
    e: &EngineView,
    gap: u32,
    budget_left: &dyn Fn(&str) -> Option<u32>,
) -> Option<Vec<RequestId>> {
    select(prepared, e, gap, budget_left, &mut ClassMemo::default())
        .map(|v| v.into_iter().map(|(id, _)| id.clone()).collect())
}

/// What a candidate engine's victims cost, compared field by field: the lower, the better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    /// The highest victim priority.
    highest: i64,
    /// The sum of victims' priorities.
    sum: i64,
    count: usize,
    /// The lowest request revision among the victims of the highest priority: the newer
    /// (higher) the better.
    oldest_of_highest: Reverse<i64>,
    /// The place in the scan.
    order: usize,
}

impl Cost {
    /// Of a non-empty set of victims found at place `order` of the scan.
    fn of(victims: &[(&RequestId, &Tenant)], order: usize) -> Cost {
        let prio = |t: &Tenant| i64::from(t.held.rank.priority);
        let highest = victims
            .iter()
            .map(|(_, t)| prio(t))
            .max()
            .unwrap_or(i64::MIN);
        Cost {
            highest,
            sum: victims.iter().map(|(_, t)| prio(t)).sum(),
            count: victims.len(),
            oldest_of_highest: Reverse(
                victims
                    .iter()
                    .filter(|(_, t)| prio(t) == highest)
                    .map(|(_, t)| t.revision)
                    .min()
                    .unwrap_or(i64::MAX),
            ),
            order,
        }
    }
}

/// `SelectVictimsOnNode`: the victims on `e`, least important first, or `None` (see
/// [`victims_on`]). Costs no allocation for an engine whose tenant-independent filters fail or
/// that would lack room even with every eligible tenant gone, and no copy of the view unless
/// the request has affinity (the one filter that reads the tenants).
fn select<'a>(
    p: &Prepared,
    e: &'a EngineView,
    gap: u32,
    budget_left: &dyn Fn(&str) -> Option<u32>,
    memo: &mut ClassMemo,
) -> Option<Vec<(&'a RequestId, &'a Tenant)>> {
    let (mut order, mut victims) = (Vec::new(), Vec::new());
    select_into(p, e, gap, budget_left, memo, &mut order, &mut victims).then_some(victims)
}

/// [`select`] into buffers the caller keeps: `victims` holds the victims when it returns true.
#[allow(clippy::too_many_arguments)]
fn select_into<'a>(
    p: &Prepared,
    e: &'a EngineView,
    gap: u32,
    budget_left: &dyn Fn(&str) -> Option<u32>,
    memo: &mut ClassMemo,
    order: &mut Vec<(&'a RequestId, &'a Tenant)>,
    victims: &mut Vec<(&'a RequestId, &'a Tenant)>,
) -> bool {
    victims.clear();
    // The filters that do not read the tenants (constraints, volume pins, launch policy,
    // cordoned, unhealthy) run first, so the resources and affinity are what may fail.
    match p.check(e, false, memo) {
        Ok(()) => return true,
        Err(Code::Cpus | Code::Memory | Code::Disk | Code::Port(_) | Code::Affinity(_)) => {}
        Err(_) => return false,
    }
    let r = &p.request;
    let limit = i64::from(r.priority) - i64::from(gap.max(1));
    // A member of a group whose budget is spent (a gang's always is) cannot be taken at all:
    // it is not a victim, so the others are chosen around it.
    let eligible = |t: &Tenant| {
        t.decision != 0
            && t.held.rank.preemptible
            && i64::from(t.held.rank.priority) <= limit
            && t.held.rank.group.as_deref().and_then(budget_left) != Some(0)
    };
    // The engine with every eligible tenant gone, counted as `evict` would count it.
    let mut room = Room::of(e);
    for t in e.tenants.values().filter(|t| eligible(t)) {
        room.take(t);
    }
    if !room.fits(p) {
        return false;
    }
    // A port the request binds, held by something that stays, rules the engine out.
    if r.ports.iter().any(|hp| {
        e.ports.contains(hp)
            && !e
                .tenants
                .values()
                .any(|t| eligible(t) && t.held.ports.contains(hp))
    }) {
        return false;
    }
    order.clear();
    order.extend(e.tenants.iter().filter(|(_, t)| eligible(t)));
    // The most important first: the highest priority, then the oldest work.
    order.sort_unstable_by_key(|(id, t)| (Reverse(t.held.rank.priority), t.revision, *id));
    let holds_wanted_port = |t: &Tenant| t.held.ports.iter().any(|hp| r.ports.contains(hp));
    if p.affinity_hard.is_empty() {
        // Nothing but the resources reads the tenants: give them back by arithmetic.
        for &(id, t) in order.iter() {
            if holds_wanted_port(t) {
                victims.push((id, t));
                continue;
            }
            let mut kept = room;
            kept.give(t);
            if kept.fits(p) {
                room = kept;
            } else {
                victims.push((id, t));
            }
        }
    } else {
        // Affinity reads which tenants stay: decide each on a copy of the view.
        let mut view = e.clone();
        for (id, _) in order.iter() {
            view.evict(id);
        }
        if p.check(&view, false, memo).is_err() {
            return false;
        }
        for &(id, t) in order.iter() {
            if holds_wanted_port(t) {
                victims.push((id, t));
                continue;
            }
            view.restore(id, t.clone());
            if p.check(&view, false, memo).is_err() {
                view.evict(id);
                victims.push((id, t));
            }
        }
    }
    // Least important first: the reverse of the order they were considered in.
    victims.reverse();
    within_budgets(victims, budget_left)
}

/// Whether `victims` take no more members of any group than its budget allows.
fn within_budgets(
    victims: &[(&RequestId, &Tenant)],
    budget_left: &dyn Fn(&str) -> Option<u32>,
) -> bool {
    let mut taken: Vec<(&str, u32)> = Vec::new();
    for (_, t) in victims {
        if let Some(g) = t.held.rank.group.as_deref() {
            match taken.iter_mut().find(|(name, _)| *name == g) {
                Some((_, n)) => *n += 1,
                None => taken.push((g, 1)),
            }
        }
    }
    taken
        .iter()
        .all(|(g, n)| budget_left(g).is_none_or(|left| *n <= left))
}

/// An engine's reserved cpus, memory and disk as evictions and restorations change them,
/// saturating as [`EngineView::evict`] and [`EngineView::restore`] do.
#[derive(Debug, Clone, Copy)]
struct Room {
    cpus: (u64, u64),
    memory: (u64, u64),
    disk: (u64, u64),
}

impl Room {
    fn of(e: &EngineView) -> Room {
        Room {
            cpus: (e.reserved_cpus.0, e.cpus.0),
            memory: (e.reserved_memory.0, e.memory.0),
            disk: (e.reserved_disk.0, e.disk.0),
        }
    }

    fn take(&mut self, t: &Tenant) {
        self.cpus.0 = self.cpus.0.saturating_sub(t.held.cpus.0);
        self.memory.0 = self.memory.0.saturating_sub(t.held.memory.0);
        self.disk.0 = self.disk.0.saturating_sub(t.held.disk.0);
    }

    fn give(&mut self, t: &Tenant) {
        self.cpus.0 = self.cpus.0.saturating_add(t.held.cpus.0);
        self.memory.0 = self.memory.0.saturating_add(t.held.memory.0);
        self.disk.0 = self.disk.0.saturating_add(t.held.disk.0);
    }

    /// Whether the request's cpus, memory and disk fit, as the resource filter says.
    fn fits(&self, p: &Prepared) -> bool {
        let r = &p.request;
        let fits = |(used, cap): (u64, u64), ask: u64| used.saturating_add(ask) <= cap;
        fits(self.cpus, r.cpus.0)
            && fits(self.memory, r.memory.0)
            && (r.disk.0 == 0 || fits(self.disk, r.disk.0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{engine, occupy, prepared_at, rank, request_with_affinity, tcp};
    use super::*;
    use crate::model::{Held, MemoryMb, Millicpus, Rank};

    /// No group has a budget.
    fn unbounded(_: &str) -> Option<u32> {
        None
    }

    /// Every engine is looked at, from the first.
    const ALL: PreemptOptions = PreemptOptions {
        gap: 1,
        max_candidates: usize::MAX,
        start: 0,
    };

    /// A 4 cpu, 4096 MB engine holding `tenants`: (id, millicpus, priority, request revision),
    /// preemptible, 1 MB each, settled.
    fn holding(id: &str, tenants: &[(&str, u64, i32, i64)]) -> EngineView {
        let mut e = engine(id, 4.0, 4096.0, &[]);
        for (t, cpus, priority, revision) in tenants {
            occupy(&mut e, t, *cpus, 1, &[], rank(*priority, true), *revision);
        }
        e
    }

    fn ids(victims: &[RequestId]) -> Vec<&str> {
        victims.iter().map(RequestId::as_str).collect()
    }

    /// The victims on `e` for a request of `priority` asking `cpus` (1 MB), with gap 1.
    fn victims(e: &EngineView, priority: i32, cpus: f64) -> Option<Vec<String>> {
        let p = prepared_at(priority, cpus, 1.0, &[], &[]);
        victims_on(&p, e, 1, &unbounded).map(|v| ids(&v).iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn on_one_engine_the_least_important_tenants_that_make_room_are_the_victims() {
        // (what the engine holds, the request's priority and cpus, the victims)
        type Case<'a> = (
            &'a [(&'a str, u64, i32, i64)],
            i32,
            f64,
            Option<&'a [&'a str]>,
        );
        let cases: &[Case] = &[
            // The lower of two.
            (
                &[("lo", 2000, 1, 1), ("hi", 2000, 5, 1)],
                10,
                2.0,
                Some(&["lo"]),
            ),
            // The highest is given back first, the rest evicted least important first.
            (
                &[
                    ("p3", 1000, 3, 1),
                    ("p1", 1000, 1, 1),
                    ("p2", 1000, 2, 1),
                    ("p4", 1000, 4, 1),
                ],
                10,
                2.0,
                Some(&["p1", "p2"]),
            ),
            // Of equal priority, the oldest is given back first.
            (
                &[("new", 2000, 1, 9), ("old", 2000, 1, 3)],
                10,
                2.0,
                Some(&["new"]),
            ),
            // Equal priority is never evicted; nor higher.
            (&[("eq", 4000, 10, 1)], 10, 1.0, None),
            (&[("up", 4000, 11, 1)], 10, 1.0, None),
            // Even all of them would not make room.
            (&[("a", 1000, 1, 1), ("b", 3000, 20, 1)], 10, 2.0, None),
            // It fits as is: no victim.
            (&[("a", 1000, 1, 1)], 10, 2.0, Some(&[])),
            // Negative priorities, down to the extremes, without overflow.
            (
                &[("min", 4000, i32::MIN, 1)],
                i32::MIN + 1,
                1.0,
                Some(&["min"]),
            ),
            (
                &[("max", 4000, i32::MAX - 1, 1)],
                i32::MAX,
                1.0,
                Some(&["max"]),
            ),
            (&[("min", 4000, i32::MIN, 1)], i32::MIN, 1.0, None),
        ];
        for (tenants, priority, cpus, want) in cases {
            let e = holding("e0", tenants);
            let want = want.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(
                victims(&e, *priority, *cpus),
                want,
                "{tenants:?} for {priority}"
            );
        }
    }

    #[test]
    fn greedy_reprieve_keeps_the_oldest_even_when_evicting_it_alone_would_do() {
        // As in Kubernetes: the reprieve minimises the highest priority evicted, not the
        // count. Evicting `old` alone would make room, but it is older, so it is kept.
        let e = holding(
            "e0",
            &[("old", 2000, 1, 1), ("a", 1000, 1, 2), ("b", 1000, 1, 3)],
        );
        assert_eq!(victims(&e, 5, 2.0), Some(vec!["b".into(), "a".into()]));
    }

    #[test]
    fn only_settled_preemptible_tenants_lower_by_the_gap_are_eligible() {
        let mut e = engine("e0", 4.0, 4096.0, &[]);
        occupy(&mut e, "pinned", 2000, 1, &[], rank(0, false), 1);
        occupy(&mut e, "eight", 1000, 1, &[], rank(8, true), 1);
        let id = RequestId::new("flight").unwrap();
        e.hold_at(
            &id,
            &Held {
                rank: rank(0, true),
                ..Held::of(&prepared_at(0, 1.0, 1.0, &[], &[]).request)
            },
            1,
        );
        let p = prepared_at(10, 1.0, 1.0, &[], &[]);
        // (gap, the victims): the one in flight (decision not written) and the one that is not
        // preemptible are never taken; priority 8 only within a gap of 2.
        let cases: [(u32, Option<&[&str]>); 4] = [
            (0, Some(&["eight"])),
            (1, Some(&["eight"])),
            (2, Some(&["eight"])),
            (3, None),
        ];
        for (gap, want) in cases {
            let got = victims_on(&p, &e, gap, &unbounded);
            assert_eq!(
                got.as_deref().map(ids),
                want.map(|w| w.to_vec()),
                "gap {gap}"
            );
        }
        // Gap 0 is taken as 1: equal priority is never evicted.
        let p = prepared_at(8, 1.0, 1.0, &[], &[]);
        assert_eq!(victims_on(&p, &e, 0, &unbounded), None);
    }

    #[test]
    fn a_tenant_holding_a_port_the_request_binds_is_always_a_victim() {
        // Room enough for the cpus: only port 80 is in the way. `web` is the most important,
        // and still goes; `batch` is given back.
        let mut e = engine("e0", 4.0, 4096.0, &[]);
        occupy(&mut e, "web", 500, 1, &[80], rank(5, true), 1);
        occupy(&mut e, "batch", 1000, 1, &[81], rank(1, true), 1);
        let p = prepared_at(10, 0.5, 1.0, &[], &[80]);
        assert_eq!(
            victims_on(&p, &e, 1, &unbounded).as_deref().map(ids),
            Some(vec!["web"])
        );
        // Held by something that stays, or reserved by no tenant: the engine cannot be made
        // to fit.
        let mut kept = engine("e1", 4.0, 4096.0, &[]);
        occupy(&mut kept, "web", 500, 1, &[80], rank(10, true), 1);
        assert_eq!(victims_on(&p, &kept, 1, &unbounded), None);
        let mut bare = engine("e2", 4.0, 4096.0, &[]);
        bare.reserve(Millicpus(0), MemoryMb(0), &[tcp(80)]);
        assert_eq!(victims_on(&p, &bare, 1, &unbounded), None);
    }

    #[test]
    fn a_group_loses_no_more_members_than_its_budget_allows() {
        let member = |g: &str| Rank {
            group: Some(g.into()),
            ..rank(1, true)
        };
        let mut both = engine("e0", 4.0, 4096.0, &[]);
        occupy(&mut both, "g-1", 2000, 1, &[], member("g"), 1);
        occupy(&mut both, "g-2", 2000, 1, &[], member("g"), 2);
        let mut one = engine("e1", 4.0, 4096.0, &[]);
        occupy(&mut one, "g-3", 2000, 1, &[], member("g"), 3);
        occupy(&mut one, "h-1", 2000, 1, &[], rank(2, true), 1);
        let p = prepared_at(10, 4.0, 1.0, &[], &[]);
        // (g's budget, the engine chosen): e0 costs less (priorities 1+1 against 1+2), but
        // takes two of g.
        for (budget, want) in [
            (None, Some(0)),
            (Some(2), Some(0)),
            (Some(1), Some(1)),
            (Some(0), None),
        ] {
            let left = move |g: &str| (g == "g").then_some(budget).flatten();
            let got = preempt(&p, &[both.clone(), one.clone()], &ALL, &left);
            assert_eq!(got.map(|c| c.engine), want, "budget {budget:?}");
            if let Some(b) = budget {
                assert_eq!(
                    victims_on(&p, &both, 1, &left).is_some(),
                    b >= 2,
                    "budget {b} on e0"
                );
            }
        }
    }

    #[test]
    fn across_engines_the_one_that_disturbs_least_is_chosen() {
        // (what e0 holds, what e1 holds, the request's cpus, the engine chosen); each engine
        // has 4 cpus, tenants fill them, priority 10 asks.
        type Engine<'a> = &'a [(&'a str, u64, i32, i64)];
        let cases: [(&str, Engine, Engine, f64, usize); 6] = [
            (
                "the lowest highest priority",
                &[("a", 4000, 5, 1)],
                &[("b", 2000, 3, 1), ("c", 2000, 3, 1)],
                4.0,
                1,
            ),
            (
                "then the smallest sum",
                &[("a", 1500, 3, 1), ("b", 1500, 3, 1), ("x", 1000, 20, 1)],
                &[
                    ("c", 1000, 3, 1),
                    ("d", 1000, 1, 1),
                    ("e", 1000, 1, 1),
                    ("x", 1000, 20, 1),
                ],
                3.0,
                1,
            ),
            (
                "then the fewest",
                &[
                    ("c", 1000, 2, 1),
                    ("d", 1000, 1, 1),
                    ("e", 1000, 1, 1),
                    ("x", 1000, 20, 1),
                ],
                &[("a", 1500, 2, 1), ("b", 1500, 2, 1), ("x", 1000, 20, 1)],
                3.0,
                1,
            ),
            (
                "then the newest work",
                &[("a", 4000, 1, 10)],
                &[("b", 4000, 1, 20)],
                4.0,
                1,
            ),
            (
                "judged by the oldest of the highest priority",
                &[("a", 2000, 1, 5), ("b", 2000, 1, 30)],
                &[("c", 2000, 1, 10), ("d", 2000, 1, 20)],
                4.0,
                1,
            ),
            (
                "then the first in the scan",
                &[("a", 4000, 1, 10)],
                &[("b", 4000, 1, 10)],
                4.0,
                0,
            ),
        ];
        for (what, e0, e1, cpus, want) in cases {
            let p = prepared_at(10, cpus, 1.0, &[], &[]);
            let es = [holding("e0", e0), holding("e1", e1)];
            let got = preempt(&p, &es, &ALL, &unbounded).map(|c| c.engine);
            assert_eq!(got, Some(want), "{what}");
            // Whichever is listed first.
            let swapped = [es[1].clone(), es[0].clone()];
            let got = preempt(&p, &swapped, &ALL, &unbounded).map(|c| c.engine);
            let want_swapped = if what.contains("scan") { 0 } else { 1 - want };
            assert_eq!(got, Some(want_swapped), "{what}, swapped");
        }
    }

    #[test]
    fn the_scan_starts_where_it_is_told_and_stops_after_enough_candidates() {
        let es: Vec<EngineView> = (0..3)
            .map(|i| holding(&format!("e{i}"), &[("a", 4000, 1, 1)]))
            .collect();
        let p = prepared_at(10, 1.0, 1.0, &[], &[]);
        for start in 0..6 {
            let opts = PreemptOptions { start, ..ALL };
            let got = preempt(&p, &es, &opts, &unbounded).unwrap();
            assert_eq!(got.engine, start % 3, "ties go to the first scanned");
        }
        // e1 is cheaper, but the scan stops after e0 when one candidate is enough.
        let es = vec![
            holding("e0", &[("a", 4000, 5, 1)]),
            holding("e1", &[("b", 4000, 1, 1)]),
        ];
        let one = PreemptOptions {
            max_candidates: 1,
            ..ALL
        };
        assert_eq!(
            preempt(&p, &es, &one, &unbounded).map(|c| c.engine),
            Some(0)
        );
        let two = PreemptOptions {
            max_candidates: 2,
            ..ALL
        };
        assert_eq!(
            preempt(&p, &es, &two, &unbounded).map(|c| c.engine),
            Some(1)
        );
        // An engine that fits as is ends the scan, with no victim.
        let mut free = es.clone();
        free.push(engine("e2", 4.0, 4096.0, &[]));
        let opts = PreemptOptions { start: 2, ..ALL };
        assert_eq!(
            preempt(&p, &free, &opts, &unbounded),
            Some(Preemption {
                engine: 2,
                victims: vec![]
            })
        );
        assert_eq!(preempt(&p, &[], &ALL, &unbounded), None);
    }

    #[test]
    fn candidates_are_a_tenth_of_the_engines_at_least_a_hundred() {
        for (n, want) in [
            (0, 0),
            (5, 5),
            (100, 100),
            (999, 100),
            (1000, 100),
            (5000, 500),
        ] {
            assert_eq!(candidates_for(n), want, "{n} engines");
        }
    }

    #[test]
    fn every_other_filter_still_rules_an_engine_out() {
        let full = |id: &str, labels: &[&str]| {
            let mut e = engine(id, 4.0, 4096.0, labels);
            occupy(&mut e, "a", 4000, 1, &[], rank(0, true), 1);
            e
        };
        let p = prepared_at(10, 1.0, 1.0, &["zone==a"], &[]);
        let mut cordoned = full("e0", &["zone=a"]);
        cordoned.cordoned = true;
        let mut unhealthy = full("e1", &["zone=a"]);
        unhealthy.healthy = false;
        let es = [
            cordoned,
            unhealthy,
            full("e2", &["zone=b"]),
            full("e3", &["zone=a"]),
        ];
        for e in &es[..3] {
            assert_eq!(victims_on(&p, e, 1, &unbounded), None, "{}", e.id);
        }
        assert_eq!(
            preempt(&p, &es, &ALL, &unbounded).map(|c| c.engine),
            Some(3)
        );
    }

    #[test]
    fn affinity_is_decided_on_the_tenants_that_stay() {
        // Anti-affinity to web-*: web-1 goes though room is not the matter, db-1 stays.
        let mut e = engine("e0", 4.0, 4096.0, &[]);
        occupy(&mut e, "web-1", 1000, 1, &[], rank(5, true), 1);
        occupy(&mut e, "db-1", 1000, 1, &[], rank(1, true), 1);
        let mut r = request_with_affinity(1.0, 1.0, &[], &["request!=web-*"]);
        r.priority = 10;
        let p = Prepared::new(r).unwrap();
        assert_eq!(
            victims_on(&p, &e, 1, &unbounded).as_deref().map(ids),
            Some(vec!["web-1"])
        );
        // Affinity to db-*: db-1, not eligible, stays; the lower `x` goes for room. Once db-1
        // is eligible, the engine is ruled out: as in Kubernetes, an engine is first tried
        // with every eligible tenant gone, and affinity to one of them then fails.
        let mut e = engine("e0", 4.0, 4096.0, &[]);
        occupy(&mut e, "db-1", 2000, 1, &[], rank(20, true), 1);
        occupy(&mut e, "x", 2000, 1, &[], rank(1, true), 1);
        let mut r = request_with_affinity(2.0, 1.0, &[], &["request==db-*"]);
        r.priority = 10;
        let p = Prepared::new(r.clone()).unwrap();
        assert_eq!(
            victims_on(&p, &e, 1, &unbounded).as_deref().map(ids),
            Some(vec!["x"])
        );
        r.priority = 30;
        let p = Prepared::new(r).unwrap();
        assert_eq!(victims_on(&p, &e, 1, &unbounded), None);
    }

    /// What one `preempt` costs on 5,000 engines of 4 tenants each (every engine full), in
    /// three cases: every engine a candidate (the scan stops after `candidates_for`); no
    /// engine eligible (the whole fleet scanned, each ruled out by arithmetic); and a request
    /// with affinity (each candidate decided on a copy of its view). A timing, not a check:
    /// `cargo test --release --lib preempt_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, not a check"]
    fn preempt_cost_on_5000_engines() {
        let n = 5_000;
        let es: Vec<EngineView> = (0..n)
            .map(|i| {
                let mut e = engine(&format!("e{i}"), 4.0, 4096.0, &[]);
                for k in 0..4 {
                    let priority = ((i + k) % 5) as i32;
                    let revision = (i * 4 + k) as i64 + 1;
                    occupy(
                        &mut e,
                        &format!("e{i}-t{k}"),
                        1000,
                        1024,
                        &[],
                        rank(priority, true),
                        revision,
                    );
                }
                e
            })
            .collect();
        let mut anti = request_with_affinity(1.5, 1024.0, &[], &["request!=web-*"]);
        anti.priority = 10;
        let cases = [
            (
                "candidates everywhere",
                prepared_at(10, 1.5, 1024.0, &[], &[]),
            ),
            ("nothing eligible", prepared_at(0, 1.5, 1024.0, &[], &[])),
            ("with affinity", Prepared::new(anti).unwrap()),
        ];
        for (what, p) in cases {
            let calls = 200;
            let t = std::time::Instant::now();
            for s in 0..calls {
                let opts = PreemptOptions {
                    gap: 1,
                    max_candidates: candidates_for(n),
                    start: s * 7919 % n,
                };
                std::hint::black_box(preempt(&p, &es, &opts, &unbounded));
            }
            let each = t.elapsed() / calls as u32;
            eprintln!(
                "{what}: {each:?} per preempt ({:.0}/s)",
                1.0 / each.as_secs_f64()
            );
        }
    }

    mod properties {
        use super::super::super::fits_resources;
        use super::super::super::testing::image;
        use super::*;
        use crate::model::{Image, Request};
        use proptest::prelude::*;
        use std::collections::BTreeMap;
        use std::sync::Arc;

        /// A tenant: millicpus, MB, priority, preemptible, a tcp port 80+n, request
        /// revision, in flight, group g0/g1.
        type T = (u64, u64, i32, bool, Option<u16>, i64, bool, Option<u8>);

        fn tenants() -> impl proptest::strategy::Strategy<Value = Vec<T>> {
            proptest::collection::vec(
                (
                    0u64..2_500,
                    0u64..2_500,
                    -2i32..7,
                    prop::bool::weighted(0.8),
                    proptest::option::weighted(0.3, 0u16..3),
                    1i64..20,
                    prop::bool::weighted(0.1),
                    proptest::option::weighted(0.4, 0u8..2),
                ),
                0..=8,
            )
        }

        /// Engines of 4 cpus and 4096 MB holding what fits of `tenants`, `e{i}-t{k}`; a few
        /// cordoned.
        fn fleet(es: &[(bool, Vec<T>)]) -> Vec<EngineView> {
            es.iter()
                .enumerate()
                .map(|(i, (cordoned, ts))| {
                    let mut e = engine(&format!("e{i}"), 4.0, 4096.0, &[]);
                    e.cordoned = *cordoned;
                    for (k, (c, m, prio, pre, port, rev, flight, g)) in ts.iter().enumerate() {
                        let ports: Vec<u16> = port.iter().map(|n| 80 + n).collect();
                        let room = e.reserved_cpus.0 + c <= e.cpus.0
                            && e.reserved_memory.0 + m <= e.memory.0
                            && ports.iter().all(|n| !e.ports.contains(&tcp(*n)));
                        if !room {
                            continue;
                        }
                        let rank = Rank {
                            group: g.map(|g| format!("g{g}").into()),
                            ..rank(*prio, *pre)
                        };
                        let id = format!("e{i}-t{k}");
                        occupy(&mut e, &id, *c, *m, &ports, rank, *rev);
                        if *flight {
                            let id = RequestId::new(id).unwrap();
                            Arc::make_mut(&mut e.tenants).get_mut(&id).unwrap().decision = 0;
                        }
                    }
                    e
                })
                .collect()
        }

        /// A request of `priority` for `millicpus` and `memory` MB, binding `port`, with
        /// anti-affinity `anti` (none, to every tenant of e0, to one tenant of e1).
        fn asking(
            priority: i32,
            millicpus: u64,
            memory: u64,
            port: Option<u16>,
            anti: u8,
        ) -> Prepared {
            let ports: Vec<u16> = port.iter().map(|n| 80 + n).collect();
            let affinity = match anti {
                1 => vec!["request!=e0-*".to_string()],
                2 => vec!["request!=e1-t1".to_string()],
                _ => vec![],
            };
            let mut r = Request::from_image(Image {
                affinity,
                ..image(millicpus as f64 / 1000.0, memory as f64, &[], &ports)
            })
            .unwrap();
            r.priority = priority;
            Prepared::new(r).unwrap()
        }

        /// The same request with an affinity every engine meets: it takes the path that
        /// decides on a copy of the view.
        fn on_copies(p: &Prepared) -> Prepared {
            let mut r = p.request.clone();
            r.affinity.push("image!=never-*".into());
            Prepared::new(r).unwrap()
        }

        fn tenant<'a>(e: &'a EngineView, id: &RequestId) -> &'a Tenant {
            e.tenants
                .get(id)
                .expect("a victim is a tenant of its engine")
        }

        /// `e` with `victims` evicted.
        fn without(e: &EngineView, victims: &[RequestId]) -> EngineView {
            let mut e = e.clone();
            for v in victims {
                assert!(e.evict(v).is_some());
            }
            e
        }

        /// (highest priority, sum, count) of victims on `e`.
        fn weight(e: &EngineView, victims: &[RequestId]) -> (i64, i64, usize) {
            let prios = victims
                .iter()
                .map(|v| i64::from(tenant(e, v).held.rank.priority));
            (
                prios.clone().max().unwrap_or(i64::MIN),
                prios.sum(),
                victims.len(),
            )
        }

        /// Brute force over every subset of the eligible tenants on `e`: the lowest highest
        /// priority of those whose eviction lets `p` pass every filter, if any does.
        fn least_highest(p: &Prepared, e: &EngineView, gap: u32) -> Option<i64> {
            let limit = i64::from(p.request.priority) - i64::from(gap.max(1));
            let eligible: Vec<(&RequestId, &Tenant)> = e
                .tenants
                .iter()
                .filter(|(_, t)| {
                    t.decision != 0
                        && t.held.rank.preemptible
                        && i64::from(t.held.rank.priority) <= limit
                })
                .collect();
            let mut best = None;
            for mask in 0u32..(1 << eligible.len()) {
                let subset: Vec<RequestId> = eligible
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| mask & (1 << k) != 0)
                    .map(|(_, (id, _))| (*id).clone())
                    .collect();
                if p.verdict(&without(e, &subset), false).is_ok() {
                    let (highest, _, _) = weight(e, &subset);
                    best = Some(best.map_or(highest, |b: i64| b.min(highest)));
                }
            }
            best
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Preemption never takes what it may not, leaves room for the request where it
            /// says, evicts no victim it could have kept, and its highest victim priority is
            /// the lowest any subset of tenants on any engine could achieve.
            #[test]
            fn victims_are_eligible_sufficient_and_as_low_as_brute_force_finds(
                es in proptest::collection::vec((prop::bool::weighted(0.1), tenants()), 1..=4),
                (priority, millicpus, memory) in (0i32..8, 1u64..4_000, 1u64..4_096),
                port in proptest::option::weighted(0.3, 0u16..3),
                anti in 0u8..4,
                gap in 0u32..3,
                budgets in proptest::option::weighted(0.3, (proptest::option::of(0u32..3), proptest::option::of(0u32..3))),
                start in 0usize..8,
            ) {
                let view = fleet(&es);
                let p = asking(priority, millicpus, memory, port, anti);
                let left = |g: &str| match (budgets, g) {
                    (Some((b, _)), "g0") => b,
                    (Some((_, b)), "g1") => b,
                    _ => None,
                };
                let opts = PreemptOptions { gap, max_candidates: usize::MAX, start };
                let chosen = preempt(&p, &view, &opts, &left);
                if let Some(c) = &chosen {
                    let e = &view[c.engine];
                    let limit = i64::from(priority) - i64::from(gap.max(1));
                    let mut taken: BTreeMap<&str, u32> = BTreeMap::new();
                    for v in &c.victims {
                        let t = tenant(e, v);
                        prop_assert!(t.decision != 0, "{v} in flight");
                        prop_assert!(t.held.rank.preemptible, "{v} not preemptible");
                        prop_assert!(i64::from(t.held.rank.priority) <= limit, "{v} of priority {} for {priority}, gap {gap}", t.held.rank.priority);
                        if let Some(g) = t.held.rank.group.as_deref() {
                            *taken.entry(g).or_default() += 1;
                        }
                    }
                    for (g, n) in taken {
                        prop_assert!(left(g).is_none_or(|b| n <= b), "{n} of {g}");
                    }
                    let after = without(e, &c.victims);
                    prop_assert!(fits_resources(&p.request, &after).is_ok());
                    prop_assert_eq!(p.verdict(&after, false), Ok(()));
                    // No victim could be given back alone.
                    for v in &c.victims {
                        let mut back = after.clone();
                        back.restore(v, tenant(e, v).clone());
                        prop_assert!(p.verdict(&back, false).is_err(), "{v} could stay");
                    }
                    // The choice is the least costly of the engines' own victims.
                    for (i, other) in view.iter().enumerate() {
                        if let Some(vs) = victims_on(&p, other, gap, &left) {
                            prop_assert!(weight(e, &c.victims) <= weight(other, &vs), "e{i} costs less");
                        }
                    }
                }
                // Deciding on copies of the view agrees with the arithmetic.
                if anti == 0 || anti == 3 {
                    prop_assert_eq!(&preempt(&on_copies(&p), &view, &opts, &left), &chosen);
                }
                if budgets.is_none() {
                    let least: Vec<Option<i64>> = view.iter().map(|e| least_highest(&p, e, gap)).collect();
                    for (e, least) in view.iter().zip(&least) {
                        let got = victims_on(&p, e, gap, &left);
                        prop_assert_eq!(got.is_some(), least.is_some(), "{}", e.id);
                        if let Some(vs) = got {
                            prop_assert_eq!(Some(weight(e, &vs).0), *least, "{}: {:?}", e.id, vs);
                        }
                    }
                    let best = least.iter().flatten().min().copied();
                    prop_assert_eq!(chosen.as_ref().map(|c| weight(&view[c.engine], &c.victims).0), best);
                }
            }

            /// No loops: once a request has preempted, none of its victims, asking again
            /// for what it held at its own priority, can ever evict it.
            #[test]
            fn a_victim_never_evicts_its_preemptor(
                es in proptest::collection::vec((Just(false), tenants()), 1..=4),
                (priority, millicpus, memory) in (-1i32..8, 1u64..4_000, 1u64..4_096),
                port in proptest::option::weighted(0.3, 0u16..3),
                gap in 0u32..3,
            ) {
                let mut view = fleet(&es);
                let p = asking(priority, millicpus, memory, port, 0);
                let opts = PreemptOptions { gap, max_candidates: usize::MAX, start: 0 };
                let Some(c) = preempt(&p, &view, &opts, &unbounded) else { return Ok(()) };
                let evicted: Vec<Tenant> = c.victims.iter().map(|v| view[c.engine].evict(v).unwrap()).collect();
                let me = RequestId::new("preemptor").unwrap();
                let held = Held { rank: rank(priority, true), ..Held::of(&p.request) };
                occupy(&mut view[c.engine], "preemptor", held.cpus.0, held.memory.0, &port.iter().map(|n| 80 + n).collect::<Vec<_>>(), held.rank, 100);
                for t in evicted {
                    let mut r = p.request.clone();
                    r.priority = t.held.rank.priority;
                    r.cpus = t.held.cpus;
                    r.memory = t.held.memory;
                    r.ports = t.held.ports.clone();
                    let back = Prepared::new(r).unwrap();
                    if let Some(again) = preempt(&back, &view, &opts, &unbounded) {
                        prop_assert!(!again.victims.contains(&me), "a victim of {} evicts its preemptor of {priority}", t.held.rank.priority);
                    }
                    for e in &view {
                        if let Some(vs) = victims_on(&back, e, gap, &unbounded) {
                            prop_assert!(!vs.contains(&me));
                        }
                    }
                }
            }
        }
    }
}
