//! Launching a request's container (idempotently, by label and fixed name) and stopping it.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::TryStreamExt;

use crate::model;

use super::*;

/// Runs the spec's container, once: a container already labelled with this request (and the
/// spec's engine and cluster: see [`Owner`]) is returned as it is (started first if it was only created), whatever its state, so a request
/// whose batch container exited is not run again.
///
/// A container that fails to start is removed, so that a retry elsewhere leaves nothing here.
#[tracing::instrument(skip_all, fields(request = %spec.request_id, engine = %spec.engine_id))]
pub async fn launch(docker: &Docker, spec: &LaunchSpec) -> Result<Running, DockerError> {
    spec.check()?;
    let owner = spec.owner();
    if let Some(found) = find(docker, &owner, &spec.request_id).await? {
        tracing::debug!(container = %found.id, state = %found.state, "already launched");
        return adopt(docker, found).await;
    }
    ensure_image(docker, &spec.image, spec.pull_timeout).await?;
    let options = CreateContainerOptions {
        name: spec.container_name.clone(),
        ..CreateContainerOptions::default()
    };
    let id = match docker
        .create_container(Some(options), spec.create_body())
        .await
    {
        Ok(created) => {
            for w in created.warnings.iter().filter(|w| !w.is_empty()) {
                tracing::warn!(container = %created.id, warning = %w, "docker create");
            }
            created.id
        }
        // The name is taken: by a twin launch of this same request, or by a stranger.
        Err(e) if status(&e) == Some(409) => match find(docker, &owner, &spec.request_id).await? {
            Some(found) => return adopt(docker, found).await,
            None => {
                return Err(DockerError::Create {
                    image: spec.image.clone(),
                    message: message(&e),
                });
            }
        },
        Err(e) => {
            return Err(DockerError::Create {
                image: spec.image.clone(),
                message: message(&e),
            });
        }
    };
    tracing::info!(container = %id, "created");
    start(docker, &id).await
}

/// The name a container gets when the request names none: `citadel-<request id>`, made of
/// what Docker allows in a name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). A fixed name makes creation
/// atomic: a second launcher racing the first (a leader killed mid-launch, its successor) gets
/// a name conflict and adopts the container, instead of starting a twin. An id that had to be
/// changed to fit gets a hash of the original, so two ids never share a name: FNV-1a (64 bits,
/// offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the id's UTF-8 bytes, its low 32
/// bits in hex. Fixed here rather than Rust's `DefaultHasher`, whose output may change between
/// releases: a leader built by another compiler must find the same name.
pub fn default_name(request_id: &str) -> String {
    let mut name = String::from("citadel-");
    let mut changed = false;
    for c in request_id.chars().take(200) {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            name.push(c);
        } else {
            name.push('-');
            changed = true;
        }
    }
    if changed || request_id.chars().count() > 200 {
        name.push_str(&format!("-{:08x}", model::fnv1a(request_id) as u32));
    }
    name
}

/// A container found for the request: started if it was only created, else as it is.
pub(super) async fn adopt(docker: &Docker, found: Running) -> Result<Running, DockerError> {
    match found.state {
        State::Created => start(docker, &found.id).await,
        _ => Ok(found),
    }
}

/// Starts a created container and reads it back; removes it if it cannot start.
pub(super) async fn start(docker: &Docker, id: &str) -> Result<Running, DockerError> {
    if let Err(e) = docker.start_container(id, None).await {
        if let Err(rm) = remove(docker, id).await {
            tracing::warn!(container = %id, error = %super::describe(&rm), "cannot remove a container that did not start");
        }
        return Err(DockerError::Start {
            message: message(&e),
        });
    }
    inspect(docker, id)
        .await?
        .ok_or_else(|| DockerError::Vanished { id: id.to_string() })
}

/// Makes sure the engine has the image, pulling it (within `timeout`) when it does not.
pub(super) async fn ensure_image(
    docker: &Docker,
    image: &str,
    timeout: Duration,
) -> Result<(), DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if status(&e) == Some(404) => {}
        Err(e) => {
            return Err(DockerError::Api {
                op: "inspect image",
                source: e,
            });
        }
    }
    tracing::info!(image, "pulling");
    let (from_image, tag) = pull_reference(image);
    let options = CreateImageOptions {
        from_image: Some(from_image.to_string()),
        tag: tag.map(str::to_string),
        ..CreateImageOptions::default()
    };
    // The progress messages are of no use here; bollard turns an error message into an Err.
    let pull = docker
        .create_image(Some(options), None, None)
        .try_for_each(|_| std::future::ready(Ok(())));
    let failed = |message| DockerError::Pull {
        image: image.to_string(),
        message,
    };
    match tokio::time::timeout(timeout, pull).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(message(&e))),
        Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
    }
}

/// Removes a container and its anonymous volumes, killing it if it runs; a container already
/// gone (or being removed) is no error.
pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), BollardError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        other => other,
    }
}

/// Stops (SIGTERM, then SIGKILL after `grace`) and removes every container of the request
/// that `owner` launched: one labelled for another engine or cluster is left alone.
/// `Ok(false)` if there was none.
#[tracing::instrument(skip(docker))]
pub async fn stop_and_remove(
    docker: &Docker,
    owner: &Owner,
    request_id: &str,
    grace: Duration,
) -> Result<bool, DockerError> {
    let found = list(docker, true, owner.filter(Some(request_id))).await?;
    if found.is_empty() {
        return Ok(false);
    }
    // Docker answers a stop only once the container is down: the client's timeout (shared by
    // every request) must outlast the grace period.
    let patient = docker
        .clone()
        .with_timeout(docker.timeout().max(grace + Duration::from_secs(30)));
    let options = StopContainerOptions {
        t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
        ..StopContainerOptions::default()
    };
    for id in found.into_iter().filter_map(|c| c.id) {
        // Not running (304) and gone (404) are what we want; any other failure is left to the
        // forced removal, which kills.
        if let Err(e) = patient.stop_container(&id, Some(options.clone())).await
            && status(&e) != Some(404)
        {
            tracing::warn!(container = %id, error = %e, "stop failed; removing by force");
        }
        remove(docker, &id).await.map_err(api("remove container"))?;
        tracing::info!(container = %id, "removed");
    }
    Ok(true)
}
