//! Launches: a placed request that asks for it is started on its engine, once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::dispatch::Outcome;
use crate::docker::{self, DockerError, LaunchSpec, Running};
use crate::model::{
    EngineId, LaunchPolicy, Lifecycle, PublishedPort, Request, RequestId, Run, Status, now_rfc3339,
};

use super::*;

impl Runner {
    pub(super) async fn launch_loop(&self) {
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
                let mut ids = self.books.lock().listener().launchable(free, &skip);
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

    /// The launch of one placed request, ready to spawn. A request that asks for more than the
    /// default launch policy permits (a host path, the host's network) is refused without
    /// dialing the engine, as a container that cannot start there: the leader's own Docker
    /// mode grants no privilege, whatever placed it (an older leader's decision, a hand-written
    /// one), and the request is placed again where an agent permits it, or fails.
    pub(super) fn launch_job(
        &self,
        id: &RequestId,
    ) -> Option<impl std::future::Future<Output = LaunchResult> + Send + 'static> {
        let (raw, engine, victims) = {
            let state = self.cache.read();
            let d = state.decision(id)?;
            let engine = d.engine.clone()?;
            let victims = d.preempted.clone().unwrap_or_default();
            (state.request(id)?.raw().to_vec(), engine, victims)
        };
        let spec = self.spec_of(&engine)?;
        let request = Request::parse(&raw).ok()?;
        let docker = match LaunchPolicy::default().permits(&request.image) {
            Ok(()) => self.docker(&spec),
            Err(why) => {
                tracing::warn!(request = %id, engine = %engine, reason = %why,
                    "launch refused: the leader launches no privileged container");
                Err(RunnerError::Container(DockerError::Spec {
                    request: id.to_string(),
                    reason: format!(
                        "{why} (the leader's Docker mode permits nothing beyond the default; \
                         an engine run by `citadel agent` may)"
                    ),
                }))
            }
        };
        let launch = LaunchSpec::from_image(
            id.as_str(),
            engine.as_str(),
            &request.image,
            request.cpus.0,
            request.memory.0,
        )
        .in_cluster(self.keys.prefix());
        let (id, timeout) = (id.clone(), self.cfg.launch_timeout);
        let (owner, grace) = (self.owner(&engine), self.cfg.stop_grace);
        Some(async move {
            // The containers of the requests it preempted there stop before it starts; if one
            // cannot be stopped now, the launch waits for the next try.
            for victim in victims.iter() {
                if let Ok(d) = &docker
                    && let Err(e) = docker::stop_and_remove(d, &owner, victim, grace).await
                {
                    return (id, engine, Err(RunnerError::Engine(e)));
                }
            }
            let result = match docker {
                Err(e) => Err(e),
                Ok(d) => match tokio::time::timeout(timeout, docker::launch(&d, &launch)).await {
                    Err(_) => Err(RunnerError::Timeout(timeout)),
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(RunnerError::from(e)),
                },
            };
            (id, engine, result)
        })
    }

    pub(super) async fn launched(
        &self,
        id: &RequestId,
        engine: &EngineId,
        result: Result<Running, RunnerError>,
        retry_at: &mut HashMap<RequestId, Instant>,
    ) {
        let Some(d) = self.cache.read().decision(id).cloned() else {
            return;
        };
        if d.status != Status::Placed || d.engine.as_ref() != Some(engine) {
            return; // Released or moved meanwhile: reconciliation stops what was started.
        }
        let tries = self.cfg.launch_tries;
        self.metrics.launch(match &result {
            Ok(_) => "started",
            Err(RunnerError::Container(_)) => "failed_to_start",
            Err(_) => "engine_unreachable",
        }); // hook(http)
        match result {
            Ok(c) => {
                tracing::info!(request = %id, engine = %engine, container = %crate::docker::short_id(&c.id),
                    state = %c.state, "launched");
                // Until the cache shows the container, do not launch it again.
                retry_at.insert(id.clone(), Instant::now() + Duration::from_secs(1));
                // A batch container can be done before its launch is even recorded: its die
                // event found no container in the decision, so record the exit here.
                let exited = c.state.is_done() && self.lifecycle(id) == Lifecycle::Batch;
                self.update(id, &d, |dec| {
                    if exited {
                        Outcome::BatchExited { code: c.exit_code }.apply(dec, tries);
                    }
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.engine = engine.to_string();
                    run.container_id = c.id.clone();
                    run.container_name = c.name.trim_start_matches('/').to_string();
                    run.state = Some(c.state.clone());
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
            Err(RunnerError::Container(e)) => {
                let e = e.to_string();
                tracing::warn!(request = %id, engine = %engine, error = %e, "container failed to start");
                let what = Outcome::FailedToStart {
                    engine: engine.to_string(),
                    error: e,
                };
                self.update(id, &d, |dec| what.apply(dec, tries)).await;
            }
            Err(e) => {
                tracing::warn!(request = %id, engine = %engine, error = %e,
                    "launch did not reach the engine; trying again later");
                retry_at.insert(id.clone(), Instant::now() + self.cfg.health_every);
            }
        }
    }
}
