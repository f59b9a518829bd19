//! A round's plan: the leader's work items turned into decisions, pure and without I/O.
//!
//! ```text
//! work ──parse (if the cache no longer holds it)──▶ propose (scheduler threads, frozen view)
//!      ──▶ verify each proposal on the running view, in order ──▶ items
//! ```
//!
//! Verification is the seed's "yes/no": a plan made on the frozen snapshot is checked again on
//! the running view (the snapshot plus every placement accepted since, committed or in flight),
//! on the one engine it names; a plan that no longer fits is scheduled again on that view.

use std::collections::HashMap;
use std::sync::Arc;

use super::item::{AgentOps, Item};
use super::ledger::{Decide, Displaced, Work};
use super::unfit::Unfit;
use super::upgrade::Newer;
use super::{ManagerConfig, PARALLEL_FROM};
use crate::model::{
    Alternative, Attempt, Decision, Echo, EngineId, Held, Lifecycle, RequestId, Reservation, Run,
    Status,
};
use crate::scheduler::{self, EngineView, GroupCounts, Parsed, Plan, Prepared, Strategy, prepare};

/// Decides a snapshot's work: pure, no I/O. Placements are verified against, and applied to,
/// `engines` (the running view) as they are accepted.
///
/// `unfit` holds the shapes found unschedulable in the capacity epoch `engines` was taken in
/// (see [`Unfit::at`]); requests of those shapes are refused without a scan, and this round's
/// refusals are added to it.
pub fn plan(
    work: &[Work],
    engines: &mut [EngineView],
    revisions: &[i64],
    volumes: &dyn Fn(&str) -> Option<EngineId>,
    by: &Deciding<'_>,
    unfit: &mut Unfit,
) -> Vec<Item> {
    let (cfg, now) = (by.cfg, by.now);
    let steps: Vec<Step<'_>> = work.iter().map(|w| Step::of(w, cfg, now)).collect();
    let sample = scheduler::sample_size(engines.len());
    let mut proposals = propose_all(&steps, engines, cfg, sample, unfit).into_iter();
    let mut round = Round {
        engines,
        revisions,
        cfg,
        now,
        max_ops: by.max_ops,
        newer: by.newer,
        sample,
        unfit,
        volumes,
        fresh: HashMap::new(),
        groups: HashMap::new(),
        evicted: by.down.clone(),
        journal: None,
        lowest: None,
        work,
        deciding: None,
        group_index: None,
    };
    // A gang's members come one after another (the ledger takes them together): the gang is
    // decided whole where its last member is met, in the order of the work.
    let gangs: Vec<Option<Arc<str>>> = steps.iter().map(Step::gang).collect();
    let mut out = Vec::with_capacity(steps.len());
    let mut members: Vec<(&Decide, Parsed)> = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Written(item) => out.push(*item),
            Step::Decide(d, parsed) => {
                let proposal = proposals.next().flatten();
                match &gangs[i] {
                    None => out.push(round.decide(d, &parsed, proposal)),
                    Some(gang) => {
                        members.push((d, parsed));
                        if gangs.get(i + 1).and_then(Option::as_ref) != Some(gang) {
                            out.extend(round.decide_gang(std::mem::take(&mut members)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// One work item on its way to an item: what needs no decision is written at once; a request
/// to decide carries its parse (the ledger's, or made now, outside the cache's lock, when the
/// ledger no longer holds one).
enum Step<'w> {
    /// Boxed: an item is large, and releases and repairs are the rare case.
    Written(Box<Item>),
    Decide(&'w Decide, Parsed),
}

impl<'w> Step<'w> {
    /// The gang a request to decide belongs to, if it is a gang's member.
    fn gang(&self) -> Option<Arc<str>> {
        match self {
            Step::Decide(_, Ok(p)) => p
                .request
                .group
                .as_ref()
                .filter(|g| g.is_gang())
                .map(|g| g.name.clone()),
            _ => None,
        }
    }

    fn of(w: &'w Work, cfg: &ManagerConfig, now: &str) -> Self {
        match w {
            Work::Decide(d) => {
                let parsed = d.parsed.clone().unwrap_or_else(|| prepare(&d.id, &d.raw));
                Step::Decide(d, parsed)
            }
            Work::Release {
                id,
                request_revision,
            } => Step::Written(Box::new(Item::Release {
                id: id.clone(),
                request_revision: *request_revision,
                agent: AgentOps::default(),
            })),
            Work::Restore {
                id,
                decision_fence,
                decision,
            } => Step::Written(Box::new(Item::Restore {
                id: id.clone(),
                decision_fence: *decision_fence,
                decision: Decision {
                    decided_at: now.to_string(),
                    decided_by: cfg.replica.to_string(),
                    ..(**decision).clone()
                },
            })),
            Work::Odd { segment, request } => Step::Written(Box::new(Item::Odd {
                segment: segment.clone(),
                answer: request.as_ref().map(|r| {
                    let decision = Decision {
                        container: Echo::of(&r.raw),
                        resource: None,
                        reservation: None,
                        status: Status::Invalid,
                        reason: r.why.clone(),
                        scheduler: String::new(),
                        alternatives: Vec::new(),
                        request_revision: r.mod_revision,
                        decided_at: now.to_string(),
                        decided_by: cfg.replica.to_string(),
                        run: None,
                        preempted_by: String::new(),
                        preempted: Vec::new(),
                    };
                    (r.mod_revision, Box::new(decision))
                }),
            })),
        }
    }
}

/// Stage 1, in parallel when there is enough work: scheduler workers plan every `Decide` on the
/// same frozen view. Empty when the round is planned inline (on the running view).
fn propose_all(
    steps: &[Step<'_>],
    engines: &[EngineView],
    cfg: &ManagerConfig,
    sample: usize,
    unfit: &Unfit,
) -> Vec<Option<Plan>> {
    let decide: Vec<(&RequestId, &Parsed)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Decide(d, parsed) => Some((&d.id, parsed)),
            Step::Written(_) => None,
        })
        .collect();
    if cfg.workers <= 1 || decide.len() < PARALLEL_FROM {
        return Vec::new();
    }
    let chunk = decide.len().div_ceil(cfg.workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = decide
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|(id, p)| propose(id, p, engines, cfg, sample, unfit))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A worker that panicked proposes nothing: its requests are planned inline.
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![None; chunk]))
            .collect()
    })
}

/// A scheduler worker's proposal for one request on the frozen snapshot (None: let the verifier
/// decide, e.g. for invalid requests or when nothing fits).
fn propose(
    id: &RequestId,
    parsed: &Parsed,
    engines: &[EngineView],
    cfg: &ManagerConfig,
    sample: usize,
    unfit: &Unfit,
) -> Option<Plan> {
    let prepared = parsed.as_ref().ok()?;
    if unfit.reason(prepared).is_some() {
        return None;
    }
    let strategy = cfg.schedulers.for_type(&prepared.request.kind).ok()?;
    scheduler::schedule(prepared, engines, strategy, seed(id), sample).ok()
}

pub(super) fn seed(id: &RequestId) -> u64 {
    scheduler::fnv1a(id.as_str())
}

/// Who decides a round, when, and within which transaction limit.
pub struct Deciding<'a> {
    pub cfg: &'a ManagerConfig,
    /// When (RFC 3339), for each decision's `decided_at`.
    pub now: &'a str,
    /// The most compares, and operations, one transaction may hold now (`--max-txn-ops`, or
    /// etcd's default after etcd refused more).
    pub max_ops: usize,
    /// Request fields only other candidates know: a request that uses one is left to them.
    pub newer: &'a Newer,
    /// Members of groups with a disruption budget that are down (preempted and not placed
    /// again), by group.
    pub down: &'a HashMap<Arc<str>, u32>,
}

/// Stage 2: one round's decisions, in order, on the running view.
pub(super) struct Round<'a> {
    pub(super) engines: &'a mut [EngineView],
    revisions: &'a [i64],
    pub(super) cfg: &'a ManagerConfig,
    pub(super) now: &'a str,
    pub(super) max_ops: usize,
    newer: &'a Newer,
    pub(super) sample: usize,
    unfit: &'a mut Unfit,
    /// Where named volumes live: recorded, or in flight.
    volumes: &'a dyn Fn(&str) -> Option<EngineId>,
    /// Named volumes this round placed first.
    pub(super) fresh: HashMap<String, EngineId>,
    /// Each group's members per engine and domain, counted once per round when a member with
    /// group rules is first met, and kept current as the round places.
    pub(super) groups: HashMap<Arc<str>, GroupCounts>,
    /// Members of each group that are down: preempted before, and by this round (its
    /// disruption budget bounds them).
    pub(super) evicted: HashMap<Arc<str>, u32>,
    /// While a gang is tried: each engine it changed, as it was before.
    pub(super) journal: Option<Vec<(usize, EngineView)>>,
    /// The lowest priority any engine holds, once looked up this round.
    pub(super) lowest: Option<Option<i32>>,
    /// The round's work: the requests it decides are never evicted by it (each gets one item).
    pub(super) work: &'a [Work],
    /// Those requests, gathered the first time a preemption asks.
    pub(super) deciding: Option<std::collections::HashSet<RequestId>>,
    /// Each group's placed members and budget, looked up once per round when first needed.
    pub(super) group_index: Option<HashMap<Arc<str>, super::together::GroupStat>>,
}

/// A request to decide, and when and by whom the decision is made.
pub(super) struct Ask<'a> {
    pub(super) d: &'a Decide,
    pub(super) now: &'a str,
    pub(super) by: &'a str,
}

impl Ask<'_> {
    /// What earlier placements went through stays in the decision.
    fn run(&self) -> Option<Run> {
        self.d.history.as_deref().map(|h| Run {
            attempts: h.attempts.clone(),
            lost: h.lost.clone(),
            ..Default::default()
        })
    }

    /// A decision without a placement. The echo is built only for a decision that is written.
    pub(super) fn decision(&self, status: Status, reason: String) -> Decision {
        Decision {
            container: Echo::of(&self.d.raw),
            resource: None,
            reservation: None,
            status,
            reason,
            scheduler: String::new(),
            alternatives: Vec::new(),
            request_revision: self.d.request_revision,
            decided_at: self.now.to_string(),
            decided_by: self.by.to_string(),
            run: self.run(),
            preempted_by: String::new(),
            preempted: Vec::new(),
        }
    }

    pub(super) fn refuse(&self, status: Status, reason: String) -> Item {
        Item::Refuse {
            id: self.d.id.clone(),
            decision_fence: self.d.decision_fence,
            decision: self.decision(status, reason),
            agent: AgentOps::default(),
        }
    }

    /// Why it is being moved, for the reason people read.
    fn moved(&self) -> String {
        match &self.d.displaced {
            None => String::new(),
            Some(Displaced::Removed(e)) => format!(" (moved: engine {e} was removed)"),
            Some(Displaced::Drained(e)) => format!(" (moved: engine {e} is being drained)"),
            Some(Displaced::Shrunk(e)) => {
                format!(" (moved: engine {e} holds more than its capacity)")
            }
        }
    }
}

impl Round<'_> {
    pub(super) fn decide(&mut self, d: &Decide, parsed: &Parsed, proposal: Option<Plan>) -> Item {
        let ask = Ask {
            d,
            now: self.now,
            by: self.cfg.replica.as_str(),
        };
        let prepared = match parsed {
            Ok(p) => p,
            Err(e) => {
                // A field a newer release knows is no typo: leave the request to it.
                if let Some((field, to)) = self.newer.knower(&d.raw) {
                    return Item::Defer {
                        id: d.id.clone(),
                        field,
                        to: to.to_string(),
                    };
                }
                return ask.refuse(Status::Invalid, e.to_string());
            }
        };
        // Its placement must commit in one transaction, whatever else it holds.
        if let Err(too_many) = super::batch::place_fits(&prepared.request, self.max_ops) {
            return ask.refuse(Status::Invalid, too_many);
        }
        // A batch placement whose engine was removed is lost, as when an engine's health
        // lapses under it; a service is placed again.
        if let (Some(Displaced::Removed(engine)), Lifecycle::Batch) = (&d.displaced, d.lifecycle) {
            return ask.refuse(
                Status::Lost,
                format!("engine {engine} was removed while this batch request was placed on it"),
            );
        }
        // Engines the container failed to start on are never tried again.
        let excluding = d
            .history
            .as_deref()
            .filter(|h| !h.attempts.is_empty())
            .and_then(|h| excluding(prepared, &h.attempts));
        let (prepared, proposal) = match &excluding {
            Some(p) => (p, None),
            None => (prepared, proposal),
        };
        // Named volumes stick to the engine they were first placed on.
        let pinned = self.pins(prepared);
        let prepared = pinned.as_ref().unwrap_or(prepared);
        // The group's rules, on what the group holds now.
        let ruled = self.group_rules(prepared);
        let prepared = ruled.as_ref().unwrap_or(prepared);
        let strategy = match self.cfg.schedulers.for_type(&prepared.request.kind) {
            Ok(s) => s,
            Err(e) => return ask.refuse(Status::Invalid, e.to_string()),
        };
        // A plan that depends on other placements (affinity, a volume) is made on this view
        // only: the frozen one does not see what this round placed before it.
        let verified = proposal.filter(|p| {
            !prepared.depends_on_placements()
                && prepared.fits_resources(&self.engines[p.engine]).is_ok()
        });
        if verified.is_none()
            && let Some(reason) = self.unfit.reason(prepared)
        {
            let reason = reason.to_string();
            if let Some(together) = self.preempt_for(&ask, prepared, strategy) {
                return together;
            }
            return self.unschedulable(&ask, reason);
        }
        let chosen = match verified {
            Some(p) => Ok(p),
            None => scheduler::schedule(prepared, self.engines, strategy, seed(&d.id), self.sample),
        };
        match chosen {
            Ok(plan) => self.place(&ask, prepared, strategy, plan),
            Err(u) => {
                self.unfit.remember(prepared, &u.reason);
                if let Some(together) = self.preempt_for(&ask, prepared, strategy) {
                    return together;
                }
                self.unschedulable(&ask, u.reason)
            }
        }
    }

    /// Reserves the chosen engine in the running view and writes the placement.
    pub(super) fn place(
        &mut self,
        ask: &Ask<'_>,
        prepared: &Prepared,
        strategy: Strategy,
        plan: Plan,
    ) -> Item {
        let request = &prepared.request;
        let i = plan.engine;
        let alternatives = self.alternatives(prepared, strategy, i);
        self.touch(i);
        let e = &mut self.engines[i];
        let soft = if plan.soft_dropped {
            " (soft constraints ignored)"
        } else {
            ""
        };
        let held = Held::of(request);
        let reason = format!("{strategy} chose {}{soft}{}", e.id, ask.moved());
        let decision = Decision {
            resource: Some(e.resource()),
            reservation: Some(Reservation::of(&held)),
            scheduler: strategy.to_string(),
            alternatives,
            ..ask.decision(Status::Placed, reason)
        };
        e.hold_at(&ask.d.id, &held, ask.d.request_revision);
        let engine = e.id.clone();
        if let Some(counts) = held
            .rank
            .group
            .as_ref()
            .and_then(|g| self.groups.get_mut(g))
        {
            counts.placed(&self.engines[i]);
        }
        let mut volumes = Vec::new();
        for v in &request.volumes {
            if self.volume(v).is_none() {
                self.fresh.insert(v.clone(), engine.clone());
                volumes.push(v.clone());
            }
        }
        Item::Place {
            id: ask.d.id.clone(),
            decision_fence: ask.d.decision_fence,
            engine,
            engine_revision: self.revisions[i],
            held,
            decision,
            volumes,
            agent: AgentOps::default(),
        }
    }

    /// Where a named volume lives, if it was placed before (in this round or earlier).
    pub(super) fn volume(&self, name: &str) -> Option<EngineId> {
        self.fresh
            .get(name)
            .cloned()
            .or_else(|| (self.volumes)(name))
    }

    /// The request held to the engines its named volumes live on, if any of them does.
    pub(super) fn pins(&self, prepared: &Prepared) -> Option<Arc<Prepared>> {
        let pins: Vec<(String, EngineId)> = prepared
            .request
            .volumes
            .iter()
            .filter_map(|v| Some((v.clone(), self.volume(v)?)))
            .collect();
        (!pins.is_empty()).then(|| Arc::new(prepared.pinned(pins)))
    }

    /// The next engines that fit after the chosen one, best first, when the request asks.
    fn alternatives(
        &self,
        prepared: &Prepared,
        strategy: Strategy,
        chosen: usize,
    ) -> Vec<Alternative> {
        let n = prepared.request.alternatives;
        if n == 0 {
            return Vec::new();
        }
        scheduler::rank(prepared, self.engines, strategy, n + 1)
            .into_iter()
            .filter(|(i, _)| *i != chosen)
            .take(n)
            .map(|(i, score)| Alternative {
                engine: self.engines[i].id.to_string(),
                score: (score * 1e4).round() / 1e4,
            })
            .collect()
    }

    /// No engine fits. Unschedulable for the same reason as this revision's decision already
    /// says: nothing to write (parked until capacity changes).
    pub(super) fn unschedulable(&self, ask: &Ask<'_>, reason: String) -> Item {
        // A container that failed to start and has nowhere else to go has failed.
        if let Some(last) = ask.d.history.as_ref().and_then(|r| r.attempts.last()) {
            return ask.refuse(
                Status::Failed,
                format!(
                    "the container failed to start on {} ({}); no other engine can take it: {reason}",
                    last.engine, last.error
                ),
            );
        }
        let reason = format!("{reason}{}", ask.moved());
        match &ask.d.previous {
            // The same but for how much is free: not written again (see same_but_sizes).
            Some((Status::Unschedulable, r)) if scheduler::same_but_sizes(r, &reason) => {
                Item::Park {
                    id: ask.d.id.clone(),
                }
            }
            // Preempted, and no room yet: its decision keeps saying by whom while it waits.
            Some((Status::Preempted, _)) => Item::Park {
                id: ask.d.id.clone(),
            },
            _ => ask.refuse(Status::Unschedulable, reason),
        }
    }
}

/// The request with a hard `engine!=<id>` constraint per engine it failed on.
fn excluding(prepared: &Arc<Prepared>, attempts: &[Attempt]) -> Option<Arc<Prepared>> {
    let mut request = prepared.request.clone();
    for a in attempts {
        request.constraints.push(format!("engine!={}", a.engine));
    }
    Prepared::new(request).ok().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EngineId, EngineSpec, MAX_DEPTH};
    use proptest::prelude::{
        Just, ProptestConfig, Strategy as _, TestCaseError, any, prop_assert, prop_assert_eq,
        prop_oneof, proptest,
    };
    use std::collections::{BTreeMap, BTreeSet};

    fn engines() -> Vec<EngineView> {
        (0..4)
            .map(|i| {
                let id = EngineId::new(format!("e{i}")).unwrap();
                let spec = EngineSpec::parse(
                    &id,
                    format!(r#"{{"cpus":4,"memory":4096,"labels":["zone={}"]}}"#, i % 2).as_bytes(),
                )
                .unwrap();
                EngineView::new(&spec, 1.0)
            })
            .collect()
    }

    fn cfg() -> ManagerConfig {
        ManagerConfig {
            replica: crate::model::ReplicaId::new("me").expect("an id"),
            schedulers: crate::scheduler::Schedulers::default(),
            workers: 1,
            compact_every: None,
            compact_retain: 1,
            max_txn_ops: 128,
            preempt_gap: 1,
        }
    }

    fn decide(raw: &[u8]) -> Work {
        Work::Decide(Decide {
            id: RequestId::new("r").unwrap(),
            request_revision: 7,
            decision_fence: None,
            previous: None,
            raw: Arc::from(raw),
            parsed: None,
            lifecycle: Lifecycle::Service,
            history: None,
            displaced: None,
            gang_waited: None,
        })
    }

    const VALID: &str = r#"{"image":"redis","cpus":"0.5","memory":64,"type":"service","labels":["zone==1","engine!=/^e[0-2]$/"],"bind_ports":[{"port":8080}],"user_data":{"team":["a"]}}"#;

    fn prepared_fits(e: &EngineView, h: &Held) -> bool {
        e.reserved_cpus.0 + h.cpus.0 <= e.cpus.0 && e.reserved_memory.0 + h.memory.0 <= e.memory.0
    }

    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Request bodies a user could write: a valid one with random edits, deep nesting, extreme
    /// numbers, odd unicode, misspelt fields, random constraints and raw bytes.
    fn bodies() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let edits = proptest::collection::vec(
            (
                any::<proptest::sample::Index>(),
                0u8..3,
                prop_oneof![
                    Just(b'{'),
                    Just(b'}'),
                    Just(b'['),
                    Just(b']'),
                    Just(b'"'),
                    Just(b','),
                    Just(b':'),
                    Just(b'\\'),
                    Just(b'9'),
                    Just(b'e'),
                    Just(b'-'),
                    Just(0xff),
                    Just(0xc3)
                ],
            ),
            0..6,
        )
        .prop_map(|edits| {
            let mut b = VALID.as_bytes().to_vec();
            for (at, what, byte) in edits {
                let i = at.index(b.len() + 1);
                match what {
                    0 => b.insert(i, byte),
                    1 if i < b.len() => {
                        b.remove(i);
                    }
                    _ if i < b.len() => b[i] = byte,
                    _ => {}
                }
            }
            b
        });
        let deep = (0usize..300).prop_map(|n| {
            format!(
                r#"{{"image":"x","cpus":1,"memory":1,"type":"service","user_data":{{"d":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
            .into_bytes()
        });
        let numbers = prop_oneof![
            Just("1e999"),
            Just("-0"),
            Just("1e308"),
            Just("\"NaN\""),
            Just("\"inf\""),
            Just("0.0000001"),
            Just("18446744073709551616"),
            Just("-1"),
            Just("\" 2 \"")
        ]
        .prop_map(|n| {
            format!(r#"{{"image":"x","cpus":{n},"memory":{n},"type":"batch"}}"#).into_bytes()
        });
        let names = "[a-z_]{1,12}".prop_map(|field| {
            format!(r#"{{"image":"x","cpus":1,"memory":1,"type":"service","{field}":1}}"#)
                .into_bytes()
        });
        let constraints =
            proptest::collection::vec("[a-z=!~/\\\\()|*?+{}0-9^$.\u{e9}\u{1F600} ]{0,40}", 0..40)
                .prop_map(|labels| {
                    serde_json::to_vec(&serde_json::json!({
                        "image": "x", "cpus": 1, "memory": 1, "type": "service", "labels": labels
                    }))
                    .unwrap()
                });
        let unicode = "\\PC{0,64}".prop_map(|s| {
            serde_json::to_vec(&serde_json::json!({
                "image": s, "cpus": 1, "memory": 1, "type": s, "hostname": s
            }))
            .unwrap()
        });
        prop_oneof![
            edits,
            deep,
            numbers,
            names,
            constraints,
            unicode,
            proptest::collection::vec(any::<u8>(), 0..200),
        ]
    }

    /// A request of `cpus` for image `image`.
    fn ask(image: &str, cpus: u32) -> Vec<u8> {
        format!(r#"{{"image":"{image}","cpus":{cpus},"memory":64,"type":"service"}}"#).into_bytes()
    }

    #[test]
    fn a_shape_refused_in_an_epoch_is_refused_alike_without_a_scan_until_the_next() {
        let mut view = engines();
        let revisions = vec![1; view.len()];
        let mut unfit = Unfit::default();
        unfit.at(3);
        let one = |view: &mut Vec<EngineView>, unfit: &mut Unfit, image: &str, cpus: u32| {
            let body = ask(image, cpus);
            plan(
                &[decide(&body)],
                view,
                &revisions,
                &|_| None,
                &Deciding {
                    cfg: &cfg(),
                    now: "now",
                    max_ops: 128,
                    newer: &Newer::default(),
                    down: &HashMap::new(),
                },
                unfit,
            )
        };
        let reason = |items: &[Item]| match items {
            [Item::Refuse { decision, .. }] => decision.reason.clone(),
            other => panic!("expected one refusal: {other:?}"),
        };
        let first = reason(&one(&mut view, &mut unfit, "a", 8));
        assert!(first.starts_with("0/4 engines fit"), "{first}");
        assert_eq!(unfit.len(), 1);

        // The engines grow, but nothing told the leader (the same epoch): a request of the same
        // shape, for another image, gets the answer it remembered. That is what makes a
        // saturated cluster cheap; the cache starts a new epoch on every change of capacity.
        for e in &mut view {
            e.cpus = crate::model::Millicpus(16_000);
        }
        assert_eq!(reason(&one(&mut view, &mut unfit, "b", 8)), first);
        // Another shape is looked at.
        let other = one(&mut view, &mut unfit, "c", 9);
        assert!(matches!(&other[..], [Item::Place { .. }]), "{other:?}");

        // A new epoch forgets it.
        unfit.at(4);
        assert!(unfit.is_empty());
        let placed = one(&mut view, &mut unfit, "b", 8);
        assert!(matches!(&placed[..], [Item::Place { .. }]), "{placed:?}");
    }

    #[test]
    fn a_request_whose_placement_cannot_fit_one_transaction_is_invalid_with_the_limit_named() {
        let with_volumes = |n: usize| {
            let volumes: Vec<String> = (0..n).map(|i| format!("v{i}:/data/{i}")).collect();
            serde_json::json!({"image": "x", "cpus": 0.1, "memory": 1, "type": "service", "volumes": volumes})
                .to_string()
        };
        // (named volumes, max ops, placed)
        for (n, max_ops, placed) in [
            (125, 128, true),
            (126, 128, false),
            (8, 10, false),
            (7, 10, true),
        ] {
            let mut view = engines();
            let revisions = vec![1; view.len()];
            let body = with_volumes(n);
            let items = plan(
                &[decide(body.as_bytes())],
                &mut view,
                &revisions,
                &|_| None,
                &Deciding {
                    cfg: &cfg(),
                    now: "now",
                    max_ops,
                    newer: &Newer::default(),
                    down: &HashMap::new(),
                },
                &mut Unfit::default(),
            );
            match &items[..] {
                [Item::Place { volumes, .. }] if placed => assert_eq!(volumes.len(), n),
                [Item::Refuse { decision, .. }] if !placed => {
                    assert_eq!(decision.status, Status::Invalid);
                    let limit = max_ops - 3;
                    assert!(
                        decision.reason.starts_with(&format!(
                            "volumes: {n} named volumes, the limit is {limit}"
                        )),
                        "{}",
                        decision.reason
                    );
                    assert!(
                        decision.reason.contains("--max-txn-ops"),
                        "{}",
                        decision.reason
                    );
                }
                other => panic!("{n} volumes at {max_ops}: {other:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Gangs of random sizes and needs, mixed with single requests of random priorities,
        /// on engines partly filled with placements of random priority: every gang is placed
        /// whole, in one `Together`, or not at all, and the running view after the round
        /// holds exactly what the round placed (a gang that did not fit gave back everything
        /// it took, evictions included); no engine is overcommitted; nothing evicts a
        /// placement of equal or higher priority.
        #[test]
        fn a_gang_is_all_or_nothing_and_a_failed_gang_gives_the_view_back(
            filled in proptest::collection::vec((0u32..4, -5i32..5), 0..12),
            asks in proptest::collection::vec(
                (0u8..4, 1usize..5, 1u32..5, -5i32..10, any::<bool>()),
                1..10,
            ),
        ) {
            let mut view = engines();
            // Placed before the round, with their decisions written (evictable).
            for (k, (cpus, priority)) in filled.iter().enumerate() {
                let id = RequestId::new(format!("old-{k}")).unwrap();
                let e = &mut view[k % 4];
                let held = Held {
                    cpus: crate::model::Millicpus(u64::from(*cpus) * 500),
                    memory: crate::model::MemoryMb(16),
                    disk: crate::model::DiskMb(0),
                    ports: Vec::new(),
                    image: "x".into(),
                    rank: crate::model::Rank { priority: *priority, ..Default::default() },
                };
                if prepared_fits(e, &held) {
                    e.hold_at(&id, &held, k as i64 + 1);
                    if let Some(t) = Arc::make_mut(&mut e.tenants).get_mut(&id) {
                        t.decision = 100 + k as i64;
                    }
                }
            }
            let before: BTreeMap<RequestId, (EngineId, i32)> = view
                .iter()
                .flat_map(|e| e.tenants.iter().map(|(id, t)| (id.clone(), (e.id.clone(), t.held.rank.priority))))
                .collect();
            let mut work = Vec::new();
            let mut gang_of: BTreeMap<RequestId, (String, usize)> = BTreeMap::new();
            let mut priority_of: BTreeMap<RequestId, i32> = BTreeMap::new();
            for (g, (kind, size, cpus, priority, gang)) in asks.iter().enumerate() {
                let members = if *gang { *size } else { 1 };
                for m in 0..members {
                    let id = RequestId::new(format!("a{g}-{m}")).unwrap();
                    let mut body = serde_json::json!({
                        "image": "x", "cpus": f64::from(*cpus) * 0.5, "memory": 16,
                        "type": "service", "priority": priority,
                    });
                    if *gang {
                        body["group"] = serde_json::json!(format!("g{g}"));
                        body["group_min"] = serde_json::json!(size + usize::from(*kind == 0));
                        gang_of.insert(id.clone(), (format!("g{g}"), *size));
                    }
                    priority_of.insert(id.clone(), *priority);
                    let mut w = decide(body.to_string().as_bytes());
                    if let Work::Decide(d) = &mut w {
                        d.id = id;
                        d.request_revision = 1000 + g as i64;
                    }
                    work.push(w);
                }
            }
            let revisions = vec![1; view.len()];
            let items = plan(
                &work,
                &mut view,
                &revisions,
                &|_| None,
                &Deciding { cfg: &cfg(), now: "now", max_ops: 128, newer: &Newer::default(), down: &HashMap::new() },
                &mut Unfit::default(),
            );
            // What the round placed and evicted, and in which `Together` each placement was.
            let mut placed: BTreeMap<RequestId, (EngineId, usize)> = BTreeMap::new();
            let mut evicted: BTreeMap<RequestId, (EngineId, usize)> = BTreeMap::new();
            for (n, item) in items.iter().enumerate() {
                for leaf in item.leaves() {
                    match leaf {
                        Item::Place { id, engine, .. } => { placed.insert(id.clone(), (engine.clone(), n)); }
                        Item::Evict { id, engine, .. } => { evicted.insert(id.clone(), (engine.clone(), n)); }
                        _ => {}
                    }
                }
            }
            // All or nothing, in one item.
            let mut gangs: BTreeMap<&str, Vec<Option<usize>>> = BTreeMap::new();
            for (id, (g, _)) in &gang_of {
                gangs.entry(g.as_str()).or_default().push(placed.get(id).map(|(_, n)| *n));
            }
            for (g, at) in &gangs {
                let first = at[0];
                prop_assert!(at.iter().all(|a| *a == first), "gang {} split: {:?}", g, at);
            }
            // Nothing evicts equal or higher priority; a victim was placed before the round.
            for (victim, (engine, n)) in &evicted {
                let (was_on, p) = before.get(victim).cloned().expect("only old placements are evicted");
                prop_assert_eq!(&was_on, engine);
                let by: Vec<i32> = items[*n].leaves().iter().filter_map(|l| match l {
                    Item::Place { id, .. } => priority_of.get(id).copied(),
                    _ => None,
                }).collect();
                prop_assert!(by.iter().all(|b| *b > p), "{} (priority {}) evicted by {:?}", victim, p, by);
            }
            // The view holds exactly what was there, minus evictions, plus placements.
            for e in &view {
                prop_assert!(e.reserved_cpus <= e.cpus && e.reserved_memory <= e.memory, "{} overcommitted", e.id);
                let mut want: BTreeSet<RequestId> = before
                    .iter()
                    .filter(|(id, (on, _))| *on == e.id && !evicted.contains_key(*id))
                    .map(|(id, _)| id.clone())
                    .collect();
                want.extend(placed.iter().filter(|(_, (on, _))| *on == e.id).map(|(id, _)| id.clone()));
                let have: BTreeSet<RequestId> = e.tenants.keys().cloned().collect();
                prop_assert_eq!(have, want, "engine {}", e.id);
            }
        }

        /// Whatever a user writes, the parser and the scheduler neither panic nor stall, and the
        /// request gets exactly one decision, placed on an engine that fits or refused with a
        /// reason, which any JSON reader can read back.
        #[test]
        fn any_body_gets_one_readable_decision(body in bodies()) {
            let mut view = engines();
            let revisions = vec![1; view.len()];
            let started = std::time::Instant::now();
            let items = plan(
                &[decide(&body)],
                &mut view,
                &revisions,
                &|_| None,
                &Deciding {
                    cfg: &cfg(),
                    now: "now",
                    max_ops: 128,
                    newer: &Newer::default(),
                    down: &HashMap::new(),
                },
                &mut Unfit::default(),
            );
            // A stall detector, a thousand times what any request costs, not a benchmark.
            prop_assert!(started.elapsed() < std::time::Duration::from_secs(5));
            prop_assert_eq!(items.len(), 1);
            let decision = match &items[0] {
                Item::Place { decision, engine, .. } => {
                    let e = view.iter().find(|v| v.id == *engine).unwrap();
                    prop_assert!(e.reserved_cpus <= e.cpus && e.reserved_memory <= e.memory);
                    decision
                }
                Item::Refuse { decision, .. } => {
                    prop_assert!(!decision.reason.is_empty());
                    decision
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            let text = serde_json::to_string(decision).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert!(depth(&back) <= MAX_DEPTH + 2);
        }

        /// One round of requests, some anti-affine to their group, some mounting named
        /// volumes (a few recorded before the round): within the round, no engine takes two of
        /// an anti-affine group, every request that names a volume lands where the volume
        /// lives, and a volume placed first in the round is recorded once, where it went.
        #[test]
        fn one_round_keeps_affinity_and_volumes(
            asks in proptest::collection::vec((0u8..3, any::<bool>(), proptest::option::of(0u8..4)), 1..24),
            recorded in proptest::collection::btree_map(0u8..4, 0usize..4, 0..3),
        ) {
            let work: Vec<Work> = asks
                .iter()
                .enumerate()
                .map(|(k, (g, anti, vol))| {
                    let mut body = serde_json::json!({"image": "x", "cpus": 0.1, "memory": 16, "type": "service"});
                    if *anti {
                        body["affinity"] = serde_json::json!([format!("request!=g{g}-*")]);
                    }
                    if let Some(v) = vol {
                        body["volumes"] = serde_json::json!([format!("v{v}:/data")]);
                    }
                    let mut w = decide(body.to_string().as_bytes());
                    if let Work::Decide(d) = &mut w {
                        d.id = RequestId::new(format!("g{g}-{k}")).unwrap();
                    }
                    w
                })
                .collect();
            let mut view = engines();
            let revisions = vec![1; view.len()];
            let names: Vec<EngineId> = view.iter().map(|e| e.id.clone()).collect();
            let lookup = |name: &str| {
                let v: u8 = name.strip_prefix('v')?.parse().ok()?;
                recorded.get(&v).map(|i| names[*i].clone())
            };
            let items = plan(
                &work,
                &mut view,
                &revisions,
                &lookup,
                &Deciding {
                    cfg: &cfg(),
                    now: "now",
                    max_ops: 128,
                    newer: &Newer::default(),
                    down: &HashMap::new(),
                },
                &mut Unfit::default(),
            );
            let mut anti_on: BTreeSet<(u8, EngineId)> = BTreeSet::new();
            let mut volume_on: BTreeMap<u8, EngineId> = recorded
                .iter()
                .map(|(v, i)| (*v, names[*i].clone()))
                .collect();
            let mut written: BTreeSet<u8> = BTreeSet::new();
            for (item, (g, anti, vol)) in items.iter().zip(&asks) {
                let Item::Place { engine, volumes, .. } = item else { continue };
                if *anti {
                    prop_assert!(anti_on.insert((*g, engine.clone())), "two of group {g} on {engine}");
                }
                if let Some(v) = vol {
                    let home = volume_on.entry(*v).or_insert_with(|| engine.clone());
                    prop_assert_eq!(&*home, engine, "volume v{} split", v);
                }
                for name in volumes {
                    let v: u8 = name[1..].parse().unwrap();
                    prop_assert!(!recorded.contains_key(&v), "{name} was recorded already");
                    prop_assert!(written.insert(v), "{name} recorded twice");
                }
            }
        }
    }
}
