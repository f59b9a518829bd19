//! Group rules: where one more member of a request's group may go.
//!
//! - `max_per_engine: K` (Swarm's `--replicas-max-per-node`): an engine that holds K members of
//!   the group already takes no other.
//! - `spread: {over: L, max_skew: S}` (Kubernetes' topology spread, `DoNotSchedule`): the
//!   domains are the values of engine label `L` among the engines the request may use (its
//!   hard constraints pass, not cordoned), each counted from 0. A member may go to an engine of
//!   domain `d` only if `count[d] + 1 - min(count) <= S`; an engine without `L` may not take
//!   one at all.
//!
//! [`GroupCounts`] counts the members once per round from the engines' tenants (as Kubernetes'
//! PreFilter does once per cycle) and is kept current as the round places members; its
//! [`GroupCounts::rules_for`] hands the feasibility stage a [`GroupFilter`]: a snapshot of the
//! engines and domains at their limit, looked up per engine (never per class: members are
//! counted per engine) right after the volume pins.
//!
//! It may not look at anything but the views and the request; it chooses nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::feasible::{Code, Rejection};
use super::{EngineView, Prepared};
use crate::model::{EngineId, Group};

/// Whether a group holds its members to a rule the filters check.
pub(super) fn has_rules(g: &Group) -> bool {
    g.spread.is_some() || g.max_per_engine.is_some()
}

/// Counts of one group's members, per engine and per domain of its spread label, taken once
/// per round from the engine views' tenants (as K8s' PreFilter computes them once per cycle)
/// and kept current as the round places members.
#[derive(Debug, Clone)]
pub struct GroupCounts {
    /// The group, and its rules as the member it was counted for states them (`None`, `None`
    /// when it has none: nothing is counted).
    name: Option<Arc<str>>,
    max_per_engine: Option<u32>,
    spread: Option<Spread>,
    /// Members per engine, for the engines that hold any.
    per_engine: HashMap<EngineId, u32>,
}

/// The spread rule and its counts.
#[derive(Debug, Clone)]
struct Spread {
    over: String,
    max_skew: u32,
    /// The domain of every engine whose members count: it passes the request's hard
    /// constraints and its label names an eligible domain. Cordoned engines' members count
    /// too (a cordon moves nothing), as Kubernetes counts pods on a cordoned node.
    domain_of: HashMap<EngineId, Arc<str>>,
    /// Members per eligible domain, 0 for one that holds none.
    count: HashMap<Arc<str>, u32>,
}

impl GroupCounts {
    /// The counts of `prepared`'s group over `engines`. `prepared` is a member: it names the
    /// group, its rules and the hard constraints that say which engines (and so which domains)
    /// it may use.
    pub fn of(prepared: &Prepared, engines: &[EngineView]) -> GroupCounts {
        let Some(group) = prepared.request.group.as_ref().filter(|g| has_rules(g)) else {
            return GroupCounts {
                name: None,
                max_per_engine: None,
                spread: None,
                per_engine: HashMap::new(),
            };
        };
        let name = group.name.clone();
        let members_on = |e: &EngineView| {
            e.tenants
                .values()
                .filter(|t| t.held.rank.group.as_deref() == Some(&*name))
                .count() as u32
        };
        let per_engine: HashMap<EngineId, u32> = engines
            .iter()
            .filter(|e| !e.tenants.is_empty())
            .map(|e| (e.id.clone(), members_on(e)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let spread = group.spread.as_ref().map(|(over, max_skew)| {
            let usable = |e: &EngineView| prepared.hard.iter().all(|c| c.matches(&e.labels));
            let mut count: HashMap<Arc<str>, u32> = HashMap::new();
            for e in engines {
                if !e.cordoned
                    && usable(e)
                    && let Some(d) = e.labels.value(over)
                    && !count.contains_key(d)
                {
                    count.insert(Arc::from(d), 0);
                }
            }
            let mut domain_of = HashMap::new();
            for e in engines {
                let Some(d) = e
                    .labels
                    .value(over)
                    .and_then(|d| count.get_key_value(d))
                    .map(|(d, _)| d.clone())
                else {
                    continue;
                };
                if !usable(e) {
                    continue;
                }
                if let Some(members) = per_engine.get(&e.id) {
                    *count.get_mut(&d).expect("an eligible domain") += members;
                }
                domain_of.insert(e.id.clone(), d);
            }
            Spread {
                over: over.clone(),
                max_skew: *max_skew,
                domain_of,
                count,
            }
        });
        GroupCounts {
            name: Some(name),
            max_per_engine: group.max_per_engine,
            spread,
            per_engine,
        }
    }

    /// A member was placed on engine `e` in this round.
    pub fn placed(&mut self, e: &EngineView) {
        if self.name.is_none() {
            return;
        }
        *self.per_engine.entry(e.id.clone()).or_default() += 1;
        if let Some(s) = &mut self.spread
            && let Some(d) = s.domain_of.get(&e.id)
            && let Some(n) = s.count.get_mut(d)
        {
            *n += 1;
        }
    }

    /// A member was evicted from engine `e` in this round (none counted there: nothing).
    pub fn removed(&mut self, e: &EngineView) {
        let Some(n) = self.per_engine.get_mut(&e.id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.per_engine.remove(&e.id);
        }
        if let Some(s) = &mut self.spread
            && let Some(d) = s.domain_of.get(&e.id)
            && let Some(n) = s.count.get_mut(d)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// The group's members on engine `id`.
    pub fn on_engine(&self, id: &EngineId) -> u32 {
        self.per_engine.get(id).copied().unwrap_or(0)
    }

    /// The group's members in spread domain `d` (`None`: not an eligible domain, or no spread).
    pub fn in_domain(&self, d: &str) -> Option<u32> {
        self.spread.as_ref()?.count.get(d).copied()
    }

    /// The most members in one eligible domain less the fewest (`None` without spread or
    /// without an eligible domain).
    pub fn skew(&self) -> Option<u32> {
        let s = self.spread.as_ref()?;
        let max = s.count.values().max()?;
        let min = s.count.values().min()?;
        Some(max - min)
    }

    /// The member `prepared` held to the group's rules now: a copy whose filters reject
    /// engines at `max_per_engine` and domains at the skew limit. `None` when the request has
    /// no group rules (or is not of the group counted).
    pub fn rules_for(&self, prepared: &Prepared) -> Option<Arc<Prepared>> {
        let name = self.name.as_ref()?;
        let member = prepared.request.group.as_ref()?;
        if member.name != *name {
            return None;
        }
        let full = match self.max_per_engine {
            Some(k) => self
                .per_engine
                .iter()
                .filter(|(_, n)| **n >= k)
                .map(|(id, _)| id.clone())
                .collect(),
            None => HashSet::new(),
        };
        let spread = self.spread.as_ref().map(|s| {
            let min = s.count.values().min().copied().unwrap_or(0);
            // count + 1 - min > max_skew, without going below zero.
            let limit = u64::from(min) + u64::from(s.max_skew);
            SpreadFilter {
                over: s.over.clone(),
                max_skew: s.max_skew,
                at_limit: s
                    .count
                    .iter()
                    .filter(|(_, n)| u64::from(**n) + 1 > limit)
                    .map(|(d, _)| d.clone())
                    .collect(),
            }
        });
        let filter = GroupFilter {
            name: name.clone(),
            max_per_engine: self.max_per_engine,
            full,
            spread,
        };
        Some(Arc::new(prepared.held_to_group(Arc::new(filter))))
    }
}

/// One member's group rules as a filter: the engines and domains at their limit when it was
/// made. Checked per engine, by hash lookups; a request without it pays nothing.
#[derive(Debug)]
pub struct GroupFilter {
    name: Arc<str>,
    max_per_engine: Option<u32>,
    /// Engines holding `max_per_engine` members already.
    full: HashSet<EngineId>,
    spread: Option<SpreadFilter>,
}

#[derive(Debug)]
struct SpreadFilter {
    over: String,
    max_skew: u32,
    /// Domains where one more member would make the skew exceed `max_skew`.
    at_limit: HashSet<Arc<str>>,
}

impl GroupFilter {
    /// The first rule `e` fails: no spread label, then full, then the skew. An engine of a
    /// domain that is not eligible fails the constraints or the cordon, which say so.
    pub(super) fn check(&self, e: &EngineView) -> Result<(), Code> {
        let domain = match &self.spread {
            Some(s) => Some(e.labels.value(&s.over).ok_or(Code::GroupNoLabel)?),
            None => None,
        };
        if !self.full.is_empty() && self.full.contains(&e.id) {
            return Err(Code::GroupFull);
        }
        if let (Some(s), Some(d)) = (&self.spread, domain)
            && !s.at_limit.is_empty()
            && s.at_limit.contains(d)
        {
            return Err(Code::GroupSkew);
        }
        Ok(())
    }

    /// A group code named (any other code is not this filter's: named as a full engine).
    pub(super) fn rejection(&self, code: Code) -> Rejection {
        let over = || {
            self.spread
                .as_ref()
                .map(|s| s.over.clone())
                .unwrap_or_default()
        };
        match code {
            Code::GroupNoLabel => Rejection::GroupNoLabel { over: over() },
            Code::GroupSkew => Rejection::GroupSkew {
                over: over(),
                max_skew: self.spread.as_ref().map_or(0, |s| s.max_skew),
            },
            _ => Rejection::GroupFull {
                group: self.name.to_string(),
                max: self.max_per_engine.unwrap_or(0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{engine, engine_in_class, image};
    use super::super::{Strategy, UNCLASSED, schedule};
    use super::*;
    use crate::model::{Held, Image, Request, RequestId};

    /// A member of group `name` with `max_per_engine` and `spread` (label, max skew), asking
    /// for 1 cpu, under `labels`.
    fn member(
        name: &str,
        max_per_engine: Option<u64>,
        spread: Option<(&str, u64)>,
        labels: &[&str],
    ) -> Prepared {
        let spread = spread.map(|(over, skew)| {
            serde_json::from_value(serde_json::json!({"over": over, "max_skew": skew})).unwrap()
        });
        let r = Request::from_image(Image {
            group: Some(name.into()),
            max_per_engine,
            spread,
            ..image(1.0, 1.0, labels, &[])
        })
        .unwrap();
        Prepared::new(r).unwrap()
    }

    /// Places `n` members of `p`'s group on `e` as tenants (ids `<prefix>-<i>`).
    fn hold(e: &mut EngineView, p: &Prepared, prefix: &str, n: usize) {
        for i in 0..n {
            let id = RequestId::new(format!("{prefix}-{}-{i}", e.id)).unwrap();
            e.hold(&id, &Held::of(&p.request));
        }
    }

    /// Engines `e0..` with `zones` (`""`: no zone label) holding `members` of `p`'s group.
    fn fleet(p: &Prepared, zones: &[&str], members: &[usize]) -> Vec<EngineView> {
        zones
            .iter()
            .zip(members)
            .enumerate()
            .map(|(i, (z, n))| {
                let label = format!("zone={z}");
                let labels: &[&str] = if z.is_empty() { &[] } else { &[&label] };
                let mut e = engine(&format!("e{i}"), 64.0, 65536.0, labels);
                hold(&mut e, p, "m", *n);
                e
            })
            .collect()
    }

    /// Each engine's verdict for `p` held to its group's rules: "ok" or the reason.
    fn verdicts(p: &Prepared, es: &[EngineView]) -> Vec<String> {
        let ruled = GroupCounts::of(p, es).rules_for(p).unwrap();
        es.iter()
            .map(|e| match ruled.verdict(e, true) {
                Ok(()) => "ok".to_string(),
                Err(r) => r.to_string(),
            })
            .collect()
    }

    #[test]
    fn an_engine_at_max_per_engine_takes_no_more() {
        let p = member("web", Some(2), None, &[]);
        // (members on e0, e1, e2, the verdicts)
        let cases: [([usize; 3], [&str; 3]); 3] = [
            ([0, 1, 0], ["ok", "ok", "ok"]),
            (
                [2, 1, 3],
                [
                    "max 2 of group web per engine",
                    "ok",
                    "max 2 of group web per engine",
                ],
            ),
            ([1, 1, 1], ["ok", "ok", "ok"]),
        ];
        for (members, want) in cases {
            let es = fleet(&p, &["", "", ""], &members);
            assert_eq!(verdicts(&p, &es), want, "{members:?}");
        }
        // Members of another group, or of none, do not count.
        let other = member("db", Some(2), None, &[]);
        let mut es = fleet(&p, &[""], &[0]);
        hold(&mut es[0], &other, "db", 5);
        hold(
            &mut es[0],
            &Prepared::new(Request::from_image(image(1.0, 1.0, &[], &[])).unwrap()).unwrap(),
            "plain",
            5,
        );
        assert_eq!(verdicts(&p, &es), ["ok"]);
    }

    #[test]
    fn a_domain_at_the_skew_limit_takes_no_more() {
        let skew = "spread over zone: skew would exceed 1";
        // (zones, members per engine, max skew, the verdicts)
        type Case<'a> = (&'a [&'a str], &'a [usize], u64, &'a [&'a str]);
        let cases: [Case; 7] = [
            (&["a", "b", "c"], &[0, 0, 0], 1, &["ok", "ok", "ok"]),
            (&["a", "b", "c"], &[1, 0, 0], 1, &[skew, "ok", "ok"]),
            (&["a", "b", "c"], &[1, 1, 0], 1, &[skew, skew, "ok"]),
            (&["a", "b", "c"], &[1, 1, 1], 1, &["ok", "ok", "ok"]),
            // Two engines in zone a count together.
            (&["a", "a", "b"], &[1, 0, 0], 1, &[skew, skew, "ok"]),
            (
                &["a", "a", "b"],
                &[1, 1, 0],
                2,
                &[
                    "spread over zone: skew would exceed 2",
                    "spread over zone: skew would exceed 2",
                    "ok",
                ],
            ),
            // An engine without the label is not eligible at all.
            (
                &["a", "", "b"],
                &[0, 0, 0],
                1,
                &["ok", "no zone label (spread)", "ok"],
            ),
        ];
        for (zones, members, max_skew, want) in cases {
            let p = member("web", None, Some(("zone", max_skew)), &[]);
            let es = fleet(&p, zones, members);
            assert_eq!(
                verdicts(&p, &es),
                want,
                "{zones:?} {members:?} skew {max_skew}"
            );
        }
    }

    #[test]
    fn the_domains_are_those_of_the_engines_the_request_may_use() {
        let skew = "spread over zone: skew would exceed 1";
        // (constraints, zones, cordoned, members per engine, the verdicts)
        type Case<'a> = (
            &'a [&'a str],
            [&'a str; 3],
            [bool; 3],
            [usize; 3],
            [&'a str; 3],
        );
        let cases: [Case; 5] = [
            // Zone c is empty: a and b, one member each, are at the limit.
            (
                &[],
                ["a", "b", "c"],
                [false; 3],
                [1, 1, 0],
                [skew, skew, "ok"],
            ),
            // Zone c is ruled out by a constraint: it is no domain, its empty count no minimum.
            (
                &["zone!=c"],
                ["a", "b", "c"],
                [false; 3],
                [1, 1, 0],
                ["ok", "ok", "constraint zone!=c"],
            ),
            // Zone c holds only a cordoned engine: no domain either.
            (
                &[],
                ["a", "b", "c"],
                [false, false, true],
                [1, 1, 0],
                ["ok", "ok", "cordoned"],
            ),
            // A cordoned engine's members still count in a domain that is one (the rules
            // are checked before the cordon).
            (
                &[],
                ["a", "a", "b"],
                [true, false, false],
                [1, 0, 0],
                [skew, skew, "ok"],
            ),
            // Members on an engine the request may not use do not count.
            (
                &["rack!=x"],
                ["a", "b", "b"],
                [false; 3],
                [0, 0, 3],
                ["ok", "ok", "constraint rack!=x"],
            ),
        ];
        for (constraints, zones, cordoned, members, want) in cases {
            let p = member("web", None, Some(("zone", 1)), constraints);
            let mut es = fleet(&p, &zones, &members);
            for (e, c) in es.iter_mut().zip(cordoned) {
                e.cordoned = c;
            }
            if constraints.contains(&"rack!=x") {
                es[2].labels = Arc::new(crate::scheduler::Labels::parse(&["zone=b", "rack=x"]));
            }
            assert_eq!(
                verdicts(&p, &es),
                want,
                "{constraints:?} {zones:?} {cordoned:?}"
            );
        }
    }

    #[test]
    fn counts_follow_the_members_placed_and_removed_in_the_round() {
        let p = member("web", Some(2), Some(("zone", 1)), &[]);
        let es = fleet(&p, &["a", "a", "b", ""], &[1, 0, 0, 0]);
        let mut counts = GroupCounts::of(&p, &es);
        assert_eq!(
            (counts.in_domain("a"), counts.in_domain("b"), counts.skew()),
            (Some(1), Some(0), Some(1))
        );
        counts.placed(&es[2]);
        counts.placed(&es[1]);
        counts.placed(&es[1]);
        counts.placed(&es[3]);
        assert_eq!(
            (counts.in_domain("a"), counts.in_domain("b"), counts.skew()),
            (Some(3), Some(1), Some(2))
        );
        assert_eq!(
            [&es[0], &es[1], &es[2], &es[3]].map(|e| counts.on_engine(&e.id)),
            [1, 2, 1, 1]
        );
        let ruled = counts.rules_for(&p).unwrap();
        assert_eq!(
            ruled.verdict(&es[1], true).unwrap_err().to_string(),
            "max 2 of group web per engine"
        );
        assert_eq!(
            ruled.verdict(&es[0], true).unwrap_err().to_string(),
            "spread over zone: skew would exceed 1"
        );
        assert_eq!(ruled.verdict(&es[2], true), Ok(()));
        counts.removed(&es[1]);
        counts.removed(&es[1]);
        counts.removed(&es[1]);
        assert_eq!(
            (counts.on_engine(&es[1].id), counts.in_domain("a")),
            (0, Some(1))
        );
        assert_eq!(counts.in_domain("c"), None);
        // The copy made before is a snapshot: it still says what it said.
        assert!(ruled.verdict(&es[1], true).is_err());
        assert_eq!(counts.rules_for(&p).unwrap().verdict(&es[1], true), Ok(()));
    }

    #[test]
    fn only_a_member_of_a_group_with_rules_gets_them() {
        let es = fleet(&member("web", Some(1), None, &[]), &["a"], &[3]);
        let plain = Prepared::new(Request::from_image(image(1.0, 1.0, &[], &[])).unwrap()).unwrap();
        let no_rules = member("web", None, None, &[]);
        let web = member("web", Some(1), None, &[]);
        let db = member("db", Some(1), None, &[]);
        assert!(GroupCounts::of(&plain, &es).rules_for(&plain).is_none());
        assert!(
            GroupCounts::of(&no_rules, &es)
                .rules_for(&no_rules)
                .is_none()
        );
        assert!(GroupCounts::of(&web, &es).rules_for(&db).is_none());
        assert!(GroupCounts::of(&web, &es).rules_for(&plain).is_none());
        assert!(GroupCounts::of(&web, &es).rules_for(&web).is_some());
    }

    #[test]
    fn group_rules_make_a_plan_depend_on_placements() {
        let es = fleet(&member("web", Some(1), None, &[]), &["a"], &[0]);
        for (p, depends) in [
            (member("web", None, None, &[]), false),
            (member("web", Some(1), None, &[]), true),
            (member("web", None, Some(("zone", 1)), &[]), true),
        ] {
            assert_eq!(p.depends_on_placements(), depends);
            if let Some(ruled) = GroupCounts::of(&p, &es).rules_for(&p) {
                assert!(ruled.depends_on_placements());
            }
        }
    }

    #[test]
    fn the_rules_are_checked_per_engine_never_per_class() {
        // One class, one zone: only the engine holding a member is full.
        let p = member("web", Some(1), Some(("zone", 5)), &["zone==a"]);
        let mut es: Vec<EngineView> = (0..3)
            .map(|i| engine_in_class(&format!("e{i}"), 8.0, 8192.0, &["zone=a"], 7))
            .collect();
        hold(&mut es[1], &p, "m", 1);
        let ruled = GroupCounts::of(&p, &es).rules_for(&p).unwrap();
        let mut memo = super::super::feasible::ClassMemo::default();
        let got: Vec<bool> = es
            .iter()
            .map(|e| ruled.check(e, true, &mut memo).is_ok())
            .collect();
        assert_eq!(got, [true, false, true]);
        for e in &mut es {
            e.class = UNCLASSED;
        }
        let got: Vec<bool> = es.iter().map(|e| ruled.verdict(e, true).is_ok()).collect();
        assert_eq!(got, [true, false, true]);
    }

    #[test]
    fn the_rules_come_after_the_volume_pins_and_before_the_cordon() {
        let p = member("web", Some(1), None, &[]);
        let mut es = fleet(&p, &[""], &[1]);
        let ruled = GroupCounts::of(&p, &es).rules_for(&p).unwrap();
        es[0].cordoned = true;
        assert_eq!(
            ruled.verdict(&es[0], true).unwrap_err().to_string(),
            "max 1 of group web per engine"
        );
        let pinned = ruled.pinned(vec![("data".into(), EngineId::new("e9").unwrap())]);
        assert_eq!(
            pinned.verdict(&es[0], true).unwrap_err().to_string(),
            "volume data is on engine e9"
        );
    }

    #[test]
    fn the_reason_counts_each_rule_like_any_filter() {
        let p = member("web", Some(1), Some(("zone", 1)), &[]);
        let es = fleet(&p, &["a", "a", "b", "", "c"], &[1, 0, 1, 0, 0]);
        let ruled = GroupCounts::of(&p, &es).rules_for(&p).unwrap();
        assert_eq!(
            schedule(&ruled, &es[..4], Strategy::Spread, 1, usize::MAX)
                .unwrap_err()
                .reason,
            "0/4 engines fit: 2 max 1 of group web per engine, \
             1 spread over zone: skew would exceed 1, 1 no zone label (spread)"
        );
        let ok = schedule(&ruled, &es, Strategy::Spread, 1, usize::MAX).unwrap();
        assert_eq!(ok.engine, 4, "zone c is the only one below the limit");
    }
}
