//! One watch-fed view of everything under the prefix: engines, requests, decisions (with the
//! reservations inside them) and the election's keys.
//!
//! The watch task is the only writer ([`Cache::run`]); the leader and the CLI read snapshots.
//! The loop is a small state machine, as kube-runtime's watcher is: `List` reads every key at one
//! revision, `Watch` follows from the next revision, and a compacted or cancelled watch goes back
//! to `List`. A broken stream resumes from the last revision seen, so nothing is applied twice.
//!
//! Besides mirroring etcd, the cache classifies every request as it changes, so the leader finds
//! its work without scanning: `pending` (needs a decision), `releases` (a decision whose request
//! is gone or changed, or that holds what its status says it should not) and `waiting`
//! (unschedulable until capacity changes).
//!
//! While its replica leads, the watch leaves decisions out: the leader applies its own as it
//! commits them ([`Cache::set_leading`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{Client, EventType, KeyValue, WatchOptions};
use serde::de::IgnoredAny;
use tokio::sync::watch;

use crate::keys::{Key, Keys, prefix_end};
use crate::model::{
    ClusterInfo, Decision, EngineId, EngineSpec, Health, HostPort, Invalid, MemoryMb, Millicpus,
    Request, RequestId, Reservation, Run, Status,
};
use crate::scheduler::{EngineView, MAX_CLASSES, Prepared, UNCLASSED};
use crate::store::{self, StoreError};

/// Keys per range page when (re)listing.
const LIST_PAGE: i64 = 2_000;

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

    fn prepared(&self, id: &RequestId) -> Result<Arc<Prepared>, Invalid> {
        match &self.parsed {
            Some(p) => p.clone(),
            None => prepare(id, &self.raw),
        }
    }
}

/// Parses and checks a request (its id too) and compiles its constraints.
fn prepare(id: &RequestId, raw: &[u8]) -> Result<Arc<Prepared>, Invalid> {
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
    /// The container's fate, for decisions of launched requests.
    pub run: Option<Box<Run>>,
}

/// What the cache keeps of a decision, however it learnt of it.
struct DecisionFacts<'a> {
    status: Status,
    reason: String,
    request_revision: i64,
    engine: Option<String>,
    reservation: Option<&'a Reservation>,
    run: Option<Box<Run>>,
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
        /// Compare the decision key's mod revision too (`Some(0)`: it must not exist). Set by
        /// the leader only for a request whose last write has an unknown outcome.
        decision_fence: Option<i64>,
        /// The decision key's mod revision in this snapshot (0 if none).
        decision_revision: i64,
        previous: Option<(Status, String)>,
        /// The request's bytes as written, for the decision's echo.
        raw: Arc<[u8]>,
        parsed: Result<Arc<Prepared>, Invalid>,
        /// What earlier placements of this request went through (engines it failed on are
        /// never tried again), carried into the next decision.
        history: Option<Box<Run>>,
    },
    /// Delete the decision (and with it the reservation) of a request that is gone or changed.
    Release {
        id: RequestId,
        /// The request's mod revision if it still exists (then it is decided anew), else `None`.
        request_revision: Option<i64>,
    },
}

impl Work {
    pub fn id(&self) -> &RequestId {
        match self {
            Work::Decide { id, .. } | Work::Release { id, .. } => id,
        }
    }
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
    requests: HashMap<RequestId, RequestEntry>,
    decisions: HashMap<RequestId, DecisionEntry>,
    /// What placed decisions hold, read from the decisions themselves.
    reservations: HashMap<RequestId, ReservationEntry>,
    usage: HashMap<EngineId, Usage>,
    /// The election's campaign keys (their suffixes), to notice our own disappearing.
    leaders: BTreeSet<String>,
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

    /// Replaces everything with a fresh list taken at `revision`.
    pub fn reset(&mut self, keys: &Keys, kvs: &[KeyValue], revision: i64) {
        let fed = self.fed;
        let parked = std::mem::take(&mut self.parked_in);
        let epoch = self.capacity_epoch;
        let generation = self.engine_generation;
        let policy = self.policy;
        *self = State::new(self.overcommit);
        self.policy = policy;
        self.capacity_epoch = epoch + 1;
        self.engine_generation = generation + 1;
        self.parked_in = parked;
        self.fed = fed;
        self.replay_until = fed;
        for kv in kvs {
            self.put(keys, kv);
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
    }

    /// Applies one watch event. Events arrive in revision order, once each.
    pub fn apply(&mut self, keys: &Keys, kind: EventType, kv: &KeyValue) {
        match kind {
            EventType::Put => self.put(keys, kv),
            EventType::Delete => self.delete(keys, kv),
        }
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) {
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
                self.engines.insert(
                    id,
                    EngineEntry {
                        mod_revision: kv.mod_revision(),
                        spec,
                    },
                );
                self.engine_generation += 1;
                self.capacity_changed();
            }
            Key::Request(id) => {
                let parsed = prepare(&id, kv.value());
                let launch = parsed.as_ref().is_ok_and(|p| p.request.image.launch);
                self.requests.insert(
                    id.clone(),
                    RequestEntry {
                        mod_revision: kv.mod_revision(),
                        raw: Arc::from(kv.value()),
                        parsed: Some(parsed),
                        launch,
                    },
                );
                self.classify(&id);
            }
            Key::BadRequest(raw, err) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), raw_id = %raw, error = %err,
                    "request key cannot name a decision; ignored");
            }
            Key::Decision(id) => match serde_json::from_slice::<DecisionHead>(kv.value()) {
                Ok(d) => self.set_decision(
                    &id,
                    kv.mod_revision(),
                    DecisionFacts {
                        status: d.status,
                        reason: d.reason,
                        request_revision: d.request_revision,
                        engine: d.resource.map(|r| r.id),
                        reservation: d.reservation.as_ref(),
                        run: d.run.map(Box::new),
                    },
                ),
                Err(e) => {
                    // Not ours (written by hand?): decide the request anew over it.
                    tracing::warn!(request = %id, error = %e, "unreadable decision");
                    self.set_decision(
                        &id,
                        kv.mod_revision(),
                        DecisionFacts {
                            status: Status::Invalid,
                            reason: String::new(),
                            request_revision: -1,
                            engine: None,
                            reservation: None,
                            run: None,
                        },
                    );
                }
            },
            Key::Leader(suffix) => {
                self.leaders.insert(suffix);
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

    fn delete(&mut self, keys: &Keys, kv: &KeyValue) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => {
                self.engines.remove(&id);
                self.engine_generation += 1;
                self.capacity_changed();
            }
            Key::Request(id) => {
                self.requests.remove(&id);
                self.parked_in.remove(&id);
                self.classify(&id);
            }
            Key::Decision(id) => self.remove_decision(&id),
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

    /// A decision the leader itself committed at `mod_revision`, applied without waiting for
    /// (or parsing) its watch event: the leading replica's cache does not watch decisions
    /// (see [`Cache::set_leading`]).
    pub fn decided(&mut self, id: &RequestId, mod_revision: i64, d: Decision) {
        self.fed = self.fed.max(mod_revision);
        let facts = DecisionFacts {
            status: d.status,
            reason: d.reason,
            request_revision: d.request_revision,
            engine: d.resource.map(|r| r.id),
            reservation: d.reservation.as_ref(),
            run: d.run.map(Box::new),
        };
        self.set_decision(id, mod_revision, facts);
    }

    /// What one of the leader's transactions wrote, committed at `mod_revision`.
    pub fn apply_own(&mut self, items: Vec<crate::manager::Item>, mod_revision: i64) {
        use crate::manager::Item;
        for item in items {
            match item {
                Item::Place { id, decision, .. } | Item::Refuse { id, decision, .. } => {
                    self.decided(&id, mod_revision, decision)
                }
                Item::Release { id, .. } => self.undecided(&id, mod_revision),
                Item::Park { .. } => {}
            }
        }
    }

    /// A decision the leader itself deleted at `mod_revision` (see [`State::decided`]).
    pub fn undecided(&mut self, id: &RequestId, mod_revision: i64) {
        self.fed = self.fed.max(mod_revision);
        self.remove_decision(id);
    }

    /// Whether the watch may leave decisions out: every decision written up to the newest one
    /// the leader applied itself is in the state. A fresh list may have wiped writes applied
    /// while it was read; the full watch replays them first.
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
        self.hold(id, held);
        self.decisions.insert(
            id.clone(),
            DecisionEntry {
                mod_revision,
                status: d.status,
                reason: d.reason,
                request_revision: d.request_revision,
                engine: d.engine,
                run: d.run,
            },
        );
        self.classify(id);
    }

    fn remove_decision(&mut self, id: &RequestId) {
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
            Status::Placed => (!reserved).then_some(Class::Release),
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
        self.releases.len() + self.pending.len()
    }

    /// Up to `max_work` work items, releases first, then pending requests oldest first,
    /// leaving out those in `skip` (written by the leader and not yet seen).
    pub fn work(&self, max_work: usize, skip: &HashSet<RequestId>) -> Vec<Work> {
        let mut work = Vec::new();
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
            work.push(Work::Decide {
                id: id.clone(),
                request_revision: *rev,
                decision_fence: None,
                decision_revision: d.map(|d| d.mod_revision).unwrap_or(0),
                previous: d.map(|d| (d.status, d.reason.clone())),
                raw: r.raw.clone(),
                parsed: r.prepared(id),
                history: d
                    .filter(|d| matches!(d.status, Status::Pending | Status::Unschedulable))
                    .and_then(|d| d.run.clone()),
            });
        }
        work
    }

    /// Whether the campaign key `key` is still present.
    pub fn has_leader_key(&self, keys: &Keys, key: &[u8]) -> bool {
        match keys.parse(key) {
            Some(Key::Leader(suffix)) => self.leaders.contains(&suffix),
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

/// The shared cache: one writer (the watch task), many readers.
pub struct Cache {
    keys: Keys,
    // A std mutex: nothing awaits while holding it, and every critical section is short.
    state: Mutex<State>,
    /// The applied revision, published after every change; readers wait on it.
    revision: watch::Sender<i64>,
    /// Set while this replica leads (see [`Cache::set_leading`]).
    leading: watch::Sender<bool>,
    /// The watch leaves decisions out, or did until it broke.
    narrow: AtomicBool,
    /// Decisions went unwatched while leading: list everything before watching again.
    must_list: AtomicBool,
}

#[derive(Debug)]
enum Phase {
    List,
    Watch { from: i64 },
}

impl Cache {
    pub fn new(keys: Keys, overcommit: f64) -> Arc<Self> {
        Arc::new(Cache {
            keys,
            state: Mutex::new(State::new(overcommit)),
            revision: watch::channel(0).0,
            leading: watch::channel(false).0,
            narrow: AtomicBool::new(false),
            must_list: AtomicBool::new(false),
        })
    }

    /// Whether the watch follows decisions now: always, unless this replica leads and its
    /// cache has caught up (see [`Cache::set_leading`]).
    pub fn watches_decisions(&self) -> bool {
        !self.narrow.load(Ordering::Relaxed)
    }

    /// While this replica leads, decisions are its own writes (the fence shuts everyone else
    /// out, and its barrier showed it every earlier one): it applies them as it commits them
    /// ([`State::decided`]), and the watch leaves them out, which spares etcd an event and the
    /// replica a decode per placement. Decisions written by hand meanwhile are not seen until
    /// the replica stops leading: then it lists everything again and watches all of it.
    pub fn set_leading(&self, leading: bool) {
        if !leading && self.narrow.load(Ordering::Relaxed) {
            // Also when the narrow watch broke and has not been replaced yet.
            self.must_list.store(true, Ordering::Relaxed);
        }
        self.leading
            .send_if_modified(|l| std::mem::replace(l, leading) != leading);
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The state, for a short read or a `park`. Never hold it across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any single event
        // leaves it; carry on rather than take the whole replica down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// A receiver that sees every applied revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Waits until every event up to `rev` is applied. The revision only moves with events
    /// (etcd 3.4 answers a progress request before a lagging watcher has caught up, so progress
    /// reports are not trusted): to wait for "now", write a key under the prefix and wait for
    /// its revision, as the leader's barrier does. False on timeout.
    pub async fn wait_for(&self, rev: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|applied| *applied >= rev);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Loads everything once at one revision (for one-shot CLI commands).
    pub async fn load(&self, client: &Client) -> Result<(), StoreError> {
        let (kvs, rev) = store::range_all(client, self.keys.root(), LIST_PAGE).await?;
        self.lock().reset(&self.keys, &kvs, rev);
        self.revision.send_replace(rev);
        Ok(())
    }

    /// Keeps the cache in step with etcd until `shutdown` turns true. Errors are logged and
    /// retried with backoff; this returns only on shutdown.
    pub async fn run(self: Arc<Self>, client: Client, mut shutdown: watch::Receiver<bool>) {
        let mut phase = Phase::List;
        let mut delays = store::backoff().without_max_times().build();
        loop {
            if stopping(&shutdown) {
                return;
            }
            if self.must_list.swap(false, Ordering::Relaxed) {
                phase = Phase::List;
            }
            if matches!(phase, Phase::List) {
                self.narrow.store(false, Ordering::Relaxed);
            }
            let outcome = match phase {
                Phase::List => self
                    .list(&client)
                    .await
                    .map(|rev| Phase::Watch { from: rev + 1 }),
                Phase::Watch { from } => self.follow(&client, from, &mut shutdown).await,
            };
            match outcome {
                Ok(next) => {
                    delays = store::backoff().without_max_times().build();
                    phase = next;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, phase = ?phase, "cache: etcd call failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    if stopping(&shutdown) {
                        return;
                    }
                }
            }
        }
    }

    async fn list(&self, client: &Client) -> Result<i64, StoreError> {
        let (kvs, rev) = store::range_all(client, self.keys.root(), LIST_PAGE).await?;
        let count = kvs.len();
        self.lock().reset(&self.keys, &kvs, rev);
        self.revision.send_replace(rev);
        tracing::info!(revision = rev, keys = count, "cache listed");
        Ok(rev)
    }

    /// Follows the watch from `from`. Returns the next phase: `Watch` to resume after a broken
    /// stream, `List` after a compaction or cancellation.
    async fn follow(
        &self,
        client: &Client,
        from: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Phase, StoreError> {
        let mut leading = self.leading.subscribe();
        let lead = *leading.borrow_and_update();
        let narrow = lead && self.lock().caught_up();
        let (key, opts) = if narrow {
            // Every kind of key under the prefix but decisions sorts after `decisions/`.
            (
                prefix_end(&self.keys.decisions()),
                WatchOptions::new().with_range(prefix_end(self.keys.root())),
            )
        } else {
            (
                self.keys.root().as_bytes().to_vec(),
                WatchOptions::new().with_prefix(),
            )
        };
        let mut stream = client
            .watch_client()
            .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
            .watch(key, Some(opts.with_start_revision(from)))
            .await?;
        self.narrow.store(narrow, Ordering::Relaxed);
        if narrow != lead {
            tracing::info!(
                from,
                "leading, but watching decisions until the cache has caught up"
            );
        } else if narrow {
            tracing::info!(from, "leading: watching everything but decisions");
        }
        let mut next = from;
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => {
                    if stopping(shutdown) {
                        return Ok(Phase::Watch { from: next });
                    }
                    continue;
                }
                Ok(()) = leading.changed() => {
                    let now = *leading.borrow_and_update();
                    if narrow {
                        // No longer leading (perhaps leading again since): decisions written
                        // by anyone else meanwhile were not watched.
                        return Ok(Phase::List);
                    }
                    if now && self.lock().caught_up() {
                        return Ok(Phase::Watch { from: next });
                    }
                    continue;
                }
                msg = stream.message() => msg,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::info!(resume_from = next, "watch stream ended; resuming");
                    return Ok(Phase::Watch { from: next });
                }
                Err(e) => {
                    tracing::warn!(error = %e, resume_from = next, "watch stream broke; resuming");
                    return Err(StoreError::Etcd(e));
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    wanted = next,
                    "watch revision compacted; listing again"
                );
                return Ok(Phase::List);
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "watch cancelled; listing again"
                );
                return Ok(Phase::List);
            }
            if resp.events().is_empty() {
                continue; // the creation reply; nothing to apply
            }
            let mut applied = next - 1;
            {
                let mut state = self.lock();
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        state.apply(&self.keys, ev.event_type(), kv);
                        applied = applied.max(kv.mod_revision());
                    }
                }
                state.revision = state.revision.max(applied);
                next = state.revision + 1;
                if !narrow && *leading.borrow() && state.caught_up() {
                    drop(state);
                    self.revision.send_replace(next - 1);
                    return Ok(Phase::Watch { from: next });
                }
            }
            self.revision.send_replace(next - 1);
        }
    }
}

/// True once shutdown is asked for, or its sender is gone (nobody can ask any more).
pub fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
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
}
