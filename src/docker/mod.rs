//! The Docker edge for placed containers: running a request's container on its engine, finding
//! it again, stopping it, and reading what an engine's containers use.
//!
//! Every container citadel starts carries three labels, `citadel.request=<request id>`,
//! `citadel.engine=<engine id>` and `citadel.cluster=<key prefix>`, and nothing else of ours. The labels are the only link between
//! etcd and Docker: [`launch`] first [`find`]s the request's container by label, so a launch that
//! was already done (by a deposed leader, or by this one before a crash) is not done twice.
//!
//! [`engine`] connects and probes; the rest only borrows the [`Docker`](bollard::Docker) it returns.
//!
//! It may not touch etcd, nor decide anything: it does what the runner asks on one engine.

pub mod engine;
mod events;
mod launch;
mod local;
mod running;
mod spec;
#[cfg(test)]
mod tests;
mod usage;

use std::time::Duration;

use bollard::errors::Error as BollardError;

use crate::cause::Cause;

pub use events::*;
pub use launch::*;
pub use local::*;
pub use running::*;
pub use spec::*;
pub use usage::*;

/// The label naming the request a container runs; its value is the request id.
pub const REQUEST_LABEL: &str = "citadel.request";
/// The label naming the engine the container was placed on; its value is the engine id.
pub const ENGINE_LABEL: &str = "citadel.engine";
/// The label naming the cluster that launched the container: its key prefix (`/citadel`).
/// Nothing of another cluster's, on a shared engine, is touched.
pub const CLUSTER_LABEL: &str = "citadel.cluster";
/// How long [`launch`] waits for a missing image to be pulled, unless the spec says otherwise.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long [`usage`] waits for one container's stats (Docker takes about a second per sample).
pub(super) const STATS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("request {request}: cannot be launched: {reason}")]
    Spec { request: String, reason: String },
    #[error("cannot pull image {image}: {message}")]
    Pull { image: String, message: String },
    #[error("cannot create a container from {image}: {message}")]
    Create { image: String, message: String },
    #[error("the container did not start: {message}")]
    Start { message: String },
    #[error("docker {op} failed: {}", describe(.source))]
    Api {
        op: &'static str,
        #[source]
        source: BollardError,
    },
    #[error("docker {op}: the engine's answer has no {what}")]
    Incomplete {
        op: &'static str,
        what: &'static str,
    },
    #[error("container {id} disappeared while it was being launched")]
    Vanished { id: String },
}

/// A container id as Docker shows it short: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

pub(super) fn api(op: &'static str) -> impl FnOnce(BollardError) -> DockerError {
    move |source| DockerError::Api { op, source }
}

/// The HTTP status of an error the engine answered with.
pub(super) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker's own words, without bollard's "Docker responded with status code …" wrapping.
pub(super) fn message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => describe(other),
    }
}

/// A bollard error in one line. A connection that failed says why, in [`Cause`]'s words, and
/// what to check (bollard's own words are "Error in the hyper legacy client: client error
/// (Connect)", whatever happened); anything else is bollard's own text. Every message that
/// shows a bollard error builds it here.
pub fn describe(e: &BollardError) -> String {
    match Cause::of(e) {
        Some(cause) => match cause.hint("dockerd") {
            hint if hint.is_empty() => cause.to_string(),
            hint => format!("{cause}: {hint}"),
        },
        None => e.to_string(),
    }
}
