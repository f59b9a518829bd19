//! The cluster manager: the leader's loop that turns work into fenced, batched etcd transactions.
//!
//! ```text
//! ledger work sets ──▶ plan (schedulers, pure) ──▶ verify on the running view ──▶ batches
//!                  ──▶ fenced Txn (up to 8 in flight) ──▶ applied to the mirror as they commit
//! ```
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
//! (the call failed or its task died: it may yet commit), and for a repair. Otherwise the
//! compare is redundant: only the leader writes decisions, the fence shuts out every earlier
//! leader, a new leader's cache holds all they wrote before it plans (the barrier), and a leader
//! never plans a request whose write is in flight. Whoever else writes a decision meanwhile is
//! caught by the ledger's guard (`ledger/guard.rs`), and the leader writes its own back.
//!
//! What a transaction wrote goes into the leader's mirror as soon as it commits; its watch
//! events, when they come, are then explained (see the ledger's guard).
//!
//! It may not talk to Docker (that is the runner's) nor write a key outside a fenced transaction.

mod assumed;
mod batch;
mod compactor;
mod item;
pub mod ledger;
mod plan;
mod rewrite;
mod together;
mod unfit;
mod upgrade;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::cache::{Books, Cache};
use crate::election::{Leadership, Lease};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::model::{Assignment, EngineId, ReplicaId, RequestId, Status, now_rfc3339};
use crate::scheduler::{Scarcity, Schedulers};
use crate::shutdown::stopping;
use crate::store::StoreError;
use crate::store::fence::{self, Commit, barrier, too_many_ops};
use assumed::{Assumed, RunningView};
pub use batch::{Batch, EngineFence, batches};
use compactor::Compactor;
pub use item::{AgentOps, Item};
pub use ledger::{Decide, Displaced, Ledger, Work};
pub use plan::{Deciding, plan};
pub use rewrite::Rewriter;
pub use unfit::Unfit;
use upgrade::Newer;

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

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub replica: ReplicaId,
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
    /// How much lower a placement's priority must be than a request's for the request to
    /// evict it (`--preempt-gap`, 1 by default; Nomad uses 10).
    pub preempt_gap: u32,
}

/// Why a leader stopped leading: the manager's only way out of its loop. Every other failure
/// (a conflict, a timeout, a transaction too large) is handled inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StepDown {
    #[error("shutting down")]
    Shutdown,
    #[error("the lease was lost")]
    LeaseLost,
    /// etcd refused a write: the election key is no longer ours.
    #[error("etcd refused a fenced write: another replica leads")]
    Fenced,
    /// The election key disappeared from the cache.
    #[error("the election key is gone")]
    KeyGone,
    /// The cache's watch task died: the leader would plan on a frozen view.
    #[error("the cache's watch task died")]
    WatcherDied,
    /// etcd went back to an earlier revision (restored from a snapshot, or replaced): every
    /// fence, lease and assumption of this leadership belongs to a history etcd no longer has.
    #[error("etcd went back in time: electing again on the restored history")]
    EtcdRewound,
    /// A request uses a field this release does not know and another candidate's does: it
    /// leads instead (see `upgrade.rs`).
    #[error("a request needs a newer release: handing leadership over")]
    HandOver,
}

/// The leader's loop. Returns when this replica must stop leading.
pub struct Manager {
    client: Client,
    cache: Arc<Cache>,
    /// The ledger beside the cache's mirror, under the cache's lock.
    books: Books<Ledger>,
    cfg: ManagerConfig,
    /// hook(http): what the leader's commits count.
    metrics: Arc<Metrics>,
}

/// What a commit task hands back.
struct Committed {
    token: u64,
    seq: u64,
    result: Result<Commit, StoreError>,
    items: Vec<Item>,
}

impl Manager {
    pub fn new(
        client: Client,
        cache: Arc<Cache>,
        books: Books<Ledger>,
        cfg: ManagerConfig,
    ) -> Self {
        Manager {
            client,
            cache,
            books,
            cfg,
            metrics: Arc::default(),
        }
    }

    /// hook(http): counts into the replica's metrics instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub async fn lead(
        &self,
        leadership: &Leadership,
        lease: &Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StepDown {
        // Everything earlier leaders wrote precedes our barrier: see it all before planning.
        if let Err(why) = self.sync(leadership, lease, shutdown).await {
            return why;
        }
        tracing::info!(revision = self.cache.revision(), "leading");
        // Our own decisions go into the cache as they commit; others' are held back and judged.
        let _leading = Leading::new(&self.books);
        let mut changed = self.cache.subscribe();
        let mut lead = Lead::new(self, leadership);
        loop {
            if let Some(why) = lead.must_stop(lease, shutdown) {
                return why;
            }
            if lead.handing_over && lead.assumed.in_flight() == 0 {
                return StepDown::HandOver;
            }
            lead.maybe_compact();
            if lead.round() {
                continue;
            }
            tokio::select! {
                Some(done) = lead.commits.join_next_with_id(), if !lead.commits.is_empty() => {
                    if let Some(why) = lead.on_commit(done).await {
                        return why;
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
            if stopping(shutdown) {
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
        let mut books = self.books.lock();
        let (mirror, ledger) = books.parts();
        for item in items.iter().flat_map(Item::leaves) {
            match item {
                Item::Park { id } => ledger.park(mirror, id, epoch),
                // Unschedulable, or a gang waiting for its members: parked once seen.
                Item::Refuse { id, decision, .. }
                    if matches!(decision.status, Status::Unschedulable | Status::Pending) =>
                {
                    ledger.note_unschedulable(id, epoch)
                }
                _ => {}
            }
        }
    }
}

/// One lead's state: what is in flight, the running view, and the pacing of rounds.
struct Lead<'a> {
    manager: &'a Manager,
    leadership: &'a Leadership,
    keys: Keys,
    assumed: Assumed,
    view: RunningView,
    commits: JoinSet<Committed>,
    /// Each commit task's batch and write number, to account for one that panicked.
    tasks: HashMap<tokio::task::Id, (u64, u64)>,
    next_token: u64,
    /// After a conflict, plan nothing until the cache has seen the state that refused us.
    must_reach: i64,
    compactor: Compactor,
    max_ops: usize,
    /// Batches up to this token were planned before a fall back to etcd's default.
    planned_larger: u64,
    /// Shapes found unschedulable in the current capacity epoch.
    unfit: Unfit,
    /// Recent demand by constraint set: which engines binpack keeps for last.
    scarcity: Scarcity,
    /// Request fields only other candidates know.
    newer: Newer,
    /// A request needs a newer release: take no more work, and step down once what is in
    /// flight has answered.
    handing_over: bool,
    /// Requests whose writes could not be encoded: not planned again this term.
    stuck: HashSet<RequestId>,
}

impl<'a> Lead<'a> {
    fn new(manager: &'a Manager, leadership: &'a Leadership) -> Self {
        Lead {
            manager,
            leadership,
            keys: manager.cache.keys().clone(),
            assumed: Assumed::default(),
            view: RunningView::stale(),
            commits: JoinSet::new(),
            tasks: HashMap::new(),
            next_token: 0,
            must_reach: 0,
            compactor: Compactor::new(manager.cfg.compact_every, manager.cfg.compact_retain),
            max_ops: manager.cfg.max_txn_ops,
            planned_larger: 0,
            unfit: Unfit::default(),
            scarcity: Scarcity::default(),
            newer: Newer::default(),
            handing_over: false,
            stuck: HashSet::new(),
        }
    }

    fn cache(&self) -> &Cache {
        &self.manager.cache
    }

    fn must_stop(&self, lease: &Lease, shutdown: &watch::Receiver<bool>) -> Option<StepDown> {
        if *shutdown.borrow() {
            Some(StepDown::Shutdown)
        } else if lease.is_lost() {
            Some(StepDown::LeaseLost)
        } else if !self
            .cache()
            .read()
            .has_leader_key(&self.keys, &self.leadership.fence.key)
        {
            Some(StepDown::KeyGone)
        } else {
            None
        }
    }

    fn maybe_compact(&mut self) {
        let cache = &self.manager.cache;
        if let Some(target) = self.compactor.due(
            cache.revision(),
            || cache.read().keys_alive(),
            |from, to| cache.dead_between(from, to),
        ) {
            self.compactor.start(&self.manager.client, target);
        }
    }

    /// Takes work, plans it and sends it. False when there was nothing to do (or no room).
    fn round(&mut self) -> bool {
        let free = MAX_IN_FLIGHT.saturating_sub(self.assumed.in_flight());
        if free == 0 || self.handing_over || self.cache().revision() < self.must_reach {
            return false;
        }
        let (work, epoch) = self.take_work(free);
        if work.is_empty() {
            return false;
        }
        let deciding = work.iter().filter(|w| matches!(w, Work::Decide(_))).count();
        self.manager.metrics.planned(deciding); // hook(http)
        self.unfit.at(epoch);
        // Requests are counted once, when first planned (a parked one has dropped its parse).
        for w in &work {
            if let Work::Decide(Decide {
                parsed: Some(Ok(p)),
                ..
            }) = w
            {
                self.scarcity.observe(p);
            }
        }
        let generation = self.view.engines.generation;
        self.scarcity
            .apply(&mut self.view.engines.views, generation);
        let recorded = self.cache().read().volumes();
        let down = self.manager.books.lock().listener().down();
        let assumed = &self.assumed;
        let volumes = |name: &str| assumed.volume(name).or_else(|| recorded.get(name).cloned());
        let items = plan(
            &work,
            &mut self.view.engines.views,
            &self.view.engines.revisions,
            &volumes,
            &Deciding {
                cfg: &self.manager.cfg,
                now: &now_rfc3339(),
                max_ops: self.max_ops,
                newer: &self.newer,
                down: &down,
            },
            &mut self.unfit,
        );
        self.manager.remember_refusals(&items, epoch);
        self.hand_over_for(&items);
        self.send(items);
        true
    }

    /// Brings the running view up to date with what changed, then takes up to `free`
    /// transactions' worth of work.
    fn take_work(&mut self, free: usize) -> (Vec<Work>, u64) {
        let mut books = self.manager.books.lock();
        Ledger::judge(&mut books);
        let (mirror, ledger) = books.parts();
        ledger.expire_gangs(mirror);
        self.newer.refresh(mirror, &self.manager.cfg.replica);
        if self.view.stale || mirror.engine_generation() != self.view.engines.generation {
            self.view.rebuild(ledger.engines(mirror), &self.assumed);
        } else {
            for (engine, usage) in ledger.take_dirty(mirror) {
                self.view.refresh(&engine, &usage, &self.assumed);
            }
        }
        // Nagle for transactions: while one is in flight, take whole transactions' worth of
        // work only; the rest waits for the next round. Fewer, fuller transactions cost etcd
        // far less, and latency stays one round trip. Counted before anything is built: this
        // round runs on every change the cache sees, and most find less than a whole one.
        let whole = items_per_txn(self.max_ops);
        let max = if self.assumed.in_flight() > 0 {
            // The requests in flight are still queued in the cache; what is left is at least
            // the difference.
            let takeable = ledger.queued().saturating_sub(self.assumed.ids.len());
            takeable.min(free * whole) / whole * whole
        } else {
            free * whole
        };
        let skip: Cow<'_, HashSet<RequestId>> = if self.stuck.is_empty() {
            Cow::Borrowed(&self.assumed.ids)
        } else {
            Cow::Owned(self.assumed.ids.union(&self.stuck).cloned().collect())
        };
        let work = match max {
            0 => Vec::new(),
            max => ledger.work(mirror, max, &skip, &self.assumed.odd),
        };
        (work, ledger.capacity_epoch())
    }

    /// If a request was left to a newer release, stops taking work: the leader resigns once
    /// what is in flight has answered, and that release's replica leads.
    fn hand_over_for(&mut self, items: &[Item]) {
        for item in items {
            if let Item::Defer { id, field, to } = item {
                tracing::warn!(request = %id, field = %field, candidate = %to,
                    "the request uses a field this release does not know and a newer candidate does: handing leadership over");
                self.handing_over = true;
            }
        }
    }

    /// Groups items into transactions and starts committing each.
    fn send(&mut self, mut items: Vec<Item>) {
        self.echo_evicted(&mut items);
        self.for_agents(&mut items);
        // A compare over the whole prefix reads every engine key, valid or not.
        let fence = EngineFence {
            count: self.view.engines.keys,
            newest: self.view.engines.newest,
        };
        let (batches, unwritable) = batches(items, &self.keys, fence, self.max_ops);
        self.unwritable(unwritable);
        let seqs: Vec<u64> = {
            let mut books = self.manager.books.lock();
            let ledger = books.listener_mut();
            batches.iter().map(|_| ledger.begin_write()).collect()
        };
        for (batch, seq) in batches.into_iter().zip(seqs) {
            self.next_token += 1;
            let token = self.next_token;
            self.assumed.add(token, &batch.items);
            let client = self.manager.client.clone();
            let fence = self.leadership.fence.clone();
            let (metrics, cache) = (self.manager.metrics.clone(), self.manager.cache.clone());
            let task = self.commits.spawn(async move {
                let started = std::time::Instant::now();
                let result = fence::commit(&client, &fence, &batch.compares, &batch.ops).await;
                metrics.transaction(&result, batch.ops.len(), started.elapsed()); // hook(http)
                if let Ok(Commit::Done(rev)) = &result {
                    log_batch(&batch.items, *rev);
                    record_committed(&metrics, &batch.items, &cache); // hook(http)
                }
                Committed {
                    token,
                    seq,
                    result,
                    items: batch.items,
                }
            });
            self.tasks.insert(task.id(), (token, seq));
        }
    }

    /// A preempted decision echoes its request as every decision does: the round does not
    /// hold other requests' bytes, the mirror does.
    fn echo_evicted(&self, items: &mut [Item]) {
        if !items.iter().any(|i| matches!(i, Item::Together(_))) {
            return;
        }
        let books = self.manager.books.lock();
        let mirror = books.mirror();
        for item in items.iter_mut().flat_map(Item::leaves_mut) {
            if let Item::Evict { id, decision, .. } = item
                && let Some(r) = mirror.request(id)
            {
                decision.container = crate::model::Echo::of(r.raw());
            }
        }
    }

    /// Adds what each item writes for the engines' agents: a placement to be launched on an
    /// engine with an agent carries its assignment, and whatever else the request was assigned
    /// to is withdrawn in the same commit. Costs a lookup per item when no engine has an agent.
    fn for_agents(&self, items: &mut [Item]) {
        let mut books = self.manager.books.lock();
        let (mirror, ledger) = books.parts();
        if !mirror.has_agents() {
            return;
        }
        let launch_all = ledger.policy().launch_all;
        for item in items.iter_mut().flat_map(Item::leaves_mut) {
            let Some(id) = item.id().cloned() else {
                continue;
            };
            let assign = match &*item {
                Item::Place {
                    engine, decision, ..
                } if mirror.agent(engine).is_some() => mirror
                    .request(&id)
                    .filter(|r| r.mod_revision == decision.request_revision)
                    .filter(|r| r.launch || launch_all)
                    .map(|r| {
                        let value = Assignment::encode(
                            id.as_str(),
                            engine.as_str(),
                            r.lifecycle.as_str(),
                            r.mod_revision,
                            r.raw(),
                        );
                        (engine.clone(), Arc::<[u8]>::from(value))
                    }),
                _ => None,
            };
            let withdraw: Vec<EngineId> = mirror
                .assignments(&id)
                .map(|(e, _)| e.clone())
                .filter(|e| assign.as_ref().is_none_or(|(to, _)| to != e))
                .collect();
            if let Some(agent) = item.agent_mut() {
                agent.stale_report = assign
                    .as_ref()
                    .is_some_and(|(e, _)| mirror.run_report(&id, e).is_some());
                agent.assign = assign.map(|(_, v)| v);
                agent.withdraw = withdraw;
            }
        }
    }

    /// Items whose values could not be encoded (a bug, never an empty value written): each
    /// is logged once and left undecided for the rest of this term (`citadel check` reports
    /// it), and the engine its placement held on is counted again without it.
    fn unwritable(&mut self, items: Vec<(Item, serde_json::Error)>) {
        if items.is_empty() {
            return;
        }
        let mut engines = Vec::new();
        for (item, e) in items {
            tracing::error!(request = ?item.id().map(|id| id.as_str()), error = %e,
                "cannot encode what the leader would write; the request stays undecided");
            if let Item::Place { engine, .. } = &item {
                engines.push(engine.clone());
            }
            if let Some(id) = item.id() {
                self.stuck.insert(id.clone());
            }
        }
        let mut books = self.manager.books.lock();
        let (mirror, ledger) = books.parts();
        self.view
            .refresh_forgotten(engines, mirror, ledger, &self.assumed);
    }

    /// Handles one finished commit task. `Some` when the leader must step down.
    async fn on_commit(
        &mut self,
        done: Result<(tokio::task::Id, Committed), JoinError>,
    ) -> Option<StepDown> {
        let c = match done {
            Ok((task, c)) => {
                self.tasks.remove(&task);
                c
            }
            Err(e) => {
                // Its transaction may or may not have committed: as with a failed call.
                let (token, seq) = self.tasks.remove(&e.id())?;
                tracing::error!(error = %e, "a commit task failed; its outcome is unknown");
                self.unknown_outcome(token, seq);
                return None;
            }
        };
        match c.result {
            Ok(Commit::Done(rev)) => {
                // The engines placed on are now dirty in the ledger: the next round refreshes
                // them without what this batch assumed.
                let mut books = self.manager.books.lock();
                for item in &c.items {
                    match item {
                        Item::Release { id, .. } => books.committed(id, rev, None),
                        Item::Odd { segment, answer } => {
                            books.odd_committed(segment, rev, answer.as_ref().map(|(r, _)| *r))
                        }
                        Item::Place {
                            id,
                            decision,
                            engine,
                            volumes,
                            ..
                        } => {
                            books.committed(id, rev, Some(decision));
                            for v in volumes {
                                books.volume_committed(v, engine.clone());
                            }
                        }
                        Item::Refuse { id, decision, .. }
                        | Item::Evict { id, decision, .. }
                        | Item::Restore { id, decision, .. } => {
                            books.committed(id, rev, Some(decision))
                        }
                        // A batch holds a `Together`'s parts, never the whole.
                        Item::Park { .. } | Item::Defer { .. } | Item::Together(_) => {}
                    }
                }
                books.listener_mut().end_write(c.seq);
                drop(books);
                self.assumed.forget(c.token);
            }
            Ok(Commit::Fenced) => {
                tracing::warn!("etcd refused our fence: another replica leads");
                self.commits.abort_all();
                return Some(StepDown::Fenced);
            }
            Ok(Commit::Conflict(rev)) => {
                tracing::debug!(
                    revision = rev,
                    "batch conflicted; re-planning on fresh state"
                );
                self.refused(c.token, c.seq);
                // The change that refused us is below a barrier written now.
                let l = self.leadership;
                match barrier(&self.manager.client, &l.fence, &l.value).await {
                    Ok(Commit::Done(b)) => self.must_reach = self.must_reach.max(b),
                    Ok(Commit::Fenced) => return Some(StepDown::Fenced),
                    _ => self.must_reach = self.must_reach.max(rev),
                }
            }
            Err(e) if too_many_ops(&e) => {
                // Refused before it reached raft: nothing of it can commit later.
                if self.max_ops > MAX_TXN_OPS {
                    tracing::error!(
                        max_txn_ops = self.max_ops,
                        fallback = MAX_TXN_OPS,
                        "etcd refused a transaction as too large: its --max-txn-ops is lower than ours; using etcd's default"
                    );
                    self.max_ops = MAX_TXN_OPS;
                    self.planned_larger = self.next_token;
                } else if c.token > self.planned_larger {
                    tracing::error!(
                        max_txn_ops = self.max_ops,
                        "etcd refuses transactions this large: lower --max-txn-ops to etcd's own"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                self.refused(c.token, c.seq);
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; re-planning on fresh state");
                self.unknown_outcome(c.token, c.seq);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        None
    }

    /// A batch etcd refused: nothing of it committed.
    fn refused(&mut self, token: u64, seq: u64) {
        let forgotten = self.assumed.forget(token);
        let mut books = self.manager.books.lock();
        let (mirror, ledger) = books.parts();
        self.view
            .refresh_forgotten(forgotten, mirror, ledger, &self.assumed);
        ledger.end_write(seq);
        // Refusals planned beside the failed placements may be wrong.
        ledger.retry_waiting(mirror);
    }

    /// A batch whose outcome is unknown: it may still land. Its requests' next writes compare
    /// their decision keys, and their decision events are taken as the truth.
    fn unknown_outcome(&mut self, token: u64, seq: u64) {
        let ids: Vec<RequestId> = self.assumed.ids_of(token);
        let forgotten = self.assumed.forget(token);
        let mut books = self.manager.books.lock();
        let (mirror, ledger) = books.parts();
        self.view
            .refresh_forgotten(forgotten, mirror, ledger, &self.assumed);
        ledger.uncertain(&ids);
        ledger.end_write(seq);
        ledger.retry_waiting(mirror);
    }
}

/// Marks the ledger as the leader's while it lives (see [`Ledger::set_leading`]).
struct Leading<'a>(&'a Books<Ledger>);

impl<'a> Leading<'a> {
    fn new(books: &'a Books<Ledger>) -> Self {
        Ledger::set_leading(&mut books.lock(), true);
        Leading(books)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        Ledger::set_leading(&mut self.0.lock(), false);
    }
}

/// A committed transaction's items, counted: decisions by status, placements by strategy, and
/// each decided request's wait since the cache saw its revision.
///
/// Only a request revision's first decision is timed: an unschedulable request decided again as
/// capacity changes, or a placement moved, has waited for capacity, not for the leader. Called
/// before the leader applies the batch to its cache, so the cache still shows what was decided
/// before it.
fn record_committed(metrics: &Metrics, items: &[Item], cache: &Cache) {
    let now = std::time::Instant::now();
    let first: Vec<bool> = {
        let mirror = cache.read();
        items
            .iter()
            .map(|item| {
                item.decision().is_some_and(|d| {
                    item.id()
                        .and_then(|id| mirror.decision(id))
                        .is_none_or(|had| had.request_revision != d.request_revision)
                })
            })
            .collect()
    };
    for (item, first) in items.iter().zip(first) {
        match item {
            Item::Release { .. } | Item::Odd { answer: None, .. } => metrics.released(),
            Item::Park { .. } | Item::Defer { .. } | Item::Together(_) => {}
            Item::Restore { decision, .. } => metrics.decided(decision.status),
            Item::Evict { decision, .. } => {
                metrics.decided(decision.status);
                metrics.preempted();
            }
            Item::Odd {
                answer: Some((_, decision)),
                ..
            } => metrics.decided(decision.status),
            Item::Place { decision, .. } | Item::Refuse { decision, .. } => {
                metrics.decided(decision.status);
                if matches!(item, Item::Place { .. }) {
                    metrics.placed(&decision.scheduler);
                }
                if let Some(seen) = first
                    .then(|| cache.progress().applied_at(decision.request_revision))
                    .flatten()
                {
                    metrics.decision_waited(now.saturating_duration_since(seen));
                }
            }
        }
    }
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
                match decision.status {
                    Status::Invalid => "invalid",
                    Status::Unschedulable => "unschedulable",
                    _ => "ended",
                }
            }
            Item::Release { id, .. } => {
                tracing::debug!(request = %id, revision = rev, "released");
                "released"
            }
            Item::Restore { id, .. } => {
                tracing::info!(request = %id, revision = rev, "restored a decision someone else changed");
                "restored"
            }
            Item::Odd { segment, answer } => {
                tracing::debug!(key_segment = %segment.escape_ascii(), revision = rev, "answered a request key that cannot be an id");
                if answer.is_some() {
                    "invalid"
                } else {
                    "released"
                }
            }
            Item::Evict {
                id,
                engine,
                decision,
                ..
            } => {
                tracing::info!(request = %id, engine = %engine, by = %decision.preempted_by, revision = rev, "preempted");
                "preempted"
            }
            Item::Park { .. } => "parked",
            Item::Defer { .. } | Item::Together(_) => "deferred",
        };
        *counts.entry(kind).or_default() += 1;
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    tracing::info!(
        revision = rev,
        placed = n("placed"),
        unschedulable = n("unschedulable"),
        invalid = n("invalid"),
        ended = n("ended"),
        released = n("released"),
        restored = n("restored"),
        "committed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decision, Echo};
    use crate::store::fence::Fence;

    fn manager(cache: Arc<Cache>, books: Books<Ledger>) -> Manager {
        // Never called: the client connects lazily, and these tests send nothing.
        let client = futures_executor(Client::connect(["http://127.0.0.1:9"], None));
        Manager::new(
            client,
            cache,
            books,
            ManagerConfig {
                replica: ReplicaId::new("me").expect("an id"),
                schedulers: Schedulers::default(),
                workers: 1,
                compact_every: None,
                compact_retain: 1,
                max_txn_ops: MAX_TXN_OPS,
                preempt_gap: 1,
            },
        )
    }

    fn futures_executor<T>(f: impl Future<Output = Result<T, etcd_client::Error>>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
            .expect("a lazy client")
    }

    #[test]
    fn a_commit_task_that_panics_counts_as_an_unknown_outcome() {
        let (cache, books) = Cache::with_listener(Keys::default(), 1.0, Ledger::default());
        let manager = manager(cache, books.clone());
        let leadership = Leadership {
            fence: Fence {
                key: b"/citadel/leader/1".to_vec(),
                rev: 1,
            },
            value: Vec::new(),
            elected_at: 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut lead = Lead::new(&manager, &leadership);
            let id = RequestId::new("r1").unwrap();
            let item = Item::Refuse {
                id: id.clone(),
                decision_fence: None,
                agent: AgentOps::default(),
                decision: Decision {
                    container: Echo::of(b"{}"),
                    resource: None,
                    reservation: None,
                    status: Status::Invalid,
                    reason: "x".into(),
                    scheduler: String::new(),
                    alternatives: Vec::new(),
                    request_revision: 1,
                    decided_at: String::new(),
                    decided_by: String::new(),
                    run: None,
                    preempted_by: String::new(),
                    preempted: Vec::new(),
                },
            };
            lead.assumed.add(1, std::slice::from_ref(&item));
            let seq = books.lock().listener_mut().begin_write();
            let task = lead.commits.spawn(async { panic!("a commit task dies") });
            lead.tasks.insert(task.id(), (1, seq));
            let done = lead.commits.join_next_with_id().await.expect("a task");
            assert!(done.is_err());
            assert_eq!(lead.on_commit(done).await, None, "no reason to step down");
            assert!(
                lead.assumed.ids.is_empty() && lead.assumed.in_flight() == 0,
                "the batch is no longer assumed: its requests are planned again"
            );
            assert!(lead.tasks.is_empty());
        });
        // Its write may have landed: the request's next write compares the decision key,
        // and its decision event is taken as the truth.
        assert!(
            books
                .lock()
                .listener()
                .is_uncertain(&RequestId::new("r1").unwrap())
        );
    }
}
