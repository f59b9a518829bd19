//! The leader's hands on the Docker engines (`controller --docker`): health and live usage,
//! launches, container states, lost engines, and stopping what is no longer asked for.
//!
//! ```text
//! every --health-every: engine ─usage()─▶ health/<engine> (fenced, on a lease of --health-ttl)
//!                                       ─list_managed()─▶ reconcile: stop what no decision holds
//!                       engine silent for a TTL ─▶ its launched containers: service → pending
//!                                                                            batch   → lost
//!                                                  (and what waited to be launched → pending)
//! placed + launch wanted ─launch()─▶ decision.run {container_id, state, ports}
//!                                 └▶ start failed: pending elsewhere (engine excluded) or failed
//! docker events (die, start, destroy) ─▶ decision.run.state; a batch that exited frees its
//!                                        reservation (status exited, exit code)
//! ```
//!
//! Everything is level-triggered on the cache, so a new leader picks up where the old one
//! stopped: a placed request without a container is launched (idempotently: the container is
//! found by its `citadel.request` label first, so no twin is started), and a container that no
//! decision holds is stopped. Every write is a fenced transaction that also compares the
//! decision's and the request's mod revisions, so it never overwrites a newer decision.
//!
//! It may not choose an engine (the manager does) nor write outside a fenced transaction.

mod events;
use events::{Watchers, forward_events};
mod health;
mod launch;
mod reconcile;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::Docker;
use etcd_client::{Client, Compare, TxnOp};
use tokio::sync::mpsc;

use crate::cache::{Books, Cache, DecisionEntry};
use crate::docker::engine::{Refused, Trust};
use crate::docker::{DockerError, Running};
use crate::keys::Keys;
use crate::manager::{Ledger, Rewriter};
use crate::metrics::Metrics;
use crate::model::{Decision, EngineId, EngineSpec, RequestId};
use crate::profile::Profiles;
use crate::store::fence::Commit;
use crate::store::fence::Fence;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub replica: String,
    /// How often every engine is contacted.
    pub health_every: Duration,
    /// The health keys' lease: an engine silent this long drops out of scheduling, and its
    /// launched containers are placed again (service) or marked lost (batch).
    pub health_ttl: Duration,
    /// One engine contact (usage, list) may take this long.
    pub contact_timeout: Duration,
    /// Engines a container may fail to start on before it is `failed`.
    pub launch_tries: usize,
    pub launch_timeout: Duration,
    /// Launches in flight at once.
    pub max_launches: usize,
    /// What a stopped container gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Which engine addresses may be dialed and where TLS files may be read from
    /// (`--docker-allow`, `--docker-tls-dir`): an engine record names them, and whoever may
    /// write one is not thereby trusted with the leader's host or its client certificate.
    pub trust: Trust,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            replica: String::new(),
            health_every: Duration::from_secs(2),
            health_ttl: Duration::from_secs(6),
            contact_timeout: Duration::from_secs(5),
            launch_tries: 3,
            launch_timeout: Duration::from_secs(120),
            max_launches: 8,
            stop_grace: Duration::from_secs(5),
            trust: Trust::default(),
        }
    }
}

/// What went wrong with an engine, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The container could not start there (bad image, entrypoint, spec): try elsewhere.
    #[error(transparent)]
    Container(DockerError),
    /// The engine answered wrongly, or not at all: try again later, on the same engine.
    #[error(transparent)]
    Engine(DockerError),
    /// The engine's address or TLS files cannot make a client.
    #[error(transparent)]
    Connect(#[from] crate::docker::engine::EngineError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The controller's flags do not let it act on what the engine record says: nothing was
    /// dialed nor opened.
    #[error("not contacted: {0}")]
    Refused(#[from] Refused),
}

impl From<DockerError> for RunnerError {
    /// Whose fault a Docker error is: the container's (it will not start anywhere like this)
    /// or the engine's (it may answer later).
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Spec { .. }
            | DockerError::Pull { .. }
            | DockerError::Create { .. }
            | DockerError::Start { .. } => RunnerError::Container(e),
            DockerError::Api { .. }
            | DockerError::Incomplete { .. }
            | DockerError::Vanished { .. } => RunnerError::Engine(e),
        }
    }
}

type LaunchResult = (RequestId, EngineId, Result<Running, RunnerError>);

pub struct Runner {
    client: Client,
    cache: Arc<Cache>,
    /// The leader's ledger: what waits to be launched, and the guard over decision writes.
    books: Books<Ledger>,
    keys: Keys,
    fence: Fence,
    cfg: RunnerConfig,
    /// One client per engine, rebuilt when its address changes.
    dockers: Mutex<HashMap<EngineId, (String, Docker)>>,
    /// Engines not contacted, and why (see [`RunnerConfig::trust`]): logged when that changes.
    refused: Mutex<HashMap<EngineId, Refused>>,
    /// When each engine last answered this leader.
    last_ok: Mutex<HashMap<EngineId, Instant>>,
    started: Instant,
    profiles: Mutex<Profiles>,
    /// Containers being stopped (by request id and engine), so a round does not stop them twice.
    stopping: Arc<Mutex<HashSet<(String, EngineId)>>>,
    /// hook(http): what the runner's contacts and launches count.
    metrics: Arc<Metrics>,
    /// Its fenced writes (and the signal that etcd refused the fence).
    writer: Rewriter,
}

impl Runner {
    pub fn new(
        client: Client,
        cache: Arc<Cache>,
        books: Books<Ledger>,
        fence: Fence,
        cfg: RunnerConfig,
    ) -> Self {
        let keys = cache.keys().clone();
        let writer = Rewriter {
            client: client.clone(),
            books: books.clone(),
            keys: keys.clone(),
            fence: fence.clone(),
            fenced: tokio::sync::watch::channel(false).0,
            metrics: Arc::default(),
        };
        Runner {
            client,
            cache,
            books,
            keys,
            fence,
            writer,
            cfg,
            dockers: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            last_ok: Mutex::new(HashMap::new()),
            started: Instant::now(),
            profiles: Mutex::new(Profiles::default()),
            stopping: Arc::new(Mutex::new(HashSet::new())),
            metrics: Arc::default(),
        }
    }

    /// hook(http): counts into the replica's metrics instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.writer.metrics = metrics.clone();
        self.metrics = metrics;
        self
    }

    /// Runs until dropped (the leader stops leading), or until etcd refuses one of its writes'
    /// fence: then another replica leads, and this one must step down.
    pub async fn run(&self) {
        // Everything earlier leaders wrote is below our fence: see it before acting on it.
        self.cache
            .wait_for(self.fence.rev, Duration::from_secs(30))
            .await;
        tracing::info!("runner: contacting engines");
        let (events_tx, events_rx) = mpsc::channel(1024);
        let mut fenced = self.writer.fenced.subscribe();
        tokio::select! {
            _ = async {
                tokio::join!(
                    self.health_loop(events_tx),
                    self.launch_loop(),
                    self.event_loop(events_rx),
                )
            } => {}
            _ = fenced.wait_for(|f| *f) => {
                tracing::warn!("runner: etcd refused our fence; stopping");
            }
        }
    }

    /// A client for the engine, if the controller's flags let it act on what the record says
    /// (its address allowed, its TLS files inside the allowed directory): otherwise nothing is
    /// dialed nor opened, and the reason is logged once per change.
    pub(super) fn docker(&self, spec: &EngineSpec) -> Result<Docker, RunnerError> {
        let trusted = self.trusted(spec);
        self.note_refusal(&spec.id, trusted.as_ref().err());
        let tls = trusted?;
        let mut dockers = self.dockers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((addr, d)) = dockers.get(&spec.id)
            && *addr == spec.addr
        {
            return Ok(d.clone());
        }
        let d = crate::docker::engine::connect(&spec.addr, tls.as_ref(), self.cfg.contact_timeout)?;
        dockers.insert(spec.id.clone(), (spec.addr.clone(), d.clone()));
        Ok(d)
    }

    /// The engines not contacted now; those no longer registered are forgotten.
    pub(super) fn refused_engines(&self, registered: &[EngineSpec]) -> HashSet<EngineId> {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        refused.retain(|e, _| registered.iter().any(|s| s.id == *e));
        refused.keys().cloned().collect()
    }

    /// The containers this runner may act on, on `engine`: labelled with that engine and this
    /// cluster (its key prefix). Another cluster's, or one labelled for another engine, are
    /// left alone even if their request id is one of ours.
    pub(super) fn owner(&self, engine: &EngineId) -> crate::docker::Owner {
        crate::docker::Owner::new(engine.as_str(), Some(self.keys.prefix()))
    }

    /// The record's TLS files, checked, if its address may be dialed at all.
    fn trusted(
        &self,
        spec: &EngineSpec,
    ) -> Result<Option<crate::docker::engine::TlsFiles>, Refused> {
        let trust = &self.cfg.trust;
        if !trust.allows(&spec.addr) {
            return Err(Refused::Address(spec.addr.clone()));
        }
        let w = &spec.wire;
        trust.tls_files(
            w.tls_ca.as_deref(),
            w.tls_cert.as_deref(),
            w.tls_key.as_deref(),
        )
    }

    /// Logs an engine's refusal when it starts or changes, and when it ends.
    fn note_refusal(&self, engine: &EngineId, why: Option<&Refused>) {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) if refused.get(engine) != Some(why) => {
                tracing::warn!(engine = %engine, reason = %why,
                    "engine not contacted: its record names what this controller does not trust");
                refused.insert(engine.clone(), why.clone());
                // A client made before is not used again.
                self.dockers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(engine);
            }
            Some(_) => {}
            None => {
                if refused.remove(engine).is_some() {
                    tracing::info!(engine = %engine, "engine record trusted again: contacting it");
                }
            }
        }
    }

    pub(super) fn spec_of(&self, engine: &EngineId) -> Option<EngineSpec> {
        self.cache.read().engine_spec(engine)
    }

    // ---- writes ----

    /// Rewrites a decision if neither it nor its request changed since `seen`.
    pub(super) async fn update(
        &self,
        id: &RequestId,
        seen: &DecisionEntry,
        edit: impl FnOnce(&mut Decision),
    ) -> Option<Commit> {
        self.writer
            .update(id, seen.mod_revision, edit, Vec::new())
            .await
    }

    pub(super) async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        what: &str,
    ) -> Option<Commit> {
        self.writer.commit(compares, ops, what).await
    }
}
