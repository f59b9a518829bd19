//! Health and live usage: every engine contacted each round, its health key written on a
//! lease, what its containers use learned per image.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::time::Instant;

use etcd_client::{PutOptions, TxnOp};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::docker::{self, ContainerEvent};
use crate::model::{EngineId, Health, Request, RequestId, now_rfc3339};
use crate::store;

use super::*;

impl Runner {
    pub(super) async fn health_loop(&self, events: mpsc::Sender<(EngineId, ContainerEvent)>) {
        let mut tick = tokio::time::interval(self.cfg.health_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching = Watchers::default();
        let mut down: HashSet<EngineId> = HashSet::new();
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            rounds += 1;
            // An engine with an agent is the agent's: the leader never dials it.
            let specs: Vec<_> = self
                .cache
                .read()
                .engine_specs()
                .into_iter()
                .filter(|s| s.wire.agent.is_none())
                .collect();
            let mut contacts = JoinSet::new();
            let owners: Vec<docker::Owner> = specs.iter().map(|s| self.owner(&s.id)).collect();
            for (spec, owner) in specs.iter().cloned().zip(owners) {
                let docker = self.docker(&spec);
                if matches!(docker, Err(RunnerError::Refused(_))) {
                    continue; // Not contacted, so never healthy (logged by `docker`).
                }
                let timeout = self.cfg.contact_timeout;
                contacts.spawn(async move {
                    let result = match docker {
                        Ok(d) => tokio::time::timeout(timeout, async {
                            let usage = docker::usage(&d).await?;
                            let managed = docker::list_managed(&d, &owner).await?;
                            Ok::<_, RunnerError>((d, usage, managed))
                        })
                        .await
                        .unwrap_or(Err(RunnerError::Timeout(timeout))),
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
            let refused = self.refused_engines(&specs);
            watching.0.retain(|e, h| {
                let keep = specs.iter().any(|s| s.id == *e) && !refused.contains(e);
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

    pub(super) async fn write_health(&self, engine: &EngineId, usage: &docker::EngineUsage) {
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
            agent: None,
        };
        let value = match serde_json::to_vec(&health) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(engine = %engine, error = %e, "cannot encode the engine's health; not written");
                return;
            }
        };
        let put = TxnOp::put(
            self.keys.health(engine),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        self.commit(vec![], vec![put], "health").await;
    }

    /// Feeds the per-image profiles with what citadel's containers use.
    pub(super) fn learn(&self, usage: &docker::EngineUsage) {
        let state = self.cache.read();
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

    pub(super) async fn write_profiles(&self) {
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
}
