//! What the leader writes back: decisions, the reservations inside them, the container's fate,
//! and the other keys it owns (health, the election's values).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Placed,
    Unschedulable,
    Invalid,
    /// Waiting to be placed again: its container failed to start, or its engine was lost.
    Pending,
    /// Its container failed to start on every engine tried (`run.attempts` says why).
    Failed,
    /// A `batch` container that ran and exited (`run.exit_code`); its reservation is freed.
    Exited,
    /// A `batch` container whose engine was lost; its reservation is freed.
    Lost,
    /// Evicted to make room for a request of higher priority (`preempted_by`); waiting to be
    /// placed again, oldest first within its priority, once room appears.
    Preempted,
}

impl Status {
    /// No more work: the request stays decided until the user changes or deletes it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Invalid | Status::Failed | Status::Exited | Status::Lost
        )
    }
}

impl Status {
    /// The word a decision's JSON says.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Unschedulable => "unschedulable",
            Status::Invalid => "invalid",
            Status::Pending => "pending",
            Status::Failed => "failed",
            Status::Exited => "exited",
            Status::Lost => "lost",
            Status::Preempted => "preempted",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One engine a container could not run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub engine: String,
    pub error: String,
}

/// A container's state: Docker's own names, and citadel's two for a container no engine can
/// report (`removed`, and `lost` with its engine). Written as a lowercase string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// Removed while it was followed.
    Removed,
    /// Its engine was lost under it.
    Lost,
    /// A state a Docker names and citadel does not know.
    Other(String),
}

impl ContainerState {
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            "removed" => ContainerState::Removed,
            "lost" => ContainerState::Lost,
            other => ContainerState::Other(other.to_string()),
        }
    }

    /// It has stopped for good (exited or dead).
    pub fn is_done(&self) -> bool {
        matches!(self, ContainerState::Exited | ContainerState::Dead)
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Removed => "removed",
            ContainerState::Lost => "lost",
            ContainerState::Other(s) => s,
        })
    }
}

impl Serialize for ContainerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContainerState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ContainerState::parse(&String::deserialize(d)?))
    }
}

/// A published port of a launched container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container_port: u16,
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// `decision.run`: what became of the container, when the leader launches it (`--docker`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The engine it runs on (empty before a launch).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    /// Docker's state: `running`, `exited`, `created`, … (none before a launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
    /// Engines the container failed to start on, oldest first: never tried again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Engines lost under it (a service is placed again elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub updated_at: String,
}

impl Run {
    /// Forgets the container (it failed, or its engine is gone), keeping the history that
    /// steers the next placement: `attempts` and `lost`.
    pub fn forget_container(&mut self) {
        let Run { attempts, lost, .. } = std::mem::take(self);
        *self = Run {
            attempts,
            lost,
            ..Run::default()
        };
    }
}

/// `health/<engine>`: the leader's last contact with an engine, on a lease that lapses when the
/// engine stops answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub engine: String,
    /// RFC 3339, UTC.
    pub last_contact: String,
    /// Live use, summed over every running container (citadel's or not).
    pub cpus_used: f64,
    pub memory_used_mb: f64,
    pub containers_running: usize,
    pub checked_by: String,
    /// Set when the engine's agent writes it (on the agent's own lease); absent when a leader
    /// with `--docker` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStamp>,
}

/// The seed's `resource`: where the container goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub id: String,
    pub addr: String,
    pub total_cpus: f64,
    pub total_memory: f64,
}

/// `decisions/<id>`: the seed's response plus why and by whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The request as the user wrote it (see [`Echo`]).
    pub container: Echo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// What the placement holds on `resource`: present exactly while the decision holds
    /// capacity (placed, and launched containers that still run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The strategy that chose the engine (`spread`, `binpack`, `random`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheduler: String,
    /// With the request's `alternatives`: the next engines that fit, best first. Only
    /// `resource` holds a reservation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Alternative>,
    /// The mod revision of the request this decides; a newer request revision is decided anew.
    pub request_revision: i64,
    /// RFC 3339, UTC.
    pub decided_at: String,
    /// The replica that was leader when this was committed.
    pub decided_by: String,
    /// The container's fate, when the leader launches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// A `preempted` decision: the request that evicted it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preempted_by: String,
    /// A placement that preempted others: the requests it evicted from its engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preempted: Vec<String>,
}

/// An engine that also fits, and its score under the strategy (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub engine: String,
    pub score: f64,
}

/// What a placement holds on the engine its decision names (`resource.id`), written inside the
/// decision: one key per placement is half the work for etcd of a decision and a separate
/// reservation key (see BENCHMARKS.md). `citadel engine show` lists what one engine holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub cpus: f64,
    pub memory: f64,
    /// Disk in MB, when the request asks for some.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The image it runs: what `image==` affinity is decided on, on any replica.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The request's priority (0 when absent): what preemption compares.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// `false`: preemption never evicts it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub preemptible: bool,
    /// Its group, and the group's disruption budget, for preemption and group rules.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<u32>,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// A reservation in checked units, as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub disk: DiskMb,
    pub ports: Vec<HostPort>,
    pub image: std::sync::Arc<str>,
    /// What preemption and the group rules read of it.
    pub rank: Rank,
}

/// A placement's standing for preemption and its group's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    pub priority: i32,
    pub preemptible: bool,
    pub group: Option<std::sync::Arc<str>>,
    pub disruption_budget: Option<u32>,
}

impl Default for Rank {
    fn default() -> Self {
        Rank {
            priority: 0,
            preemptible: true,
            group: None,
            disruption_budget: None,
        }
    }
}

impl Rank {
    pub fn of(r: &Request) -> Rank {
        Rank {
            priority: r.priority,
            preemptible: r.preemptible,
            group: r.group.as_ref().map(|g| g.name.clone()),
            // A gang is preempted as a set or not at all: citadel does not take a gang down
            // whole, so none of its members is ever evicted.
            disruption_budget: r.group.as_ref().and_then(|g| {
                if g.is_gang() {
                    Some(0)
                } else {
                    g.disruption_budget
                }
            }),
        }
    }
}

impl Held {
    /// What a placement of `r` holds.
    pub fn of(r: &Request) -> Held {
        Held {
            cpus: r.cpus,
            memory: r.memory,
            disk: r.disk,
            ports: r.ports.clone(),
            image: r.image.name.as_str().into(),
            rank: Rank::of(r),
        }
    }
}

impl Reservation {
    /// What a placement holding `h` writes into its decision.
    pub fn of(h: &Held) -> Reservation {
        Reservation {
            cpus: h.cpus.as_cpus(),
            memory: h.memory.0 as f64,
            disk: h.disk.0 as f64,
            ports: h.ports.iter().map(|p| p.to_port()).collect(),
            image: h.image.to_string(),
            priority: h.rank.priority,
            preemptible: h.rank.preemptible,
            group: h.rank.group.as_deref().unwrap_or_default().to_string(),
            disruption_budget: h.rank.disruption_budget,
        }
    }

    pub fn held(&self) -> Held {
        Held {
            // Written by us from integers, so rounding recovers them exactly; ceil errs safe.
            cpus: Millicpus::from_cpus_ceil(self.cpus - 1e-9),
            memory: MemoryMb::from_mb_ceil(self.memory - 1e-9),
            disk: DiskMb::from_mb_ceil(self.disk - 1e-9),
            image: self.image.as_str().into(),
            rank: Rank {
                priority: self.priority,
                preemptible: self.preemptible,
                group: (!self.group.is_empty()).then(|| self.group.as_str().into()),
                disruption_budget: self.disruption_budget,
            },
            ports: self
                .ports
                .iter()
                .filter_map(|p| {
                    let proto = match p.proto.as_str() {
                        "udp" => Proto::Udp,
                        "sctp" => Proto::Sctp,
                        _ => Proto::Tcp,
                    };
                    u16::try_from(p.port)
                        .ok()
                        .map(|port| HostPort { proto, port })
                })
                .collect(),
        }
    }
}

/// `volumes/<name>`: the engine a named volume lives on, written by the leader beside the
/// first placement that mounts it, and forgotten only by `citadel volume rm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub engine: String,
    /// The request whose placement recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request: String,
}

/// `leader-resigned`: the last replica that withdrew from the election cleanly, written in the
/// same transaction that deletes its campaign key `leader/<lease>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resignation {
    /// The campaign key's suffix: its lease, in hex.
    pub lease: String,
    /// The replica.
    pub id: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The value of the election key `leader/<lease>`. Read by replicas of other versions during a
/// rolling upgrade: a field added here is optional and written only when set, and readers
/// ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// When it began campaigning.
    pub since: String,
    /// When it began leading: written by the leader's barrier once it has won (absent on a
    /// candidate that does not lead, and on a leader of a release before the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leads_since: Option<String>,
    /// Where the candidate serves its status page, `/healthz` and `/metrics` (IP:PORT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its build's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The request fields it understands. A leader that meets a field it does not know while
    /// a candidate knows it leaves the request to that candidate instead of deciding it
    /// `invalid` (older releases write none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_fields: Vec<String>,
}
