//! `--agents N`: hollow agents, as Kubernetes' kubemark runs hollow nodes. N agents live in this
//! one process and speak the real agent protocol (see [`crate::model::agent`]) to the real etcd,
//! without Docker:
//!
//! - each registers its engine record with `agent` set (64 records per transaction: only the
//!   setup is batched);
//! - each grants one lease of its own (`--agent-ttl`, 15 s) and keeps it alive on a
//!   LeaseKeepAlive stream of its own, renewing every third of the TTL, as etcd's own clients do
//!   (etcd-client opens one stream per lease; the streams of many agents share a few
//!   connections);
//! - each puts its `health/<engine>` key on that lease, once: hollow usage is constant, and a
//!   real agent writes usage only when it changes, so in steady state only keep-alives flow;
//! - each watches its own `assignments/<engine>/` range (the watches of many agents share a
//!   watch stream: one stream, many watches, as etcd's API allows);
//! - on an assignment each writes a `running` [`RunReport`] to `runs/<engine>/<request>`, in a
//!   transaction that compares the assignment's mod revision, as a real agent does once the
//!   container started.
//!
//! [`HollowFleet::kill`] makes one agent stop renewing its lease and stop answering, as if its
//! process died.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KvClient, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use super::BenchError;
use super::phase::{Batch, Seen, Timings};
use super::workload::{Fleet, engine_id, percentile};
use crate::keys::{Key, Keys};
use crate::model::agent::{AgentInfo, AgentStamp, Assignment, RunReport};
use crate::model::{ContainerState, Decision, EngineId, Health, Status, now_rfc3339};
use crate::store;

/// Agents per keep-alive task and per shared watch stream (at most [`MAX_SHARDS`] of each).
const PER_SHARD: usize = 200;
const MAX_SHARDS: usize = 64;
/// Setup calls in flight at once (grants, health puts, keep-alive streams).
const IN_FLIGHT: usize = 128;

/// N hollow agents, running until dropped.
pub(super) struct HollowFleet {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kept for the fleet's life: the streams run over them.
    _conns: Vec<Client>,
    pub(super) setup_s: f64,
    pub(super) ttl_s: u64,
    pub(super) shards: usize,
}

/// What the agents share with the bench.
struct Shared {
    keys: Keys,
    killed: Vec<AtomicBool>,
    /// Keep-alive answers with a TTL left, and without (the lease was gone).
    keepalives: AtomicU64,
    lost_leases: AtomicUsize,
    errors: AtomicUsize,
    /// Run reports written, and report transactions whose assignment had changed since.
    reports: AtomicUsize,
    stale_reports: AtomicUsize,
    /// The phase whose requests' `running` reports are timed.
    timings: RwLock<Option<Arc<Timings>>>,
}

impl Drop for HollowFleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The engine record agent `i` registers: the fleet's engine, with `agent` set.
fn engine_record(fleet: &Fleet, i: usize, since: &str) -> String {
    let mut json = fleet.engine_json(i);
    let agent = AgentInfo {
        host: host(i),
        version: format!("hollow-{}", env!("CARGO_PKG_VERSION")),
        since: since.to_string(),
        policy: Default::default(),
    };
    json.pop();
    json.push_str(",\"agent\":");
    json.push_str(&serde_json::to_string(&agent).expect("an agent record serialises"));
    json.push('}');
    json
}

fn host(i: usize) -> String {
    format!("hollow-{i:05}")
}

/// The agent index of a hollow engine id (`engine-00042` is 42).
fn index_of(engine: &EngineId) -> Option<usize> {
    engine.as_str().strip_prefix("engine-")?.parse().ok()
}

impl HollowFleet {
    /// Registers the fleet's engines as agents and starts them: once this returns, every
    /// agent's lease is granted and kept alive, its health key is on it, and its watch is open.
    pub(super) async fn start(
        conns: Vec<Client>,
        keys: &Keys,
        fleet: &Fleet,
        ttl_s: u64,
    ) -> Result<HollowFleet, BenchError> {
        let started = Instant::now();
        let n = fleet.engines;
        let conn = |i: usize| conns[i % conns.len()].clone();
        let since = now_rfc3339();
        let mut kv = conns[0].kv_client();
        for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|i| {
                    TxnOp::put(
                        keys.engine(&engine_id(*i)),
                        engine_record(fleet, *i, &since),
                        None,
                    )
                })
                .collect();
            kv.txn(Txn::new().and_then(ops)).await?;
        }
        let leases: Vec<i64> = stream::iter(0..n)
            .map(|i| {
                let mut lc = conn(i).lease_client();
                async move { lc.grant(ttl_s as i64, None).await.map(|r| r.id()) }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let pid = std::process::id();
        stream::iter(0..n)
            .map(|i| {
                let mut kv = conn(i).kv_client();
                let engine = engine_id(i);
                let health = Health {
                    engine: engine.to_string(),
                    last_contact: now_rfc3339(),
                    cpus_used: 0.0,
                    memory_used_mb: 0.0,
                    containers_running: 0,
                    checked_by: host(i),
                    agent: Some(AgentStamp {
                        host: host(i),
                        pid,
                        instance: format!("{instance}-{i}"),
                    }),
                };
                let value = serde_json::to_vec(&health).expect("health serialises");
                let (key, lease) = (keys.health(&engine), leases[i]);
                async move {
                    kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        let kept: Vec<(LeaseKeeper, LeaseKeepAliveStream)> = stream::iter(0..n)
            .map(|i| {
                let mut lc = conn(i).lease_client();
                let lease = leases[i];
                async move { lc.keep_alive(lease).await }
            })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        let from = kv
            .get("/", Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map_or(0, |h| h.revision());

        let shared = Arc::new(Shared {
            keys: keys.clone(),
            killed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            keepalives: AtomicU64::new(0),
            lost_leases: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            reports: AtomicUsize::new(0),
            stale_reports: AtomicUsize::new(0),
            timings: RwLock::new(None),
        });
        let shards = n.div_ceil(PER_SHARD).clamp(1, MAX_SHARDS);
        let period = Duration::from_secs_f64(ttl_s as f64 / 3.0);
        let mut keepers: Vec<Vec<(usize, LeaseKeeper)>> = (0..shards).map(|_| Vec::new()).collect();
        let mut answers: Vec<Vec<LeaseKeepAliveStream>> = (0..shards).map(|_| Vec::new()).collect();
        for (i, (keeper, answer)) in kept.into_iter().enumerate() {
            keepers[i % shards].push((i, keeper));
            answers[i % shards].push(answer);
        }
        let mut tasks = Vec::new();
        for (s, (keepers, answers)) in keepers.into_iter().zip(answers).enumerate() {
            tasks.push(tokio::spawn(keep_alive(
                shared.clone(),
                keepers,
                answers,
                period,
            )));
            let agents: Vec<usize> = (s..n).step_by(shards).collect();
            let watch = open_watches(&conn(s), keys, &agents, from + 1).await?;
            tasks.push(tokio::spawn(follow(
                shared.clone(),
                watch,
                conn(s).kv_client(),
            )));
        }
        Ok(HollowFleet {
            shared,
            tasks,
            _conns: conns,
            setup_s: started.elapsed().as_secs_f64(),
            ttl_s,
            shards,
        })
    }

    /// Times the `running` reports of `timings`' requests from now on.
    pub(super) fn observe(&self, timings: &Arc<Timings>) {
        *self.shared.timings.write().expect("not poisoned") = Some(timings.clone());
    }

    /// Agent `i` dies: it renews its lease no more and answers nothing. Returns when.
    pub(super) fn kill(&self, i: usize) -> Instant {
        self.shared.killed[i].store(true, Ordering::Relaxed);
        Instant::now()
    }

    /// Keep-alive answers received so far.
    pub(super) fn keepalives(&self) -> u64 {
        self.shared.keepalives.load(Ordering::Relaxed)
    }

    pub(super) fn counts(&self) -> FleetCounts {
        let s = &self.shared;
        FleetCounts {
            lost_leases: s.lost_leases.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            reports: s.reports.load(Ordering::Relaxed),
            stale_reports: s.stale_reports.load(Ordering::Relaxed),
        }
    }
}

/// What the agents counted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FleetCounts {
    /// Keep-alives etcd answered with no TTL left: the lease had expired.
    pub(super) lost_leases: usize,
    /// Calls that failed (keep-alive sends, report transactions, unreadable assignments).
    pub(super) errors: usize,
    pub(super) reports: usize,
    pub(super) stale_reports: usize,
}

/// One watch stream carrying every agent of `agents`' watch on its own assignments range;
/// returns once etcd created them all.
async fn open_watches(
    client: &Client,
    keys: &Keys,
    agents: &[usize],
    from: i64,
) -> Result<WatchStream, BenchError> {
    let options = || WatchOptions::new().with_prefix().with_start_revision(from);
    let range = |i: usize| keys.assignments_of(&engine_id(i));
    let mut watch = client
        .watch_client()
        .watch(range(agents[0]), Some(options()))
        .await?;
    for &i in &agents[1..] {
        watch.watch(range(i), Some(options())).await?;
    }
    let mut created = 0;
    while created < agents.len() {
        match watch.message().await? {
            Some(resp) if resp.canceled() => {
                return Err(BenchError::Setup(format!(
                    "a hollow agent's watch was refused: {}",
                    resp.cancel_reason()
                )));
            }
            Some(resp) if resp.created() => created += 1,
            Some(_) => {}
            None => return Err(BenchError::Setup("a hollow agents' watch ended".into())),
        }
    }
    Ok(watch)
}

/// Renews each of `keepers`' leases every `period`, spread evenly over it, and reads etcd's
/// answers.
async fn keep_alive(
    shared: Arc<Shared>,
    mut keepers: Vec<(usize, LeaseKeeper)>,
    answers: Vec<LeaseKeepAliveStream>,
    period: Duration,
) {
    if keepers.is_empty() {
        return;
    }
    let mut answers = stream::select_all(answers);
    let mut open = true;
    let mut tick = tokio::time::interval(period / keepers.len() as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let len = keepers.len();
                let (i, keeper) = &mut keepers[next];
                next = (next + 1) % len;
                if !shared.killed[*i].load(Ordering::Relaxed) && keeper.keep_alive().await.is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            answer = answers.next(), if open => match answer {
                Some(Ok(a)) if a.ttl() > 0 => {
                    shared.keepalives.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {
                    shared.lost_leases.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(_)) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                None => open = false,
            },
        }
    }
}

/// Answers the assignments seen on one shared watch stream: each live agent reports its own.
async fn follow(shared: Arc<Shared>, mut watch: WatchStream, kv: KvClient) {
    while let Ok(Some(resp)) = watch.message().await {
        for ev in resp.events() {
            if ev.event_type() != EventType::Put {
                continue;
            }
            let Some(kv_) = ev.kv() else { continue };
            let Some(Key::Assignment(engine, request)) = shared.keys.parse(kv_.key()) else {
                continue;
            };
            let Some(i) = index_of(&engine) else { continue };
            if shared
                .killed
                .get(i)
                .is_none_or(|k| k.load(Ordering::Relaxed))
            {
                continue;
            }
            let assignment_key = kv_.key().to_vec();
            let revision = kv_.mod_revision();
            let parsed = serde_json::from_slice::<Assignment>(kv_.value());
            let (shared, mut kv) = (shared.clone(), kv.clone());
            tokio::spawn(async move {
                match parsed {
                    Ok(a) if a.engine == engine.as_str() && a.request == request.as_str() => {}
                    _ => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                let report = RunReport {
                    request: request.to_string(),
                    engine: engine.to_string(),
                    assignment_revision: revision,
                    container_id: format!("hollow{revision:058x}"),
                    container_name: format!("citadel-{request}"),
                    state: Some(ContainerState::Running),
                    updated_at: now_rfc3339(),
                    ..RunReport::default()
                };
                let value = serde_json::to_vec(&report).expect("a report serialises");
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        assignment_key,
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([TxnOp::put(shared.keys.run(&engine, &request), value, None)]);
                match kv.txn(txn).await {
                    Ok(r) if r.succeeded() => {
                        shared.reports.fetch_add(1, Ordering::Relaxed);
                        let timings = shared.timings.read().expect("not poisoned").clone();
                        if let Some(t) = timings {
                            t.note_running(request.as_str());
                        }
                    }
                    Ok(_) => {
                        shared.stale_reports.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

/// etcd's own counters, from its `/metrics` (plain http endpoints only).
#[derive(Debug, Clone, Default)]
pub(super) struct EtcdCounters(std::collections::HashMap<String, f64>);

impl EtcdCounters {
    /// Reads `/metrics` of `endpoint` (`http://HOST:PORT`: etcd's, or a controller's);
    /// `None` over https or on failure.
    pub(super) async fn read(endpoint: &str) -> Option<EtcdCounters> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = endpoint.strip_prefix("http://")?.trim_end_matches('/');
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            // The Host header names the address asked: a controller answers only to its own.
            s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await?;
            std::io::Result::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .ok()?
            .ok()?;
        Some(EtcdCounters::parse(&String::from_utf8_lossy(&body)))
    }

    /// The samples of a Prometheus text exposition (HTTP headers and comments are skipped).
    pub(super) fn parse(text: &str) -> EtcdCounters {
        let map = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        EtcdCounters(map)
    }

    pub(super) fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// `name`'s growth from `self` to `later`, per second over `secs`.
    pub(super) fn rate(&self, later: &EtcdCounters, name: &str, secs: f64) -> Option<f64> {
        Some((later.get(name)? - self.get(name)?) / secs.max(1e-9))
    }
}

/// What `--agents` measured (`agents` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct AgentFigures {
    pub agents: usize,
    pub lease_ttl_s: u64,
    /// Registering, granting, putting health and opening every stream and watch.
    pub setup_s: f64,
    /// Keep-alive tasks and shared watch streams (one LeaseKeepAlive stream per agent).
    pub shards: usize,
    /// The quiet window: the controller leads, every agent is alive, no request is submitted.
    pub window_s: f64,
    /// etcd's revisions per second over the window: every write that changed a key.
    pub etcd_writes_per_s: Option<f64>,
    /// etcd's own counters over the window (`etcd_mvcc_*_total`, raft proposals committed,
    /// leases renewed).
    pub etcd_puts_per_s: Option<f64>,
    pub etcd_txns_per_s: Option<f64>,
    pub etcd_deletes_per_s: Option<f64>,
    pub etcd_proposals_per_s: Option<f64>,
    pub etcd_lease_renewals_per_s: Option<f64>,
    /// Keep-alive answers the agents received per second.
    pub keepalives_per_s: f64,
    /// cpu over the window, percent of one core.
    pub leader_cpu_pct: f64,
    pub etcd_cpu_pct: Option<f64>,
    pub bench_cpu_pct: f64,
    /// etcd's live leases at the end of the window (the agents' and the election's).
    pub live_leases: usize,
    pub lost_leases: usize,
    pub agent_errors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchFigures>,
}

/// One agent killed: how long until its lease's expiry deleted its health key, and until the
/// leader acted on the loss.
#[derive(Debug, Clone, Serialize)]
pub struct LossFigures {
    pub engine: String,
    /// The placed request on that engine whose fate is watched.
    pub request: String,
    /// From the kill to the health key's deletion.
    pub health_deleted_ms: Option<f64>,
    /// From the kill to the leader's first act on the request (its decision moved or deleted,
    /// or its assignment deleted); `None` if it did not within the TTL + 15 s.
    pub leader_acted_ms: Option<f64>,
    pub leader_action: Option<String>,
    /// Whether the leader acted (or, if it did not, the health key went) within TTL + 1 s.
    pub within_ttl_plus_1s: bool,
}

/// `--launch`: the same requests again with `"launch": true`, in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchFigures {
    pub requests: usize,
    pub decisions_per_s: f64,
    /// The run's requests without `launch` (the table's decisions/s).
    pub plain_decisions_per_s: f64,
    /// Launched over plain decisions/s.
    pub ratio: f64,
    /// The launched batch's cost, per decision and per 1,000 decisions (its agents' reports
    /// included in the bench's and etcd's).
    pub controller_cpu_us_per_decision: f64,
    pub etcd_cpu_s_per_1k_decisions: Option<f64>,
    pub bench_cpu_s_per_1k_decisions: f64,
    pub placed: usize,
    /// Placed launched requests with a `running` report, in etcd at the end, from the agent of
    /// the engine they are placed on and answering their current assignment.
    pub running: usize,
    /// Placed launched requests without one.
    pub missing_running: usize,
    /// Reports from an engine the request is not placed on, or answering an older assignment.
    pub misplaced_running: usize,
    /// Run reports the agents wrote, and report transactions whose assignment had changed in
    /// the meantime (not written).
    pub reports_written: usize,
    pub stale_reports: usize,
    pub running_p50_ms: f64,
    pub running_p99_ms: f64,
    pub running_max_ms: f64,
    /// The invariants once both batches are decided (the table's are the plain batch's).
    pub overcommitted_engines: usize,
    pub double_bound_ports: usize,
    pub mismatched: usize,
    /// Requests assigned to two engines' agents at once.
    pub assigned_twice: usize,
    pub duplicate_or_missing_decisions: usize,
}

impl LaunchFigures {
    pub fn violations(&self) -> usize {
        self.missing_running
            + self.misplaced_running
            + self.overcommitted_engines
            + self.double_bound_ports
            + self.mismatched
            + self.assigned_twice
            + self.duplicate_or_missing_decisions
    }
}

/// Measures the quiet window: `settle` for the leader to load every engine, then `secs` with
/// every agent alive and no request submitted.
pub(super) async fn quiet_window(
    fleet: &HollowFleet,
    client: &Client,
    endpoint: Option<&str>,
    leader_pid: u32,
    meter: &super::proc::Meter,
    secs: u64,
) -> Result<AgentFigures, BenchError> {
    use super::proc::proc_usage;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let revision = |client: &Client| {
        let mut kv = client.kv_client();
        async move {
            kv.get("/", Some(GetOptions::new().with_count_only()))
                .await
                .map(|r| r.header().map_or(0, |h| h.revision()))
        }
    };
    let metrics = || async {
        match endpoint {
            Some(e) => EtcdCounters::read(e).await,
            None => None,
        }
    };
    eprintln!(
        "bench: {} hollow agents alive; measuring {secs} s of quiet",
        fleet.shared.killed.len()
    );
    let (m0, rev0) = (metrics().await, revision(client).await?);
    let (leader0, etcd0, own0, ka0) = (
        proc_usage(leader_pid).map(|u| u.0).unwrap_or_default(),
        meter.etcd(),
        meter.own(),
        fleet.keepalives(),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (m1, rev1) = (metrics().await, revision(client).await?);
    let window_s = t0.elapsed().as_secs_f64();
    let leader1 = proc_usage(leader_pid).map(|u| u.0).unwrap_or_default();
    let etcd_cpu = meter.etcd().zip(etcd0).map(|(b, a)| b - a);
    let own_cpu = meter.own() - own0;
    let keepalives = fleet.keepalives() - ka0;
    let live_leases = client.lease_client().leases().await?.leases().len();
    let rate = |name: &str| {
        m0.as_ref()
            .zip(m1.as_ref())
            .and_then(|(a, b)| a.rate(b, name, window_s))
    };
    let counts = fleet.counts();
    Ok(AgentFigures {
        agents: fleet.shared.killed.len(),
        lease_ttl_s: fleet.ttl_s,
        setup_s: fleet.setup_s,
        shards: fleet.shards,
        window_s,
        etcd_writes_per_s: Some((rev1 - rev0) as f64 / window_s),
        etcd_puts_per_s: rate("etcd_mvcc_put_total"),
        etcd_txns_per_s: rate("etcd_mvcc_txn_total"),
        etcd_deletes_per_s: rate("etcd_mvcc_delete_total"),
        etcd_proposals_per_s: rate("etcd_server_proposals_committed_total"),
        etcd_lease_renewals_per_s: rate("etcd_debugging_lease_renewed_total"),
        keepalives_per_s: keepalives as f64 / window_s,
        leader_cpu_pct: 100.0 * (leader1 - leader0) / window_s,
        etcd_cpu_pct: etcd_cpu.map(|c| 100.0 * c / window_s),
        bench_cpu_pct: 100.0 * own_cpu / window_s,
        live_leases,
        lost_leases: counts.lost_leases,
        agent_errors: counts.errors,
        loss: None,
        launch: None,
    })
}

/// Kills the agent of the engine a placed service request of `batch` is on, and times how
/// long until its health key goes and until the leader acts on the request.
pub(super) async fn measure_loss(
    client: &Client,
    keys: &Keys,
    fleet: &HollowFleet,
    batch: Batch,
    requests: usize,
) -> Result<Option<LossFigures>, BenchError> {
    let mut kv = client.kv_client();
    let mut target = None;
    // Services are requests n with n % 5 < 3 (see `request_json`).
    for n in (0..requests).filter(|n| n % 5 < 3).take(500) {
        let id = batch.id(n);
        let r = kv.get(keys.decision(&id), None).await?;
        let Some(d) = r
            .kvs()
            .first()
            .and_then(|v| serde_json::from_slice::<Decision>(v.value()).ok())
        else {
            continue;
        };
        if d.status != Status::Placed {
            continue;
        }
        if let Some(engine) = d.resource.and_then(|r| EngineId::new(r.id).ok())
            && index_of(&engine).is_some()
        {
            target = Some((id, engine));
            break;
        }
    }
    let Some((request, engine)) = target else {
        return Ok(None);
    };
    let i = index_of(&engine).expect("a hollow engine");
    let from = kv
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?
        .header()
        .map_or(0, |h| h.revision())
        + 1;
    let (health, decision, assignment) = (
        keys.health(&engine),
        keys.decision(&request),
        keys.assignment(&engine, &request),
    );
    let options = || Some(WatchOptions::new().with_start_revision(from));
    let mut watch = client
        .watch_client()
        .watch(health.as_str(), options())
        .await?;
    watch.watch(decision.as_str(), options()).await?;
    watch.watch(assignment.as_str(), options()).await?;
    let mut created = 0;
    while created < 3 {
        match watch.message().await? {
            Some(r) if r.created() => created += 1,
            Some(_) => {}
            None => return Err(BenchError::Setup("the loss watch ended".into())),
        }
    }
    eprintln!(
        "bench: killing the agent of {engine} (where {request} is placed); waiting up to {} s",
        fleet.ttl_s + 15
    );
    let killed = fleet.kill(i);
    let deadline = killed + Duration::from_secs(fleet.ttl_s + 15);
    let (mut health_ms, mut acted): (Option<f64>, Option<(f64, String)>) = (None, None);
    while health_ms.is_none() || acted.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, watch.message()).await else {
            break;
        };
        let Some(resp) = message? else { break };
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let deleted = ev.event_type() == EventType::Delete;
            let key = kv.key();
            if key == health.as_bytes() && deleted {
                health_ms.get_or_insert(ms);
            } else if acted.is_none() && key == decision.as_bytes() {
                let what = if deleted {
                    Some("decision deleted".to_string())
                } else {
                    serde_json::from_slice::<Decision>(kv.value())
                        .ok()
                        .and_then(|d| {
                            let on = d.resource.map(|r| r.id).unwrap_or_default();
                            (d.status != Status::Placed || on != engine.as_str())
                                .then(|| format!("decision {:?} on {on:?}", d.status))
                        })
                };
                if let Some(what) = what {
                    acted = Some((ms, what));
                }
            } else if acted.is_none() && key == assignment.as_bytes() && deleted {
                acted = Some((ms, "assignment deleted".into()));
            }
        }
    }
    let limit = (fleet.ttl_s as f64 + 1.0) * 1e3;
    let within = match &acted {
        Some((ms, _)) => *ms <= limit,
        None => health_ms.is_some_and(|ms| ms <= limit),
    };
    Ok(Some(LossFigures {
        engine: engine.to_string(),
        request: request.to_string(),
        health_deleted_ms: health_ms,
        leader_acted_ms: acted.as_ref().map(|a| a.0),
        leader_action: acted.map(|a| a.1),
        within_ttl_plus_1s: within,
    }))
}

/// Reads the launched batch's decisions, assignments and run reports from etcd and checks that
/// every placed one has a `running` report from the agent of its engine, on its current
/// assignment.
pub(super) async fn check_launched(
    client: &Client,
    keys: &Keys,
    fleet: &HollowFleet,
    (launched, plain): (&Seen, &Seen),
    requests: usize,
    report: &crate::invariants::Report,
    cpu: (f64, Option<f64>, f64),
) -> Result<LaunchFigures, BenchError> {
    let (leader_cpu, etcd_cpu, bench_cpu) = cpu;
    let decided = launched.decided().max(1) as f64;
    use std::collections::{HashMap, HashSet};
    let tag = format!("{}{}", keys.decisions(), Batch::LAUNCHED.tag);
    let (decisions, _) = store::range_all(client, &tag, 5_000).await?;
    let placed: HashMap<String, String> = decisions
        .iter()
        .filter_map(|kv| {
            let Some(Key::Decision(id)) = keys.parse(kv.key()) else {
                return None;
            };
            let d = serde_json::from_slice::<Decision>(kv.value()).ok()?;
            let on = d.resource?.id;
            (d.status == Status::Placed).then(|| (id.to_string(), on))
        })
        .collect();
    let (assignments, _) = store::range_all(client, &keys.assignments(), 5_000).await?;
    let assigned: HashMap<(String, String), i64> = assignments
        .iter()
        .filter_map(|kv| match keys.parse(kv.key()) {
            Some(Key::Assignment(e, id)) => {
                Some(((e.to_string(), id.to_string()), kv.mod_revision()))
            }
            _ => None,
        })
        .collect();
    let (runs, _) = store::range_all(client, &keys.runs(), 5_000).await?;
    let (mut good, mut misplaced) = (HashSet::new(), 0);
    for kv in &runs {
        let Some(Key::Run(engine, id)) = keys.parse(kv.key()) else {
            continue;
        };
        let (engine, id) = (engine.to_string(), id.to_string());
        let Ok(r) = serde_json::from_slice::<RunReport>(kv.value()) else {
            misplaced += 1;
            continue;
        };
        let current = assigned.get(&(engine.clone(), id.clone())) == Some(&r.assignment_revision);
        if placed.get(&id) == Some(&engine)
            && current
            && r.state == Some(ContainerState::Running)
            && r.engine == engine
            && r.request == id
        {
            good.insert(id);
        } else {
            misplaced += 1;
        }
    }
    let missing = placed.keys().filter(|id| !good.contains(*id)).count();
    let (launched_per_s, plain_per_s) = (
        launched.per_s(launched.decided()),
        plain.per_s(plain.decided()),
    );
    let p = |q: f64| percentile(&launched.running_ms, q);
    Ok(LaunchFigures {
        requests,
        decisions_per_s: launched_per_s,
        plain_decisions_per_s: plain_per_s,
        ratio: launched_per_s / plain_per_s.max(1e-9),
        controller_cpu_us_per_decision: leader_cpu * 1e6 / decided,
        etcd_cpu_s_per_1k_decisions: etcd_cpu.map(|c| c * 1e3 / decided),
        bench_cpu_s_per_1k_decisions: bench_cpu * 1e3 / decided,
        placed: placed.len(),
        running: good.len(),
        missing_running: missing,
        misplaced_running: misplaced,
        reports_written: fleet.counts().reports,
        stale_reports: fleet.counts().stale_reports,
        running_p50_ms: p(0.50),
        running_p99_ms: p(0.99),
        running_max_ms: launched.running_ms.last().copied().unwrap_or(0.0),
        overcommitted_engines: report.overcommitted_engines.len(),
        double_bound_ports: report.double_bound_ports.len(),
        mismatched: report.mismatched.len(),
        assigned_twice: report.assigned_twice.len(),
        duplicate_or_missing_decisions: report.decided.abs_diff(2 * requests),
    })
}
