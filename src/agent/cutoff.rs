//! Cut off: no keepalive answered for TTL − stop-grace − 2 s. The lease will lapse and the
//! leader place this engine's services elsewhere, so they are stopped here first (with the
//! grace; kept, not removed), unless `--keep-services-when-cut-off`; batch containers run on.
//! When etcd answers again, reconcile starts again what is still assigned (the same
//! container) and removes what moved.

use std::time::Duration;

use crate::docker::{self, Running};

use super::*;

impl Agent {
    /// Enters the cut-off: services stopped before anything else happens.
    pub(super) async fn cut_off(&self, silent: Duration) {
        self.cut.send_replace(true);
        if self.cfg.keep_services_when_cut_off {
            tracing::warn!(silent = ?silent, "cut off from etcd; services kept running (--keep-services-when-cut-off)");
            return;
        }
        tracing::warn!(silent = ?silent, "cut off from etcd; stopping services");
        let _docker = self.docker_lock.lock().await;
        match tokio::time::timeout(
            DOCKER_TIMEOUT,
            docker::list_managed(&self.docker, &self.owner()),
        )
        .await
        {
            Ok(Ok(actual)) => {
                let desired = self.desired.borrow().clone();
                self.stop_services(&actual, &desired).await;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cut off, and cannot list the containers"),
            Err(_) => tracing::error!("cut off, and listing the containers timed out"),
        }
    }

    /// Stops every running container of ours that is not an assigned batch, remembering them.
    /// The caller holds the docker lock.
    pub(super) async fn stop_services(&self, actual: &[Running], desired: &work::Desired) {
        let targets: Vec<&Running> = actual
            .iter()
            .filter(|c| c.state == docker::State::Running)
            .filter(|c| {
                RequestId::from_key_segment(&c.request_id)
                    .and_then(|id| desired.items.get(&id))
                    .is_none_or(|a| a.is_service())
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        let grace = self.cfg.stop_grace;
        let stops = targets.iter().map(|c| async move {
            let r = docker::stop_id(&self.docker, &c.id, grace).await;
            (*c, r)
        });
        for (c, r) in futures_util::future::join_all(stops).await {
            match r {
                Ok(()) => {
                    tracing::warn!(request = %c.request_id, container = %crate::docker::short_id(&c.id),
                        "stopped: cut off from etcd");
                    lock(&self.cut_stopped).insert(c.id.clone());
                }
                Err(e) => tracing::error!(request = %c.request_id, error = %e,
                    "cut off, and cannot stop the service"),
            }
        }
    }
}
