//! `citadel agent`: one engine's own hands, on the engine's host. It registers the engine from
//! its Docker daemon, keeps the engine alive in etcd on one lease, runs what the leader assigns
//! it and reports what became of it. Nothing reaches the Docker API from afar.
//!
//! ```text
//! start:    docker info ─▶ health/<engine> claimed on our lease (or a crashed predecessor's,
//!           adopted) ─▶ engines/<engine> registered (mod-revision compare, retried)
//! liveness: keepalive every TTL/4 ─▶ no answer for TTL − stop-grace − 2 s: cut off
//!           (services stopped, batch kept; see cutoff.rs) ─▶ etcd again: lease re-granted if
//!           it lapsed, health re-claimed, reconcile starts what is still assigned
//! usage:    docker stats every --sample-every ─▶ health/<engine> when it changed enough
//! work:     assignments/<engine>/ listed, then watched ─▶ reconcile against the containers
//!           labelled citadel.engine=<engine> AND citadel.cluster=<prefix> (docker events and
//!           a listing every few seconds) ─▶ runs/<engine>/<request>
//! ```
//!
//! # Writes per agent
//!
//! Health: at most one usage write per `--report-min-interval` (default 10 s) however much the
//! usage moves, plus one per `--report-every` (default 5 min) when it does not, plus one per
//! lease lost and re-claimed: ≤ 0.1 writes/s by default. Keepalives (one per TTL/4, 0.27/s at
//! 15 s) are lease renewals, not key writes. Run reports: one per change of a container's
//! state, ports or error (never the same report twice, see `report.rs`), and one delete per
//! assignment removed: bounded by how fast containers start and stop, never by time. A
//! thousand idle agents thus write ≤ 100 health keys/s, and in practice ~3/s.
//!
//! It may not write outside its engine's keys (`engines/<id>`, `health/<id>`, `runs/<id>/`),
//! nor touch a container without both its engine's and its cluster's labels.

mod cutoff;
mod liveness;
mod register;
mod report;
mod work;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::Docker;
use etcd_client::Client;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::docker::engine::{self, EngineError};
use crate::docker::{self, DockerError};
use crate::keys::Keys;
use crate::model::{AgentStamp, EngineId, LaunchPolicy, RequestId, RunReport};
use crate::store::{self, EtcdConfig, StoreError};

pub use liveness::process_alive;

/// Everything `citadel agent` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub engine: EngineId,
    /// The host this agent runs on, as its stamp and engine record name it.
    pub host: String,
    /// The Docker daemon's address (`unix:///var/run/docker.sock`).
    pub docker: String,
    /// `key=value` labels added to the engine's.
    pub labels: Vec<String>,
    pub cpus: Option<f64>,
    /// MB.
    pub memory: Option<f64>,
    /// MB.
    pub disk: Option<f64>,
    /// The lease's TTL: how long a silent agent keeps its engine alive.
    pub ttl: Duration,
    pub report_every: Duration,
    pub report_min_interval: Duration,
    pub sample_every: Duration,
    pub stop_grace: Duration,
    pub keep_services_when_cut_off: bool,
    pub policy: LaunchPolicy,
    pub max_launches: usize,
    pub keys: Keys,
}

impl AgentConfig {
    /// No keepalive answered for this long: cut off (the lease lapses at TTL; services must be
    /// down, grace included, before the leader may place them elsewhere).
    pub fn cut_off_after(&self) -> Duration {
        self.ttl
            .saturating_sub(self.stop_grace)
            .saturating_sub(Duration::from_secs(2))
    }

    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ttl < Duration::from_secs(2) {
            return Err(format!("--ttl {:?}: at least 2s", self.ttl));
        }
        if self.cut_off_after() < Duration::from_secs(1) {
            return Err(format!(
                "--ttl {:?} leaves under 1s before the cut-off (TTL − --stop-grace {:?} − 2s)",
                self.ttl, self.stop_grace
            ));
        }
        if self.max_launches == 0 {
            return Err("--max-launches: at least 1".into());
        }
        for (flag, d) in [
            ("--report-every", self.report_every),
            ("--sample-every", self.sample_every),
        ] {
            if d.is_zero() {
                return Err(format!("{flag}: must be above 0"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another agent runs this engine.
    #[error("{0}")]
    Refused(String),
    #[error("engines/{engine}: {why}")]
    Record { engine: String, why: String },
    #[error("an agent task ended: {0}")]
    Task(String),
}

/// The agent's shared state: its tasks hold it in an `Arc`.
pub(crate) struct Agent {
    cfg: AgentConfig,
    client: Client,
    docker: Docker,
    stamp: AgentStamp,
    /// The engine's memory, MB: the usage threshold is a share of it.
    memory_mb: f64,
    /// The lease the health key lives on.
    lease: AtomicI64,
    /// When the last keepalive that etcd answered with TTL > 0 was sent.
    answered: Mutex<Instant>,
    /// True while cut off from etcd (see cutoff.rs).
    cut: watch::Sender<bool>,
    desired: watch::Sender<Arc<work::Desired>>,
    /// Asks the reconciler for a round.
    poke: Notify,
    /// Asks the assignment watcher to list again (after a cut-off: its stream may be stale).
    relist: Notify,
    /// Service containers stopped for being cut off: started again, not recreated.
    cut_stopped: Mutex<HashSet<String>>,
    /// Held by a reconcile round and by the cut-off's stops: they never interleave.
    docker_lock: tokio::sync::Mutex<()>,
    /// The last report written (or read) per request.
    reported: Mutex<HashMap<RequestId, RunReport>>,
    /// Requests being launched, and containers being removed.
    launching: Mutex<HashSet<RequestId>>,
    removing: Mutex<HashSet<String>>,
    launches: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agent {
    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }
    fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
    fn engine(&self) -> &str {
        self.cfg.engine.as_str()
    }
    fn cluster(&self) -> &str {
        self.cfg.keys.prefix()
    }
    /// Its containers: this engine's labels and this cluster's, never anyone else's.
    fn owner(&self) -> docker::Owner {
        docker::Owner::new(self.engine(), Some(self.cluster()))
    }
}

/// How long one Docker call of the agent may take (a stop waits out its grace on top).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` turns true. Containers keep running, and the lease is left
/// to lapse (or to be adopted by the agent's restart).
pub async fn run(
    cfg: AgentConfig,
    etcd: EtcdConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    cfg.check().map_err(AgentError::Usage)?;
    let docker = engine::connect(&cfg.docker, None, DOCKER_TIMEOUT)?;
    let probe = engine::probe(&cfg.docker, None, Duration::from_secs(10)).await?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|source| EngineError::Unreachable {
            addr: cfg.docker.clone(),
            source,
        })?;
    tracing::info!(engine = %cfg.engine, host = %cfg.host, docker = %cfg.docker,
        cpus = probe.cpus, memory_mb = probe.memory_mb, "agent starting");
    let client = store::connect(&etcd, None).await?;
    let stamp = AgentStamp {
        host: cfg.host.clone(),
        pid: std::process::id(),
        instance: uuid::Uuid::new_v4().to_string(),
    };
    let agent = Arc::new(Agent {
        memory_mb: cfg.memory.unwrap_or(probe.memory_mb),
        launches: Arc::new(tokio::sync::Semaphore::new(cfg.max_launches)),
        cfg,
        client,
        docker,
        stamp,
        lease: AtomicI64::new(0),
        answered: Mutex::new(Instant::now()),
        cut: watch::channel(false).0,
        desired: watch::channel(Arc::default()).0,
        poke: Notify::new(),
        relist: Notify::new(),
        cut_stopped: Mutex::default(),
        docker_lock: tokio::sync::Mutex::new(()),
        reported: Mutex::default(),
        launching: Mutex::default(),
        removing: Mutex::default(),
    });
    // The health key first: a second agent is refused before it rewrites the engine record.
    let usage = agent.sample().await;
    agent.claim(usage.as_ref()).await?;
    agent.register(&probe).await?;
    agent.seed_reports().await;

    let mut tasks: JoinSet<(&'static str, Result<(), AgentError>)> = JoinSet::new();
    let a = agent.clone();
    let s = shutdown.clone();
    tasks.spawn(async move { ("liveness", a.liveness_loop(s).await) });
    let a = agent.clone();
    let s = shutdown.clone();
    tasks.spawn(async move { ("usage", a.usage_loop(s, usage).await) });
    let a = agent.clone();
    let s = shutdown.clone();
    tasks.spawn(async move { ("assignments", a.watch_assignments(s).await) });
    let a = agent.clone();
    let s = shutdown.clone();
    tasks.spawn(async move { ("docker events", a.follow_events(s).await) });
    let a = agent.clone();
    let s = shutdown.clone();
    tasks.spawn(async move { ("reconcile", a.reconcile_loop(s).await) });

    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if crate::shutdown::stopping(&shutdown) {
                    break Ok(());
                }
            }
            done = tasks.join_next() => match done {
                None => break Ok(()),
                Some(Ok((_, Ok(())))) if crate::shutdown::stopping(&shutdown) => break Ok(()),
                Some(Ok((name, Ok(())))) => break Err(AgentError::Task(format!("{name} stopped"))),
                Some(Ok((name, Err(e)))) => {
                    tracing::error!(task = name, error = %e, "agent task failed");
                    break Err(e);
                }
                Some(Err(e)) => break Err(AgentError::Task(e.to_string())),
            },
        }
    };
    tasks.abort_all();
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, Err(e))) = done {
            tracing::warn!(task = name, error = %e, "agent task failed while stopping");
        }
    }
    tracing::info!(engine = %agent.cfg.engine, "agent stopped; its containers keep running, its lease lapses unless a restart adopts it");
    result
}

/// The container a request has among `actual`: the running one first.
pub(super) fn pick(mut found: Vec<docker::Running>) -> Option<docker::Running> {
    found.sort_by_key(|c| match c.state {
        docker::State::Running | docker::State::Restarting | docker::State::Paused => 0,
        docker::State::Created => 1,
        _ => 2,
    });
    found.into_iter().next()
}
