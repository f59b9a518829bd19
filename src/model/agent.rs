//! The agent protocol: what `citadel agent` registers, what the leader assigns it and what it
//! reports back. One key range per engine, so an etcd role can confine an agent to its own:
//!
//! ```text
//! engines/<engine>                  the agent registers it (Engine.agent set); the operator's
//!                                   labels, cordon and drain survive its restarts
//! health/<engine>                   the agent, on its one lease: liveness + live usage
//! assignments/<engine>/<request>    leader, in the placement's own fenced txn: what to run
//! runs/<engine>/<request>           the agent: what became of it
//! ```
//!
//! Every value is JSON, readable with `etcdctl`. Every field added later is optional, so an
//! older agent or leader reads a newer value as before.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ContainerState, PublishedPort};

/// `engines/<id>.agent`: the engine is run by an agent. The leader dials no engine that has one;
/// its loss is its health lease's expiry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The host the agent runs on.
    #[serde(default)]
    pub host: String,
    /// The agent's release.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// When it (re-)registered, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
    /// What this engine lets a container do beyond the default (see [`LaunchPolicy`]).
    #[serde(default, skip_serializing_if = "LaunchPolicy::is_default")]
    pub policy: LaunchPolicy,
}

/// What an engine permits a launched container beyond the default, which is: no host path
/// mounted, no host network, no other container's network. Set in the agent's own
/// configuration and advertised in its engine record, so that the scheduler places such requests
/// only where they are allowed; the agent checks again before it launches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LaunchPolicy {
    /// Host paths a request may bind-mount (the path itself or anything below it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_volumes: Vec<HostVolume>,
    /// `network_mode: "host"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// `network_mode: "container:<name>"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub container_network: bool,
}

impl LaunchPolicy {
    pub fn is_default(&self) -> bool {
        *self == LaunchPolicy::default()
    }
}

/// A host path the operator lets containers on this engine mount (Nomad's `host_volume`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostVolume {
    pub path: String,
    /// Only `:ro` mounts of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `health/<engine>.agent`: who keeps the lease this key lives on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentStamp {
    pub host: String,
    pub pid: u32,
    /// Random per agent process: tells a restart apart from a second agent.
    #[serde(default)]
    pub instance: String,
}

/// `assignments/<engine>/<request>`: what the agent of `engine` must run. Written by the leader
/// in the fenced transaction that places the request (only for requests to be launched) and
/// deleted in the one that releases or moves it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Assignment {
    pub request: String,
    pub engine: String,
    /// `service` (kept running; placed elsewhere if its engine is lost) or `batch`.
    pub lifecycle: String,
    /// The request's mod revision this assignment answers.
    pub request_revision: i64,
    /// The request as the user wrote it: the agent parses it with the same rules the leader
    /// did, and reads no other engine's keys.
    pub spec: Box<RawValue>,
}

impl Assignment {
    /// The value, built without re-encoding the request's own JSON (`raw` parsed once already).
    pub fn encode(
        request: &str,
        engine: &str,
        lifecycle: &str,
        request_revision: i64,
        raw: &[u8],
    ) -> Vec<u8> {
        let head = serde_json::json!({
            "request": request,
            "engine": engine,
            "lifecycle": lifecycle,
            "request_revision": request_revision,
        });
        // `{..head..,"spec":<raw>}`: head is an object, so it ends with `}`.
        let mut out = head.to_string().into_bytes();
        out.pop();
        out.extend_from_slice(b",\"spec\":");
        out.extend_from_slice(raw);
        out.push(b'}');
        out
    }
}

/// `runs/<engine>/<request>`: what the agent made of an assignment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub request: String,
    pub engine: String,
    /// The assignment key's mod revision this reports on: a report about an older assignment
    /// is stale.
    pub assignment_revision: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    /// Docker's state; `failed` with `error` when it could not start here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
    /// Why the container could not start on this engine (the leader places it elsewhere).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Stopped by the agent because it was cut off from etcd past its lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_off: bool,
    pub updated_at: String,
}

impl RunReport {
    /// Whether the container could not start on this engine.
    pub fn failed(&self) -> bool {
        !self.error.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_carries_the_request_as_written() {
        let raw = br#"{"image":"busybox","cpus":"0.5","launch":true}"#;
        let v = Assignment::encode("web-1", "e1", "service", 7, raw);
        let a: Assignment = serde_json::from_slice(&v).unwrap();
        assert_eq!(a.request, "web-1");
        assert_eq!(a.request_revision, 7);
        assert_eq!(a.spec.get().as_bytes(), raw);
        let odd = Assignment::encode("a\"b", "e\\1", "batch", 1, b"{}");
        let a: Assignment = serde_json::from_slice(&odd).unwrap();
        assert_eq!((a.request.as_str(), a.engine.as_str()), ("a\"b", "e\\1"));
    }

    #[test]
    fn older_readers_skip_what_they_do_not_know() {
        let engine: super::super::Engine = serde_json::from_str(
            r#"{"cpus":2,"memory":1024,"agent":{"host":"h1","policy":{"host_network":true}}}"#,
        )
        .unwrap();
        assert_eq!(engine.agent.map(|a| a.policy.host_network), Some(true));
    }
}
