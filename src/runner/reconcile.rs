//! Reconciliation: containers no decision holds are stopped, missed states caught up, and
//! what an engine silent for a TTL held is placed again (services) or marked lost (batch).

use std::sync::PoisonError;

use bollard::Docker;

use crate::dispatch::Outcome;
use crate::docker::{self, Action, ContainerEvent, Running};
use crate::model::{ContainerState, EngineId, EngineSpec, Lifecycle, RequestId, Status};

use super::*;

impl Runner {
    /// Stops containers no decision holds any more, and catches up on states whose events were
    /// missed.
    pub(super) async fn reconcile(&self, engine: &EngineId, d: &Docker, managed: Vec<Running>) {
        // Asked once per round, and only if something is to be stopped.
        let mut leads: Option<bool> = None;
        for c in managed {
            let Some(id) = RequestId::from_key_segment(&c.request_id) else {
                continue;
            };
            let decision = self.cache.read().decision(&id).cloned();
            let run = decision.as_ref().and_then(|d| d.run.as_deref());
            let here = decision.as_ref().is_some_and(|d| {
                matches!(d.status, Status::Placed | Status::Exited)
                    && d.engine.as_ref() == Some(engine)
            });
            let ours = run.is_some_and(|r| r.container_id.is_empty() || r.container_id == c.id);
            if here && !ours {
                // A twin beside the container the decision names: stopping by label would stop
                // both, so leave it to the operator.
                tracing::warn!(engine = %engine, request = %id, container = %crate::docker::short_id(&c.id),
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
            let done = c.state.is_done();
            // A batch still `placed` whose container is done missed its exit (see `launched`).
            let unrecorded_exit = done
                && decision
                    .as_ref()
                    .is_some_and(|d| d.status == Status::Placed)
                && self.lifecycle(&id) == Lifecycle::Batch;
            if run.state.as_ref() != Some(&c.state) || unrecorded_exit {
                let action = if c.state == ContainerState::Running {
                    Action::Start
                } else if done {
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
    pub(super) async fn still_leads(&self) -> bool {
        self.writer.still_leads().await
    }

    /// Stops and removes a container in the background: a stop waits out the grace period, and
    /// the health round must not.
    pub(super) fn stop(&self, engine: &EngineId, d: &Docker, c: &Running) {
        let key = (c.request_id.clone(), engine.clone());
        if !self
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return;
        }
        tracing::info!(engine = %engine, request = %c.request_id, container = %crate::docker::short_id(&c.id),
            "stopping a container no decision holds");
        let (d, grace, stopping) = (d.clone(), self.cfg.stop_grace, self.stopping.clone());
        let owner = self.owner(engine);
        tokio::spawn(async move {
            if let Err(e) = docker::stop_and_remove(&d, &owner, &key.0, grace).await {
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
    pub(super) async fn lost_engines(&self, specs: &[EngineSpec]) {
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
            if recent || self.cache.read().health(&spec.id).is_some() {
                continue;
            }
            let placed = self.cache.read().placed_on(&spec.id);
            for (id, d) in placed {
                let launched = d.run.as_ref().is_some_and(|r| !r.container_id.is_empty());
                // Placed for a launch that never happened: place it again too. A placement
                // nobody asked to launch is only a reservation, and stays.
                if !launched && !self.books.lock().listener().is_launchable(&id) {
                    continue;
                }
                let batch = launched && self.lifecycle(&id) == Lifecycle::Batch;
                let what = Outcome::EngineLost {
                    engine: spec.id.to_string(),
                    batch,
                };
                let tries = self.cfg.launch_tries;
                self.update(&id, &d, |dec| what.apply(dec, tries)).await;
                tracing::warn!(engine = %spec.id, request = %id, batch, "engine lost under a container");
            }
        }
    }

    pub(super) fn lifecycle(&self, id: &RequestId) -> Lifecycle {
        self.cache
            .read()
            .request(id)
            .map(|r| r.lifecycle)
            .unwrap_or_default()
    }
}
