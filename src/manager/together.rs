//! What a round commits together: a placement with the evictions that make room for it
//! (preemption), and a gang's members, all or nothing. Pure, like the rest of the round: the
//! choices are the scheduler's (`scheduler::preemption`, `scheduler::group`); this file turns
//! them into items on the running view, and gives the view back when a gang does not fit.
//!
//! ```text
//! unschedulable ──priority──▶ preempt: victims on one engine ──▶ Together[Evict…, Place]
//! gang members ──enough pending?──no──▶ each `pending` (waiting), or `unschedulable` past
//!              │                         group_timeout
//!              yes ──each placed (or preempting) on the running view──▶ Together[…]
//!                  └─ one does not fit: the view given back; waiting, or unschedulable
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use super::item::{AgentOps, Item};
use super::ledger::{Decide, Work};
use super::plan::{Ask, Round, seed};
use crate::model::{Decision, Echo, RequestId, Status};
use crate::scheduler::{
    self, EngineView, GroupCounts, Parsed, Plan, PreemptOptions, Prepared, Strategy, Tenant,
};

/// What a round knows of one group from the engines' tenants.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct GroupStat {
    /// Members placed (or in flight).
    pub(super) placed: u32,
    pub(super) budget: Option<u32>,
}

impl Round<'_> {
    /// The request held to its group's rules (`spread`, `max_per_engine`) on what the group
    /// holds now, if it has any.
    pub(super) fn group_rules(&mut self, prepared: &Prepared) -> Option<Arc<Prepared>> {
        let group = prepared.request.group.as_ref()?;
        if group.spread.is_none() && group.max_per_engine.is_none() {
            return None;
        }
        let engines: &[EngineView] = self.engines;
        self.groups
            .entry(group.name.clone())
            .or_insert_with(|| GroupCounts::of(prepared, engines))
            .rules_for(prepared)
    }

    /// Makes room for `ask` by evicting placements of lower priority from one engine, if any
    /// engine can be made to fit: the evictions and the placement, to commit together.
    pub(super) fn preempt_for(
        &mut self,
        ask: &Ask<'_>,
        prepared: &Prepared,
        strategy: Strategy,
    ) -> Option<Item> {
        let parts = self.preempting(ask, prepared, strategy)?;
        Some(Item::Together(parts))
    }

    /// The evictions and the placement that preempting for `ask` takes, applied to the view.
    fn preempting(
        &mut self,
        ask: &Ask<'_>,
        prepared: &Prepared,
        strategy: Strategy,
    ) -> Option<Vec<Item>> {
        // Nothing is lower than the lowest priority there is.
        let floor = i64::from(prepared.request.priority) - i64::from(self.cfg.preempt_gap);
        if floor < i64::from(i32::MIN) || self.engines.is_empty() {
            return None;
        }
        // Nothing placed is low enough (or nothing placed is known by its priority: engines
        // keep their tenants only once some request has a priority or a group).
        if self.lowest().is_none_or(|low| i64::from(low) > floor) {
            return None;
        }
        let opts = PreemptOptions {
            gap: self.cfg.preempt_gap,
            max_candidates: scheduler::candidates_for(self.engines.len()),
            start: (seed(&ask.d.id) % self.engines.len() as u64) as usize,
        };
        self.index_groups();
        let (index, evicted) = (&self.group_index, &self.evicted);
        let budget_left = |group: &str| {
            let budget = index.as_ref()?.get(group)?.budget?;
            let taken = evicted.get(group).copied().unwrap_or(0);
            Some(budget.saturating_sub(taken))
        };
        let chosen = scheduler::preempt(prepared, self.engines, &opts, &budget_left)?;
        // It fits with nothing evicted: the view changed since it was found not to (the
        // memo of shapes that fit nowhere); it is decided with the next capacity epoch. A
        // victim this round also decides (a placement being moved) is left alone: one item
        // per request.
        if chosen.victims.is_empty() {
            return None;
        }
        let work = self.work;
        let deciding = self.deciding.get_or_insert_with(|| {
            work.iter()
                .filter_map(|w| match w {
                    Work::Decide(d) => Some(d.id.clone()),
                    _ => None,
                })
                .collect()
        });
        if chosen.victims.iter().any(|v| deciding.contains(v)) {
            return None;
        }
        let i = chosen.engine;
        let mut parts = Vec::with_capacity(chosen.victims.len() + 1);
        let mut names = Vec::with_capacity(chosen.victims.len());
        let before = self.engines[i].clone();
        let (evicted_before, groups_before) = (self.evicted.clone(), self.groups.clone());
        self.touch(i);
        for victim in &chosen.victims {
            let Some(t) = self.engines[i].evict(victim) else {
                continue;
            };
            if let Some(g) = &t.held.rank.group {
                *self.evicted.entry(g.clone()).or_default() += 1;
                if let Some(counts) = self.groups.get_mut(g) {
                    counts.removed(&self.engines[i]);
                }
            }
            names.push(victim.to_string());
            parts.push(self.eviction(ask, prepared, i, victim, &t));
        }
        // Made to fit by the evictions: verified on the view now.
        if prepared.verdict(&self.engines[i], false).is_err() {
            tracing::error!(request = %ask.d.id, engine = %self.engines[i].id,
                "preemption chose victims that do not make room; nothing is evicted");
            self.engines[i] = before;
            self.evicted = evicted_before;
            self.groups = groups_before;
            return None;
        }
        let plan = Plan {
            engine: i,
            strategy,
            soft_dropped: false,
        };
        let mut place = self.place(ask, prepared, strategy, plan);
        if let Item::Place { decision, .. } = &mut place {
            decision.reason = format!(
                "{} by preempting {} of lower priority ({})",
                decision.reason,
                names.len(),
                names.join(", ")
            );
            decision.preempted = names;
        }
        parts.push(place);
        Some(parts)
    }

    /// A victim's `preempted` decision. Its echo is filled in by the leader from the mirror
    /// (the round does not hold other requests' bytes).
    fn eviction(
        &self,
        ask: &Ask<'_>,
        prepared: &Prepared,
        engine: usize,
        victim: &RequestId,
        t: &Tenant,
    ) -> Item {
        let by = &ask.d.id;
        let e = &self.engines[engine];
        Item::Evict {
            id: victim.clone(),
            engine: e.id.clone(),
            decision_revision: t.decision,
            decision: Decision {
                container: Echo::from(serde_json::Value::Null),
                resource: None,
                reservation: None,
                status: Status::Preempted,
                reason: format!(
                    "preempted by {by} (priority {} over {}) on engine {}; placed again when room appears",
                    prepared.request.priority, t.held.rank.priority, e.id
                ),
                scheduler: String::new(),
                alternatives: Vec::new(),
                request_revision: t.revision,
                decided_at: self.now.to_string(),
                decided_by: self.cfg.replica.to_string(),
                run: None,
                preempted_by: by.to_string(),
                preempted: Vec::new(),
            },
            agent: AgentOps::default(),
        }
    }

    /// The lowest priority placed and evictable anywhere, once per round (placements this
    /// round adds are not evictable: their decisions are not written yet).
    fn lowest(&mut self) -> Option<i32> {
        if self.lowest.is_none() {
            let low = self
                .engines
                .iter()
                .flat_map(|e| e.tenants.values())
                .filter(|t| t.held.rank.preemptible && t.decision != 0)
                .map(|t| t.held.rank.priority)
                .min();
            self.lowest = Some(low);
        }
        self.lowest.flatten()
    }

    /// Each group's placed members and disruption budget (the lowest any member states; a
    /// gang's is 0: its members are never taken one by one), from one look at every engine's
    /// tenants, the first time a round needs them.
    fn index_groups(&mut self) {
        if self.group_index.is_some() {
            return;
        }
        let mut out: HashMap<Arc<str>, GroupStat> = HashMap::new();
        for t in self.engines.iter().flat_map(|e| e.tenants.values()) {
            let Some(g) = &t.held.rank.group else {
                continue;
            };
            let stat = out.entry(g.clone()).or_default();
            stat.placed += 1;
            if let Some(b) = t.held.rank.disruption_budget {
                stat.budget = Some(stat.budget.map_or(b, |s| s.min(b)));
            }
        }
        self.group_index = Some(out);
    }

    /// A gang's members, all or nothing. Every member gets its own item: placed together (one
    /// [`Item::Together`]), or each waiting (`pending`) or refused.
    pub(super) fn decide_gang(&mut self, members: Vec<(&Decide, Parsed)>) -> Vec<Item> {
        let mut out = Vec::new();
        let mut valid: Vec<(&Decide, Arc<Prepared>)> = Vec::new();
        for (d, parsed) in members {
            match parsed {
                Ok(p) => valid.push((d, p)),
                // Not a member after all: decided on its own (invalid, or deferred).
                Err(_) => out.push(self.decide(d, &parsed, None)),
            }
        }
        let Some((_, first)) = valid.first() else {
            return out;
        };
        let Some(group) = first.request.group.clone() else {
            return out;
        };
        let name = group.name.clone();
        // Members placed before (a gang already running takes newcomers beside it).
        self.index_groups();
        let placed = self
            .group_index
            .as_ref()
            .and_then(|index| index.get(&name))
            .map_or(0, |s| s.placed as usize);
        let waited = valid
            .iter()
            .filter_map(|(d, _)| d.gang_waited)
            .max()
            .unwrap_or_default();
        let timed_out = waited.as_secs() >= group.timeout_s;
        let ask = |d| Ask {
            d,
            now: self.now,
            by: self.cfg.replica.as_str(),
        };
        let n = valid.len();
        if placed + n < group.min {
            let why = format!(
                "gang {name}: {} of {} members pending",
                placed + n,
                group.min
            );
            for (d, _) in &valid {
                out.push(self.gang_waits(&ask(d), &why, timed_out, group.timeout_s));
            }
            return out;
        }
        // Highest priority, then oldest, first: the same order the queue has.
        valid.sort_by_key(|(d, p)| (std::cmp::Reverse(p.request.priority), d.request_revision));
        // Every engine the gang touches is saved first, to be given back if it does not fit.
        self.journal = Some(Vec::new());
        let (fresh, evicted) = (self.fresh.clone(), self.evicted.clone());
        let mut parts = Vec::new();
        let mut failed = None;
        for (d, p) in &valid {
            let a = ask(d);
            match self.try_place(&a, p) {
                Ok(items) => parts.extend(items),
                Err(reason) => {
                    failed = Some(format!("{}: {reason}", d.id));
                    break;
                }
            }
        }
        if failed.is_none() && !super::batch::together_fits(&parts, self.max_ops) {
            failed = Some(format!(
                "placing {n} members at once takes more than one transaction of {} operations \
                 (etcd's --max-txn-ops; raise it on etcd and on the controllers)",
                self.max_ops
            ));
        }
        let saved = self.journal.take().unwrap_or_default();
        let Some(failed) = failed else {
            if let Some(stat) = self.group_index.as_mut().and_then(|i| i.get_mut(&name)) {
                stat.placed += n as u32;
            }
            out.push(Item::Together(parts));
            return out;
        };
        // Given back: the view, volumes and budgets as they were before the gang was tried.
        for (i, view) in saved.into_iter().rev() {
            self.engines[i] = view;
        }
        self.fresh = fresh;
        self.evicted = evicted;
        self.groups.clear();
        let why = format!("gang {name}: {n} members do not fit at once ({failed})");
        for (d, _) in &valid {
            out.push(self.gang_waits(&ask(d), &why, timed_out, group.timeout_s));
        }
        out
    }

    /// One gang member placed on the running view, preempting if it must: its items, or why
    /// it does not fit.
    fn try_place(&mut self, ask: &Ask<'_>, prepared: &Arc<Prepared>) -> Result<Vec<Item>, String> {
        let pinned = self.pins(prepared);
        let prepared = pinned.as_ref().unwrap_or(prepared);
        let ruled = self.group_rules(prepared);
        let prepared = ruled.as_ref().unwrap_or(prepared);
        let strategy = self
            .cfg
            .schedulers
            .for_type(&prepared.request.kind)
            .map_err(|e| e.to_string())?;
        match scheduler::schedule(
            prepared,
            self.engines,
            strategy,
            seed(&ask.d.id),
            self.sample,
        ) {
            Ok(plan) => Ok(vec![self.place(ask, prepared, strategy, plan)]),
            Err(u) => self.preempting(ask, prepared, strategy).ok_or(u.reason),
        }
    }

    /// Engine `i` is about to change: saved first while a gang is being tried.
    pub(super) fn touch(&mut self, i: usize) {
        if let Some(journal) = &mut self.journal
            && !journal.iter().any(|(j, _)| *j == i)
        {
            journal.push((i, self.engines[i].clone()));
        }
    }

    /// A gang member that waits: `pending` with why, until the gang's timeout; then
    /// `unschedulable`, the whole gang for the same reason. Nothing is written when the
    /// decision says so already.
    fn gang_waits(&self, ask: &Ask<'_>, why: &str, timed_out: bool, timeout_s: u64) -> Item {
        let (status, reason) = if timed_out {
            (
                Status::Unschedulable,
                format!("{why}; it did not fit within its group_timeout of {timeout_s}s"),
            )
        } else {
            (
                Status::Pending,
                format!("{why}; waiting up to {timeout_s}s (group_timeout)"),
            )
        };
        match &ask.d.previous {
            // The same but for how much is free: not written again (see same_but_sizes).
            Some((s, r)) if *s == status && scheduler::same_but_sizes(r, &reason) => Item::Park {
                id: ask.d.id.clone(),
            },
            _ => ask.refuse(status, reason),
        }
    }
}
