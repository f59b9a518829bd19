//! The cache's state: the mirror of every key, and the work sets the leader takes its work from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use etcd_client::{EventType, KeyValue};
use serde::de::IgnoredAny;

use super::guard::Guard;
use crate::keys::{Key, Keys};
use crate::model::{
    ClusterInfo, Decision, EngineId, EngineSpec, Health, HostPort, Invalid, LeaderInfo, Lifecycle,
    MemoryMb, Millicpus, Request, RequestId, Reservation, Resource, Run, Status,
};
use crate::scheduler::{EngineView, MAX_CLASSES, Prepared, Strategy, UNCLASSED};

#[derive(Debug, Clone)]
pub struct RequestEntry {
    pub mod_revision: i64,
    /// The request's bytes as written: echoed into its decision.
    raw: Arc<[u8]>,
    /// The checked request with its constraints compiled, or why it is invalid. Kept only while
    /// the request waits for a decision: a decided request costs its bytes and little more.
    parsed: Option<Result<Arc<Prepared>, Invalid>>,
    /// The request asks to be launched (`"launch": true`), read when it was parsed.
    launch: bool,
    /// Read when it was parsed (a service for an invalid request).
    pub lifecycle: Lifecycle,
}

impl RequestEntry {
    /// The request's bytes as written.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The request as written: its JSON, or a string when it was not JSON.
    pub fn container(&self) -> serde_json::Value {
        crate::model::Echo::of(&self.raw).value()
    }
}

/// A request's parse, made before the state's lock is taken: parsing and compiling constraints
/// is the costliest thing a request asks of a replica, and must not hold up anyone else.
pub type Parsed = Result<Arc<Prepared>, Invalid>;

/// Parses and checks a request (its id too) and compiles its constraints.
pub fn prepare(id: &RequestId, raw: &[u8]) -> Parsed {
    if let Err(e) = id.check() {
        return Err(Invalid(format!("id: {e}")));
    }
    let request = Request::parse(raw)?;
    Prepared::new(request).map(Arc::new).map_err(Invalid)
}

#[derive(Debug, Clone)]
pub struct DecisionEntry {
    pub mod_revision: i64,
    pub status: Status,
    pub reason: String,
    pub request_revision: i64,
    pub engine: Option<String>,
    /// The strategy that chose the engine, if it names one we know.
    pub scheduler: Option<Strategy>,
    /// The container's fate, for decisions of launched requests.
    pub run: Option<Box<Run>>,
}

/// What the cache keeps of a decision, however it learnt of it.
struct DecisionFacts<'a> {
    status: Status,
    reason: String,
    request_revision: i64,
    engine: Option<String>,
    scheduler: Option<Strategy>,
    reservation: Option<&'a Reservation>,
    run: Option<Box<Run>>,
}

impl<'a> DecisionFacts<'a> {
    fn of(d: &'a Decision) -> Self {
        DecisionFacts {
            status: d.status,
            reason: d.reason.clone(),
            request_revision: d.request_revision,
            engine: d.resource.as_ref().map(|r| r.id.clone()),
            scheduler: d.scheduler.parse().ok(),
            reservation: d.reservation.as_ref(),
            run: d.run.clone().map(Box::new),
        }
    }
}

/// What the cache reads of a decision: [`Decision`]'s required fields and those it keeps.
/// The echoed request (`container`) and the rest of `resource` are skipped, not built: every
/// standby reads every decision.
#[derive(serde::Deserialize)]
struct DecisionHead {
    #[serde(rename = "container")]
    _container: IgnoredAny,
    #[serde(default)]
    resource: Option<ResourceId>,
    #[serde(default)]
    reservation: Option<Reservation>,
    status: Status,
    #[serde(default)]
    reason: String,
    request_revision: i64,
    #[serde(default)]
    scheduler: String,
    #[serde(default)]
    run: Option<Run>,
    #[serde(rename = "decided_at")]
    _decided_at: IgnoredAny,
    #[serde(rename = "decided_by")]
    _decided_by: IgnoredAny,
}

#[derive(serde::Deserialize)]
struct ResourceId {
    id: String,
    #[serde(rename = "addr")]
    _addr: IgnoredAny,
    #[serde(rename = "total_cpus")]
    _total_cpus: IgnoredAny,
    #[serde(rename = "total_memory")]
    _total_memory: IgnoredAny,
}

/// One reservation, as `citadel engine show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub request: RequestId,
    pub status: Option<Status>,
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub ports: Vec<HostPort>,
}

/// How engine health weighs in scheduling (the leader's `--docker` and `--count-live`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Only engines with a `health/<engine>` key are schedulable; placed requests that ask for
    /// it (or all, with `launch_all`) are launched.
    pub docker: bool,
    /// Count max(reserved, live) against capacity instead of reservations alone.
    pub count_live: bool,
    pub launch_all: bool,
}

/// What the last `health/<engine>` said.
#[derive(Debug, Clone)]
pub struct HealthEntry {
    pub health: Health,
    /// The lease the key lives on (a new leader keeps it alive).
    pub lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ReservationEntry {
    engine: EngineId,
    cpus: Millicpus,
    memory: MemoryMb,
    ports: Vec<HostPort>,
}

impl ReservationEntry {
    fn new(engine: EngineId, r: &Reservation) -> Self {
        let held = r.held();
        ReservationEntry {
            engine,
            cpus: held.cpus,
            memory: held.memory,
            ports: held.ports,
        }
    }
}

#[derive(Debug, Clone)]
struct EngineEntry {
    mod_revision: i64,
    spec: Result<(EngineSpec, EngineView), Invalid>,
}

/// What one engine holds, summed over its reservations. Ports are counted so that a (wrong)
/// double booking made by hand does not free the port when one of the two is released.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub ports: BTreeMap<HostPort, u32>,
    pub count: u64,
    /// Not schedulable: no health key while the policy asks for one.
    pub unhealthy: bool,
    /// Live use to count against capacity (zero unless the policy counts it).
    pub live_cpus: Millicpus,
    pub live_memory: MemoryMb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pending(i64),
    Release,
    Waiting,
}

/// A unit of work for the leader, read from one snapshot.
#[derive(Debug, Clone)]
pub enum Work {
    /// Decide a request that has no current decision.
    Decide {
        id: RequestId,
        request_revision: i64,
        /// Compare the decision key's mod revision too (`Some(0)`: it must not exist): only for
        /// a request whose last write has an unknown outcome.
        decision_fence: Option<i64>,
        /// The status and reason of this request revision's decision, if it has one.
        previous: Option<(Status, String)>,
        /// The request's bytes as written, for the decision's echo.
        raw: Arc<[u8]>,
        /// `None`: parse `raw` (the cache keeps the parse only while a request waits).
        parsed: Option<Parsed>,
        lifecycle: Lifecycle,
        /// What earlier placements of this request went through (engines it failed on are
        /// never tried again), carried into the next decision.
        history: Option<Box<Run>>,
        /// It is placed, but its engine was removed or holds more than it can: move it.
        displaced: Option<Displaced>,
    },
    /// Delete the decision (and with it the reservation) of a request that is gone or changed.
    Release {
        id: RequestId,
        /// The request's mod revision if it still exists (then it is decided anew), else `None`.
        request_revision: Option<i64>,
    },
    /// Write back a decision someone else changed or deleted (see the guard).
    Restore {
        id: RequestId,
        /// The decision key's mod revision in etcd now (0: deleted).
        decision_fence: i64,
        decision: Box<Decision>,
    },
}

impl Work {
    pub fn id(&self) -> &RequestId {
        match self {
            Work::Decide { id, .. } | Work::Release { id, .. } | Work::Restore { id, .. } => id,
        }
    }
}

/// Why a placed request must move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Displaced {
    /// Its engine's key was deleted.
    Removed(EngineId),
    /// Its engine now holds more than its capacity, and this is among its newest placements.
    Shrunk(EngineId),
}

/// An election key (`leader/<suffix>`) as the cache last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderKey {
    pub create_revision: i64,
    /// 0: the key has no lease (never written by etcd's election API).
    pub lease: i64,
    /// The candidate's own description, when the value is one.
    pub info: Option<LeaderInfo>,
}

/// Every valid engine with its usage applied, sorted by id, and each engine key's mod revision.
#[derive(Debug, Clone, Default)]
pub struct Engines {
    /// Bumped whenever an engine is added, changed or removed.
    pub generation: u64,
    pub views: Vec<EngineView>,
    pub revisions: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Every event up to this revision is applied.
    pub revision: i64,
    overcommit: f64,
    engines: BTreeMap<EngineId, EngineEntry>,
    /// hook(http): read by `views.rs` (read-only views for the status page).
    pub(super) requests: HashMap<RequestId, RequestEntry>,
    pub(super) decisions: HashMap<RequestId, DecisionEntry>,
    /// What placed decisions hold, read from the decisions themselves.
    reservations: HashMap<RequestId, ReservationEntry>,
    usage: HashMap<EngineId, Usage>,
    /// The election's campaign keys, by suffix: to notice our own disappearing, and keys that
    /// block every election.
    leaders: BTreeMap<String, LeaderKey>,
    /// This replica leads: decisions are its own, and others' changes are repaired.
    leading: bool,
    guard: Guard,
    /// Placements to move off engines that hold more than their capacity.
    evicted: HashSet<RequestId>,
    class: HashMap<RequestId, Class>,
    pending: BTreeSet<(i64, RequestId)>,
    releases: BTreeSet<RequestId>,
    waiting: HashSet<RequestId>,
    capacity_epoch: u64,
    /// The capacity epoch a request was last found unschedulable in, by the leader.
    parked_in: HashMap<RequestId, u64>,
    engine_generation: u64,
    /// Engine label sets as written, numbered: engines with one set share a scheduling class
    /// (see [`EngineView::class`]). At most [`MAX_CLASSES`]; emptied by a list.
    label_classes: HashMap<Vec<String>, u32>,
    /// Engines whose usage changed since the leader last looked ([`State::take_dirty`]).
    dirty: HashSet<EngineId>,
    policy: HealthPolicy,
    health: HashMap<EngineId, HealthEntry>,
    /// Placed, asked to be launched, and not launched yet (by the leader's runner).
    launchable: BTreeSet<RequestId>,
    /// The newest revision of a decision the leader applied itself ([`State::decided`]).
    fed: i64,
    /// Decisions are watched until `revision` reaches this (see [`State::caught_up`]).
    replay_until: i64,
}

impl State {
    pub fn new(overcommit: f64) -> Self {
        State {
            overcommit,
            ..State::default()
        }
    }

    pub fn set_policy(&mut self, policy: HealthPolicy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    /// Parses a request key's value, if `kv` is one, before the state's lock is taken.
    pub fn parse_ahead(keys: &Keys, kv: &KeyValue) -> Option<Parsed> {
        if !matches!(keys.split(kv.key()), Some(("requests", _))) {
            return None;
        }
        match keys.parse(kv.key()) {
            Some(Key::Request(id)) => Some(prepare(&id, kv.value())),
            _ => None,
        }
    }

    /// Replaces everything with a fresh list taken at `revision`; `parsed` holds
    /// [`State::parse_ahead`] of each key.
    pub fn reset(
        &mut self,
        keys: &Keys,
        kvs: &[KeyValue],
        parsed: Vec<Option<Parsed>>,
        revision: i64,
    ) {
        let fed = self.fed;
        let parked = std::mem::take(&mut self.parked_in);
        let guard = std::mem::take(&mut self.guard);
        let epoch = self.capacity_epoch;
        let generation = self.engine_generation;
        let (policy, leading) = (self.policy, self.leading);
        *self = State::new(self.overcommit);
        self.policy = policy;
        self.leading = leading;
        self.guard = guard;
        self.capacity_epoch = epoch + 1;
        self.engine_generation = generation + 1;
        self.parked_in = parked;
        self.fed = fed;
        self.replay_until = fed;
        for (kv, parsed) in kvs.iter().zip(parsed) {
            self.put(keys, kv, parsed);
        }
        self.revision = revision;
        let ids: Vec<RequestId> = self
            .requests
            .keys()
            .chain(self.decisions.keys())
            .cloned()
            .collect();
        for id in ids {
            self.classify(&id);
        }
        let engines: Vec<EngineId> = self.engines.keys().cloned().collect();
        for engine in engines {
            self.check_capacity(&engine);
        }
    }

    /// Applies one watch event, with [`State::parse_ahead`] of its key. Events arrive in
    /// revision order, once each.
    pub fn apply(&mut self, keys: &Keys, kind: EventType, kv: &KeyValue, parsed: Option<Parsed>) {
        // The leader's own decisions come back as events it has already applied: one per
        // placement, told apart by revision before anything is allocated or parsed.
        if kind == EventType::Put
            && let Some(("decisions", id)) = keys.split(kv.key())
            && self.guarding()
            && self
                .decisions
                .get(id)
                .is_some_and(|d| d.mod_revision >= kv.mod_revision())
        {
            return;
        }
        match kind {
            EventType::Put => self.put(keys, kv, parsed),
            EventType::Delete => self.delete(keys, kv),
        }
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue, parsed: Option<Parsed>) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => {
                let spec = EngineSpec::parse(&id, kv.value()).map(|s| {
                    let mut view = EngineView::new(&s, self.overcommit);
                    let known = self.label_classes.len();
                    view.class = match self.label_classes.get(&s.labels) {
                        Some(class) => *class,
                        None => match u32::try_from(known) {
                            Ok(next) if next < MAX_CLASSES => {
                                self.label_classes.insert(s.labels.clone(), next);
                                next
                            }
                            _ => UNCLASSED,
                        },
                    };
                    (s, view)
                });
                if let Err(e) = &spec {
                    tracing::warn!(engine = %id, error = %e, "engine ignored: invalid JSON");
                }
                let was = self.engines.insert(
                    id.clone(),
                    EngineEntry {
                        mod_revision: kv.mod_revision(),
                        spec,
                    },
                );
                self.engine_generation += 1;
                self.capacity_changed();
                if was.is_none() {
                    // Placements waiting to move off it (it was removed) may stay after all.
                    self.reclassify_on(&id);
                }
                self.check_capacity(&id);
            }
            Key::Request(id) => {
                let parsed = parsed.unwrap_or_else(|| prepare(&id, kv.value()));
                let launch = parsed.as_ref().is_ok_and(|p| p.request.image.launch);
                let lifecycle = parsed
                    .as_ref()
                    .map(|p| p.request.lifecycle)
                    .unwrap_or_default();
                self.requests.insert(
                    id.clone(),
                    RequestEntry {
                        mod_revision: kv.mod_revision(),
                        raw: Arc::from(kv.value()),
                        parsed: Some(parsed),
                        launch,
                        lifecycle,
                    },
                );
                self.classify(&id);
            }
            Key::BadRequest(raw, err) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), raw_id = %raw, error = %err,
                    "request key cannot name a decision; ignored");
            }
            Key::Decision(id) => self.decision_event(id, kv.mod_revision(), Some(kv.value())),
            Key::Leader(suffix) => {
                self.leaders.insert(
                    suffix,
                    LeaderKey {
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                        info: serde_json::from_slice(kv.value()).ok(),
                    },
                );
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
                    self.dirty.insert(engine);
                    if was.is_none() || self.policy.count_live {
                        self.capacity_changed();
                    }
                }
                Err(e) => tracing::warn!(engine = %engine, error = %e, "unreadable health key"),
            },
        }
    }

    /// A decision written at `rev` (`None`: deleted). While this replica leads, an event no
    /// write of its own explains is held back for the guard to judge ([`State::judge`]).
    fn decision_event(&mut self, id: RequestId, rev: i64, value: Option<&[u8]>) {
        if self.guarding() {
            let held = self.decisions.get(&id).map(|d| d.mod_revision);
            if explained(value.is_some(), rev, held) {
                return;
            }
            if !self.guard.uncertain.remove(&id) {
                self.guard.suspect(id, rev, value.map(Arc::from));
                return;
            }
        }
        match value {
            Some(v) => self.read_decision(&id, rev, v),
            None => self.remove_decision(&id),
        }
    }

    /// Reads a decision's value into the state, as any replica that does not lead does.
    fn read_decision(&mut self, id: &RequestId, rev: i64, value: &[u8]) {
        match serde_json::from_slice::<DecisionHead>(value) {
            Ok(d) => self.set_decision(
                id,
                rev,
                DecisionFacts {
                    status: d.status,
                    reason: d.reason,
                    request_revision: d.request_revision,
                    engine: d.resource.map(|r| r.id),
                    scheduler: d.scheduler.parse().ok(),
                    reservation: d.reservation.as_ref(),
                    run: d.run.map(Box::new),
                },
            ),
            Err(e) => {
                // Not ours (written by hand?): decide the request anew over it.
                tracing::warn!(request = %id, error = %e, "unreadable decision");
                self.set_decision(
                    id,
                    rev,
                    DecisionFacts {
                        status: Status::Invalid,
                        reason: String::new(),
                        request_revision: -1,
                        engine: None,
                        scheduler: None,
                        reservation: None,
                        run: None,
                    },
                );
            }
        }
    }

    /// Whether decision events are checked against this leader's own writes: while it leads,
    /// once its cache has replayed what a fresh list may have wiped.
    fn guarding(&self) -> bool {
        self.leading && self.caught_up()
    }

    /// This replica starts or stops leading. When it stops, the events the guard held back are
    /// applied as they would have been.
    pub fn set_leading(&mut self, leading: bool) {
        if self.leading == leading {
            return;
        }
        self.leading = leading;
        if leading {
            let engines: Vec<EngineId> = self.engines.keys().cloned().collect();
            for engine in engines {
                self.check_capacity(&engine);
            }
            return;
        }
        for (id, s) in self.guard.stop() {
            let held = self.decisions.get(&id).map(|d| d.mod_revision);
            if held.is_some_and(|r| r >= s.rev) {
                continue;
            }
            match s.value {
                Some(v) => self.read_decision(&id, s.rev, &v),
                None => self.remove_decision(&id),
            }
        }
    }

    /// Numbers a decision write of this leader's before it is sent (see the guard); give the
    /// number back with [`State::end_write`] once what it wrote is applied.
    pub fn begin_write(&mut self) -> u64 {
        self.guard.begin()
    }

    pub fn end_write(&mut self, seq: u64) {
        self.guard.end(seq);
    }

    /// A write of ours for these requests failed without an answer: it may land unseen.
    pub fn uncertain<'a>(&mut self, ids: impl IntoIterator<Item = &'a RequestId>) {
        self.guard.uncertain.extend(ids.into_iter().cloned());
    }

    #[cfg(test)]
    pub(crate) fn is_uncertain(&self, id: &RequestId) -> bool {
        self.guard.uncertain.contains(id)
    }

    /// Judges the decision events the guard held back whose writes of ours have all answered:
    /// those none explains were someone else's, and are queued to be written back.
    pub fn judge(&mut self) {
        if !self.guard.has_suspects() {
            return;
        }
        for (id, s) in self.guard.ready() {
            let held = self.decisions.get(&id).map(|d| d.mod_revision);
            if explained(s.value.is_some(), s.rev, held) {
                continue;
            }
            if self.guard.uncertain.remove(&id) {
                match &s.value {
                    Some(v) => self.read_decision(&id, s.rev, v),
                    None => self.remove_decision(&id),
                }
                continue;
            }
            let request = self.requests.get(&id).map(|r| r.mod_revision);
            let (change, to_do) = match (&s.value, held, request) {
                (Some(_), None, Some(_)) => ("written", "it is decided anyway"),
                (Some(_), None, None) => ("written", "deleting it: its request does not exist"),
                (Some(_), Some(_), _) => ("changed", "writing the leader's back"),
                (None, _, _) => ("deleted", "writing the leader's back"),
            };
            tracing::warn!(request = %id, revision = s.rev,
                "a decision was {change} by someone other than the leader: {to_do}");
            self.guard.repairs.insert(id, s);
        }
    }

    /// Decisions written by someone else and not repaired yet.
    pub fn repairs(&self) -> usize {
        self.guard.repairs.len()
    }

    /// The decision this leader holds for `id`, to write back over someone else's change:
    /// `None` when it holds none that is current (the request's work rewrites the key anyway).
    fn restoration(&self, id: &RequestId) -> Option<Decision> {
        let d = self.decisions.get(id)?;
        let r = self.requests.get(id)?;
        if d.request_revision != r.mod_revision {
            return None;
        }
        let resource = match &d.engine {
            Some(e) => Some(self.resource_of(&EngineId::from_key_segment(e)?)?),
            None => None,
        };
        let reservation = self.reservations.get(id).map(|h| Reservation {
            cpus: h.cpus.as_cpus(),
            memory: h.memory.0 as f64,
            ports: h.ports.iter().map(|p| p.to_port()).collect(),
        });
        Some(Decision {
            container: crate::model::Echo::of(&r.raw),
            resource,
            reservation,
            status: d.status,
            reason: d.reason.clone(),
            scheduler: d.scheduler.map(|s| s.to_string()).unwrap_or_default(),
            request_revision: d.request_revision,
            decided_at: String::new(),
            decided_by: String::new(),
            run: d.run.as_deref().cloned(),
        })
    }

    fn resource_of(&self, engine: &EngineId) -> Option<Resource> {
        match &self.engines.get(engine)?.spec {
            Ok((_, view)) => Some(view.resource()),
            Err(_) => None,
        }
    }

    /// Reclassifies the requests placed on `engine` (it came or went).
    fn reclassify_on(&mut self, engine: &EngineId) {
        let on: Vec<RequestId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, _)| id.clone())
            .collect();
        for id in on {
            self.classify(&id);
        }
    }

    /// If `engine` holds more than its capacity (changed by hand, or a smaller `--overcommit`),
    /// its newest placements are moved until the rest fit. Live use does not count here.
    fn check_capacity(&mut self, engine: &EngineId) {
        let Some(Ok((_, view))) = self.engines.get(engine).map(|e| &e.spec) else {
            return;
        };
        let (cap_c, cap_m) = (view.cpus, view.memory);
        let (used_c, used_m) = self
            .usage
            .get(engine)
            .map_or((Millicpus(0), MemoryMb(0)), |u| (u.cpus, u.memory));
        let fits = used_c <= cap_c && used_m <= cap_m;
        if fits && self.evicted.is_empty() {
            return;
        }
        // Choose afresh: capacity may have grown back since earlier evictions.
        let mut held: Vec<(i64, RequestId, Millicpus, MemoryMb)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, r)| {
                let rev = self.decisions.get(id).map_or(0, |d| d.mod_revision);
                (rev, id.clone(), r.cpus, r.memory)
            })
            .collect();
        let before: Vec<RequestId> = held
            .iter()
            .filter(|(_, id, _, _)| self.evicted.remove(id))
            .map(|(_, id, _, _)| id.clone())
            .collect();
        if !fits {
            held.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let (mut c, mut m) = (used_c, used_m);
            for (_, id, hc, hm) in &held {
                if c <= cap_c && m <= cap_m {
                    break;
                }
                self.evicted.insert(id.clone());
                c.0 = c.0.saturating_sub(hc.0);
                m.0 = m.0.saturating_sub(hm.0);
            }
            tracing::warn!(engine = %engine,
                reserved = format!("{}/{} cpus, {}/{} MB", used_c, cap_c, used_m.0, cap_m.0),
                moving = self.evicted.len(),
                "engine holds more than its capacity: moving its newest placements until the rest fit");
        }
        for id in before.iter().chain(held.iter().map(|(_, id, _, _)| id)) {
            self.classify(id);
        }
    }

    /// Why a placed request must move, if it must.
    fn displaced(&self, id: &RequestId) -> Option<Displaced> {
        let r = self.reservations.get(id)?;
        if !self.engines.contains_key(&r.engine) {
            Some(Displaced::Removed(r.engine.clone()))
        } else if self.evicted.contains(id) {
            Some(Displaced::Shrunk(r.engine.clone()))
        } else {
            None
        }
    }

    fn delete(&mut self, keys: &Keys, kv: &KeyValue) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => {
                self.engines.remove(&id);
                self.engine_generation += 1;
                self.capacity_changed();
                // What it held must move: services elsewhere, the rest are lost.
                self.reclassify_on(&id);
            }
            Key::Request(id) => {
                self.requests.remove(&id);
                self.parked_in.remove(&id);
                self.classify(&id);
            }
            Key::Decision(id) => self.decision_event(id, kv.mod_revision(), None),
            Key::Leader(suffix) => {
                self.leaders.remove(&suffix);
            }
            Key::Health(engine) => {
                if self.health.remove(&engine).is_some() {
                    self.dirty.insert(engine);
                }
            }
            Key::BadRequest(..) => {}
        }
    }

    /// A decision the leader itself committed at `mod_revision`, applied as its commit returns
    /// (its watch event, when it comes, is then explained: see the guard).
    pub fn decided(&mut self, id: &RequestId, mod_revision: i64, d: &Decision) {
        self.fed = self.fed.max(mod_revision);
        self.guard.repairs.remove(id);
        self.guard.uncertain.remove(id);
        self.set_decision(id, mod_revision, DecisionFacts::of(d));
    }

    /// A decision the leader itself deleted at `mod_revision` (see [`State::decided`]).
    pub fn undecided(&mut self, id: &RequestId, mod_revision: i64) {
        self.fed = self.fed.max(mod_revision);
        self.guard.repairs.remove(id);
        self.guard.uncertain.remove(id);
        self.remove_decision(id);
    }

    /// Whether every decision the leader applied itself, up to the newest, is in the state
    /// again: a fresh list may have wiped writes applied while it was read, and the watch
    /// replays them first. Until then decision events are applied as they come.
    fn caught_up(&self) -> bool {
        self.revision >= self.replay_until
    }

    fn set_decision(&mut self, id: &RequestId, mod_revision: i64, d: DecisionFacts<'_>) {
        let held = match (&d.engine, d.reservation) {
            (Some(at), Some(r)) => match EngineId::new(at.as_str()) {
                Ok(engine) => Some(ReservationEntry::new(engine, r)),
                Err(e) => {
                    tracing::warn!(request = %id, error = %e,
                        "decision names an impossible engine; it will be released");
                    None
                }
            },
            _ => None,
        };
        self.evicted.remove(id);
        let engine = held.as_ref().map(|h| h.engine.clone());
        self.hold(id, held);
        self.decisions.insert(
            id.clone(),
            DecisionEntry {
                mod_revision,
                status: d.status,
                reason: d.reason,
                request_revision: d.request_revision,
                engine: d.engine,
                scheduler: d.scheduler,
                run: d.run,
            },
        );
        self.classify(id);
        // A placement written by hand (or seen before a leader shrank nothing) may overfill
        // its engine; the leader's own never do.
        if let Some(engine) = engine
            && self.over_capacity(&engine)
        {
            self.check_capacity(&engine);
        }
    }

    fn over_capacity(&self, engine: &EngineId) -> bool {
        let (Some(Ok((_, view))), Some(u)) = (
            self.engines.get(engine).map(|e| &e.spec),
            self.usage.get(engine),
        ) else {
            return false;
        };
        u.cpus > view.cpus || u.memory > view.memory
    }

    fn remove_decision(&mut self, id: &RequestId) {
        self.evicted.remove(id);
        self.hold(id, None);
        self.decisions.remove(id);
        self.classify(id);
    }

    /// Sets what `id`'s decision holds, keeping every engine's sum. Freeing capacity gives
    /// unschedulable requests another look.
    fn hold(&mut self, id: &RequestId, new: Option<ReservationEntry>) {
        if let Some(n) = &new {
            let u = self.usage.entry(n.engine.clone()).or_default();
            u.cpus.0 = u.cpus.0.saturating_add(n.cpus.0);
            u.memory.0 = u.memory.0.saturating_add(n.memory.0);
            u.count += 1;
            for p in &n.ports {
                *u.ports.entry(*p).or_default() += 1;
            }
            self.dirty.insert(n.engine.clone());
        }
        let old = match new {
            Some(n) => self.reservations.insert(id.clone(), n),
            None => self.reservations.remove(id),
        };
        if let Some(old) = old {
            release_usage(&mut self.usage, &old);
            if self.reservations.get(id) != Some(&old) {
                self.capacity_changed();
            }
            self.dirty.insert(old.engine);
        }
    }

    /// A placement the leader planned did not commit: refusals made beside it get another look.
    pub fn retry_waiting(&mut self) {
        self.capacity_changed();
    }

    /// Capacity may have grown: every unschedulable request gets another look.
    fn capacity_changed(&mut self) {
        self.capacity_epoch += 1;
        let waiting: Vec<RequestId> = self.waiting.drain().collect();
        for id in waiting {
            self.class.remove(&id);
            self.classify(&id);
        }
    }

    /// Puts a request in the one work set its current state calls for.
    fn classify(&mut self, id: &RequestId) {
        if self.policy.docker {
            if self.wants_launch(id) {
                self.launchable.insert(id.clone());
            } else {
                self.launchable.remove(id);
            }
        }
        let new = self.class_of(id);
        let old = self.class.get(id).copied();
        if old == new {
            return;
        }
        match old {
            Some(Class::Pending(rev)) => {
                self.pending.remove(&(rev, id.clone()));
            }
            Some(Class::Release) => {
                self.releases.remove(id);
            }
            Some(Class::Waiting) => {
                self.waiting.remove(id);
            }
            None => {}
        }
        match new {
            Some(Class::Pending(rev)) => {
                self.pending.insert((rev, id.clone()));
            }
            Some(Class::Release) => {
                self.releases.insert(id.clone());
            }
            Some(Class::Waiting) => {
                self.waiting.insert(id.clone());
            }
            None => {}
        }
        match new {
            Some(c) => self.class.insert(id.clone(), c),
            None => {
                // Decided: the parsed form is only needed again if the request comes back.
                if let Some(r) = self.requests.get_mut(id) {
                    r.parsed = None;
                }
                self.class.remove(id)
            }
        };
    }

    fn class_of(&self, id: &RequestId) -> Option<Class> {
        let reserved = self.reservations.contains_key(id);
        let decision = self.decisions.get(id);
        let Some(request) = self.requests.get(id) else {
            return (decision.is_some() || reserved).then_some(Class::Release);
        };
        let pending = Class::Pending(request.mod_revision);
        let Some(d) = decision else {
            return Some(if reserved { Class::Release } else { pending });
        };
        if d.request_revision != request.mod_revision {
            return Some(if reserved { Class::Release } else { pending });
        }
        match d.status {
            // A placed decision whose reservation is gone is no longer true: decide again.
            Status::Placed if !reserved => Some(Class::Release),
            // Its engine was removed, or holds more than it can: move it.
            Status::Placed if self.displaced(id).is_some() => Some(pending),
            Status::Placed => None,
            s if s.is_final() => reserved.then_some(Class::Release),
            Status::Pending => Some(if reserved { Class::Release } else { pending }),
            Status::Unschedulable if reserved => Some(Class::Release),
            Status::Unschedulable => {
                if self.parked_in.get(id) == Some(&self.capacity_epoch) {
                    Some(Class::Waiting)
                } else {
                    Some(pending)
                }
            }
            _ => reserved.then_some(Class::Release),
        }
    }

    /// Placed, current, not launched yet, and asked to be (by the request or `--launch`).
    fn wants_launch(&self, id: &RequestId) -> bool {
        let (Some(d), Some(r)) = (self.decisions.get(id), self.requests.get(id)) else {
            return false;
        };
        if d.status != Status::Placed || d.request_revision != r.mod_revision {
            return false;
        }
        if d.run
            .as_ref()
            .is_some_and(|run| !run.container_id.is_empty())
        {
            return false;
        }
        self.policy.launch_all || r.launch
    }

    /// Requests to launch now, oldest id first, leaving out those in `skip`.
    pub fn launchable(&self, max: usize, skip: &HashSet<RequestId>) -> Vec<RequestId> {
        self.launchable
            .iter()
            .filter(|id| !skip.contains(*id))
            .take(max)
            .cloned()
            .collect()
    }

    pub fn decision(&self, id: &RequestId) -> Option<&DecisionEntry> {
        self.decisions.get(id)
    }

    /// Placed requests on `engine`, with their decisions.
    pub fn placed_on(&self, engine: &EngineId) -> Vec<(RequestId, DecisionEntry)> {
        self.decisions
            .iter()
            .filter(|(_, d)| {
                d.status == Status::Placed && d.engine.as_deref() == Some(engine.as_str())
            })
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect()
    }

    /// What decisions hold on `engine`, by request id.
    pub fn held_on(&self, engine: &EngineId) -> Vec<Holding> {
        let mut held: Vec<Holding> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, r)| Holding {
                request: id.clone(),
                status: self.decisions.get(id).map(|d| d.status),
                cpus: r.cpus,
                memory: r.memory,
                ports: r.ports.clone(),
            })
            .collect();
        held.sort_by(|a, b| a.request.cmp(&b.request));
        held
    }

    pub fn health(&self, engine: &EngineId) -> Option<&HealthEntry> {
        self.health.get(engine)
    }

    /// One valid engine's id, address and TLS files.
    pub fn engine_spec(&self, id: &EngineId) -> Option<EngineSpec> {
        self.engines
            .get(id)
            .and_then(|e| e.spec.as_ref().ok().map(|(s, _)| s.clone()))
    }

    /// Every valid engine's id, address and TLS files.
    pub fn engine_specs(&self) -> Vec<EngineSpec> {
        self.engines
            .values()
            .filter_map(|e| e.spec.as_ref().ok().map(|(s, _)| s.clone()))
            .collect()
    }

    /// What one engine holds, with the health policy applied.
    fn effective(&self, id: &EngineId) -> Usage {
        let mut u = self.usage.get(id).cloned().unwrap_or_default();
        if self.policy.docker {
            match self.health.get(id) {
                None => u.unhealthy = true,
                Some(h) if self.policy.count_live => {
                    u.live_cpus = Millicpus::from_cpus_ceil(h.health.cpus_used.max(0.0));
                    u.live_memory = MemoryMb::from_mb_ceil(h.health.memory_used_mb.max(0.0));
                }
                Some(_) => {}
            }
        }
        u
    }

    /// The leader found `id` unschedulable in `epoch` and wrote nothing new: keep it off the
    /// pending set until capacity changes after that epoch.
    pub fn park(&mut self, id: &RequestId, epoch: u64) {
        self.parked_in.insert(id.clone(), epoch);
        self.classify(id);
    }

    /// Remembers the epoch an unschedulable decision was computed in, before its write is seen.
    pub fn note_unschedulable(&mut self, id: &RequestId, epoch: u64) {
        self.parked_in.insert(id.clone(), epoch);
    }

    pub fn engine_generation(&self) -> u64 {
        self.engine_generation
    }

    /// Every valid engine with its usage, from scratch; forgets the dirty set.
    pub fn engines(&mut self) -> Engines {
        self.dirty.clear();
        let mut views = Vec::with_capacity(self.engines.len());
        let mut revisions = Vec::with_capacity(self.engines.len());
        for (id, entry) in &self.engines {
            if let Ok((_, view)) = &entry.spec {
                let mut view = view.clone();
                apply_usage(&mut view, &self.effective(id));
                views.push(view);
                revisions.push(entry.mod_revision);
            }
        }
        Engines {
            generation: self.engine_generation,
            views,
            revisions,
        }
    }

    /// Engines whose usage changed since the last call, with their usage now.
    pub fn take_dirty(&mut self) -> Vec<(EngineId, Usage)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|id| {
                let u = self.effective(&id);
                (id, u)
            })
            .collect()
    }

    /// What the cache knows one engine holds.
    pub fn usage(&self, engine: &EngineId) -> Usage {
        self.effective(engine)
    }

    pub fn capacity_epoch(&self) -> u64 {
        self.capacity_epoch
    }

    /// How many requests wait for the leader: releases and pending decisions, including any
    /// the leader has written for and not seen yet (see [`State::work`]).
    pub fn queued(&self) -> usize {
        self.releases.len() + self.pending.len() + self.guard.repairs.len()
    }

    /// Up to `max_work` work items: repairs, releases, then pending requests oldest first,
    /// leaving out those in `skip` (written by the leader and not yet seen).
    pub fn work(&self, max_work: usize, skip: &HashSet<RequestId>) -> Vec<Work> {
        let mut work = Vec::new();
        for (id, foreign) in &self.guard.repairs {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id)
                || matches!(self.class.get(id), Some(Class::Pending(_) | Class::Release))
            {
                continue; // its own work writes the key anyway
            }
            if let Some(decision) = self.restoration(id) {
                work.push(Work::Restore {
                    id: id.clone(),
                    decision_fence: foreign.fence(),
                    decision: Box::new(decision),
                });
            } else if !self.requests.contains_key(id) && !self.decisions.contains_key(id) {
                work.push(Work::Release {
                    id: id.clone(),
                    request_revision: None,
                });
            }
        }
        for id in &self.releases {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) {
                continue;
            }
            work.push(Work::Release {
                id: id.clone(),
                request_revision: self.requests.get(id).map(|r| r.mod_revision),
            });
        }
        for (rev, id) in &self.pending {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) {
                continue;
            }
            let Some(r) = self.requests.get(id) else {
                continue;
            };
            let d = self.decisions.get(id);
            // A write of ours whose outcome is unknown may still land: compare the key too.
            let decision_fence = self
                .guard
                .uncertain
                .contains(id)
                .then(|| d.map_or(0, |d| d.mod_revision));
            work.push(Work::Decide {
                id: id.clone(),
                request_revision: *rev,
                decision_fence,
                // Only this revision's own decision counts: a rewritten request is decided
                // anew even when the answer is the same.
                previous: d
                    .filter(|d| d.request_revision == *rev)
                    .map(|d| (d.status, d.reason.clone())),
                raw: r.raw.clone(),
                // Parsed by the leader outside the lock when the cache no longer holds it.
                parsed: r.parsed.clone(),
                lifecycle: r.lifecycle,
                history: d
                    .filter(|d| matches!(d.status, Status::Pending | Status::Unschedulable))
                    .and_then(|d| d.run.clone()),
                displaced: self.displaced(id),
            });
        }
        work
    }

    /// The election's keys, lowest create revision (the leader) first.
    pub fn leader_keys(&self) -> Vec<(String, LeaderKey)> {
        let mut keys: Vec<(String, LeaderKey)> = self
            .leaders
            .iter()
            .map(|(s, k)| (s.clone(), k.clone()))
            .collect();
        keys.sort_by_key(|(_, k)| k.create_revision);
        keys
    }

    /// Whether the campaign key `key` is still present.
    pub fn has_leader_key(&self, keys: &Keys, key: &[u8]) -> bool {
        match keys.parse(key) {
            Some(Key::Leader(suffix)) => self.leaders.contains_key(&suffix),
            _ => false,
        }
    }

    /// Whether `id` is placed and waits to be launched.
    pub fn is_launchable(&self, id: &RequestId) -> bool {
        self.launchable.contains(id)
    }

    pub fn request(&self, id: &RequestId) -> Option<&RequestEntry> {
        self.requests.get(id)
    }

    /// The seed's `ClusterInfo` for the whole cluster.
    pub fn cluster_info(&self) -> ClusterInfo {
        let mut info = ClusterInfo::default();
        let mut images = BTreeSet::new();
        for entry in self.engines.values() {
            if let Ok((spec, _)) = &entry.spec {
                info.engine_count += 1;
                info.cpus += spec.wire.cpus;
                info.memory += spec.wire.memory;
            }
        }
        for u in self.usage.values() {
            info.reserved_cpus += u.cpus.as_cpus();
            info.reserved_memory += u.memory.0 as f64;
            info.container_count += u.count;
        }
        for (id, d) in &self.decisions {
            if d.status == Status::Placed
                && let Some(r) = self.requests.get(id)
                && let Ok(image) = serde_json::from_slice::<crate::model::Image>(&r.raw)
            {
                images.insert(image.name);
            }
        }
        info.image_count = images.len() as u64;
        info
    }

    /// One row per engine: the seed's `EngineSnapshot`, plus whether its JSON is valid.
    pub fn engine_rows(&self) -> Vec<(crate::model::EngineSnapshot, String, Option<String>)> {
        self.engines
            .iter()
            .map(|(id, entry)| {
                let u = self.usage.get(id).cloned().unwrap_or_default();
                match &entry.spec {
                    Ok((spec, _)) => (
                        crate::model::EngineSnapshot {
                            id: id.to_string(),
                            cpus: spec.wire.cpus,
                            memory: spec.wire.memory,
                            reserved_cpus: u.cpus.as_cpus(),
                            reserved_memory: u.memory.0 as f64,
                            ..Default::default()
                        },
                        spec.addr.clone(),
                        None,
                    ),
                    Err(e) => (
                        crate::model::EngineSnapshot {
                            id: id.to_string(),
                            ..Default::default()
                        },
                        String::new(),
                        Some(e.to_string()),
                    ),
                }
            })
            .collect()
    }
}

/// Whether a decision event at `rev` (a put, or a delete) is explained by what the leader holds:
/// a decision it applied at that revision or later, or, for a delete, none at all.
fn explained(put: bool, rev: i64, held: Option<i64>) -> bool {
    match held {
        Some(r) => r > rev || (put && r == rev),
        None => !put,
    }
}

/// Sets a view's reservations to `u` (what the cache knows is committed).
pub fn apply_usage(view: &mut EngineView, u: &Usage) {
    view.reserved_cpus = u.cpus.max(u.live_cpus);
    view.reserved_memory = u.memory.max(u.live_memory);
    view.ports = u.ports.keys().copied().collect();
    view.healthy = !u.unhealthy;
}

fn release_usage(usage: &mut HashMap<EngineId, Usage>, r: &ReservationEntry) {
    if let Some(u) = usage.get_mut(&r.engine) {
        u.cpus.0 = u.cpus.0.saturating_sub(r.cpus.0);
        u.memory.0 = u.memory.0.saturating_sub(r.memory.0);
        u.count = u.count.saturating_sub(1);
        for p in &r.ports {
            if let Some(n) = u.ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    u.ports.remove(p);
                }
            }
        }
        if u.count == 0 {
            usage.remove(&r.engine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decision, Resource};

    fn decision() -> Decision {
        Decision {
            container: serde_json::json!({"image": "redis", "cpus": "0.2", "env": ["A=1"]}).into(),
            resource: Some(Resource {
                id: "e1".into(),
                addr: "tcp://e1:2375".into(),
                total_cpus: 4.0,
                total_memory: 4096.0,
            }),
            reservation: Some(Reservation {
                cpus: 0.2,
                memory: 512.0,
                ports: vec![],
            }),
            status: Status::Placed,
            reason: "spread chose e1".into(),
            scheduler: "spread".into(),
            request_revision: 42,
            decided_at: "2026-11-29T08:00:00Z".into(),
            decided_by: "r1".into(),
            run: None,
        }
    }

    #[test]
    fn the_head_reads_what_the_cache_keeps_and_requires_what_a_decision_requires() {
        let bytes = serde_json::to_vec(&decision()).unwrap();
        let head: DecisionHead = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(head.status, Status::Placed);
        assert_eq!(head.reason, "spread chose e1");
        assert_eq!(head.request_revision, 42);
        assert_eq!(head.resource.map(|r| r.id).as_deref(), Some("e1"));
        assert_eq!(
            head.reservation.map(|r| r.held().cpus),
            Some(Millicpus(200))
        );
        assert!(head.run.is_none());

        // Whatever `Decision` cannot read, the head does not read either.
        let full: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for field in [
            "container",
            "status",
            "request_revision",
            "decided_at",
            "decided_by",
        ] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field);
            let b = serde_json::to_vec(&v).unwrap();
            assert!(serde_json::from_slice::<Decision>(&b).is_err(), "{field}");
            assert!(
                serde_json::from_slice::<DecisionHead>(&b).is_err(),
                "{field}"
            );
        }
        let mut v = full.clone();
        v["resource"].as_object_mut().unwrap().remove("addr");
        let b = serde_json::to_vec(&v).unwrap();
        assert!(serde_json::from_slice::<DecisionHead>(&b).is_err());
    }

    mod work_sets {
        use super::*;
        use etcd_client::proto::PbKeyValue;

        fn kv(key: &str, value: &str, rev: i64) -> PbKeyValue {
            PbKeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            }
        }

        /// A state fed key by key, as the watch feeds it.
        struct Fed {
            state: State,
            keys: Keys,
            rev: i64,
        }

        impl Fed {
            fn new() -> Self {
                Fed {
                    state: State::new(1.0),
                    keys: Keys::default(),
                    rev: 0,
                }
            }
            fn put(&mut self, key: &str, value: &str) -> i64 {
                self.rev += 1;
                let pb = kv(key, value, self.rev);
                let kv: &KeyValue = (&pb).into();
                self.state.apply(&self.keys, EventType::Put, kv, None);
                self.state.revision = self.rev;
                self.rev
            }
            fn delete(&mut self, key: &str) -> i64 {
                self.rev += 1;
                let pb = kv(key, "", self.rev);
                let kv: &KeyValue = (&pb).into();
                self.state.apply(&self.keys, EventType::Delete, kv, None);
                self.state.revision = self.rev;
                self.rev
            }
            fn engine(&mut self, id: &str, cpus: f64) {
                self.put(
                    &format!("/citadel/engines/{id}"),
                    &format!(r#"{{"addr":"tcp://{id}:2375","cpus":{cpus},"memory":4096}}"#),
                );
            }
            fn request(&mut self, id: &str, cpus: f64, kind: &str) -> i64 {
                self.put(
                    &format!("/citadel/requests/{id}"),
                    &format!(r#"{{"image":"x","cpus":{cpus},"memory":1,"type":"{kind}"}}"#),
                )
            }
            /// A placement as a leader writes it, applied as the leader applies its own.
            fn place(&mut self, id: &str, engine: &str, cpus: f64, request_revision: i64) -> i64 {
                let d = Decision {
                    container: serde_json::json!({}).into(),
                    resource: Some(Resource {
                        id: engine.into(),
                        addr: String::new(),
                        total_cpus: 4.0,
                        total_memory: 4096.0,
                    }),
                    reservation: Some(Reservation {
                        cpus,
                        memory: 1.0,
                        ports: vec![],
                    }),
                    status: Status::Placed,
                    reason: format!("spread chose {engine}"),
                    scheduler: "spread".into(),
                    request_revision,
                    decided_at: String::new(),
                    decided_by: "me".into(),
                    run: None,
                };
                self.rev += 1;
                let rev = self.rev;
                self.state.decided(&rid(id), rev, &d);
                let pb = kv(
                    &format!("/citadel/decisions/{id}"),
                    &serde_json::to_string(&d).unwrap(),
                    rev,
                );
                let kv: &KeyValue = (&pb).into();
                // The watch echoes it afterwards.
                self.state.apply(&self.keys, EventType::Put, kv, None);
                self.state.revision = rev;
                rev
            }
            fn work(&self) -> Vec<Work> {
                self.state.work(100, &HashSet::new())
            }
        }

        fn rid(s: &str) -> RequestId {
            RequestId::new(s).unwrap()
        }

        fn displaced(w: &[Work], id: &str) -> Option<Displaced> {
            w.iter().find_map(|w| match w {
                Work::Decide {
                    id: i, displaced, ..
                } if i.as_str() == id => displaced.clone(),
                _ => None,
            })
        }

        #[test]
        fn a_removed_engine_displaces_its_placements_until_it_is_back() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            let r = f.request("a", 1.0, "service");
            f.place("a", "e1", 1.0, r);
            assert!(f.work().is_empty(), "placed and settled");
            f.delete("/citadel/engines/e1");
            let e1 = EngineId::new("e1").unwrap();
            assert_eq!(displaced(&f.work(), "a"), Some(Displaced::Removed(e1)));
            f.engine("e1", 4.0);
            assert!(f.work().is_empty(), "back before it moved: it stays");
        }

        #[test]
        fn an_engine_over_capacity_gives_up_its_newest_placements_first() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            for id in ["old", "mid", "new"] {
                let r = f.request(id, 1.0, "service");
                f.place(id, "e1", 1.0, r);
            }
            f.engine("e1", 2.0);
            let w = f.work();
            let e1 = EngineId::new("e1").unwrap();
            assert_eq!(displaced(&w, "new"), Some(Displaced::Shrunk(e1)));
            assert_eq!(w.len(), 1, "one move makes the rest fit: {w:?}");
            f.engine("e1", 4.0);
            assert!(f.work().is_empty(), "it grew back: nothing moves");
        }

        #[test]
        fn only_this_revisions_decision_counts_as_previous() {
            let mut f = Fed::new();
            let first = f.request("a", 1.0, "service");
            let d = r#"{"container":{},"status":"unschedulable","reason":"0/0 engines fit: no engines registered","request_revision":REV,"decided_at":"","decided_by":""}"#;
            f.put(
                "/citadel/decisions/a",
                &d.replace("REV", &first.to_string()),
            );
            f.request("a", 2.0, "service");
            match &f.work()[..] {
                [Work::Decide { previous, .. }] => assert_eq!(previous, &None),
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn the_guard_holds_back_others_writes_and_queues_their_repair() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            let r = f.request("a", 1.0, "service");
            f.state.set_leading(true);
            let seq = f.state.begin_write();
            f.place("a", "e1", 1.0, r);
            f.state.end_write(seq);
            // Our own echo was explained; someone else's delete is not, but a write of ours
            // sent before it arrived might explain it yet.
            let busy = f.state.begin_write();
            f.delete("/citadel/decisions/a");
            assert!(f.state.decision(&rid("a")).is_some(), "held back");
            let later = f.state.begin_write();
            f.state.judge();
            assert_eq!(
                f.state.repairs(),
                0,
                "a write of ours sent before is still out"
            );
            f.state.end_write(busy);
            f.state.judge();
            assert_eq!(f.state.repairs(), 1, "one sent after it cannot explain it");
            f.state.end_write(later);
            match &f.work()[..] {
                [
                    Work::Restore {
                        decision_fence,
                        decision,
                        ..
                    },
                ] => {
                    assert_eq!(*decision_fence, 0, "the key must still be gone");
                    assert_eq!(decision.status, Status::Placed);
                    assert_eq!(
                        decision.resource.as_ref().map(|r| r.id.as_str()),
                        Some("e1")
                    );
                }
                other => panic!("{other:?}"),
            }
            // Stepping down applies what was held back.
            f.state.set_leading(false);
            assert!(f.state.decision(&rid("a")).is_none());
        }

        #[test]
        fn an_uncertain_write_compares_its_key_and_its_event_is_the_truth() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            f.request("a", 1.0, "service");
            f.state.set_leading(true);
            f.state.uncertain([&rid("a")]);
            match &f.work()[..] {
                [Work::Decide { decision_fence, .. }] => assert_eq!(*decision_fence, Some(0)),
                other => panic!("{other:?}"),
            }
            // It landed after all: taken as written, no repair.
            f.put("/citadel/decisions/a", &placed_json("e1", f.rev));
            assert_eq!(
                f.state.decision(&rid("a")).map(|d| d.status),
                Some(Status::Placed)
            );
            f.state.judge();
            assert_eq!(f.state.repairs(), 0);
        }

        fn placed_json(engine: &str, request_revision: i64) -> String {
            format!(
                r#"{{"container":{{}},"resource":{{"id":"{engine}","addr":"","total_cpus":4,"total_memory":4096}},"reservation":{{"cpus":1,"memory":1}},"status":"placed","request_revision":{request_revision},"decided_at":"","decided_by":""}}"#
            )
        }

        #[test]
        fn leader_keys_are_listed_lowest_create_revision_first_with_their_leases() {
            let mut f = Fed::new();
            f.put("/citadel/leader/b", r#"{"id":"b","since":""}"#);
            f.put("/citadel/leader/a", "not json");
            let keys = f.state.leader_keys();
            assert_eq!(keys[0].0, "b");
            assert_eq!(keys[0].1.info.as_ref().map(|i| i.id.as_str()), Some("b"));
            assert_eq!(keys[1].1.lease, 0);
            assert!(keys[1].1.info.is_none());
        }
    }
}
