//! The seed library's types as they travel through etcd: what users and operators write.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A host port a container needs exclusively (`bind_ports`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proto: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub port: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub container_port: i64,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "maximum_retry", default, skip_serializing_if = "is_zero_i64")]
    pub maximum_retry_count: i64,
}

/// The seed's `Image`: what a user asks for. The seed's sample names the image `image` while the
/// type says `name`: both are accepted. `cpus` and `memory` may be numbers or numeric strings.
///
/// Unknown fields are refused ([`REQUEST_FIELDS`](super::REQUEST_FIELDS)): a typo such as `"lables"` would otherwise
/// place the request without its constraints. Free-form data goes in `user_data`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    #[serde(alias = "image", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpuset: String,
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(rename = "domain", default, skip_serializing_if = "String::is_empty")]
    pub domainname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_ports: Vec<Port>,
    /// Free-form data for whoever reads the decision: any JSON object (the seed's map of
    /// string lists is one). citadel never reads it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_data: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_default_restart")]
    pub restart_policy: RestartPolicy,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_mode: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    /// Start the container once it is placed (the leader must run with `--docker`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub launch: bool,
    /// Disk to reserve, in MB (none when absent).
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk: Option<f64>,
    /// List this many more engines that fit, best first, in a placed decision (at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<u64>,
    /// Affinity to other placements: `request==web-*`, `request!=db-*`, `image==redis*`, and
    /// the soft `==~` / `!=~` forms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<String>,
    /// Higher wins, as Kubernetes' PriorityClass values: planned first, and may preempt
    /// placements of strictly lower priority (a signed 32-bit integer; 0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// `false`: never evicted by preemption (true when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    /// The group it belongs to (replicas of one service, workers of one job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Place the group all or nothing: no member until this many are pending and fit at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_min: Option<u64>,
    /// How long a gang may wait to fit before it is decided unschedulable as a whole: seconds,
    /// or a duration such as `"90s"` or `"5m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_timeout: Option<serde_json::Value>,
    /// Spread the group's members over the values of an engine label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<SpreadRule>,
    /// At most this many of the group's members on one engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_engine: Option<u64>,
    /// How many of the group's members preemption may take down at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<u64>,
}

/// `"spread": {"over": "zone", "max_skew": 1}`: between any two values of the label `over`
/// (among the engines the request may use), the group's member counts differ by at most
/// `max_skew` (1 when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadRule {
    pub over: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_skew: Option<u64>,
}

fn is_default_restart(p: &RestartPolicy) -> bool {
    *p == RestartPolicy::default()
}

/// Accepts `0.2`, `"0.2"` and `null`. A string that does not parse is an invalid value (which
/// the reason does not quote back: see [`super::request`]'s `shown_data_error`).
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => s.trim().parse::<f64>().map(Some).map_err(|_| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&s), &"a number")
        }),
    }
}

/// A Docker engine that can run containers (`engines/<id>`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Engine {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(default, deserialize_with = "number_or_string_zero")]
    pub cpus: f64,
    #[serde(default, deserialize_with = "number_or_string_zero")]
    pub memory: f64,
    /// Disk in MB, where Docker keeps its data (0: none offered).
    #[serde(
        default,
        deserialize_with = "number_or_string_zero",
        skip_serializing_if = "is_zero_f64"
    )]
    pub disk: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// No new placements (existing ones stay): set by `citadel engine rm` while it checks that
    /// nothing is held, and by an operator for maintenance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Being drained (`citadel engine drain`): cordoned, and its `service` placements are
    /// placed again elsewhere; its `batch` ones run to the end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Run by `citadel agent` (it registered the engine): the leader never dials it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<super::AgentInfo>,
}

fn number_or_string_zero<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number_or_string(d).map(|v| v.unwrap_or(0.0))
}

/// The seed's snapshot of one engine's capacity and reservations.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default)]
    pub cpus: f64,
    #[serde(default)]
    pub memory: f64,
    #[serde(default)]
    pub reserved_cpus: f64,
    #[serde(default)]
    pub reserved_memory: f64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub current_memory: f64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub current_cpu: f64,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// The seed's summary of the whole cluster (`citadel ls`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClusterInfo {
    #[serde(default)]
    pub cpus: f64,
    #[serde(default)]
    pub memory: f64,
    #[serde(default)]
    pub container_count: u64,
    #[serde(default)]
    pub engine_count: u64,
    #[serde(default)]
    pub image_count: u64,
    #[serde(default)]
    pub reserved_cpus: f64,
    #[serde(default)]
    pub reserved_memory: f64,
}

/// The seed's running container.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Container {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}
