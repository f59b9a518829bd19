//! Docker's event stream, reduced to what citadel follows: container starts, deaths, removals.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use futures_util::{Stream, StreamExt};

use super::*;

/// What happened to a container (Docker's event `Action`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Start,
    Restart,
    Pause,
    Unpause,
    Kill,
    Stop,
    /// The container's process ended; the event carries the exit code.
    Die,
    Oom,
    Destroy,
    /// Anything else, as Docker wrote it (`exec_start: sh`, `health_status: healthy`, …).
    Other(String),
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "create" => Action::Create,
            "start" => Action::Start,
            "restart" => Action::Restart,
            "pause" => Action::Pause,
            "unpause" => Action::Unpause,
            "kill" => Action::Kill,
            "stop" => Action::Stop,
            "die" => Action::Die,
            "oom" => Action::Oom,
            "destroy" => Action::Destroy,
            other => Action::Other(other.to_string()),
        }
    }
}

/// An event about a container citadel launched.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    pub request_id: String,
    pub engine_id: Option<String>,
    pub container_id: String,
    pub action: Action,
    /// Only on [`Action::Die`].
    pub exit_code: Option<i64>,
    /// When the engine says it happened; pass it to [`events_since`] to resume after it.
    pub time: Option<SystemTime>,
}

/// The engine's events about citadel's containers, from now on.
pub fn events(
    docker: &Docker,
) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
    events_since(docker, None)
}

/// The engine's events about citadel's containers, replayed from `since` (Docker keeps the
/// last thousand or so) and then live. `since` is the engine's clock, not ours.
///
/// The stream is lazy: nothing is asked of the engine until it is first polled.
pub fn events_since(
    docker: &Docker,
    since: Option<SystemTime>,
) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![REQUEST_LABEL.to_string()]),
    ]);
    let since = since.map(|t| {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    });
    let options = EventsOptions {
        since,
        filters: Some(filters),
        ..EventsOptions::default()
    };
    docker.events(Some(options)).filter_map(|event| {
        std::future::ready(match event {
            Ok(message) => container_event(message).map(Ok),
            Err(e) => Some(Err(DockerError::Api {
                op: "events",
                source: e,
            })),
        })
    })
}

/// A Docker event as ours; `None` for one that is not about a citadel container.
pub(super) fn container_event(m: EventMessage) -> Option<ContainerEvent> {
    if m.typ.is_some_and(|t| t != EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let actor = m.actor?;
    let attributes = actor.attributes.unwrap_or_default();
    let action = Action::parse(m.action.as_deref().unwrap_or_default());
    let time = m
        .time_nano
        .and_then(|n| u64::try_from(n).ok())
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
        .or_else(|| {
            let s = u64::try_from(m.time?).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(s))
        });
    Some(ContainerEvent {
        request_id: attributes.get(REQUEST_LABEL)?.clone(),
        engine_id: attributes.get(ENGINE_LABEL).cloned(),
        container_id: actor.id?,
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        action,
        time,
    })
}
