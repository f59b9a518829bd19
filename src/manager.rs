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
//! Every transaction compares the leader's election key (invariant 3), each request's mod
//! revision and each decision's mod revision (a request changed or decided meanwhile is not
//! decided on stale data), and the mod revision of each engine it places on (an engine shrunk
//! meanwhile is not overcommitted). A refused fence means another replica leads: step down.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;

use crate::cache::{Cache, Snapshot, Work};
use crate::election::{Fence, Leadership, Lease};
use crate::keys::Keys;
use crate::model::{Decision, EngineId, Held, RequestId, Reservation, Status, now_rfc3339};
use crate::scheduler::{self, EngineView, Prepared, Schedulers};
use crate::store::CALL_TIMEOUT;

/// etcd's default `--max-txn-ops`: the limit on compares, and on operations, per transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Work items read from the cache per round.
const MAX_WORK: usize = 4_096;

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
        request_revision: i64,
        decision_revision: i64,
        engine: EngineId,
        engine_revision: i64,
        held: Held,
        decision: Decision,
        reservation: Reservation,
    },
    /// An `invalid` or `unschedulable` decision.
    Refuse {
        id: RequestId,
        request_revision: i64,
        decision_revision: i64,
        decision: Decision,
    },
    /// Unschedulable for the same reason as already written: nothing to write.
    Park { id: RequestId },
    Release {
        id: RequestId,
        request_revision: Option<i64>,
        decision: bool,
        reservations: Vec<EngineId>,
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
        let req = |id: &RequestId, rev: i64| {
            Compare::mod_revision(keys.request(id), CompareOp::Equal, rev)
        };
        let dec = |id: &RequestId, rev: i64| {
            Compare::mod_revision(keys.decision(id), CompareOp::Equal, rev)
        };
        match self {
            Item::Place {
                id,
                request_revision,
                decision_revision,
                ..
            }
            | Item::Refuse {
                id,
                request_revision,
                decision_revision,
                ..
            } => vec![req(id, *request_revision), dec(id, *decision_revision)],
            Item::Release {
                id,
                request_revision: Some(rev),
                ..
            } => vec![req(id, *rev)],
            Item::Release {
                id,
                request_revision: None,
                ..
            } => vec![Compare::create_revision(
                keys.request(id),
                CompareOp::Equal,
                0,
            )],
            Item::Park { .. } => vec![],
        }
    }

    fn ops(&self, keys: &Keys) -> Vec<TxnOp> {
        match self {
            Item::Place {
                id,
                engine,
                decision,
                reservation,
                ..
            } => vec![
                TxnOp::put(keys.decision(id), json(decision), None),
                TxnOp::put(keys.reservation(engine, id), json(reservation), None),
            ],
            Item::Refuse { id, decision, .. } => {
                vec![TxnOp::put(keys.decision(id), json(decision), None)]
            }
            Item::Release {
                id,
                decision,
                reservations,
                ..
            } => {
                let mut ops: Vec<TxnOp> = reservations
                    .iter()
                    .map(|e| TxnOp::delete(keys.reservation(e, id), None))
                    .collect();
                if *decision {
                    ops.push(TxnOp::delete(keys.decision(id), None));
                }
                ops
            }
            Item::Park { .. } => vec![],
        }
    }
}

/// Our own structs have no maps with non-string keys, so serialising them cannot fail.
fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decides a snapshot's work: pure, no I/O. Placements are verified against, and applied to,
/// `engines` (the running view) as they are accepted.
pub fn plan(
    snap: &Snapshot,
    engines: &mut [EngineView],
    cfg: &ManagerConfig,
    now: &str,
) -> Vec<Item> {
    let decided_by = cfg.replica.as_str();
    // Stage 1, in parallel: each scheduler worker plans on the same frozen snapshot.
    let frozen: &[EngineView] = &snap.engines;
    let decide: Vec<&Work> = snap
        .work
        .iter()
        .filter(|w| matches!(w, Work::Decide { .. }))
        .collect();
    let proposals: Vec<Option<scheduler::Plan>> = if cfg.workers > 1 && decide.len() >= 64 {
        let chunk = decide.len().div_ceil(cfg.workers);
        std::thread::scope(|s| {
            let handles: Vec<_> = decide
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().map(|w| propose(w, frozen, cfg)).collect()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|_| vec![None; chunk]))
                .collect()
        })
    } else {
        decide.iter().map(|w| propose(w, frozen, cfg)).collect()
    };
    let mut proposals = proposals.into_iter();

    // Stage 2, in order: verify each proposal on the running view; re-plan what no longer fits.
    let mut items = Vec::with_capacity(snap.work.len());
    for w in &snap.work {
        match w {
            Work::Release {
                id,
                request_revision,
                decision,
                reservations,
            } => items.push(Item::Release {
                id: id.clone(),
                request_revision: *request_revision,
                decision: *decision,
                reservations: reservations.clone(),
            }),
            Work::Decide {
                id,
                request_revision,
                decision_revision,
                previous,
                container,
                parsed,
            } => {
                let proposal = proposals.next().flatten();
                let refuse = |status: Status, reason: String| Item::Refuse {
                    id: id.clone(),
                    request_revision: *request_revision,
                    decision_revision: *decision_revision,
                    decision: Decision {
                        container: (**container).clone(),
                        resource: None,
                        status,
                        reason,
                        scheduler: String::new(),
                        request_revision: *request_revision,
                        decided_at: now.to_string(),
                        decided_by: decided_by.to_string(),
                    },
                };
                let request = match parsed {
                    Ok(r) => r,
                    Err(e) => {
                        items.push(refuse(Status::Invalid, e.to_string()));
                        continue;
                    }
                };
                let strategy = match cfg.schedulers.for_type(&request.kind) {
                    Ok(s) => s,
                    Err(e) => {
                        items.push(refuse(Status::Invalid, e));
                        continue;
                    }
                };
                let prepared = match Prepared::new(request) {
                    Ok(p) => p,
                    Err(e) => {
                        items.push(refuse(Status::Invalid, e));
                        continue;
                    }
                };
                let verified =
                    proposal.filter(|p| prepared.fits_resources(&engines[p.engine]).is_ok());
                let chosen = match verified {
                    Some(p) => Ok(p),
                    None => scheduler::schedule(&prepared, engines, strategy, seed(id)),
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
                        let decision = Decision {
                            container: (**container).clone(),
                            resource: Some(e.resource()),
                            status: Status::Placed,
                            reason,
                            scheduler: strategy.to_string(),
                            request_revision: *request_revision,
                            decided_at: now.to_string(),
                            decided_by: decided_by.to_string(),
                        };
                        let reservation = Reservation {
                            request: id.to_string(),
                            engine: e.id.to_string(),
                            cpus: request.cpus.as_cpus(),
                            memory: request.memory.0 as f64,
                            ports: request.ports.iter().map(|p| p.to_port()).collect(),
                            request_revision: *request_revision,
                        };
                        e.reserve(request.cpus, request.memory, &request.ports);
                        items.push(Item::Place {
                            id: id.clone(),
                            request_revision: *request_revision,
                            decision_revision: *decision_revision,
                            engine: e.id.clone(),
                            engine_revision: snap.engine_revisions[i],
                            held: Held {
                                cpus: request.cpus,
                                memory: request.memory,
                                ports: request.ports.clone(),
                            },
                            decision,
                            reservation,
                        });
                    }
                    Err(u) => {
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

/// A scheduler worker's proposal for one request on the frozen snapshot (None: let the verifier
/// decide, e.g. for invalid requests or when nothing fits).
fn propose(w: &Work, engines: &[EngineView], cfg: &ManagerConfig) -> Option<scheduler::Plan> {
    let Work::Decide { id, parsed, .. } = w else {
        return None;
    };
    let request = parsed.as_ref().ok()?;
    let strategy = cfg.schedulers.for_type(&request.kind).ok()?;
    let prepared = Prepared::new(request).ok()?;
    scheduler::schedule(&prepared, engines, strategy, seed(id)).ok()
}

fn seed(id: &RequestId) -> u64 {
    scheduler::fnv1a(id.as_str())
}

/// Items grouped into transactions that respect etcd's per-txn limits.
pub fn batches(items: Vec<Item>, keys: &Keys) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    let mut current: Vec<Item> = Vec::new();
    let (mut compares, mut ops) = (1usize, 0usize); // 1: the fence
    let mut engines: HashSet<EngineId> = HashSet::new();
    for item in items {
        if matches!(item, Item::Park { .. }) {
            continue;
        }
        let new_engine = match &item {
            Item::Place { engine, .. } if !engines.contains(engine) => 1,
            _ => 0,
        };
        let c = item.compares(keys).len() + new_engine;
        let o = item.ops(keys).len();
        // Engines already fenced in the batch being closed must be fenced again in the next.
        if !current.is_empty() && (compares + c > MAX_TXN_OPS || ops + o > MAX_TXN_OPS) {
            out.push(std::mem::take(&mut current));
            compares = 1;
            ops = 0;
            engines.clear();
        }
        let new_engine = match &item {
            Item::Place { engine, .. } => usize::from(engines.insert(engine.clone())),
            _ => 0,
        };
        compares += c - usize::from(c > item.compares(keys).len()) + new_engine;
        ops += o;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Placements committed (or sent) but not yet seen by the cache's watch. The running view is
/// the cache's snapshot plus these, so a placement is never forgotten in between.
/// A request the leader wrote for, and what its placement holds (if it placed one).
type Written = (RequestId, Option<(EngineId, Held)>);

#[derive(Debug, Default)]
struct Assumed {
    by_revision: BTreeMap<i64, Vec<Written>>,
    ids: HashSet<RequestId>,
}

impl Assumed {
    fn add(&mut self, rev: i64, items: &[Item]) {
        let entry = self.by_revision.entry(rev).or_default();
        for item in items {
            let held = match item {
                Item::Place { engine, held, .. } => Some((engine.clone(), held.clone())),
                _ => None,
            };
            self.ids.insert(item.id().clone());
            entry.push((item.id().clone(), held));
        }
    }

    /// Forgets what the cache has caught up with.
    fn prune(&mut self, cache_revision: i64) {
        let keep = self.by_revision.split_off(&(cache_revision + 1));
        for (_, list) in std::mem::replace(&mut self.by_revision, keep) {
            for (id, _) in list {
                self.ids.remove(&id);
            }
        }
    }

    fn apply(&self, engines: &mut [EngineView]) {
        for list in self.by_revision.values() {
            for (_, held) in list {
                if let Some((engine, h)) = held
                    && let Ok(i) = engines.binary_search_by(|e| e.id.cmp(engine))
                {
                    engines[i].reserve(h.cpus, h.memory, &h.ports);
                }
            }
        }
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
        // Everything earlier leaders wrote is at or below `elected_at`: see it all first.
        while !self
            .cache
            .wait_for(leadership.elected_at, Duration::from_secs(2))
            .await
        {
            if lease.is_lost() {
                return StepDown::LeaseLost;
            }
            if *shutdown.borrow() {
                return StepDown::Shutdown;
            }
            tracing::warn!(
                want = leadership.elected_at,
                have = self.cache.revision(),
                "waiting for the cache to catch up before leading"
            );
        }
        tracing::info!(revision = self.cache.revision(), "leading");
        let mut changed = self.cache.subscribe();
        let mut assumed = Assumed::default();
        let mut last_compaction = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return StepDown::Shutdown;
            }
            if let Some(every) = self.cfg.compact_every
                && last_compaction.elapsed() >= every
            {
                last_compaction = tokio::time::Instant::now();
                self.compact().await;
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
            assumed.prune(self.cache.revision());
            let (snap, mut engines) = {
                let state = self.cache.lock();
                let snap = state.snapshot(MAX_WORK, &assumed.ids);
                let engines = snap.engines.clone();
                (snap, engines)
            };
            if snap.work.is_empty() {
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = lease.lost() => return StepDown::LeaseLost,
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            assumed.apply(&mut engines);
            let mut snap = snap;
            snap.engines = engines.clone();
            let items = plan(&snap, &mut engines, &self.cfg, &now_rfc3339());
            {
                // Park what stays unschedulable; remember the epoch of new refusals.
                let mut state = self.cache.lock();
                for item in &items {
                    match item {
                        Item::Park { id } => state.park(id, snap.capacity_epoch),
                        Item::Refuse { id, decision, .. }
                            if decision.status == Status::Unschedulable =>
                        {
                            state.note_unschedulable(id, snap.capacity_epoch)
                        }
                        _ => {}
                    }
                }
            }
            for batch in batches(items, &keys) {
                match commit(&self.client, &keys, &leadership.fence, &batch).await {
                    Ok(Commit::Done(rev)) => {
                        log_batch(&batch, rev);
                        assumed.add(rev, &batch);
                    }
                    Ok(Commit::Conflict(rev)) => {
                        tracing::debug!(
                            revision = rev,
                            "batch conflicted; re-planning on fresh state"
                        );
                        self.cache.wait_for(rev, Duration::from_secs(5)).await;
                        break;
                    }
                    Ok(Commit::Fenced) => {
                        tracing::warn!("etcd refused our fence: another replica leads");
                        return StepDown::Fenced;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "commit failed; retrying on fresh state");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
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

/// Commits one batch as a single transaction fenced on the leader's election key. A refused
/// fence is `Fenced`: the caller must stop writing.
pub async fn commit(
    client: &Client,
    keys: &Keys,
    fence: &Fence,
    batch: &[Item],
) -> Result<Commit, etcd_client::Error> {
    let mut compares = vec![fence.compare()];
    let mut ops = Vec::new();
    let mut engines: BTreeSet<(EngineId, i64)> = BTreeSet::new();
    for item in batch {
        compares.extend(item.compares(keys));
        ops.extend(item.ops(keys));
        if let Item::Place {
            engine,
            engine_revision,
            ..
        } = item
        {
            engines.insert((engine.clone(), *engine_revision));
        }
    }
    for (engine, rev) in engines {
        compares.push(Compare::mod_revision(
            keys.engine(&engine),
            CompareOp::Equal,
            rev,
        ));
    }
    let txn = Txn::new()
        .when(compares)
        .and_then(ops)
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
