//! The cache's state: the mirror of every key, and the work sets the leader takes its work from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use etcd_client::{EventType, KeyValue};
use serde::de::IgnoredAny;

use super::guard::{Guard, explained};
use super::parked::{Demand, Parked};
use crate::keys::{Key, Keys};
use crate::model::{
    Decision, EngineId, EngineSpec, Health, HostPort, Invalid, LeaderInfo, Lifecycle, MemoryMb,
    Millicpus, Request, RequestId, Reservation, Run, Status, VolumeRecord,
};
use crate::scheduler::{EngineView, MAX_CLASSES, Prepared, Strategy, Tenants, UNCLASSED};

#[derive(Debug, Clone)]
pub struct RequestEntry {
    pub mod_revision: i64,
    /// The request's bytes as written: echoed into its decision.
    pub(super) raw: Arc<[u8]>,
    /// The checked request with its constraints compiled, or why it is invalid. Kept only while
    /// the request waits for a decision: a decided request costs its bytes and little more.
    pub(super) parsed: Option<Result<Arc<Prepared>, Invalid>>,
    /// The request asks to be launched (`"launch": true`), read when it was parsed.
    pub(super) launch: bool,
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
    Prepared::new(request)
        .map(Arc::new)
        .map_err(|e| Invalid(e.to_string()))
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
}

/// What the cache keeps of a decision, however it learnt of it.
pub(super) struct DecisionFacts<'a> {
    pub(super) status: Status,
    pub(super) reason: String,
    pub(super) request_revision: i64,
    pub(super) engine: Option<String>,
    pub(super) scheduler: Option<Strategy>,
    pub(super) reservation: Option<&'a Reservation>,
    pub(super) run: Option<Box<Run>>,
}

impl<'a> DecisionFacts<'a> {
    pub(super) fn of(d: &'a Decision) -> Self {
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
pub(super) struct DecisionHead {
    #[serde(rename = "container")]
    pub(super) _container: IgnoredAny,
    #[serde(default)]
    pub(super) resource: Option<ResourceId>,
    #[serde(default)]
    pub(super) reservation: Option<Reservation>,
    pub(super) status: Status,
    #[serde(default)]
    pub(super) reason: String,
    pub(super) request_revision: i64,
    #[serde(default)]
    pub(super) scheduler: String,
    #[serde(default)]
    pub(super) run: Option<Run>,
    #[serde(rename = "decided_at")]
    pub(super) _decided_at: IgnoredAny,
    #[serde(rename = "decided_by")]
    pub(super) _decided_by: IgnoredAny,
}

#[derive(serde::Deserialize)]
pub(super) struct ResourceId {
    pub(super) id: String,
    #[serde(rename = "addr")]
    pub(super) _addr: IgnoredAny,
    #[serde(rename = "total_cpus")]
    pub(super) _total_cpus: IgnoredAny,
    #[serde(rename = "total_memory")]
    pub(super) _total_memory: IgnoredAny,
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
pub(super) struct ReservationEntry {
    pub(super) engine: EngineId,
    pub(super) cpus: Millicpus,
    pub(super) memory: MemoryMb,
    pub(super) disk: MemoryMb,
    pub(super) ports: Vec<HostPort>,
    pub(super) image: Arc<str>,
}

impl ReservationEntry {
    pub(super) fn new(engine: EngineId, r: &Reservation) -> Self {
        let held = r.held();
        ReservationEntry {
            engine,
            cpus: held.cpus,
            memory: held.memory,
            disk: held.disk,
            ports: held.ports,
            image: held.image,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct EngineEntry {
    pub(super) mod_revision: i64,
    pub(super) spec: Result<(EngineSpec, EngineView), Invalid>,
}

/// What one engine holds, summed over its reservations. Ports are counted so that a (wrong)
/// double booking made by hand does not free the port when one of the two is released.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub disk: MemoryMb,
    /// What is placed there, by request, with its image: what affinity is decided on. Kept
    /// only once some request asks for affinity (`tracks_tenants`): copying the map on each
    /// placement would cost every cluster for what few use.
    pub tenants: Arc<Tenants>,
    pub tracks_tenants: bool,
    pub ports: BTreeMap<HostPort, u32>,
    pub count: u64,
    /// Not schedulable: no health key while the policy asks for one.
    pub unhealthy: bool,
    /// Live use to count against capacity (zero unless the policy counts it).
    pub live_cpus: Millicpus,
    pub live_memory: MemoryMb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Pending(i64),
    Release,
    /// Parked (see `parked.rs`), at this request revision, with this demand.
    Waiting(i64, Demand),
}

/// A request the leader found unschedulable: since when, and what it asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Park {
    pub(super) since: Since,
    pub(super) demand: Demand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Since {
    /// Decided unschedulable at this capacity epoch: parked when its decision is seen, unless
    /// capacity changed meanwhile.
    Epoch(u64),
    /// In the parked set until capacity that could fit it appears.
    Parked,
    /// Taken out of the parked set to be tried again.
    Retry,
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
    /// Its engine is being drained (`citadel engine drain`), and it is a service.
    Drained(EngineId),
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
    pub(super) overcommit: f64,
    pub(super) engines: BTreeMap<EngineId, EngineEntry>,
    /// hook(http): read by `views.rs` (read-only views for the status page).
    pub(super) requests: HashMap<RequestId, RequestEntry>,
    pub(super) decisions: HashMap<RequestId, DecisionEntry>,
    /// What placed decisions hold, read from the decisions themselves.
    pub(super) reservations: HashMap<RequestId, ReservationEntry>,
    pub(super) usage: HashMap<EngineId, Usage>,
    /// The election's campaign keys, by suffix: to notice our own disappearing, and keys that
    /// block every election.
    pub(super) leaders: BTreeMap<String, LeaderKey>,
    /// This replica leads: decisions are its own, and others' changes are repaired.
    pub(super) leading: bool,
    pub(super) guard: Guard,
    /// Placements to move off engines that hold more than their capacity.
    pub(super) evicted: HashSet<RequestId>,
    pub(super) class: HashMap<RequestId, Class>,
    pub(super) pending: BTreeSet<(i64, RequestId)>,
    pub(super) releases: BTreeSet<RequestId>,
    pub(super) waiting: Parked,
    pub(super) capacity_epoch: u64,
    /// Some request has asked for affinity: engines keep their tenants from then on.
    pub(super) tracks_tenants: bool,
    /// Requests the leader found unschedulable: when, and their demand.
    pub(super) parked_in: HashMap<RequestId, Park>,
    pub(super) engine_generation: u64,
    /// Engine label sets as written, numbered: engines with one set share a scheduling class
    /// (see [`EngineView::class`]). At most [`MAX_CLASSES`]; emptied by a list.
    pub(super) label_classes: HashMap<Vec<String>, u32>,
    /// Engines whose usage changed since the leader last looked ([`State::take_dirty`]).
    pub(super) dirty: HashSet<EngineId>,
    pub(super) policy: HealthPolicy,
    pub(super) health: HashMap<EngineId, HealthEntry>,
    /// Where each named volume lives (`volumes/<name>`). Shared with the leader's rounds.
    pub(super) volumes: Arc<HashMap<String, EngineId>>,
    /// Placed, asked to be launched, and not launched yet (by the leader's runner).
    pub(super) launchable: BTreeSet<RequestId>,
    /// The newest revision of a decision the leader applied itself ([`State::decided`]).
    pub(super) fed: i64,
    /// Decisions are watched until `revision` reaches this (see [`State::caught_up`]).
    pub(super) replay_until: i64,
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
        let mut parked = std::mem::take(&mut self.parked_in);
        // Anything may have changed while the watch was down: every parked request is tried
        // again once.
        for p in parked.values_mut() {
            p.since = Since::Retry;
        }
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
        let requests = &self.requests;
        self.parked_in.retain(|id, _| requests.contains_key(id));
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

    pub(super) fn put(&mut self, keys: &Keys, kv: &KeyValue, parsed: Option<Parsed>) {
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
                let drained = matches!(&spec, Ok((s, _)) if s.drained);
                let was = self.engines.insert(
                    id.clone(),
                    EngineEntry {
                        mod_revision: kv.mod_revision(),
                        spec,
                    },
                );
                self.engine_generation += 1;
                self.capacity_grew_on(&id);
                let was_drained =
                    matches!(&was, Some(EngineEntry { spec: Ok((s, _)), .. }) if s.drained);
                // Drained, undrained or new: what it holds may have to move, or may stay.
                if was.is_none() || drained != was_drained {
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
                if !self.tracks_tenants
                    && parsed
                        .as_ref()
                        .is_ok_and(|p| !p.request.affinity.is_empty())
                {
                    self.track_tenants();
                }
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
            Key::Volume(name) => {
                match serde_json::from_slice::<VolumeRecord>(kv.value())
                    .ok()
                    .and_then(|v| EngineId::new(v.engine).ok())
                {
                    Some(engine) => self.volume_recorded(&name, engine),
                    None => tracing::warn!(volume = %name, "unreadable volume key; ignored"),
                }
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
                    if was.is_none() || self.policy.count_live {
                        self.capacity_grew_on(&engine);
                    }
                    self.dirty.insert(engine);
                }
                Err(e) => tracing::warn!(engine = %engine, error = %e, "unreadable health key"),
            },
        }
    }

    /// A decision written at `rev` (`None`: deleted). While this replica leads, an event no
    /// write of its own explains is held back for the guard to judge ([`State::judge`]).
    pub(super) fn decision_event(&mut self, id: RequestId, rev: i64, value: Option<&[u8]>) {
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
    pub(super) fn read_decision(&mut self, id: &RequestId, rev: i64, value: &[u8]) {
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

    #[cfg(test)]
    pub(crate) fn is_uncertain(&self, id: &RequestId) -> bool {
        self.guard.uncertain.contains(id)
    }

    pub(super) fn delete(&mut self, keys: &Keys, kv: &KeyValue) {
        let Some(key) = keys.parse(kv.key()) else {
            return;
        };
        match key {
            Key::Engine(id) => {
                self.engines.remove(&id);
                self.engine_generation += 1;
                // Nothing can fit anew; what the leader knew to be unschedulable may be moot.
                self.capacity_grew_on(&id);
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
            Key::Volume(name) => {
                if Arc::make_mut(&mut self.volumes).remove(&name).is_some() {
                    // Requests held to it may go anywhere now.
                    self.capacity_changed();
                }
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

    /// A named volume lives on `engine` (read from its key, or committed by the leader).
    pub fn volume_recorded(&mut self, name: &str, engine: EngineId) {
        if self.volumes.get(name) != Some(&engine) {
            Arc::make_mut(&mut self.volumes).insert(name.to_string(), engine);
            self.capacity_changed();
        }
    }

    /// Where each named volume lives.
    pub fn volumes(&self) -> Arc<HashMap<String, EngineId>> {
        self.volumes.clone()
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
    pub(super) fn caught_up(&self) -> bool {
        self.revision >= self.replay_until
    }

    pub(super) fn set_decision(&mut self, id: &RequestId, mod_revision: i64, d: DecisionFacts<'_>) {
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
        self.evicted.remove(id);
        let held_on = held.as_ref().map(|h| h.engine.clone());
        self.hold(id, held);
        self.decisions.insert(
            id.clone(),
            DecisionEntry {
                mod_revision,
                status: d.status,
                reason: d.reason,
                request_revision: d.request_revision,
                engine,
                scheduler: d.scheduler,
                run: d.run,
            },
        );
        self.classify(id);
        // A placement written by hand (or seen before a leader shrank nothing) may overfill
        // its engine; the leader's own never do.
        if let Some(engine) = held_on
            && self.over_capacity(&engine)
        {
            self.check_capacity(&engine);
        }
    }

    pub(super) fn remove_decision(&mut self, id: &RequestId) {
        self.evicted.remove(id);
        self.hold(id, None);
        self.decisions.remove(id);
        self.classify(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decision, Resource};

    pub(super) fn decision() -> Decision {
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
                disk: 0.0,
                image: String::new(),
                ports: vec![],
            }),
            status: Status::Placed,
            reason: "spread chose e1".into(),
            scheduler: "spread".into(),
            alternatives: Vec::new(),
            request_revision: 42,
            decided_at: "2026-11-29T08:00:00Z".into(),
            decided_by: "r1".into(),
            run: None,
        }
    }

    #[test]
    pub(super) fn the_head_reads_what_the_cache_keeps_and_requires_what_a_decision_requires() {
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
        use crate::cache::fed::Fed;

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

        /// The leader finds `id` unschedulable in the current epoch and writes that.
        fn refuse(f: &mut Fed, id: &str, request_revision: i64) {
            let epoch = f.state.capacity_epoch();
            f.state.note_unschedulable(&rid(id), epoch);
            let d = format!(
                r#"{{"container":{{}},"status":"unschedulable","reason":"0/1 engines fit: 1 lack cpus","request_revision":{request_revision},"decided_at":"","decided_by":""}}"#
            );
            f.put(&format!("/citadel/decisions/{id}"), &d);
        }

        fn deciding(f: &Fed) -> Vec<String> {
            f.work()
                .iter()
                .filter(|w| matches!(w, Work::Decide { .. }))
                .map(|w| w.id().to_string())
                .collect()
        }

        #[test]
        fn parked_requests_are_retried_when_room_that_fits_them_appears_oldest_first() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            let r = f.request("big-job", 3.0, "service");
            f.place("big-job", "e1", 3.0, r);
            // Five 2-cpu requests and one of 8 cpus find no room, and are parked.
            for id in ["s1", "s2", "s3", "s4", "s5"] {
                let r = f.request(id, 2.0, "service");
                refuse(&mut f, id, r);
            }
            let r = f.request("huge", 8.0, "service");
            refuse(&mut f, "huge", r);
            assert_eq!(f.state.parked(), 6);
            assert!(deciding(&f).is_empty(), "parked: not planned again");

            // Placements elsewhere take capacity: nothing is re-tried.
            f.engine("e2", 1.0);
            let r = f.request("tiny", 0.5, "service");
            f.place("tiny", "e2", 0.5, r);
            assert!(deciding(&f).is_empty(), "{:?}", deciding(&f));
            assert_eq!(f.state.parked(), 6);

            // The 3-cpu placement is released: 4 cpus free on e1 hold two 2-cpu requests.
            // The two oldest are re-tried, and one more to learn whether others fit; the
            // 8-cpu one is not.
            f.delete("/citadel/requests/big-job");
            f.state.undecided(&rid("big-job"), f.rev + 1);
            assert_eq!(deciding(&f), ["s1", "s2", "s3"]);
            assert_eq!(f.state.parked(), 3);

            // They are placed, or refused again and parked again; the rest wait their turn.
            let rev = |f: &Fed, id: &str| f.state.requests[&rid(id)].mod_revision;
            let (r1, r2, r3) = (rev(&f, "s1"), rev(&f, "s2"), rev(&f, "s3"));
            f.place("s1", "e1", 2.0, r1);
            f.place("s2", "e1", 2.0, r2);
            refuse(&mut f, "s3", r3);
            assert!(deciding(&f).is_empty());
            assert_eq!(f.state.parked(), 4);

            // A larger engine arrives: everything that fits it is re-tried, oldest first, the
            // ones re-tried before included (no starvation).
            f.engine("e3", 16.0);
            assert_eq!(deciding(&f), ["s3", "s4", "s5", "huge"]);
            assert_eq!(f.state.parked(), 0);
        }

        #[test]
        fn engines_keep_their_tenants_once_a_request_asks_for_affinity() {
            let mut f = Fed::new();
            f.engine("e1", 4.0);
            let r = f.request("web-1", 1.0, "service");
            f.place("web-1", "e1", 1.0, r);
            let e1 = EngineId::new("e1").unwrap();
            // No request asks for affinity: placements cost no tenant bookkeeping.
            assert!(f.state.usage(&e1).tenants.is_empty());
            assert!(!f.state.usage(&e1).tracks_tenants);
            let generation = f.state.engine_generation();

            f.put(
                "/citadel/requests/cache",
                r#"{"image":"redis","cpus":1,"memory":1,"type":"service","affinity":["request==web-*"]}"#,
            );
            let u = f.state.usage(&e1);
            assert!(u.tracks_tenants);
            assert_eq!(
                u.tenants.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["web-1"]
            );
            assert!(
                f.state.engine_generation() > generation,
                "the leader's views are rebuilt with them"
            );
            // Later placements are added as they come.
            let r = f.request("web-2", 1.0, "service");
            f.place("web-2", "e1", 1.0, r);
            assert_eq!(f.state.usage(&e1).tenants.len(), 2);
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
