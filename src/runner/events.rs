//! Docker's events: a container's start, death or removal, into its decision.

use std::collections::HashMap;

use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::dispatch::Outcome;
use crate::docker::{self, Action, ContainerEvent};
use crate::model::{ContainerState, EngineId, Lifecycle, RequestId, Run, Status, now_rfc3339};

use super::*;

impl Runner {
    pub(super) async fn event_loop(&self, mut events: mpsc::Receiver<(EngineId, ContainerEvent)>) {
        while let Some((engine, ev)) = events.recv().await {
            self.on_event(&engine, &ev).await;
        }
    }

    pub(super) async fn on_event(&self, engine: &EngineId, ev: &ContainerEvent) {
        let Some(id) = RequestId::from_key_segment(&ev.request_id) else {
            return;
        };
        let Some(d) = self.cache.read().decision(&id).cloned() else {
            return;
        };
        let ours = d.status == Status::Placed
            && d.engine.as_ref() == Some(engine)
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
                    run.state = Some(if ev.action == Action::Destroy {
                        ContainerState::Removed
                    } else {
                        ContainerState::Exited
                    });
                    run.exit_code = code.or(run.exit_code);
                    run.updated_at = now_rfc3339();
                    if batch {
                        let code = run.exit_code;
                        Outcome::BatchExited { code }.apply(dec, 0);
                    }
                })
                .await;
            }
            Action::Start | Action::Restart
                if d.run
                    .as_ref()
                    .is_some_and(|r| r.state != Some(ContainerState::Running)) =>
            {
                self.update(&id, &d, |dec| {
                    let run = dec.run.get_or_insert_with(Run::default);
                    run.state = Some(ContainerState::Running);
                    run.exit_code = None;
                    run.updated_at = now_rfc3339();
                })
                .await;
            }
            _ => {}
        }
    }
}

/// The event forwarders, one per engine: stopped with the runner (a task outlives its handle).
#[derive(Default)]
pub(super) struct Watchers(pub(super) HashMap<EngineId, tokio::task::JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

/// Docker's events of one engine, forwarded until the stream ends (the engine went away).
pub(super) async fn forward_events(
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
