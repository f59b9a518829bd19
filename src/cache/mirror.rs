//! The mirror: what etcd holds under the prefix, as of one revision, in checked types.
//!
//! Engines, requests, decisions (with the reservations inside them and what each engine holds
//! in all), the election's keys, named volumes and engine health. It is written only by the
//! cache, from etcd's own record of what committed: the watch's events and lists, and the
//! leader's transaction responses, which tell it what committed before the watch echoes it.
//! Everyone else reads it.
//!
//! Each change it makes is reported (a [`Change`]) for the books kept on it; it keeps none
//! itself: no work sets, no guard, no view of what the leader intends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use etcd_client::KeyValue;

use super::change::{Change, EngineChange};
use super::decision::{DecisionFacts, DecisionHead};
use super::usage::{ReservationEntry, Usage, release_usage};
use crate::keys::{Key, Keys};
use crate::model::{
    Decision, EngineId, EngineSpec, Health, Invalid, LeaderInfo, Lifecycle, RequestId, Run,
    RunReport, Status, VolumeRecord,
};
use crate::scheduler::{EngineView, MAX_CLASSES, Parsed, Strategy, UNCLASSED, prepare};

/// A request as the mirror keeps it: its bytes and what was read of them when it was parsed.
#[derive(Debug, Clone)]
pub struct RequestEntry {
    pub mod_revision: i64,
    /// The request's bytes as written: echoed into its decision.
    raw: Arc<[u8]>,
    /// It asks to be launched (`"launch": true`).
    pub launch: bool,
    /// A service for an invalid request.
    pub lifecycle: Lifecycle,
    /// Higher is decided first (0 for an invalid request).
    pub priority: i32,
    /// The gang it belongs to (a group placed all or nothing) and how long the gang may
    /// wait to fit, in seconds.
    pub gang: Option<(Arc<str>, u64)>,
    /// The group it belongs to, if its group has a disruption budget.
    pub budgeted: Option<Arc<str>>,
}

impl RequestEntry {
    /// The request's bytes as written.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The bytes, shared.
    pub fn raw_shared(&self) -> Arc<[u8]> {
        self.raw.clone()
    }

    /// The request as written: its JSON, or a string when it was not JSON.
    pub fn container(&self) -> serde_json::Value {
        crate::model::Echo::of(&self.raw).value()
    }
}

#[derive(Debug, Clone)]
pub struct DecisionEntry {
    pub mod_revision: i64,
    pub status: Status,
    pub reason: String,
    pub request_revision: i64,
    pub engine: Option<EngineId>,
    /// The strategy that chose the engine, if it names one we know.
    pub scheduler: Option<Strategy>,
    /// The container's fate, for decisions of launched requests.
    pub run: Option<Box<Run>>,
    /// A placement that preempted others: the requests it evicted (their containers stop
    /// before its own starts).
    pub preempted: Option<Box<[String]>>,
}

/// A request key whose last segment cannot be a request id, with the decision key that
/// mirrors it (see [`Key::OddRequest`]).
#[derive(Debug, Clone, Default)]
pub struct OddEntry {
    pub request: Option<OddRequest>,
    /// The request revision its decision answers (`-1`: an unreadable decision).
    pub decided: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct OddRequest {
    pub mod_revision: i64,
    /// Its bytes as written, echoed into its decision.
    pub raw: Arc<[u8]>,
    /// Why its key cannot name a request id.
    pub why: String,
}

impl OddEntry {
    /// Whether the leader must write (or delete) its decision.
    pub fn unanswered(&self) -> bool {
        match &self.request {
            Some(r) => self.decided != Some(r.mod_revision),
            None => self.decided.is_some(),
        }
    }
}

/// What the last `health/<engine>` said.
#[derive(Debug, Clone)]
pub struct HealthEntry {
    pub health: Health,
    /// The lease the key lives on (a new leader keeps it alive).
    pub lease: i64,
}

#[derive(Debug, Clone)]
pub(super) struct EngineEntry {
    pub(super) mod_revision: i64,
    pub(super) spec: Result<(EngineSpec, EngineView), Invalid>,
}

/// An election key (`leader/<suffix>`) as the mirror last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderKey {
    pub create_revision: i64,
    /// 0: the key has no lease (never written by etcd's election API).
    pub lease: i64,
    /// The candidate's own description, when the value is one.
    pub info: Option<LeaderInfo>,
}

/// An agent's report on one request (`runs/<engine>/<request>`).
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub mod_revision: i64,
    /// `None`: the value is not a report (written by hand); it is deleted with the assignment.
    pub report: Option<RunReport>,
}

/// The fields the mirror reads of an assignment.
#[derive(serde::Deserialize)]
struct AssignmentHead {
    request_revision: i64,
}

/// An assignment as the mirror keeps it (its spec is the agent's to read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignmentEntry {
    pub mod_revision: i64,
    /// The request revision it answers (`-1`: unreadable).
    pub request_revision: i64,
}

/// The one field the mirror reads of an odd request key's decision.
#[derive(serde::Deserialize)]
struct Answers {
    request_revision: i64,
}

#[derive(Debug, Default)]
pub struct Mirror {
    /// Every event up to this revision is applied.
    pub(super) revision: i64,
    pub(super) overcommit: f64,
    pub(super) engines: BTreeMap<EngineId, EngineEntry>,
    pub(super) requests: HashMap<RequestId, RequestEntry>,
    pub(super) decisions: HashMap<RequestId, DecisionEntry>,
    /// What placed decisions hold, read from the decisions themselves.
    pub(super) reservations: HashMap<RequestId, ReservationEntry>,
    /// What each engine holds, summed over its reservations.
    pub(super) usage: HashMap<EngineId, Usage>,
    /// The election's campaign keys, by suffix.
    pub(super) leaders: BTreeMap<String, LeaderKey>,
    /// Bumped whenever a campaign key is written or deleted.
    pub(super) leaders_generation: u64,
    /// Some request has asked for affinity: engines keep their tenants from then on.
    pub(super) tracks_tenants: bool,
    /// Bumped whenever an engine is added, changed or removed, or its view gains a field.
    pub(super) engine_generation: u64,
    /// Engine label sets as written, numbered: engines with one set share a scheduling class
    /// (see [`EngineView::class`]). At most [`MAX_CLASSES`]; emptied by a list.
    pub(super) label_classes: HashMap<Vec<String>, u32>,
    pub(super) health: HashMap<EngineId, HealthEntry>,
    /// Request keys whose last segment cannot be a request id, by that segment's bytes.
    pub(super) odd: BTreeMap<Vec<u8>, OddEntry>,
    /// Engine keys whose last segment is not UTF-8 text: never scheduled, only listed.
    pub(super) odd_engines: std::collections::BTreeSet<Vec<u8>>,
    /// Where each named volume lives (`volumes/<name>`). Shared with the leader's rounds.
    pub(super) volumes: Arc<HashMap<String, EngineId>>,
    /// `assignments/<engine>/<request>`, by request: usually one engine, two while a move's
    /// old assignment is still being deleted (or after a hand-written one).
    pub(super) assignments: HashMap<RequestId, BTreeMap<EngineId, AssignmentEntry>>,
    /// `runs/<engine>/<request>`, by request and engine.
    pub(super) runs: HashMap<RequestId, BTreeMap<EngineId, RunEntry>>,
    /// How many valid engines an agent registered.
    pub(super) agents: usize,
    /// The newest revision of a decision the leader applied from its own commit.
    fed: i64,
    /// A fresh list may have wiped decisions applied from commits: they are in the mirror
    /// again once it reaches this revision (see [`Mirror::caught_up`]).
    replay_until: i64,
    /// Where the requests stand, kept as they change (see `tally.rs`).
    pub(super) tally: super::tally::Tally,
}

impl Mirror {
    pub fn new(overcommit: f64) -> Self {
        Mirror {
            overcommit,
            ..Mirror::default()
        }
    }

    /// Every event up to this revision is applied.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether every decision the leader applied from its commits, up to the newest, is in the
    /// mirror again: a fresh list may have wiped those applied while it was read, and the
    /// watch replays them first.
    pub fn caught_up(&self) -> bool {
        self.revision >= self.replay_until
    }

    pub(super) fn reached(&mut self, revision: i64) -> i64 {
        self.revision = self.revision.max(revision);
        self.revision
    }

    /// etcd went back in time: the leader's commits applied ahead of the watch belong to the
    /// old history, and the next list is not to wait for the watch to replay them.
    pub(super) fn rewound(&mut self) {
        self.fed = 0;
    }

    /// Replaces everything with a fresh list taken at `revision`; `parsed` holds each key's
    /// request parse. Returns the requests' parses.
    pub(super) fn reset(
        &mut self,
        keys: &Keys,
        kvs: &[KeyValue],
        parsed: Vec<Option<Parsed>>,
        revision: i64,
    ) -> Vec<(RequestId, Parsed)> {
        let (fed, generation) = (self.fed, self.engine_generation);
        let leaders_generation = self.leaders_generation;
        *self = Mirror::new(self.overcommit);
        self.engine_generation = generation + 1;
        self.leaders_generation = leaders_generation + 1;
        self.fed = fed;
        self.replay_until = fed;
        let mut changes = Vec::new();
        let mut requests = Vec::new();
        for (kv, parsed) in kvs.iter().zip(parsed) {
            self.put(keys, kv, parsed, &mut changes);
            for change in changes.drain(..) {
                if let Change::Request {
                    id,
                    parsed: Some(p),
                } = change
                {
                    requests.push((id, p));
                }
            }
        }
        self.revision = revision;
        requests
    }

    pub(super) fn put(
        &mut self,
        keys: &Keys,
        kv: &KeyValue,
        parsed: Option<Parsed>,
        out: &mut Vec<Change>,
    ) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => self.put_engine(id, kv, out),
            Key::Request(id) => self.put_request(id, kv, parsed, out),
            Key::OddRequest(segment, why) => {
                tracing::warn!(key = %kv.key().escape_ascii(), reason = %why,
                    "request key cannot name a request id: it is decided invalid");
                let request = OddRequest {
                    mod_revision: kv.mod_revision(),
                    raw: Arc::from(kv.value()),
                    why,
                };
                self.odd.entry(segment.clone()).or_default().request = Some(request);
                out.push(Change::Odd(segment));
            }
            Key::OddEngine(segment) => {
                tracing::warn!(key = %kv.key().escape_ascii(),
                    "engine key ignored: it is never scheduled: its id is not UTF-8 text");
                self.odd_engines.insert(segment);
            }
            Key::OddDecision(segment) => {
                let answers = serde_json::from_slice::<Answers>(kv.value())
                    .map_or(-1, |a| a.request_revision);
                self.odd.entry(segment.clone()).or_default().decided = Some(answers);
                out.push(Change::Odd(segment));
            }
            Key::Decision(id) => self.read_decision(&id, kv.mod_revision(), kv.value(), out),
            Key::Leader(suffix) => {
                self.leaders_generation += 1;
                self.leaders.insert(
                    suffix,
                    LeaderKey {
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                        info: serde_json::from_slice(kv.value()).ok(),
                    },
                );
            }
            Key::Volume(name) => {
                match serde_json::from_slice::<VolumeRecord>(kv.value())
                    .ok()
                    .and_then(|v| EngineId::new(v.engine).ok())
                {
                    Some(engine) => self.volume_recorded(&name, engine, out),
                    None => tracing::warn!(volume = %name, "unreadable volume key; ignored"),
                }
            }
            Key::Assignment(engine, id) => {
                let request_revision = serde_json::from_slice::<AssignmentHead>(kv.value())
                    .map_or(-1, |a| a.request_revision);
                let entry = AssignmentEntry {
                    mod_revision: kv.mod_revision(),
                    request_revision,
                };
                self.assignments
                    .entry(id.clone())
                    .or_default()
                    .insert(engine, entry);
                out.push(Change::Agent(id));
            }
            Key::Run(engine, id) => {
                let report = serde_json::from_slice::<RunReport>(kv.value()).ok();
                if report.is_none() {
                    tracing::warn!(engine = %engine, request = %id, "unreadable run report");
                }
                let entry = RunEntry {
                    mod_revision: kv.mod_revision(),
                    report,
                };
                self.runs
                    .entry(id.clone())
                    .or_default()
                    .insert(engine, entry);
                out.push(Change::Agent(id));
            }
            Key::Health(engine) => match serde_json::from_slice::<Health>(kv.value()) {
                Ok(health) => {
                    let was = self.health.insert(
                        engine.clone(),
                        HealthEntry {
                            health,
                            lease: kv.lease(),
                        },
                    );
                    out.push(Change::Health {
                        engine,
                        first: was.is_none(),
                    });
                }
                Err(e) => tracing::warn!(engine = %engine, error = %e, "unreadable health key"),
            },
        }
    }

    fn put_engine(&mut self, id: EngineId, kv: &KeyValue, out: &mut Vec<Change>) {
        let spec = EngineSpec::parse(&id, kv.value()).map(|s| {
            let mut view = EngineView::new(&s, self.overcommit);
            view.class = self.class_of(&s.labels);
            (s, view)
        });
        if let Err(e) = &spec {
            tracing::warn!(engine = ?id.as_str(), error = %e, "engine key ignored: it is never scheduled");
        }
        let drained = matches!(&spec, Ok((s, _)) if s.drained);
        self.agents += usize::from(has_agent(&spec));
        let was = self.engines.insert(
            id.clone(),
            EngineEntry {
                mod_revision: kv.mod_revision(),
                spec,
            },
        );
        self.engine_generation += 1;
        if let Some(was) = &was {
            self.agents -= usize::from(has_agent(&was.spec));
        }
        let how = match was {
            None => EngineChange::Added,
            Some(EngineEntry { spec, .. }) => EngineChange::Changed {
                drain: drained != matches!(&spec, Ok((s, _)) if s.drained),
            },
        };
        out.push(Change::Engine { id, how });
    }

    /// The scheduling class of engines labelled `labels`: numbered as label sets are first
    /// seen, at most [`MAX_CLASSES`].
    fn class_of(&mut self, labels: &[String]) -> u32 {
        if let Some(class) = self.label_classes.get(labels) {
            return *class;
        }
        match u32::try_from(self.label_classes.len()) {
            Ok(next) if next < MAX_CLASSES => {
                self.label_classes.insert(labels.to_vec(), next);
                next
            }
            _ => UNCLASSED,
        }
    }

    fn put_request(
        &mut self,
        id: RequestId,
        kv: &KeyValue,
        parsed: Option<Parsed>,
        out: &mut Vec<Change>,
    ) {
        let parsed = parsed.unwrap_or_else(|| prepare(&id, kv.value()));
        let request = parsed.as_ref().ok().map(|p| &p.request);
        let launch = request.is_some_and(|r| r.image.launch);
        let lifecycle = request.map(|r| r.lifecycle).unwrap_or_default();
        if !self.tracks_tenants
            && request.is_some_and(|r| {
                !r.affinity.is_empty() || r.priority != 0 || !r.preemptible || r.group.is_some()
            })
        {
            self.track_tenants();
        }
        let entry = RequestEntry {
            mod_revision: kv.mod_revision(),
            raw: Arc::from(kv.value()),
            launch,
            lifecycle,
            priority: request.map_or(0, |r| r.priority),
            gang: request
                .and_then(|r| r.group.as_ref())
                .filter(|g| g.is_gang())
                .map(|g| (g.name.clone(), g.timeout_s)),
            budgeted: request
                .and_then(|r| r.group.as_ref())
                .filter(|g| g.disruption_budget.is_some())
                .map(|g| g.name.clone()),
        };
        self.tallied(&id, |m| m.requests.insert(id.clone(), entry));
        out.push(Change::Request {
            id,
            parsed: Some(parsed),
        });
    }

    pub(super) fn delete(&mut self, keys: &Keys, kv: &KeyValue, out: &mut Vec<Change>) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => {
                if let Some(was) = self.engines.remove(&id) {
                    self.agents -= usize::from(has_agent(&was.spec));
                }
                self.engine_generation += 1;
                out.push(Change::Engine {
                    id,
                    how: EngineChange::Removed,
                });
            }
            Key::Request(id) => {
                self.tallied(&id, |m| m.requests.remove(&id));
                out.push(Change::Request { id, parsed: None });
            }
            Key::Decision(id) => self.remove_decision(&id, out),
            Key::Leader(suffix) => {
                self.leaders_generation += 1;
                self.leaders.remove(&suffix);
            }
            Key::Volume(name) => {
                if Arc::make_mut(&mut self.volumes).remove(&name).is_some() {
                    out.push(Change::Volumes);
                }
            }
            Key::Health(engine) => {
                if self.health.remove(&engine).is_some() {
                    out.push(Change::Usage(engine));
                }
            }
            Key::OddRequest(segment, _) => self.odd_gone(segment, |e| e.request = None, out),
            Key::OddDecision(segment) => self.odd_gone(segment, |e| e.decided = None, out),
            Key::OddEngine(segment) => {
                self.odd_engines.remove(&segment);
            }
            Key::Assignment(engine, id) => {
                if remove_nested(&mut self.assignments, &id, &engine) {
                    out.push(Change::Agent(id));
                }
            }
            Key::Run(engine, id) => {
                if remove_nested(&mut self.runs, &id, &engine) {
                    out.push(Change::Agent(id));
                }
            }
        }
    }

    fn odd_gone(
        &mut self,
        segment: Vec<u8>,
        clear: impl FnOnce(&mut OddEntry),
        out: &mut Vec<Change>,
    ) {
        if let Some(e) = self.odd.get_mut(&segment) {
            clear(e);
            if e.request.is_none() && e.decided.is_none() {
                self.odd.remove(&segment);
            }
            out.push(Change::Odd(segment));
        }
    }

    /// The leader wrote (`Some`: for this request revision) or deleted the decision of the odd
    /// request key with this segment, and it committed.
    pub(super) fn odd_committed(
        &mut self,
        segment: &[u8],
        rev: i64,
        answers: Option<i64>,
        out: &mut Vec<Change>,
    ) {
        self.fed = self.fed.max(rev);
        match answers {
            Some(r) => self.odd.entry(segment.to_vec()).or_default().decided = Some(r),
            None => return self.odd_gone(segment.to_vec(), |e| e.decided = None, out),
        }
        out.push(Change::Odd(segment.to_vec()));
    }

    /// Reads a decision's value, as every replica does.
    pub(super) fn read_decision(
        &mut self,
        id: &RequestId,
        rev: i64,
        value: &[u8],
        out: &mut Vec<Change>,
    ) {
        match serde_json::from_slice::<DecisionHead>(value) {
            Ok(mut head) => self.set_decision(id, rev, head.facts(), false, out),
            Err(e) => {
                // Not ours (written by hand?): decide the request anew over it.
                tracing::warn!(request = %id, error = %e, "unreadable decision");
                self.set_decision(id, rev, DecisionFacts::unreadable(), false, out);
            }
        }
    }

    /// A decision the leader committed at `rev` (`None`: it deleted it).
    pub(super) fn committed(
        &mut self,
        id: &RequestId,
        rev: i64,
        decision: Option<&Decision>,
        out: &mut Vec<Change>,
    ) {
        self.fed = self.fed.max(rev);
        match decision {
            Some(d) => self.set_decision(id, rev, DecisionFacts::of(d), true, out),
            None => self.unset_decision(id, true, out),
        }
    }

    fn set_decision(
        &mut self,
        id: &RequestId,
        mod_revision: i64,
        d: DecisionFacts<'_>,
        own: bool,
        out: &mut Vec<Change>,
    ) {
        let engine = match d.engine.as_deref().map(EngineId::new) {
            Some(Ok(engine)) => Some(engine),
            Some(Err(e)) => {
                tracing::warn!(request = %id, error = %e,
                    "decision names an impossible engine; it will be released");
                None
            }
            None => None,
        };
        let held = match (&engine, d.reservation) {
            (Some(at), Some(r)) => Some(ReservationEntry::new(at.clone(), r)),
            _ => None,
        };
        let held_on = held.as_ref().map(|h| h.engine.clone());
        let freed = self.hold(id, held, (d.request_revision, mod_revision), out);
        let entry = DecisionEntry {
            mod_revision,
            status: d.status,
            reason: d.reason,
            request_revision: d.request_revision,
            engine,
            scheduler: d.scheduler,
            run: d.run,
            preempted: d.preempted,
        };
        self.tallied(id, |m| m.decisions.insert(id.clone(), entry));
        out.push(Change::Decision {
            id: id.clone(),
            freed,
            held_on,
            own,
        });
    }

    pub(super) fn remove_decision(&mut self, id: &RequestId, out: &mut Vec<Change>) {
        self.unset_decision(id, false, out);
    }

    fn unset_decision(&mut self, id: &RequestId, own: bool, out: &mut Vec<Change>) {
        let freed = self.hold(id, None, (0, 0), out);
        self.tallied(id, |m| m.decisions.remove(id));
        out.push(Change::Decision {
            id: id.clone(),
            freed,
            held_on: None,
            own,
        });
    }

    /// Sets what `id`'s decision holds, keeping every engine's sum. Returns the engine a
    /// reservation was released from (capacity grew there), if any.
    fn hold(
        &mut self,
        id: &RequestId,
        new: Option<ReservationEntry>,
        (revision, decision): (i64, i64),
        out: &mut Vec<Change>,
    ) -> Option<EngineId> {
        if let Some(n) = &new {
            self.usage.entry(n.engine.clone()).or_default().add(n);
            out.push(Change::Usage(n.engine.clone()));
        }
        let old = match new {
            Some(n) => self.reservations.insert(id.clone(), n),
            None => self.reservations.remove(id),
        };
        let mut freed = None;
        if let Some(old) = old {
            release_usage(&mut self.usage, id, &old);
            if self.reservations.get(id) != Some(&old) {
                freed = Some(old.engine.clone());
            }
            out.push(Change::Usage(old.engine));
        }
        if self.tracks_tenants
            && let Some(n) = self.reservations.get(id)
            && let Some(u) = self.usage.get_mut(&n.engine)
        {
            Arc::make_mut(&mut u.tenants).insert(id.clone(), n.tenant(revision, decision));
        }
        freed
    }

    /// From now on engines keep their tenants (a request asked for affinity, a priority or a
    /// group): what they hold already is filled in, and views built before are stale.
    pub(super) fn track_tenants(&mut self) {
        self.tracks_tenants = true;
        for (id, r) in &self.reservations {
            let (revision, decision) = self
                .decisions
                .get(id)
                .map_or((0, 0), |d| (d.request_revision, d.mod_revision));
            if let Some(u) = self.usage.get_mut(&r.engine) {
                Arc::make_mut(&mut u.tenants).insert(id.clone(), r.tenant(revision, decision));
            }
        }
        self.engine_generation += 1;
    }

    /// A named volume lives on `engine` (read from its key, or committed by the leader).
    pub(super) fn volume_recorded(&mut self, name: &str, engine: EngineId, out: &mut Vec<Change>) {
        if self.volumes.get(name) != Some(&engine) {
            Arc::make_mut(&mut self.volumes).insert(name.to_string(), engine);
            out.push(Change::Volumes);
        }
    }
}

fn has_agent(spec: &Result<(EngineSpec, EngineView), Invalid>) -> bool {
    spec.as_ref().is_ok_and(|(s, _)| s.wire.agent.is_some())
}

/// Removes `outer[id][engine]`, and `outer[id]` once empty; whether there was one.
fn remove_nested<V>(
    outer: &mut HashMap<RequestId, BTreeMap<EngineId, V>>,
    id: &RequestId,
    engine: &EngineId,
) -> bool {
    let Some(inner) = outer.get_mut(id) else {
        return false;
    };
    let had = inner.remove(engine).is_some();
    if inner.is_empty() {
        outer.remove(id);
    }
    had
}
