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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::Docker;
use etcd_client::{Client, Compare, CompareOp, PutOptions, TxnOp};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cache::{Cache, DecisionEntry};
use crate::docker::{self, Action, ContainerEvent, DockerError, LaunchSpec, Running};
use crate::election::Fence;
use crate::engine::TlsFiles;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::model::{
    Attempt, Decision, EngineId, EngineSpec, Health, Lifecycle, PublishedPort, Request, RequestId,
    Run, Status, now_rfc3339,
};
use crate::profile::Profiles;
use crate::store;
use crate::store::fence::{self, Commit};

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
        }
    }
}

/// A launch that went wrong, and whose fault it was.
enum Failure {
    /// The container could not start there (bad image, entrypoint, spec): try elsewhere.
    Container(String),
    /// The engine or the network: try again later, on the same engine.
    Engine(String),
}

type LaunchResult = (RequestId, EngineId, Result<Running, Failure>);

pub struct Runner {
    client: Client,
    cache: Arc<Cache>,
    keys: Keys,
    fence: Fence,
    cfg: RunnerConfig,
    /// One client per engine, rebuilt when its address changes.
    dockers: Mutex<HashMap<EngineId, (String, Docker)>>,
    /// When each engine last answered this leader.
    last_ok: Mutex<HashMap<EngineId, Instant>>,
    started: Instant,
    profiles: Mutex<Profiles>,
    /// Containers being stopped (by request id and engine), so a round does not stop them twice.
    stopping: Arc<Mutex<HashSet<(String, EngineId)>>>,
    /// Set when etcd refuses one of our writes' fence: another replica leads.
    fenced: tokio::sync::watch::Sender<bool>,
    /// hook(http): what the runner's contacts and launches count.
    metrics: Arc<Metrics>,
}

impl Runner {
    pub fn new(client: Client, cache: Arc<Cache>, fence: Fence, cfg: RunnerConfig) -> Self {
        let keys = cache.keys().clone();
        Runner {
            client,
            cache,
            keys,
            fence,
            cfg,
            dockers: Mutex::new(HashMap::new()),
            last_ok: Mutex::new(HashMap::new()),
            started: Instant::now(),
            profiles: Mutex::new(Profiles::default()),
            stopping: Arc::new(Mutex::new(HashSet::new())),
            fenced: tokio::sync::watch::channel(false).0,
            metrics: Arc::default(),
        }
    }

    /// hook(http): counts into the replica's metrics instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
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
        let mut fenced = self.fenced.subscribe();
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

    fn docker(&self, spec: &EngineSpec) -> Result<Docker, String> {
        let mut dockers = self.dockers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((addr, d)) = dockers.get(&spec.id)
            && *addr == spec.addr
        {
            return Ok(d.clone());
        }
        let tls = match (&spec.wire.tls_ca, &spec.wire.tls_cert, &spec.wire.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
            }),
            _ => None,
        };
        let d = crate::engine::connect(&spec.addr, tls.as_ref(), self.cfg.contact_timeout)
            .map_err(|e| e.to_string())?;
        dockers.insert(spec.id.clone(), (spec.addr.clone(), d.clone()));
        Ok(d)
    }

    fn spec_of(&self, engine: &EngineId) -> Option<EngineSpec> {
        self.cache.lock().engine_spec(engine)
    }

    // ---- health, live usage, reconciliation, lost engines ----

    async fn health_loop(&self, events: mpsc::Sender<(EngineId, ContainerEvent)>) {
        let mut tick = tokio::time::interval(self.cfg.health_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching = Watchers::default();
        let mut down: HashSet<EngineId> = HashSet::new();
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            rounds += 1;
            let specs = self.cache.lock().engine_specs();
            let mut contacts = JoinSet::new();
            for spec in specs.iter().cloned() {
                let docker = self.docker(&spec);
                let timeout = self.cfg.contact_timeout;
                contacts.spawn(async move {
                    let result = match docker {
                        Ok(d) => tokio::time::timeout(timeout, async {
                            let usage = docker::usage(&d).await.map_err(|e| e.to_string())?;
                            let managed =
                                docker::list_managed(&d).await.map_err(|e| e.to_string())?;
                            Ok::<_, String>((d, usage, managed))
                        })
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}"))),
                        Err(e) => Err(e),
                    };
                    (spec.id, result)
                });
            }
            while let Some(done) = contacts.join_next().await {
                let Ok((engine, result)) = done else { continue };
                match result {
                    Ok((d, usage, managed)) => {
                        self.metrics.health_contact(true); // hook(http)
                        if down.remove(&engine) {
                            tracing::info!(engine = %engine, "engine answers again");
                        }
                        self.last_ok
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(engine.clone(), Instant::now());
                        self.write_health(&engine, &usage).await;
                        self.learn(&usage);
                        self.reconcile(&engine, &d, managed).await;
                        let alive = watching.0.get(&engine).is_some_and(|h| !h.is_finished());
                        if !alive {
                            watching.0.insert(
                                engine.clone(),
                                tokio::spawn(forward_events(engine.clone(), d, events.clone())),
                            );
                        }
                    }
                    Err(e) => {
                        self.metrics.health_contact(false); // hook(http)
                        if down.insert(engine.clone()) {
                            tracing::warn!(engine = %engine, error = %e, "engine does not answer");
                        }
                    }
                }
            }
            watching.0.retain(|e, h| {
                let keep = specs.iter().any(|s| s.id == *e);
                if !keep {
                    h.abort();
                }
                keep
            });
            self.lost_engines(&specs).await;
            if rounds.is_multiple_of(5) {
                self.write_profiles().await;
            }
        }
    }

    async fn write_health(&self, engine: &EngineId, usage: &docker::EngineUsage) {
        let ttl = self.cfg.health_ttl.as_secs().max(1) as i64;
        let lease = match store::timed(self.client.lease_client().grant(ttl, None)).await {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::warn!(engine = %engine, error = %e, "cannot grant a health lease");
                return;
            }
        };
        let health = Health {
            engine: engine.to_string(),
            last_contact: now_rfc3339(),
            cpus_used: usage.cpus,
            memory_used_mb: usage.memory_mb,
            containers_running: usage.running,
            checked_by: self.cfg.replica.clone(),
        };
        let value = serde_json::to_vec(&health).unwrap_or_default();
        let put = TxnOp::put(
            self.keys.health(engine),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        self.commit(vec![], vec![put], "health").await;
    }

    /// Feeds the per-image profiles with what citadel's containers use.
    fn learn(&self, usage: &docker::EngineUsage) {
        let state = self.cache.lock();
        let mut profiles = self.profiles.lock().unwrap_or_else(PoisonError::into_inner);
        for s in &usage.samples {
            let Some(id) = s
                .request_id
                .as_deref()
                .and_then(RequestId::from_key_segment)
            else {
                continue;
            };
            let Some(r) = state.request(&id) else {
                continue;
            };
            let Ok(request) = Request::parse(r.raw()) else {
                continue;
            };
            profiles.record(
                &request.image.name,
                request.cpus.as_cpus(),
                request.memory.0 as f64,
                s.cpus,
                s.memory_mb,
            );
        }
    }

    async fn write_profiles(&self) {
        let ops = self
            .profiles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ops(&self.keys);
        for chunk in ops.chunks(100) {
            let puts = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
                .collect();
            self.commit(vec![], puts, "profiles").await;
        }
    }

    /// Stops containers no decision holds any more, and catches up on states whose events were
    /// missed.
    async fn reconcile(&self, engine: &EngineId, d: &Docker, managed: Vec<Running>) {
        // Asked once per round, and only if something is to be stopped.
        let mut leads: Option<bool> = None;
        for c in managed {
            let Some(id) = RequestId::from_key_segment(&c.request_id) else {
                continue;
            };
            let decision = self.cache.lock().decision(&id).cloned();
            let run = decision.as_ref().and_then(|d| d.run.as_deref());
            let here = decision.as_ref().is_some_and(|d| {
                matches!(d.status, Status::Placed | Status::Exited)
                    && d.engine.as_deref() == Some(engine.as_str())
            });
            let ours = run.is_some_and(|r| r.container_id.is_empty() || r.container_id == c.id);
            if here && !ours {
                // A twin beside the container the decision names: stopping by label would stop
                // both, so leave it to the operator.
                tracing::warn!(engine = %engine, request = %id, container = %short(&c.id),
                    "a second container for one request; left alone");
                continue;
            }
            if !here {
                // A deposed leader that has not noticed yet (paused, partitioned) must not
                // stop what its successor launched: ask etcd before stopping anything.
                if leads.is_none() {
                    leads = Some(self.still_leads().await);
                }
                if leads == Some(true) {
                    self.stop(engine, d, &c);
                }
                continue;
            }
            let Some(run) = run.filter(|r| r.container_id == c.id) else {
                continue;
            };
            let state = c.state.to_string();
            let done = state == "exited" || state == "dead";
            // A batch still `placed` whose container is done missed its exit (see `launched`).
            let unrecorded_exit = done
                && decision
                    .as_ref()
                    .is_some_and(|d| d.status == Status::Placed)
                && self.lifecycle(&id) == Lifecycle::Batch;
            if run.state != state || unrecorded_exit {
                let action = if state == "running" {
                    Action::Start
                } else if state == "exited" || state == "dead" {
                    Action::Die
                } else {
                    continue;
                };
                let ev = ContainerEvent {
                    request_id: c.request_id.clone(),
                    engine_id: Some(engine.to_string()),
                    container_id: c.id.clone(),
                    action,
                    exit_code: c.exit_code,
                    time: None,
                };
                self.on_event(engine, &ev).await;
            }
        }
    }

    /// Whether our election key is still the one we won with (a linearizable read).
    async fn still_leads(&self) -> bool {
        match store::timed(self.client.kv_client().get(self.fence.key.clone(), None)).await {
            Ok(r) => r
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == self.fence.rev),
            Err(_) => false,
        }
    }

    /// Stops and removes a container in the background: a stop waits out the grace period, and
    /// the health round must not.
    fn stop(&self, engine: &EngineId, d: &Docker, c: &Running) {
        let key = (c.request_id.clone(), engine.clone());
        if !self
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return;
        }
        tracing::info!(engine = %engine, request = %c.request_id, container = %short(&c.id),
            "stopping a container no decision holds");
        let (d, grace, stopping) = (d.clone(), self.cfg.stop_grace, self.stopping.clone());
        tokio::spawn(async move {
            if let Err(e) = docker::stop_and_remove(&d, &key.0, grace).await {
                tracing::warn!(engine = %key.1, request = %key.0, error = %e, "cannot stop");
            }
            stopping
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
    }

    /// Engines without a health key that have not answered this leader for a TTL: what was
    /// launched on them is placed again (service) or marked lost (batch).
    async fn lost_engines(&self, specs: &[EngineSpec]) {
        let ttl = self.cfg.health_ttl;
        if self.started.elapsed() < ttl {
            return;
        }
        for spec in specs {
            let recent = self
                .last_ok
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&spec.id)
                .is_some_and(|t| t.elapsed() < ttl);
            if recent || self.cache.lock().health(&spec.id).is_some() {
                continue;
            }
            let placed = self.cache.lock().placed_on(&spec.id);
            for (id, d) in placed {
                let launched = d.run.as_ref().is_some_and(|r| !r.container_id.is_empty());
                // Placed for a launch that never happened: place it again too. A placement
                // nobody asked to launch is only a reservation, and stays.
                if !launched && !self.cache.lock().is_launchable(&id) {
                    continue;
                }
                let batch = launched && self.lifecycle(&id) == Lifecycle::Batch;
                let engine = spec.id.to_string();
                self.update(&id, &d, |dec| {
                    dec.reservation = None;
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.lost.push(engine.clone());
                    if batch {
                        dec.status = Status::Lost;
                        dec.reason = format!("engine {engine} was lost while the container ran");
                        run.state = "lost".into();
                    } else {
                        dec.status = Status::Pending;
                        dec.resource = None;
                        dec.reason = format!("engine {engine} was lost; placing it again");
                        run.forget_container();
                    }
                    run.updated_at = now_rfc3339();
                })
                .await;
                tracing::warn!(engine = %spec.id, request = %id, batch, "engine lost under a container");
            }
        }
    }

    fn lifecycle(&self, id: &RequestId) -> Lifecycle {
        self.cache
            .lock()
            .request(id)
            .map(|r| r.lifecycle)
            .unwrap_or_default()
    }

    // ---- launches ----

    async fn launch_loop(&self) {
        let mut changed = self.cache.subscribe();
        let mut launches: JoinSet<LaunchResult> = JoinSet::new();
        let mut launching: HashSet<RequestId> = HashSet::new();
        let mut retry_at: HashMap<RequestId, Instant> = HashMap::new();
        loop {
            let free = self.cfg.max_launches.saturating_sub(launches.len());
            if free > 0 {
                retry_at.retain(|_, t| Instant::now() < *t);
                let mut skip = launching.clone();
                skip.extend(retry_at.keys().cloned());
                let mut ids = self.cache.lock().launchable(free, &skip);
                // Starting a container is done once and cannot be fenced: a leader cut off
                // from etcd (which others may have replaced) must not start one.
                if !ids.is_empty() && !self.still_leads().await {
                    ids.clear();
                }
                for id in ids {
                    let Some(job) = self.launch_job(&id) else {
                        retry_at.insert(id, Instant::now() + self.cfg.health_every);
                        continue;
                    };
                    launching.insert(id);
                    launches.spawn(job);
                }
            }
            tokio::select! {
                Some(done) = launches.join_next(), if !launches.is_empty() => {
                    let Ok((id, engine, result)) = done else { continue };
                    self.launched(&id, &engine, result, &mut retry_at).await;
                    launching.remove(&id);
                }
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The launch of one placed request, ready to spawn.
    fn launch_job(
        &self,
        id: &RequestId,
    ) -> Option<impl std::future::Future<Output = LaunchResult> + Send + 'static> {
        let (raw, engine) = {
            let state = self.cache.lock();
            let d = state.decision(id)?;
            let engine = EngineId::from_key_segment(d.engine.as_deref()?)?;
            (state.request(id)?.raw().to_vec(), engine)
        };
        let spec = self.spec_of(&engine)?;
        let docker = self.docker(&spec);
        let request = Request::parse(&raw).ok()?;
        let launch = LaunchSpec::from_image(
            id.as_str(),
            engine.as_str(),
            &request.image,
            request.cpus.0,
            request.memory.0,
        );
        let (id, timeout) = (id.clone(), self.cfg.launch_timeout);
        Some(async move {
            let result = match docker {
                Err(e) => Err(Failure::Engine(e)),
                Ok(d) => match tokio::time::timeout(timeout, docker::launch(&d, &launch)).await {
                    Err(_) => Err(Failure::Engine(format!("no answer within {timeout:?}"))),
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(classify(e)),
                },
            };
            (id, engine, result)
        })
    }

    async fn launched(
        &self,
        id: &RequestId,
        engine: &EngineId,
        result: Result<Running, Failure>,
        retry_at: &mut HashMap<RequestId, Instant>,
    ) {
        let Some(d) = self.cache.lock().decision(id).cloned() else {
            return;
        };
        if d.status != Status::Placed || d.engine.as_deref() != Some(engine.as_str()) {
            return; // Released or moved meanwhile: reconciliation stops what was started.
        }
        let tries = self.cfg.launch_tries;
        self.metrics.launch(match &result {
            Ok(_) => "started",
            Err(Failure::Container(_)) => "failed_to_start",
            Err(Failure::Engine(_)) => "engine_unreachable",
        }); // hook(http)
        match result {
            Ok(c) => {
                tracing::info!(request = %id, engine = %engine, container = %short(&c.id),
                    state = %c.state, "launched");
                // Until the cache shows the container, do not launch it again.
                retry_at.insert(id.clone(), Instant::now() + Duration::from_secs(1));
                // A batch container can be done before its launch is even recorded: its die
                // event found no container in the decision, so record the exit here.
                let state = c.state.to_string();
                let exited = (state == "exited" || state == "dead")
                    && self.lifecycle(id) == Lifecycle::Batch;
                self.update(id, &d, |dec| {
                    if exited {
                        batch_exited(dec, c.exit_code);
                    }
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.engine = engine.to_string();
                    run.container_id = c.id.clone();
                    run.container_name = c.name.trim_start_matches('/').to_string();
                    run.state = c.state.to_string();
                    run.exit_code = c.exit_code;
                    run.ports = c
                        .ports
                        .iter()
                        .map(|b| PublishedPort {
                            container_port: b.container_port,
                            proto: b.proto.clone(),
                            host_ip: b.host_ip.clone(),
                            host_port: b.host_port,
                        })
                        .collect();
                    run.updated_at = now_rfc3339();
                })
                .await;
            }
            Err(Failure::Engine(e)) => {
                tracing::warn!(request = %id, engine = %engine, error = %e,
                    "launch did not reach the engine; trying again later");
                retry_at.insert(id.clone(), Instant::now() + self.cfg.health_every);
            }
            Err(Failure::Container(e)) => {
                tracing::warn!(request = %id, engine = %engine, error = %e, "container failed to start");
                self.update(id, &d, |dec| {
                    dec.reservation = None;
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.attempts.push(Attempt {
                        engine: engine.to_string(),
                        error: e.clone(),
                    });
                    run.forget_container();
                    run.updated_at = now_rfc3339();
                    dec.resource = None;
                    if run.attempts.len() >= tries {
                        dec.status = Status::Failed;
                        dec.reason = format!(
                            "the container failed to start on {} engines; last, on {engine}: {e}",
                            run.attempts.len()
                        );
                    } else {
                        dec.status = Status::Pending;
                        dec.reason = format!(
                            "the container failed to start on {engine} ({e}); placing it on another engine"
                        );
                    }
                })
                .await;
            }
        }
    }

    // ---- container events ----

    async fn event_loop(&self, mut events: mpsc::Receiver<(EngineId, ContainerEvent)>) {
        while let Some((engine, ev)) = events.recv().await {
            self.on_event(&engine, &ev).await;
        }
    }

    async fn on_event(&self, engine: &EngineId, ev: &ContainerEvent) {
        let Some(id) = RequestId::from_key_segment(&ev.request_id) else {
            return;
        };
        let Some(d) = self.cache.lock().decision(&id).cloned() else {
            return;
        };
        let ours = d.status == Status::Placed
            && d.engine.as_deref() == Some(engine.as_str())
            && d.run
                .as_ref()
                .is_some_and(|r| r.container_id == ev.container_id);
        if !ours {
            return;
        }
        let batch = self.lifecycle(&id) == Lifecycle::Batch;
        match ev.action {
            Action::Die | Action::Destroy => {
                let code = ev.exit_code;
                tracing::info!(request = %id, engine = %engine, exit_code = ?code, batch, "container exited");
                self.update(&id, &d, |dec| {
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.state = if ev.action == Action::Destroy {
                        "removed".into()
                    } else {
                        "exited".into()
                    };
                    run.exit_code = code.or(run.exit_code);
                    run.updated_at = now_rfc3339();
                    if batch {
                        let code = run.exit_code;
                        batch_exited(dec, code);
                    }
                })
                .await;
            }
            Action::Start | Action::Restart
                if d.run.as_ref().is_some_and(|r| r.state != "running") =>
            {
                self.update(&id, &d, |dec| {
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.state = "running".into();
                    run.exit_code = None;
                    run.updated_at = now_rfc3339();
                })
                .await;
            }
            _ => {}
        }
    }

    // ---- writes ----

    /// Rewrites a decision if neither it nor its request changed since `seen`: fenced on the
    /// leader's key too.
    async fn update(
        &self,
        id: &RequestId,
        seen: &DecisionEntry,
        edit: impl FnOnce(&mut Decision),
    ) -> Option<Commit> {
        let key = self.keys.decision(id);
        let got = match store::timed(self.client.kv_client().get(key.as_str(), None)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "cannot read the decision");
                return None;
            }
        };
        let kv = got.kvs().first()?;
        if kv.mod_revision() != seen.mod_revision {
            return None; // The cache is behind; the next round sees the new one.
        }
        let mut decision: Decision = serde_json::from_slice(kv.value()).ok()?;
        edit(&mut decision);
        let ops = vec![TxnOp::put(
            key.as_str(),
            serde_json::to_vec(&decision).unwrap_or_default(),
            None,
        )];
        let compares = vec![
            Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
            Compare::mod_revision(
                self.keys.request(id),
                CompareOp::Equal,
                decision.request_revision,
            ),
        ];
        // Numbered for the cache's guard: the decision's watch event may arrive before the
        // commit returns, and must be known as ours.
        let seq = self.cache.lock().begin_write();
        let done = self.commit(compares, ops, "decision").await;
        if matches!(done, Some(Commit::Done(_))) && decision.status != seen.status {
            self.metrics.decided(decision.status); // hook(http)
        }
        let mut state = self.cache.lock();
        match done {
            // The leader's cache learns its own decisions from its commits.
            Some(Commit::Done(rev)) => state.decided(id, rev, &decision),
            // It may land later: its event is then taken as the truth.
            None => state.uncertain([id]),
            Some(_) => {}
        }
        state.end_write(seq);
        done
    }

    async fn commit(&self, compares: Vec<Compare>, ops: Vec<TxnOp>, what: &str) -> Option<Commit> {
        match fence::commit(&self.client, &self.fence, &compares, &ops).await {
            Ok(c) => {
                if c == Commit::Fenced {
                    tracing::warn!(what, "runner write refused: no longer the leader");
                    self.fenced.send_replace(true);
                }
                Some(c)
            }
            Err(e) => {
                tracing::warn!(what, error = %e, "runner write failed");
                None
            }
        }
    }
}

/// The event forwarders, one per engine: stopped with the runner (a task outlives its handle).
#[derive(Default)]
struct Watchers(HashMap<EngineId, tokio::task::JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

/// Docker's events of one engine, forwarded until the stream ends (the engine went away).
async fn forward_events(
    engine: EngineId,
    docker: Docker,
    out: mpsc::Sender<(EngineId, ContainerEvent)>,
) {
    let mut stream = std::pin::pin!(docker::events(&docker));
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if out.send((engine.clone(), ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(engine = %engine, error = %e, "event stream ended");
                return;
            }
        }
    }
}

/// A `batch` container is done: the decision says how, and its reservation is freed.
fn batch_exited(dec: &mut Decision, code: Option<i64>) {
    dec.reservation = None;
    dec.status = Status::Exited;
    dec.reason = match code {
        Some(c) => format!("the batch container exited with code {c}"),
        None => "the batch container is gone".into(),
    };
}

fn classify(e: DockerError) -> Failure {
    match e {
        DockerError::Spec { .. }
        | DockerError::Pull { .. }
        | DockerError::Create { .. }
        | DockerError::Start { .. } => Failure::Container(e.to_string()),
        DockerError::Api { .. } | DockerError::Incomplete { .. } | DockerError::Vanished { .. } => {
            Failure::Engine(e.to_string())
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
