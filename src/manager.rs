//! The cluster manager: the leader's loop that turns work into fenced, batched etcd transactions.
//!
//! ```text
//! cache snapshot ──▶ schedulers (pure, in parallel) ──▶ plans ──▶ verify on the running view
//!                                                                 ──▶ batch ──▶ fenced Txn
//! ```
//!
//! Verification is the seed's "yes/no": a plan made on the snapshot is checked again against the
//! running view (the snapshot plus every placement accepted since, committed or in flight) on the
//! one engine it names; a plan that no longer fits is scheduled again on that running view.
//!
//! Every transaction compares the leader's election key (invariant 3) and the mod revision of
//! each engine it places on (an engine shrunk meanwhile is not overcommitted). A refused fence
//! means another replica leads: step down. A placement is one key, its decision, which holds
//! the reservation too: etcd's work per placement is what decides citadel's throughput.
//!
//! Requests are not compared. A decision names the request revision it decides
//! (`request_revision`), so one written for a request that was changed or deleted meanwhile is
//! seen as stale by every cache and released (then decided anew): it held capacity for a moment,
//! but was counted all along, so nothing is overcommitted, and a stale placement is never
//! launched. Comparing every request would cost etcd a read per placement to guard against a
//! race that is rare and already repaired.
//!
//! Decision keys are compared only for a request whose previous write has an unknown outcome
//! (the call failed: it may yet commit). Otherwise the compare is redundant: only the leader
//! writes decisions, the fence shuts out every earlier leader, a new leader's cache holds all
//! they wrote before it plans (the barrier), and a leader never plans a request whose write is
//! in flight.
//!
//! What a transaction wrote goes into the leader's cache as soon as it commits: while leading,
//! the cache's watch leaves decisions out ([`Cache::set_leading`]). A write whose outcome is
//! unknown may land unseen, so after one the cache watches decisions again for the rest of the
//! lead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::{Cache, Engines, Usage, Work, apply_usage};
use crate::election::{Fence, Leadership, Lease};
use crate::keys::Keys;
use crate::model::{Decision, EngineId, Held, RequestId, Reservation, Status, now_rfc3339};
use crate::scheduler::{self, EngineView, Schedulers};
use crate::store::CALL_TIMEOUT;

/// etcd's default `--max-txn-ops`: the limit on compares, and on operations, per transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Bytes of writes per transaction: well under etcd's default 1.5 MiB request limit.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Transactions in flight at once: etcd folds concurrent proposals into one raft entry and
/// one fsync, so a few in flight multiply throughput.
const MAX_IN_FLIGHT: usize = 8;
/// Requests a round must decide before it is planned on scheduler threads. The threads are
/// started per round: tens of microseconds each, and a dozen system calls, more than a round
/// of one transaction's worth (127 at 1,000 engines: 0.2 to 0.4 ms) gains from a second core
/// that etcd and the users' clients are busy with anyway.
const PARALLEL_FROM: usize = 512;
/// Work items planned per free pipeline slot: what one transaction holds when every placement
/// lands on an engine of its own (at etcd's default of 128: the leader's fence and an engine
/// compare each make 128 compares; a decision each, 127 operations). A round of exactly this
/// many never spills a near-empty transaction after a full one, which costs etcd as much as a
/// full one: every transaction copies etcd 3.4's read buffer.
fn items_per_txn(max_ops: usize) -> usize {
    max_ops.saturating_sub(1).max(1)
}

/// etcd's answer to a transaction over its `--max-txn-ops`.
fn too_many_ops(e: &etcd_client::Error) -> bool {
    e.to_string().contains("too many operations in txn request")
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub replica: String,
    pub schedulers: Schedulers,
    /// Scheduler threads per round (1 = schedule inline).
    pub workers: usize,
    /// Compact etcd's history this often while leading (`None`: leave it to etcd's own
    /// `--auto-compaction-*`), keeping the last `compact_retain` revisions.
    pub compact_every: Option<Duration>,
    pub compact_retain: i64,
    /// etcd's `--max-txn-ops` (128 unless the operator raised it): the most compares, and the
    /// most operations, one transaction may hold. If etcd refuses a transaction as too large,
    /// the leader falls back to 128.
    pub max_txn_ops: usize,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    Shutdown,
    LeaseLost,
    /// etcd refused a write: the election key is no longer ours.
    Fenced,
    /// The election key disappeared from the cache.
    KeyGone,
}

/// One write (or non-write) decided in a round.
#[derive(Debug, Clone)]
pub enum Item {
    Place {
        id: RequestId,
        /// Compare the decision key's mod revision too (see the module's notes).
        decision_fence: Option<i64>,
        engine: EngineId,
        /// The engine key's mod revision in the view the placement was verified on.
        engine_revision: i64,
        held: Held,
        /// Holds the reservation.
        decision: Decision,
    },
    /// An `invalid` or `unschedulable` decision.
    Refuse {
        id: RequestId,
        decision_fence: Option<i64>,
        decision: Decision,
    },
    /// Unschedulable for the same reason as already written: nothing to write.
    Park { id: RequestId },
    /// Delete a decision (and the reservation inside it).
    Release {
        id: RequestId,
        request_revision: Option<i64>,
    },
}

impl Item {
    fn id(&self) -> &RequestId {
        match self {
            Item::Place { id, .. }
            | Item::Refuse { id, .. }
            | Item::Park { id }
            | Item::Release { id, .. } => id,
        }
    }

    fn compares(&self, keys: &Keys) -> Vec<Compare> {
        match self {
            Item::Place {
                id, decision_fence, ..
            }
            | Item::Refuse {
                id, decision_fence, ..
            } => decision_fence
                .map(|rev| Compare::mod_revision(keys.decision(id), CompareOp::Equal, rev))
                .into_iter()
                .collect(),
            // A release deletes what a request's new revision would otherwise be decided over.
            Item::Release {
                id,
                request_revision: Some(rev),
            } => vec![Compare::mod_revision(
                keys.request(id),
                CompareOp::Equal,
                *rev,
            )],
            Item::Release {
                id,
                request_revision: None,
            } => vec![Compare::create_revision(
                keys.request(id),
                CompareOp::Equal,
                0,
            )],
            Item::Park { .. } => vec![],
        }
    }

    /// The writes, and roughly how many bytes they put on the wire.
    fn ops(&self, keys: &Keys) -> (Vec<TxnOp>, usize) {
        let put = |key: String, value: Vec<u8>| {
            let n = key.len() + value.len();
            (TxnOp::put(key, value, None), n)
        };
        let del = |key: String| {
            let n = key.len();
            (TxnOp::delete(key, None), n)
        };
        let ops: Vec<(TxnOp, usize)> = match self {
            Item::Place { id, decision, .. } | Item::Refuse { id, decision, .. } => {
                vec![put(keys.decision(id), json(decision))]
            }
            Item::Release { id, .. } => vec![del(keys.decision(id))],
            Item::Park { .. } => vec![],
        };
        let bytes = ops.iter().map(|(_, n)| n).sum();
        (ops.into_iter().map(|(op, _)| op).collect(), bytes)
    }
}

/// Our own structs have no maps with non-string keys, so serialising them cannot fail.
fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decides a snapshot's work: pure, no I/O. Placements are verified against, and applied to,
/// `engines` (the running view) as they are accepted.
pub fn plan(
    work: &[Work],
    engines: &mut [EngineView],
    revisions: &[i64],
    cfg: &ManagerConfig,
    now: &str,
) -> Vec<Item> {
    let decided_by = cfg.replica.as_str();
    let sample = scheduler::sample_size(engines.len());
    // Stage 1, in parallel when there is enough work: scheduler workers plan on the same
    // frozen view. With one worker, requests are scheduled straight on the running view.
    let frozen: &[EngineView] = engines;
    let decide: Vec<&Work> = work
        .iter()
        .filter(|w| matches!(w, Work::Decide { .. }))
        .collect();
    let proposals: Vec<Option<scheduler::Plan>> =
        if cfg.workers > 1 && decide.len() >= PARALLEL_FROM {
            let chunk = decide.len().div_ceil(cfg.workers);
            std::thread::scope(|s| {
                let handles: Vec<_> = decide
                    .chunks(chunk)
                    .map(|c| {
                        s.spawn(move || c.iter().map(|w| propose(w, frozen, cfg, sample)).collect())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_else(|_| vec![None; chunk]))
                    .collect()
            })
        } else {
            Vec::new()
        };
    let mut proposals = proposals.into_iter();

    // Stage 2, in order: verify each proposal on the running view; re-plan what no longer fits.
    let mut items = Vec::with_capacity(work.len());
    for w in work {
        match w {
            Work::Release {
                id,
                request_revision,
            } => items.push(Item::Release {
                id: id.clone(),
                request_revision: *request_revision,
            }),
            Work::Decide {
                id,
                request_revision,
                decision_fence,
                previous,
                raw,
                parsed,
                history,
                ..
            } => {
                // The echo is built only for a decision that is written (not for a parked one).
                let container = || crate::model::Echo::of(raw);
                let proposal = proposals.next().flatten();
                // What earlier placements went through stays in the decision.
                let run = history.as_deref().map(|h| crate::model::Run {
                    attempts: h.attempts.clone(),
                    lost: h.lost.clone(),
                    ..Default::default()
                });
                let refuse = |status: Status, reason: String| Item::Refuse {
                    id: id.clone(),
                    decision_fence: *decision_fence,
                    decision: Decision {
                        container: container(),
                        resource: None,
                        reservation: None,
                        status,
                        reason,
                        scheduler: String::new(),
                        request_revision: *request_revision,
                        decided_at: now.to_string(),
                        decided_by: decided_by.to_string(),
                        run: run.clone(),
                    },
                };
                let prepared = match parsed {
                    Ok(p) => p,
                    Err(e) => {
                        items.push(refuse(Status::Invalid, e.to_string()));
                        continue;
                    }
                };
                // Engines the container failed to start on are never tried again.
                let excluding = history
                    .as_deref()
                    .filter(|h| !h.attempts.is_empty())
                    .and_then(|h| excluding(prepared, &h.attempts));
                let (prepared, proposal) = match &excluding {
                    Some(p) => (p, None),
                    None => (prepared, proposal),
                };
                let request = &prepared.request;
                let strategy = match cfg.schedulers.for_type(&request.kind) {
                    Ok(s) => s,
                    Err(e) => {
                        items.push(refuse(Status::Invalid, e));
                        continue;
                    }
                };
                let verified =
                    proposal.filter(|p| prepared.fits_resources(&engines[p.engine]).is_ok());
                let chosen = match verified {
                    Some(p) => Ok(p),
                    None => scheduler::schedule(prepared, engines, strategy, seed(id), sample),
                };
                match chosen {
                    Ok(plan) => {
                        let i = plan.engine;
                        let e = &mut engines[i];
                        let reason = match plan {
                            p if p.soft_dropped => {
                                format!("{strategy} chose {} (soft constraints ignored)", e.id)
                            }
                            _ => format!("{strategy} chose {}", e.id),
                        };
                        let reservation = Reservation {
                            cpus: request.cpus.as_cpus(),
                            memory: request.memory.0 as f64,
                            ports: request.ports.iter().map(|p| p.to_port()).collect(),
                        };
                        let decision = Decision {
                            container: container(),
                            resource: Some(e.resource()),
                            reservation: Some(reservation),
                            status: Status::Placed,
                            reason,
                            scheduler: strategy.to_string(),
                            request_revision: *request_revision,
                            decided_at: now.to_string(),
                            decided_by: decided_by.to_string(),
                            run: run.clone(),
                        };
                        e.reserve(request.cpus, request.memory, &request.ports);
                        items.push(Item::Place {
                            id: id.clone(),
                            decision_fence: *decision_fence,
                            engine: e.id.clone(),
                            engine_revision: revisions[i],
                            held: Held {
                                cpus: request.cpus,
                                memory: request.memory,
                                ports: request.ports.clone(),
                            },
                            decision,
                        });
                    }
                    Err(u) => {
                        // A container that failed to start and has nowhere else to go has failed.
                        if let Some(last) = run.as_ref().and_then(|r| r.attempts.last()) {
                            items.push(refuse(
                                Status::Failed,
                                format!(
                                    "the container failed to start on {} ({}); no other engine can take it: {}",
                                    last.engine, last.error, u.reason
                                ),
                            ));
                            continue;
                        }
                        let same =
                            matches!(previous, Some((Status::Unschedulable, r)) if *r == u.reason);
                        items.push(if same {
                            Item::Park { id: id.clone() }
                        } else {
                            refuse(Status::Unschedulable, u.reason)
                        });
                    }
                }
            }
        }
    }
    items
}

/// The request with a hard `engine!=<id>` constraint per engine it failed on.
fn excluding(
    prepared: &Arc<scheduler::Prepared>,
    attempts: &[crate::model::Attempt],
) -> Option<Arc<scheduler::Prepared>> {
    let mut request = prepared.request.clone();
    for a in attempts {
        request.constraints.push(format!("engine!={}", a.engine));
    }
    scheduler::Prepared::new(request).ok().map(Arc::new)
}

/// A scheduler worker's proposal for one request on the frozen snapshot (None: let the verifier
/// decide, e.g. for invalid requests or when nothing fits).
fn propose(
    w: &Work,
    engines: &[EngineView],
    cfg: &ManagerConfig,
    sample: usize,
) -> Option<scheduler::Plan> {
    let Work::Decide { id, parsed, .. } = w else {
        return None;
    };
    let prepared = parsed.as_ref().ok()?;
    let strategy = cfg.schedulers.for_type(&prepared.request.kind).ok()?;
    scheduler::schedule(prepared, engines, strategy, seed(id), sample).ok()
}

fn seed(id: &RequestId) -> u64 {
    scheduler::fnv1a(id.as_str())
}

/// One transaction's worth of items, encoded once.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

impl Batch {
    /// Writes of the leader's other hands (the runner), fenced like any batch by [`commit`].
    pub fn writes(compares: Vec<Compare>, ops: Vec<TxnOp>) -> Batch {
        Batch {
            items: Vec::new(),
            compares,
            ops,
        }
    }
}

/// What the engine compares of a batch are checked against.
#[derive(Debug, Clone, Copy)]
pub struct EngineFence {
    /// Engines in the view.
    pub count: usize,
    /// The newest engine key revision in the view.
    pub newest: i64,
}

#[derive(Default)]
struct Open {
    items: Vec<Item>,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
    /// Engines placed on, with the mod revision each was verified at.
    engines: HashMap<EngineId, i64>,
}

/// Engine compares a batch placing on `distinct` engines needs: one per engine, or one over
/// the whole engines prefix when that is no more keys for etcd to read.
fn engine_compares(fence: EngineFence, distinct: usize) -> usize {
    match distinct {
        0 => 0,
        d if fence.count <= d => 1,
        d => d,
    }
}

impl Open {
    fn close(self, keys: &Keys, fence: EngineFence) -> Batch {
        let mut compares = self.compares;
        if !self.engines.is_empty() && fence.count <= self.engines.len() {
            // No engine key written after the newest revision in the view.
            compares.push(
                Compare::mod_revision(keys.engines(), CompareOp::Less, fence.newest + 1)
                    .with_prefix(),
            );
        } else {
            for (engine, rev) in self.engines {
                compares.push(Compare::mod_revision(
                    keys.engine(&engine),
                    CompareOp::Equal,
                    rev,
                ));
            }
        }
        Batch {
            items: self.items,
            compares,
            ops: self.ops,
        }
    }
}

/// Items grouped into transactions within etcd's limits: `max_ops` compares and operations
/// (`--max-txn-ops`, 128 by default) and 1.5 MiB per request (`--max-request-bytes`). Parked
/// items write nothing.
///
/// Every placement is fenced on its engine being unchanged since the view it was verified on,
/// so an engine shrunk meanwhile fails the batch instead of being overcommitted. etcd reads
/// every key a compare names (a range compare reads the whole range), so a batch compares each
/// engine it touches, or the whole engines prefix when the cluster is that small.
pub fn batches(items: Vec<Item>, keys: &Keys, fence: EngineFence, max_ops: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut open = Open::default();
    for item in items {
        if matches!(item, Item::Park { .. }) {
            continue;
        }
        let compares = item.compares(keys);
        let (ops, bytes) = item.ops(keys);
        let engine = match &item {
            Item::Place {
                engine,
                engine_revision,
                ..
            } => Some((engine.clone(), *engine_revision)),
            _ => None,
        };
        let full = |o: &Open| {
            let new = engine
                .as_ref()
                .is_some_and(|(e, _)| !o.engines.contains_key(e));
            let engines = engine_compares(fence, o.engines.len() + usize::from(new));
            // + 1: the leader's fence.
            1 + engines + o.compares.len() + compares.len() > max_ops
                || o.ops.len() + ops.len() > max_ops
                || o.bytes + bytes > MAX_TXN_BYTES
        };
        if !open.items.is_empty() && full(&open) {
            out.push(std::mem::take(&mut open).close(keys, fence));
        }
        if let Some((e, rev)) = engine {
            open.engines.insert(e, rev);
        }
        open.compares.extend(compares);
        open.ops.extend(ops);
        open.bytes += bytes;
        open.items.push(item);
    }
    if !open.items.is_empty() {
        out.push(open.close(keys, fence));
    }
    out
}

/// A request the leader wrote for, and what its placement holds (if it placed one).
type Written = (RequestId, Option<(EngineId, Held)>);

/// Writes sent and not answered yet (a committed batch goes straight into the cache). The
/// running view is the cache's usage plus these, so a placement is never forgotten in between,
/// and a request in flight is never planned twice.
#[derive(Debug, Default)]
struct Assumed {
    /// By batch: what it wrote.
    batches: HashMap<u64, Vec<Written>>,
    ids: HashSet<RequestId>,
    /// What assumed placements hold, per engine and batch.
    held: HashMap<EngineId, Vec<(u64, Held)>>,
    /// Requests whose last write failed with an unknown outcome: it may still commit, so their
    /// next write also compares the decision key. Cleared by a committed write.
    uncertain: HashSet<RequestId>,
}

impl Assumed {
    fn add(&mut self, token: u64, items: &[Item]) {
        let mut written = Vec::with_capacity(items.len());
        for item in items {
            self.ids.insert(item.id().clone());
            let held = match item {
                Item::Place { engine, held, .. } => {
                    self.held
                        .entry(engine.clone())
                        .or_default()
                        .push((token, held.clone()));
                    Some((engine.clone(), held.clone()))
                }
                _ => None,
            };
            written.push((item.id().clone(), held));
        }
        self.batches.insert(token, written);
    }

    /// Forgets a batch that committed (its writes are in the cache now).
    fn committed(&mut self, token: u64) {
        if let Some(written) = self.batches.get(&token)
            && !self.uncertain.is_empty()
        {
            for (id, _) in written {
                self.uncertain.remove(id);
            }
        }
        self.forget(token);
    }

    /// Forgets a batch whose commit failed without an answer: it may still land.
    fn forget_uncertain(&mut self, token: u64) -> Vec<EngineId> {
        if let Some(written) = self.batches.get(&token) {
            self.uncertain
                .extend(written.iter().map(|(id, _)| id.clone()));
        }
        self.forget(token)
    }

    /// Fences the decisions of uncertain requests in `work`.
    fn fence_uncertain(&self, work: &mut [Work]) {
        if self.uncertain.is_empty() {
            return;
        }
        for w in work {
            if let Work::Decide {
                id,
                decision_fence,
                decision_revision,
                ..
            } = w
                && self.uncertain.contains(id)
            {
                *decision_fence = Some(*decision_revision);
            }
        }
    }

    /// Forgets a batch; returns the engines it held resources on.
    fn forget(&mut self, token: u64) -> Vec<EngineId> {
        let mut engines = Vec::new();
        if let Some(written) = self.batches.remove(&token) {
            for (id, held) in written {
                self.ids.remove(&id);
                if let Some((engine, _)) = held {
                    if let Some(list) = self.held.get_mut(&engine) {
                        list.retain(|(t, _)| *t != token);
                        if list.is_empty() {
                            self.held.remove(&engine);
                        }
                    }
                    engines.push(engine);
                }
            }
        }
        engines
    }

    /// Adds what assumed placements hold on `engine` to its view.
    fn apply(&self, view: &mut EngineView) {
        for (_, h) in self.held.get(&view.id).into_iter().flatten() {
            view.reserve(h.cpus, h.memory, &h.ports);
        }
    }

    fn in_flight(&self) -> usize {
        self.batches.len()
    }
}

/// The leader's running view: every engine, with what the cache knows is committed plus what
/// is assumed. Kept across rounds and updated per engine, so a round costs what changed, not
/// the size of the cluster.
#[derive(Debug, Default)]
struct RunningView {
    engines: Engines,
    index: HashMap<EngineId, usize>,
    /// Set when the view must be rebuilt (new leader, engines changed).
    stale: bool,
}

impl RunningView {
    fn rebuild(&mut self, engines: Engines, assumed: &Assumed) {
        self.index = engines
            .views
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        self.engines = engines;
        for view in &mut self.engines.views {
            assumed.apply(view);
        }
        self.stale = false;
    }

    /// Recomputes one engine from the cache's usage and what is assumed on it.
    fn refresh(&mut self, engine: &EngineId, usage: &Usage, assumed: &Assumed) {
        if let Some(&i) = self.index.get(engine) {
            let view = &mut self.engines.views[i];
            apply_usage(view, usage);
            assumed.apply(view);
        }
    }

    /// Recomputes the engines a forgotten batch held resources on.
    fn refresh_forgotten(&mut self, engines: Vec<EngineId>, cache: &Cache, assumed: &Assumed) {
        let state = cache.lock();
        for engine in engines {
            self.refresh(&engine, &state.usage(&engine), assumed);
        }
    }
}

/// Marks the cache as the leader's while it lives (see [`Cache::set_leading`]).
struct Leading<'a>(&'a Cache);

impl<'a> Leading<'a> {
    fn new(cache: &'a Cache) -> Self {
        cache.set_leading(true);
        Leading(cache)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.set_leading(false);
    }
}

/// How a batch transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed at this revision.
    Done(i64),
    /// A compare other than the fence failed: wait for the cache to reach this revision.
    Conflict(i64),
    Fenced,
}

/// The leader's loop. Returns when this replica must stop leading.
pub struct Manager {
    client: Client,
    cache: Arc<Cache>,
    cfg: ManagerConfig,
}

impl Manager {
    pub fn new(client: Client, cache: Arc<Cache>, cfg: ManagerConfig) -> Self {
        Manager { client, cache, cfg }
    }

    pub async fn lead(
        &self,
        leadership: &Leadership,
        lease: &Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StepDown {
        let keys = self.cache.keys().clone();
        // Everything earlier leaders wrote precedes our barrier: see it all before planning.
        match self.sync(leadership, lease, shutdown).await {
            Ok(()) => {}
            Err(why) => return why,
        }
        tracing::info!(revision = self.cache.revision(), "leading");
        // Our own decisions go into the cache as they commit; its watch leaves them out.
        let _leading = Leading::new(&self.cache);
        let mut changed = self.cache.subscribe();
        let mut assumed = Assumed::default();
        let mut view = RunningView {
            stale: true,
            ..RunningView::default()
        };
        let mut commits: JoinSet<(u64, Result<Commit, etcd_client::Error>, Vec<Item>)> =
            JoinSet::new();
        let mut next_token = 0u64;
        // After a conflict, plan nothing until the cache has seen the state that refused us.
        let mut must_reach = 0i64;
        let mut last_compaction = tokio::time::Instant::now();
        let mut max_ops = self.cfg.max_txn_ops;
        // Batches up to this token were planned before a fall back to etcd's default.
        let mut planned_larger = 0u64;
        loop {
            if *shutdown.borrow() {
                return StepDown::Shutdown;
            }
            if lease.is_lost() {
                return StepDown::LeaseLost;
            }
            if !self
                .cache
                .lock()
                .has_leader_key(&keys, &leadership.fence.key)
            {
                return StepDown::KeyGone;
            }
            if let Some(every) = self.cfg.compact_every
                && last_compaction.elapsed() >= every
            {
                last_compaction = tokio::time::Instant::now();
                self.compact().await;
            }
            let revision = self.cache.revision();
            let free = MAX_IN_FLIGHT.saturating_sub(assumed.in_flight());
            if free > 0 && revision >= must_reach {
                // Bring the running view up to date with what changed, then take work.
                let (mut work, epoch) = {
                    let mut state = self.cache.lock();
                    if view.stale || state.engine_generation() != view.engines.generation {
                        view.rebuild(state.engines(), &assumed);
                    } else {
                        for (engine, usage) in state.take_dirty() {
                            view.refresh(&engine, &usage, &assumed);
                        }
                    }
                    // Nagle for transactions: while one is in flight, take whole
                    // transactions' worth of work only; the rest waits for the next round.
                    // Fewer, fuller transactions cost etcd far less, and latency stays one
                    // round trip. Counted before anything is built: this round runs on every
                    // change the cache sees, and most find less than a whole transaction.
                    let whole = items_per_txn(max_ops);
                    let max = if assumed.in_flight() > 0 {
                        // The requests in flight are still queued in the cache; what is left
                        // is at least the difference.
                        let takeable = state.queued().saturating_sub(assumed.ids.len());
                        takeable.min(free * whole) / whole * whole
                    } else {
                        free * whole
                    };
                    let work = match max {
                        0 => Vec::new(),
                        max => state.work(max, &assumed.ids),
                    };
                    (work, state.capacity_epoch())
                };
                assumed.fence_uncertain(&mut work);
                if !work.is_empty() {
                    let items = plan(
                        &work,
                        &mut view.engines.views,
                        &view.engines.revisions,
                        &self.cfg,
                        &now_rfc3339(),
                    );
                    self.remember_refusals(&items, epoch);
                    let fence = EngineFence {
                        count: view.engines.views.len(),
                        newest: view.engines.revisions.iter().copied().max().unwrap_or(0),
                    };
                    for batch in batches(items, &keys, fence, max_ops) {
                        next_token += 1;
                        let token = next_token;
                        assumed.add(token, &batch.items);
                        let (client, fence) = (self.client.clone(), leadership.fence.clone());
                        commits.spawn(async move {
                            let result = commit(&client, &fence, &batch).await;
                            if let Ok(Commit::Done(rev)) = &result {
                                log_batch(&batch.items, *rev);
                            }
                            (token, result, batch.items)
                        });
                    }
                    continue;
                }
            }
            tokio::select! {
                Some(done) = commits.join_next(), if !commits.is_empty() => {
                    let Ok((token, result, items)) = done else { continue };
                    match result {
                        Ok(Commit::Done(rev)) => {
                            // The engines placed on are now dirty in the cache: the next
                            // round refreshes them without what this batch assumed.
                            self.cache.lock().apply_own(items, rev);
                            assumed.committed(token);
                        }
                        Ok(Commit::Fenced) => {
                            tracing::warn!("etcd refused our fence: another replica leads");
                            commits.abort_all();
                            return StepDown::Fenced;
                        }
                        Ok(Commit::Conflict(rev)) => {
                            tracing::debug!(revision = rev, "batch conflicted; re-planning on fresh state");
                            let forgotten = assumed.forget(token);
                            view.refresh_forgotten(forgotten, &self.cache, &assumed);
                            // The change that refused us is below a barrier written now.
                            match barrier(&self.client, &leadership.fence, &leadership.value).await {
                                Ok(Commit::Done(b)) => must_reach = must_reach.max(b),
                                Ok(Commit::Fenced) => return StepDown::Fenced,
                                _ => must_reach = must_reach.max(rev),
                            }
                            // Refusals planned beside the failed placements may be wrong.
                            self.cache.lock().retry_waiting();
                        }
                        Err(e) if too_many_ops(&e) => {
                            // Refused before it reached raft: nothing of it can commit later.
                            if max_ops > MAX_TXN_OPS {
                                tracing::error!(
                                    max_txn_ops = max_ops,
                                    fallback = MAX_TXN_OPS,
                                    "etcd refused a transaction as too large: its --max-txn-ops is lower than ours; using etcd's default"
                                );
                                max_ops = MAX_TXN_OPS;
                                planned_larger = next_token;
                            } else if token > planned_larger {
                                tracing::error!(
                                    max_txn_ops = max_ops,
                                    "etcd refuses transactions this large: lower --max-txn-ops to etcd's own"
                                );
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            let forgotten = assumed.forget(token);
                            view.refresh_forgotten(forgotten, &self.cache, &assumed);
                            self.cache.lock().retry_waiting();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "commit failed; re-planning on fresh state");
                            // It may land later, unseen by a watch without decisions: watch
                            // them all again for the rest of this lead.
                            self.cache.set_leading(false);
                            let forgotten = assumed.forget_uncertain(token);
                            view.refresh_forgotten(forgotten, &self.cache, &assumed);
                            self.cache.lock().retry_waiting();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                _ = changed.changed() => {}
                _ = lease.lost() => return StepDown::LeaseLost,
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes a barrier and waits until the cache has applied it, so the cache holds everything
    /// earlier leaders committed.
    async fn sync(
        &self,
        leadership: &Leadership,
        lease: &Lease,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), StepDown> {
        loop {
            if lease.is_lost() {
                return Err(StepDown::LeaseLost);
            }
            if crate::cache::stopping(shutdown) {
                return Err(StepDown::Shutdown);
            }
            match barrier(&self.client, &leadership.fence, &leadership.value).await {
                Ok(Commit::Done(rev)) => {
                    if self.cache.wait_for(rev, Duration::from_secs(5)).await {
                        return Ok(());
                    }
                    tracing::warn!(
                        want = rev,
                        have = self.cache.revision(),
                        "cache has not caught up with the barrier yet"
                    );
                }
                Ok(_) => return Err(StepDown::Fenced),
                Err(e) => {
                    tracing::warn!(error = %e, "barrier write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Parks what stays unschedulable and notes the capacity epoch of new refusals.
    fn remember_refusals(&self, items: &[Item], epoch: u64) {
        let mut state = self.cache.lock();
        for item in items {
            match item {
                Item::Park { id } => state.park(id, epoch),
                Item::Refuse { id, decision, .. } if decision.status == Status::Unschedulable => {
                    state.note_unschedulable(id, epoch)
                }
                _ => {}
            }
        }
    }
}

impl Manager {
    /// Compacts etcd's history below `revision - compact_retain`, as the Kubernetes API server
    /// does. Watches that fall behind it re-list (see the cache); nothing is lost.
    async fn compact(&self) {
        let target = self.cache.revision() - self.cfg.compact_retain;
        if target <= 0 {
            return;
        }
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(CALL_TIMEOUT, kv.compact(target, None)).await {
            Ok(Ok(_)) => tracing::info!(revision = target, "compacted etcd history"),
            Ok(Err(e)) => tracing::debug!(error = %e, revision = target, "compaction skipped"),
            Err(_) => tracing::warn!(revision = target, "compaction timed out"),
        }
    }
}

/// Rewrites the leader's own election key, fenced, keeping its lease. Its revision is a barrier:
/// once the cache has applied it, it has applied everything committed before it.
pub async fn barrier(
    client: &Client,
    fence: &Fence,
    value: &[u8],
) -> Result<Commit, etcd_client::Error> {
    let txn = Txn::new()
        .when(vec![fence.compare()])
        .and_then(vec![TxnOp::put(
            fence.key.clone(),
            value.to_vec(),
            Some(PutOptions::new().with_ignore_lease()),
        )]);
    let mut kv = client.kv_client();
    let resp = tokio::time::timeout(CALL_TIMEOUT, kv.txn(txn))
        .await
        .map_err(|_| {
            etcd_client::Error::InvalidArgs(format!("barrier timed out after {CALL_TIMEOUT:?}"))
        })??;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok(if resp.succeeded() {
        Commit::Done(rev)
    } else {
        Commit::Fenced
    })
}

/// Commits one batch as a single transaction fenced on the leader's election key. A refused
/// fence is `Fenced`: the caller must stop writing.
pub async fn commit(
    client: &Client,
    fence: &Fence,
    batch: &Batch,
) -> Result<Commit, etcd_client::Error> {
    let mut compares = Vec::with_capacity(batch.compares.len() + 1);
    compares.push(fence.compare());
    compares.extend(batch.compares.iter().cloned());
    let txn = Txn::new()
        .when(compares)
        .and_then(batch.ops.clone())
        .or_else(vec![TxnOp::get(
            fence.key.clone(),
            Some(GetOptions::new().with_keys_only()),
        )]);
    let mut kv = client.kv_client();
    let resp = match tokio::time::timeout(CALL_TIMEOUT, kv.txn(txn)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "txn timed out after {CALL_TIMEOUT:?}"
            )));
        }
    };
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if resp.succeeded() {
        return Ok(Commit::Done(rev));
    }
    let still_ours = resp.op_responses().iter().any(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.create_revision() == fence.rev),
        _ => false,
    });
    Ok(if still_ours {
        Commit::Conflict(rev)
    } else {
        Commit::Fenced
    })
}

fn log_batch(batch: &[Item], rev: i64) {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for item in batch {
        let kind = match item {
            Item::Place { id, engine, .. } => {
                tracing::debug!(request = %id, engine = %engine, revision = rev, "placed");
                "placed"
            }
            Item::Refuse { id, decision, .. } => {
                tracing::debug!(request = %id, status = %decision.status, reason = %decision.reason, revision = rev, "refused");
                if decision.status == Status::Invalid {
                    "invalid"
                } else {
                    "unschedulable"
                }
            }
            Item::Release { id, .. } => {
                tracing::debug!(request = %id, revision = rev, "released");
                "released"
            }
            Item::Park { .. } => "parked",
        };
        *counts.entry(kind).or_default() += 1;
    }
    tracing::info!(
        revision = rev,
        placed = counts.get("placed").copied().unwrap_or(0),
        unschedulable = counts.get("unschedulable").copied().unwrap_or(0),
        invalid = counts.get("invalid").copied().unwrap_or(0),
        released = counts.get("released").copied().unwrap_or(0),
        "committed"
    );
}
