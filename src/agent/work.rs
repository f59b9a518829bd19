//! The agent's work: what is assigned to it (listed, then watched), and reconciling that
//! against the containers of this engine and cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::docker::{self, LaunchSpec, Running, State};
use crate::keys::Key;
use crate::model::policy::{Privilege, privileges};
use crate::model::{Assignment, ContainerState, Request};
use crate::shutdown::stopping;

use super::*;

/// What is assigned to this engine.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    /// The list was read once at least: before, nothing of ours may be removed.
    pub loaded: bool,
    pub items: BTreeMap<RequestId, Assigned>,
}

/// One assignment, as read.
#[derive(Debug, Clone)]
pub(crate) struct Assigned {
    /// The assignment key's mod revision.
    pub rev: i64,
    pub lifecycle: String,
    /// What to launch, or why it cannot run here.
    pub plan: Result<LaunchSpec, String>,
}

impl Assigned {
    pub fn is_service(&self) -> bool {
        self.lifecycle.trim() != "batch"
    }
}

/// A bound on how quietly the watch may sit before it is asked for progress.
const QUIET: Duration = Duration::from_secs(30);
/// How long a poke waits for the rest of its burst before a round.
const POKE_SETTLE: Duration = Duration::from_millis(50);
/// How often the containers are listed, events or not.
const LIST_EVERY: Duration = Duration::from_secs(3);

impl Agent {
    /// An assignment's value, checked as the leader checked the request, and against this
    /// engine's launch policy (again: defence in depth).
    fn assigned(&self, id: &RequestId, rev: i64, value: &[u8]) -> Assigned {
        let a: Assignment = match serde_json::from_slice(value) {
            Ok(a) => a,
            Err(e) => {
                return Assigned {
                    rev,
                    lifecycle: String::new(),
                    plan: Err(format!("malformed assignment: {e}")),
                };
            }
        };
        let plan = Request::parse(a.spec.get().as_bytes())
            .map_err(|e| format!("invalid request: {e}"))
            .and_then(|r| {
                self.cfg.policy.permits(&r.image)?;
                self.permits_canonical(&r)?;
                Ok(LaunchSpec::from_image(
                    id.as_str(),
                    self.engine(),
                    &r.image,
                    r.cpus.0,
                    r.memory.0,
                )
                .in_cluster(self.cluster()))
            });
        Assigned {
            rev,
            lifecycle: a.lifecycle,
            plan,
        }
    }

    /// Host paths that exist are checked again as the filesystem resolves them: a symlink
    /// planted inside a declared volume must not reach outside it.
    fn permits_canonical(&self, r: &Request) -> Result<(), String> {
        for p in privileges(&r.image)? {
            let Privilege::HostPath { path, read_only } = &p else {
                continue;
            };
            let Ok(real) = std::fs::canonicalize(path) else {
                continue; // Docker creates a missing path: its name was checked
            };
            let real = Privilege::HostPath {
                path: real.to_string_lossy().into_owned(),
                read_only: *read_only,
            };
            if !self.cfg.policy.permits_one(&real) {
                return Err(format!(
                    "host path {path} resolves to {real}, which is not allowed by the engine's \
                     launch policy"
                ));
            }
        }
        Ok(())
    }

    /// Lists `assignments/<engine>/`, then watches it from the next revision; lists again after
    /// a compaction, a cancelled or broken stream, a silent one, or a cut-off.
    pub(super) async fn watch_assignments(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let prefix = self.cfg.keys.assignments_of(&self.cfg.engine);
        loop {
            if stopping(&shutdown) {
                return Ok(());
            }
            let rev = match self.list_assignments(&prefix).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the assignments; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            if let Err(e) = self.follow(&prefix, rev + 1, &mut shutdown).await {
                tracing::warn!(error = %e, "assignment watch ended; listing again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn list_assignments(&self, prefix: &str) -> Result<i64, AgentError> {
        let got = store::timed(
            self.client
                .kv_client()
                .get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut items = BTreeMap::new();
        for kv in got.kvs() {
            if let Some(id) = self.assignment_id(kv.key()) {
                items.insert(
                    id.clone(),
                    self.assigned(&id, kv.mod_revision(), kv.value()),
                );
            }
        }
        tracing::info!(assignments = items.len(), "assignments listed");
        self.desired.send_replace(Arc::new(Desired {
            loaded: true,
            items,
        }));
        self.poke.notify_one();
        Ok(got.header().map_or(0, |h| h.revision()))
    }

    fn assignment_id(&self, key: &[u8]) -> Option<RequestId> {
        match self.cfg.keys.parse(key)? {
            Key::Assignment(engine, id) if engine == self.cfg.engine => Some(id),
            _ => None,
        }
    }

    /// Follows the watch; `Ok` when a list is due.
    async fn follow(
        &self,
        prefix: &str,
        from: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = store::timed(self.client.watch_client().watch(prefix, Some(opts))).await?;
        let mut quiet = tokio::time::Instant::now() + QUIET;
        let mut asked = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => {
                    if stopping(shutdown) {
                        return Ok(());
                    }
                    continue;
                }
                _ = self.relist.notified() => return Ok(()),
                _ = tokio::time::sleep_until(quiet) => {
                    if asked {
                        return Err(AgentError::Task("the assignment watch went silent".into()));
                    }
                    asked = true;
                    quiet = tokio::time::Instant::now() + Duration::from_secs(5);
                    stream.request_progress().await.map_err(StoreError::Etcd)?;
                    continue;
                }
                msg = stream.message() => msg.map_err(StoreError::Etcd)?,
            };
            quiet = tokio::time::Instant::now() + QUIET;
            asked = false;
            let Some(resp) = msg else {
                return Ok(());
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "assignment watch cancelled"
                );
                return Ok(());
            }
            if resp.events().is_empty() {
                continue;
            }
            let mut items = self.desired.borrow().items.clone();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(id) = self.assignment_id(kv.key()) else {
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => {
                        let a = self.assigned(&id, kv.mod_revision(), kv.value());
                        tracing::info!(request = %id, revision = a.rev, "assigned");
                        items.insert(id, a);
                    }
                    EventType::Delete => {
                        tracing::info!(request = %id, "assignment removed");
                        items.remove(&id);
                    }
                }
            }
            self.desired.send_replace(Arc::new(Desired {
                loaded: true,
                items,
            }));
            self.poke.notify_one();
        }
    }

    /// Docker's events about our containers: each asks for a round. Re-subscribed when the
    /// stream ends.
    pub(super) async fn follow_events(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        loop {
            let mut stream = std::pin::pin!(docker::events(&self.docker));
            loop {
                let ev = tokio::select! {
                    _ = shutdown.changed() => {
                        if stopping(&shutdown) {
                            return Ok(());
                        }
                        continue;
                    }
                    ev = stream.next() => ev,
                };
                match ev {
                    Some(Ok(ev)) if ev.engine_id.as_deref() == Some(self.engine()) => {
                        tracing::debug!(request = %ev.request_id, action = ?ev.action, "docker event");
                        self.poke.notify_one();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "docker event stream broke");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if stopping(&shutdown) {
                return Ok(());
            }
        }
    }

    /// A round on every poke (assignments, docker events, launches done, etcd again) and every
    /// few seconds regardless.
    pub(super) async fn reconcile_loop(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        loop {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = self.poke.notified() => {
                    // A burst (a watch response of many assignments, a launch's create and
                    // start events) makes one round, not one listing of every container each.
                    tokio::time::sleep(POKE_SETTLE).await;
                }
                _ = tokio::time::sleep(LIST_EVERY) => {}
            }
            if stopping(&shutdown) {
                return Ok(());
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "reconcile round failed; trying again");
            }
        }
    }

    /// One reconciliation: desired (assignments) against actual (our containers).
    async fn round(self: &Arc<Self>) -> Result<(), AgentError> {
        let _docker = self.docker_lock.lock().await;
        let actual = tokio::time::timeout(
            DOCKER_TIMEOUT,
            docker::list_managed(&self.docker, &self.owner()),
        )
        .await
        .map_err(|_| {
            AgentError::Task(format!("listing containers took over {DOCKER_TIMEOUT:?}"))
        })??;
        let desired = self.desired.borrow().clone();
        if self.is_cut() {
            // Launches that finished after the cut-off began are stopped too.
            if !self.cfg.keep_services_when_cut_off {
                self.stop_services(&actual, &desired).await;
            }
            return Ok(());
        }
        let mut by_request: HashMap<String, Vec<Running>> = HashMap::new();
        for c in actual {
            by_request.entry(c.request_id.clone()).or_default().push(c);
        }
        // What no assignment holds goes first, once the list of assignments was read (and the
        // lease is alive): a preempted request's container, or a moved one's, is stopped before
        // anything new starts here, so the request that took its room never runs beside it.
        if desired.loaded {
            let orphans: Vec<String> = by_request
                .keys()
                .filter(|id| {
                    RequestId::new(id.as_str()).map_or(true, |id| !desired.items.contains_key(&id))
                })
                .cloned()
                .collect();
            for id in orphans {
                for c in by_request.remove(&id).into_iter().flatten() {
                    self.remove(c);
                }
            }
        }
        let removing = !lock(&self.removing).is_empty();
        for (id, a) in &desired.items {
            let found = by_request.remove(id.as_str()).and_then(pick);
            match (&a.plan, found) {
                (Err(why), _) => {
                    self.report(id, a.rev, None, why).await;
                }
                // Started once what is being removed has stopped (its removal pokes a round).
                (Ok(_), None) if removing => {
                    tracing::debug!(request = %id, "launch held until removed containers have stopped");
                }
                (Ok(spec), None) => self.launch(id, a.rev, spec.clone()),
                (Ok(_), Some(c)) => {
                    let c = if c.state.is_done() && lock(&self.cut_stopped).remove(&c.id) {
                        tracing::info!(request = %id, container = %crate::docker::short_id(&c.id),
                            "starting again what the cut-off stopped");
                        match docker::start_again(&self.docker, &c.id).await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(request = %id, error = %e, "cannot start it again");
                                c
                            }
                        }
                    } else {
                        c
                    };
                    self.report(id, a.rev, Some(&c), "").await;
                }
            }
        }
        if !desired.loaded {
            return Ok(());
        }
        let stale: Vec<RequestId> = lock(&self.reported)
            .keys()
            .filter(|id| !desired.items.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            self.unreport(&id).await;
        }
        Ok(())
    }

    /// Launches one assignment in the background, bounded by `--max-launches`.
    fn launch(self: &Arc<Self>, id: &RequestId, rev: i64, spec: LaunchSpec) {
        if lock(&self.reported)
            .get(id)
            .is_some_and(|r| r.assignment_revision == rev && r.failed())
        {
            return; // failed here already; the leader places it elsewhere
        }
        if !lock(&self.launching).insert(id.clone()) {
            return;
        }
        let (agent, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let permit = agent.launches.clone().acquire_owned().await;
            let result = tokio::time::timeout(
                Duration::from_secs(300),
                docker::launch(&agent.docker, &spec),
            )
            .await;
            drop(permit);
            let still = agent
                .desired
                .borrow()
                .items
                .get(&id)
                .is_some_and(|a| a.rev == rev);
            match result {
                _ if agent.is_cut() || !still => {}
                // `launch` finds and adopts only containers with this engine's and this cluster's
                // labels (and a stranger holding the fixed name makes the create fail): what it
                // returns is ours.
                Ok(Ok(c)) => {
                    tracing::info!(request = %id, container = %crate::docker::short_id(&c.id), state = %c.state, "launched");
                    agent.report(&id, rev, Some(&c), "").await;
                }
                Ok(Err(
                    e @ (DockerError::Spec { .. }
                    | DockerError::Pull { .. }
                    | DockerError::Create { .. }
                    | DockerError::Start { .. }),
                )) => {
                    tracing::warn!(request = %id, error = %e, "the container cannot start here");
                    agent.report(&id, rev, None, &e.to_string()).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(request = %id, error = %e, "launch did not reach Docker; again later");
                }
                Err(_) => tracing::warn!(request = %id, "launch took over 300s; again later"),
            }
            lock(&agent.launching).remove(&id);
            agent.poke.notify_one();
        });
    }

    /// Stops and removes a container no assignment holds, in the background.
    fn remove(self: &Arc<Self>, c: Running) {
        if !lock(&self.removing).insert(c.id.clone()) {
            return;
        }
        tracing::info!(request = %c.request_id, container = %crate::docker::short_id(&c.id),
            "removing a container no assignment holds");
        let agent = self.clone();
        tokio::spawn(async move {
            // Bounded: a Docker that hangs holds launches back for no longer than this.
            let bound = agent.cfg.stop_grace + DOCKER_TIMEOUT;
            match tokio::time::timeout(
                bound,
                docker::stop_and_remove_id(&agent.docker, &c.id, agent.cfg.stop_grace),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(container = %crate::docker::short_id(&c.id), error = %e, "cannot remove")
                }
                Err(_) => {
                    tracing::warn!(container = %crate::docker::short_id(&c.id), "removing took over {bound:?}; again later")
                }
            }
            lock(&agent.cut_stopped).remove(&c.id);
            lock(&agent.removing).remove(&c.id);
            agent.poke.notify_one();
        });
    }
}

/// The report of a container (or of why there is none).
pub(super) fn run_report(
    id: &RequestId,
    engine: &str,
    rev: i64,
    c: Option<&Running>,
    error: &str,
) -> RunReport {
    let mut r = RunReport {
        request: id.to_string(),
        engine: engine.to_string(),
        assignment_revision: rev,
        error: error.to_string(),
        ..RunReport::default()
    };
    match c {
        None => r.state = Some(ContainerState::Other("failed".into())),
        Some(c) => {
            r.container_id = c.id.clone();
            r.container_name = c.name.clone();
            r.state = Some(c.state.clone());
            r.exit_code = c
                .exit_code
                .filter(|_| matches!(c.state, State::Exited | State::Dead));
            r.ports = c
                .ports
                .iter()
                .map(|b| crate::model::PublishedPort {
                    container_port: b.container_port,
                    proto: b.proto.clone(),
                    host_ip: b.host_ip.clone(),
                    host_port: b.host_port,
                })
                .collect();
        }
    }
    r
}
