//! What an engine's own agent needs beyond the leader's calls: stopping, starting again and
//! removing one container by id. (Its containers are listed with [`list_managed`] and an
//! [`Owner`] naming its engine and its cluster.)

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::StopContainerOptions;

use super::*;

/// The client for a stop: Docker answers only once the container is down, so the client's
/// timeout must outlast the grace.
fn patient(docker: &Docker, grace: Duration) -> Docker {
    docker
        .clone()
        .with_timeout(docker.timeout().max(grace + Duration::from_secs(30)))
}

/// Stops one container (SIGTERM, SIGKILL after `grace`), keeping it. One already stopped or
/// gone is no error.
pub async fn stop_id(docker: &Docker, id: &str, grace: Duration) -> Result<(), DockerError> {
    let options = StopContainerOptions {
        t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
        ..StopContainerOptions::default()
    };
    match patient(docker, grace)
        .stop_container(id, Some(options))
        .await
    {
        Err(e) if !matches!(status(&e), Some(304 | 404)) => Err(DockerError::Api {
            op: "stop container",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Starts a stopped container again (the same container: its id, name and volumes), and reads
/// it back. Unlike a launch, a failure leaves it in place.
pub async fn start_again(docker: &Docker, id: &str) -> Result<Running, DockerError> {
    match docker.start_container(id, None).await {
        Err(e) if status(&e) != Some(304) => {
            return Err(DockerError::Start {
                message: message(&e),
            });
        }
        _ => {}
    }
    inspect(docker, id)
        .await?
        .ok_or_else(|| DockerError::Vanished { id: id.to_string() })
}

/// Stops (with `grace`) and removes one container, by id.
pub async fn stop_and_remove_id(
    docker: &Docker,
    id: &str,
    grace: Duration,
) -> Result<(), DockerError> {
    if let Err(e) = stop_id(docker, id, grace).await {
        tracing::warn!(container = %id, error = %e, "stop failed; removing by force");
    }
    remove(docker, id).await.map_err(api("remove container"))
}
