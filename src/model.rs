//! The data model: the seed's types as serde structs, the validated form of a request that the
//! scheduler works on, and what the leader writes back (decisions and reservations).
//!
//! JSON in etcd is the contract, so the wire structs keep the seed's field names. Inside, resources
//! are integers (`Millicpus`, `MemoryMb`) so that sums never drift: a request is rounded *up* and an
//! engine's capacity *down*, which can only ever err on the side of not overcommitting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub mod launch;

/// Largest cpus a request or engine may name. Anything bigger is a typo or an attack.
pub const MAX_CPUS: f64 = 1_000_000.0;
/// Largest memory (MB) a request or engine may name: one exabyte.
pub const MAX_MEMORY_MB: f64 = 1_099_511_627_776.0;
/// Largest request value: its decision echoes it, and several decisions share one transaction
/// under etcd's 1.5 MiB request limit.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// etcd keys and DNS names agree on this bound; ids longer than this are refused.
pub const MAX_ID_BYTES: usize = 253;
/// Deepest nesting of arrays and objects in a request. Its decision echoes it, and common JSON
/// readers stop far sooner than serde does (Python's `json` near 1,000 levels).
pub const MAX_DEPTH: usize = 32;
/// Most constraints (`labels`) one request may carry: each is checked against engine classes.
pub const MAX_CONSTRAINTS: usize = 32;
/// Longest constraint expression, in bytes.
pub const MAX_CONSTRAINT_BYTES: usize = 256;

// ---------------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------------

/// Thousandths of a cpu.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millicpus(pub u64);

/// Megabytes of memory, as in the seed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct MemoryMb(pub u64);

impl Millicpus {
    /// Rounds up: a request never asks for less than it said.
    pub fn from_cpus_ceil(cpus: f64) -> Self {
        Self((cpus * 1000.0).ceil() as u64)
    }
    /// Rounds down: an engine never offers more than it has.
    pub fn from_cpus_floor(cpus: f64) -> Self {
        Self((cpus * 1000.0).floor().max(0.0) as u64)
    }
    pub fn as_cpus(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl MemoryMb {
    pub fn from_mb_ceil(mb: f64) -> Self {
        Self(mb.ceil() as u64)
    }
    pub fn from_mb_floor(mb: f64) -> Self {
        Self(mb.floor().max(0.0) as u64)
    }
}

impl fmt::Display for Millicpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_cpus())
    }
}

impl fmt::Display for MemoryMb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// Why an id cannot name a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id {0:?} contains '/'")]
    Slash(String),
    #[error("id is {0} bytes long, the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("id {0:?} contains a control character or whitespace")]
    Unprintable(String),
}

fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.contains('/') {
        return Err(IdError::Slash(id.to_string()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::Unprintable(id.to_string()));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: the cache, the leader's work sets and its in-flight batches
        /// each hold every id, and a clone is a reference count.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// A valid id: non-empty, no `/`, at most 253 bytes, printable.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check_id(&id)?;
                Ok(Self(id.into()))
            }
            /// A key segment as etcd holds it: non-empty and without `/`. The stricter checks
            /// of [`Self::new`] are applied later, so that a long or odd id still gets an
            /// `invalid` decision instead of silence.
            pub fn from_key_segment(id: &str) -> Option<Self> {
                (!id.is_empty() && !id.contains('/')).then(|| Self(id.into()))
            }
            /// The strict checks of [`Self::new`], for an id that came from a key.
            pub fn check(&self) -> Result<(), IdError> {
                check_id(&self.0)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are those of the text, so maps keyed by ids answer a lookup by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The last segment of `requests/<id>`.
    RequestId
);
id_type!(
    /// The last segment of `engines/<id>`.
    EngineId
);

// ---------------------------------------------------------------------------------------------
// The seed's types
// ---------------------------------------------------------------------------------------------

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
/// Unknown fields are refused ([`REQUEST_FIELDS`]): a typo such as `"lables"` would otherwise
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
}

/// Every field a request may carry (`image` is the seed sample's name for `name`).
pub const REQUEST_FIELDS: &[&str] = &[
    "name",
    "image",
    "cpus",
    "cpuset",
    "memory",
    "entrypoint",
    "environment",
    "hostname",
    "domain",
    "args",
    "type",
    "labels",
    "bind_ports",
    "user_data",
    "volumes",
    "links",
    "restart_policy",
    "publish",
    "network_mode",
    "container_name",
    "launch",
];

/// The known field a misspelt one was probably meant to be: at most two edits away (a swap of
/// two neighbours counts as one), `lables` → `labels`, `cpu` → `cpus`.
pub fn did_you_mean<'a>(field: &str, known: &[&'a str]) -> Option<&'a str> {
    let field = field.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::osa_distance(&field, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// What happens to a request's container when it is done or its engine goes: fixed by its
/// `type` when the request is parsed. A `batch` container runs to completion and frees its
/// reservation when it exits; anything else is a service, kept running and placed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifecycle {
    #[default]
    Service,
    Batch,
}

impl Lifecycle {
    pub fn of(kind: &str) -> Self {
        if kind.trim() == "batch" {
            Lifecycle::Batch
        } else {
            Lifecycle::Service
        }
    }
}

fn is_default_restart(p: &RestartPolicy) -> bool {
    *p == RestartPolicy::default()
}

/// Accepts `0.2`, `"0.2"` and `null`. Strings that do not parse are an error naming the value.
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
        Some(NumOrStr::Str(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
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

// ---------------------------------------------------------------------------------------------
// Validation: wire JSON -> what the scheduler works on
// ---------------------------------------------------------------------------------------------

/// An exclusive host port on an engine: `(proto, port)`. Port 0 means "any" and reserves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        };
        write!(f, "{}/{}", self.port, proto)
    }
}

impl HostPort {
    pub fn to_port(self) -> Port {
        Port {
            proto: match self.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
                Proto::Sctp => "sctp",
            }
            .to_string(),
            port: i64::from(self.port),
            ..Port::default()
        }
    }
}

/// A request that passed validation: everything the scheduler needs, in checked units.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub image: Image,
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub kind: String,
    pub lifecycle: Lifecycle,
    /// Raw constraint expressions (`labels`); parsed by the scheduler.
    pub constraints: Vec<String>,
    pub ports: Vec<HostPort>,
}

/// Why a request was refused as `invalid`. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn check_amount(field: &str, value: Option<f64>, max: f64, unit: &str) -> Result<f64, Invalid> {
    match value {
        None => Err(Invalid(format!(
            "{field}: required, a number greater than 0"
        ))),
        Some(v) if v.is_nan() => Err(Invalid(format!("{field}: NaN is not a number"))),
        Some(v) if v <= 0.0 => Err(Invalid(format!("{field}: must be greater than 0, got {v}"))),
        Some(v) if !v.is_finite() || v > max => Err(Invalid(format!(
            "{field}: {v} is too large, the limit is {max}{unit}"
        ))),
        Some(v) => Ok(v),
    }
}

impl Request {
    /// Parses and checks a request value as a user wrote it into etcd.
    /// Straight from the bytes into `Image`: no intermediate JSON tree (the decision's echo is
    /// made separately, by [`Echo::of`], only when a decision is written).
    pub fn parse(raw: &[u8]) -> Result<Request, Invalid> {
        if raw.len() > MAX_REQUEST_BYTES {
            return Err(Invalid(format!(
                "request: {} bytes, the limit is {MAX_REQUEST_BYTES}",
                raw.len()
            )));
        }
        if let Some(depth) = nesting_beyond(raw, MAX_DEPTH) {
            return Err(Invalid(format!(
                "request: nested {depth} levels deep, the limit is {MAX_DEPTH}"
            )));
        }
        let first = raw.iter().copied().find(|b| !b.is_ascii_whitespace());
        if first != Some(b'{') {
            return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
                Err(e) => Invalid(format!("malformed JSON: {e}")),
                Ok(_) => Invalid(format!(
                    "request must be a JSON object, got {}",
                    json_kind(first)
                )),
            });
        }
        // Most requests are well formed: parse them plainly, and only a failure again, with
        // the path that names the bad field (tracking the path costs time on every field).
        if let Ok(image) = serde_json::from_slice::<Image>(raw) {
            return Self::from_image(image);
        }
        if let Some(unknown) = unknown_fields(raw) {
            return Err(unknown);
        }
        let mut de = serde_json::Deserializer::from_slice(raw);
        let image: Image = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            if e.inner().is_data() {
                Invalid(format!("{}: {}", e.path(), e.inner()))
            } else {
                Invalid(format!("malformed JSON: {}", e.inner()))
            }
        })?;
        de.end()
            .map_err(|e| Invalid(format!("malformed JSON: {e}")))?;
        Self::from_image(image)
    }

    pub fn from_image(image: Image) -> Result<Request, Invalid> {
        if image.name.trim().is_empty() {
            return Err(Invalid("image: required, the docker image to run".into()));
        }
        let cpus = check_amount("cpus", image.cpus, MAX_CPUS, " cpus")?;
        let memory = check_amount("memory", image.memory, MAX_MEMORY_MB, " MB")?;
        if image.kind.trim().is_empty() {
            return Err(Invalid(
                "type: required, e.g. \"service\" or \"batch\"".into(),
            ));
        }
        if image.labels.len() > MAX_CONSTRAINTS {
            return Err(Invalid(format!(
                "labels: {} constraints, the limit is {MAX_CONSTRAINTS}",
                image.labels.len()
            )));
        }
        if let Some((i, l)) = image
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| l.len() > MAX_CONSTRAINT_BYTES)
        {
            return Err(Invalid(format!(
                "labels[{i}]: {} bytes, the limit is {MAX_CONSTRAINT_BYTES}",
                l.len()
            )));
        }

        let mut ports = Vec::new();
        for (i, p) in image.bind_ports.iter().enumerate() {
            let proto = match p.proto.to_ascii_lowercase().as_str() {
                "" | "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                "sctp" => Proto::Sctp,
                other => {
                    return Err(Invalid(format!(
                        "bind_ports[{i}].proto: {other:?} is not tcp, udp or sctp"
                    )));
                }
            };
            if !(0..=65535).contains(&p.port) {
                return Err(Invalid(format!(
                    "bind_ports[{i}].port: {} is not a port (0-65535)",
                    p.port
                )));
            }
            if !(0..=65535).contains(&p.container_port) {
                return Err(Invalid(format!(
                    "bind_ports[{i}].container_port: {} is not a port (0-65535)",
                    p.container_port
                )));
            }
            if p.port == 0 {
                continue; // Docker picks a free port; nothing to reserve.
            }
            let hp = HostPort {
                proto,
                port: p.port as u16,
            };
            if ports.contains(&hp) {
                return Err(Invalid(format!(
                    "bind_ports[{i}]: host port {hp} is listed twice"
                )));
            }
            ports.push(hp);
        }
        launch::check(&image)?;
        Ok(Request {
            cpus: Millicpus::from_cpus_ceil(cpus),
            memory: MemoryMb::from_mb_ceil(memory),
            kind: image.kind.trim().to_string(),
            lifecycle: Lifecycle::of(&image.kind),
            constraints: image.labels.clone(),
            ports,
            image,
        })
    }
}

/// A request as its decision echoes it (`container`): the JSON the user wrote, without the
/// whitespace between its tokens (keys keep their order, numbers and strings their spelling);
/// the start of the text when it is not JSON; a note when it is over the size limit.
///
/// Kept as JSON text, so writing a decision copies it instead of building and dropping a tree
/// per request (about a tenth of the leader's cpu per placement, by a profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Echo(Box<serde_json::value::RawValue>);

impl Echo {
    pub fn of(raw: &[u8]) -> Echo {
        if raw.len() > MAX_REQUEST_BYTES {
            return Echo::from(serde_json::Value::String(format!(
                "({} bytes, not echoed)",
                raw.len()
            )));
        }
        let start = || {
            serde_json::Value::String(
                String::from_utf8_lossy(&raw[..raw.len().min(256)]).into_owned(),
            )
        };
        if nesting_beyond(raw, MAX_DEPTH).is_some() {
            return Echo::from(start());
        }
        match compact(raw) {
            Some(text) => Echo(text),
            None => Echo::from(serde_json::from_slice(raw).unwrap_or_else(|_| start())),
        }
    }

    /// The echo as JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The echo as a JSON tree.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Echo {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl From<serde_json::Value> for Echo {
    fn from(v: serde_json::Value) -> Echo {
        // A tree's own text is always valid JSON.
        let text = serde_json::value::to_raw_value(&v).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
        });
        Echo(text)
    }
}

/// `raw` without the whitespace between its tokens, if it is one JSON text whose numbers all
/// fit a float (every reader of the decision can then parse it: `1e999` makes readers fail).
fn compact(raw: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::from_slice::<serde::de::IgnoredAny>(raw).ok()?;
    let text = std::str::from_utf8(raw).ok()?;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.push_str(text.get(start..i)?);
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let number = text.get(start..i)?;
                if !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return None;
                }
                out.push_str(number);
            }
            _ => {
                let start = i;
                i += 1;
                while i < bytes.len() && !text.is_char_boundary(i) {
                    i += 1;
                }
                out.push_str(text.get(start..i)?);
            }
        }
    }
    serde_json::value::RawValue::from_string(out).ok()
}

/// How deep `raw` nests arrays and objects, if deeper than `max`; strings are skipped. One pass
/// over the bytes, before serde sees them: serde skips unknown values without a depth limit.
pub fn nesting_beyond(raw: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    i += if raw[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (deepest > max).then_some(deepest)
}

/// The request's top-level fields that no request has, named with a guess at what was meant.
fn unknown_fields(raw: &[u8]) -> Option<Invalid> {
    let fields: BTreeMap<String, serde::de::IgnoredAny> = serde_json::from_slice(raw).ok()?;
    let unknown: Vec<String> = fields
        .keys()
        .filter(|k| !REQUEST_FIELDS.contains(&k.as_str()))
        .map(|k| match did_you_mean(k, REQUEST_FIELDS) {
            Some(known) => format!("{k:?} (did you mean {known:?}?)"),
            None => format!("{k:?}"),
        })
        .collect();
    match unknown.len() {
        0 => None,
        1 => Some(Invalid(format!(
            "unknown field {}; free-form data goes in \"user_data\"",
            unknown[0]
        ))),
        _ => Some(Invalid(format!(
            "unknown fields {}; free-form data goes in \"user_data\"",
            unknown.join(", ")
        ))),
    }
}

/// What a JSON text that is not an object is, from its first byte.
fn json_kind(first: Option<u8>) -> &'static str {
    match first {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// An engine that passed validation, in checked units.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    pub id: EngineId,
    pub addr: String,
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    /// The seed's `key=value` (or bare `key`) strings.
    pub labels: Vec<String>,
    pub cordoned: bool,
    /// The wire form, echoed into decisions.
    pub wire: Engine,
}

impl EngineSpec {
    /// Parses `engines/<id>`'s value; the key's id wins over a missing or mismatched JSON `id`.
    pub fn parse(id: &EngineId, raw: &[u8]) -> Result<EngineSpec, Invalid> {
        let mut wire: Engine = serde_json::from_slice::<serde_json::Value>(raw)
            .map_err(|e| Invalid(format!("malformed JSON: {e}")))
            .and_then(|v| {
                serde_path_to_error::deserialize(v)
                    .map_err(|e| Invalid(format!("{}: {}", e.path(), e.inner())))
            })?;
        if !wire.id.is_empty() && wire.id != id.as_str() {
            return Err(Invalid(format!(
                "id: {:?} does not match the key's id {:?}",
                wire.id,
                id.as_str()
            )));
        }
        wire.id = id.to_string();
        let cpus = check_amount("cpus", Some(wire.cpus), MAX_CPUS, " cpus")?;
        let memory = check_amount("memory", Some(wire.memory), MAX_MEMORY_MB, " MB")?;
        Ok(EngineSpec {
            id: id.clone(),
            addr: wire.addr.clone(),
            cpus: Millicpus::from_cpus_floor(cpus),
            memory: MemoryMb::from_mb_floor(memory),
            labels: wire.labels.clone(),
            cordoned: wire.cordoned,
            wire,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What the leader writes
// ---------------------------------------------------------------------------------------------

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

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Placed => "placed",
            Status::Unschedulable => "unschedulable",
            Status::Invalid => "invalid",
            Status::Pending => "pending",
            Status::Failed => "failed",
            Status::Exited => "exited",
            Status::Lost => "lost",
        })
    }
}

/// One engine a container could not run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub engine: String,
    pub error: String,
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
    /// Docker's state: `running`, `exited`, `created`, …
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
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
    /// The mod revision of the request this decides; a newer request revision is decided anew.
    pub request_revision: i64,
    /// RFC 3339, UTC.
    pub decided_at: String,
    /// The replica that was leader when this was committed.
    pub decided_by: String,
    /// The container's fate, when the leader launches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

/// What a placement holds on the engine its decision names (`resource.id`), written inside the
/// decision: one key per placement is half the work for etcd of a decision and a separate
/// reservation key (see BENCHMARKS.md). `citadel engine show` lists what one engine holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub cpus: f64,
    pub memory: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// A reservation in checked units, as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub ports: Vec<HostPort>,
}

impl Reservation {
    pub fn held(&self) -> Held {
        Held {
            // Written by us from integers, so rounding recovers them exactly; ceil errs safe.
            cpus: Millicpus::from_cpus_ceil(self.cpus - 1e-9),
            memory: MemoryMb::from_mb_ceil(self.memory - 1e-9),
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

/// The value of the election key `leader/<lease>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    pub since: String,
}

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over UTF-8 bytes: a
/// hash that never changes between builds, for seeds, label keys and container names.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Now, as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SAMPLE: &str = r#"{
    "image": "crosbymichael/redis",
    "cpus": "0.2",
    "memory": 512,
    "type": "service"
}"#;

    #[test]
    fn seed_sample_request_parses_byte_for_byte() {
        let req = Request::parse(SEED_SAMPLE.as_bytes()).expect("seed sample is valid");
        let value = Echo::of(SEED_SAMPLE.as_bytes()).value();
        assert_eq!(req.image.name, "crosbymichael/redis");
        assert_eq!(req.cpus, Millicpus(200));
        assert_eq!(req.memory, MemoryMb(512));
        assert_eq!(req.kind, "service");
        assert_eq!(value["cpus"], "0.2", "the echo keeps the user's string");
    }

    #[test]
    fn cpus_accept_numbers_and_strings() {
        for raw in [r#"0.2"#, r#""0.2""#, r#"" 0.2 ""#] {
            let json = format!(r#"{{"image":"x","cpus":{raw},"memory":1,"type":"batch"}}"#);
            let req = Request::parse(json.as_bytes()).expect(&json);
            assert_eq!(req.cpus, Millicpus(200), "{json}");
        }
    }

    fn invalid(json: &str) -> String {
        match Request::parse(json.as_bytes()) {
            Ok(_) => panic!("{json} was accepted"),
            Err(Invalid(msg)) => msg,
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"image":"x","cpus":-1,"memory":1,"type":"s"}"#, "cpus"),
            (r#"{"image":"x","cpus":0,"memory":1,"type":"s"}"#, "cpus"),
            (
                r#"{"image":"x","cpus":"NaN","memory":1,"type":"s"}"#,
                "cpus",
            ),
            (
                r#"{"image":"x","cpus":"lots","memory":1,"type":"s"}"#,
                "cpus",
            ),
            (
                r#"{"image":"x","cpus":1e300,"memory":1,"type":"s"}"#,
                "cpus",
            ),
            (
                r#"{"image":"x","cpus":"inf","memory":1,"type":"s"}"#,
                "cpus",
            ),
            (r#"{"image":"x","cpus":1,"memory":-5,"type":"s"}"#, "memory"),
            (
                r#"{"image":"x","cpus":1,"memory":1e30,"type":"s"}"#,
                "memory",
            ),
            (r#"{"image":"x","cpus":1,"type":"s"}"#, "memory"),
            (r#"{"image":"","cpus":1,"memory":1,"type":"s"}"#, "image"),
            (r#"{"cpus":1,"memory":1,"type":"s"}"#, "image"),
            (r#"{"image":"x","cpus":1,"memory":1}"#, "type"),
            (r#"{"image":"x","cpus":1,"memory":1,"type":5}"#, "type"),
            (r#"{"image":["x"],"cpus":1,"memory":1,"type":"s"}"#, "image"),
            (
                r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"port":70000}]}"#,
                "bind_ports[0].port",
            ),
            (
                r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"port":80},{"port":80}]}"#,
                "bind_ports[1]",
            ),
            (
                r#"{"image":"x","cpus":1,"memory":1,"type":"s","bind_ports":[{"proto":"icmp","port":1}]}"#,
                "bind_ports[0].proto",
            ),
        ];
        for (json, field) in cases {
            let msg = invalid(json);
            assert!(
                msg.starts_with(field),
                "{json}: reason {msg:?} should name {field}"
            );
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_invalid() {
        assert!(invalid("{not json").starts_with("malformed JSON"));
        assert!(invalid("").starts_with("malformed JSON"));
        assert!(invalid("[1,2]").contains("JSON object"));
        assert!(invalid("\"hello\"").contains("JSON object"));
    }

    #[test]
    fn the_echo_is_the_request_as_written_without_whitespace() {
        let raw = "{ \"type\": \"service\",\n \"cpus\" : 1.50, \"memory\":1e2,\n \"image\": \"a b\\\" \\u00e9 é\", \"env\": [ true, null ] }\n";
        assert_eq!(
            Echo::of(raw.as_bytes()).get(),
            "{\"type\":\"service\",\"cpus\":1.50,\"memory\":1e2,\"image\":\"a b\\\" \\u00e9 é\",\"env\":[true,null]}"
        );
        // Not one JSON text: the start of the text, as a string.
        for bad in ["[1 2]", "{\"a\":1} x", "not json", "{\"a\":"] {
            assert_eq!(
                Echo::of(bad.as_bytes()).value(),
                serde_json::json!(bad),
                "{bad}"
            );
        }
        // A number no reader can hold: the text, as a string every reader can parse.
        let huge = r#"{"image":"x","other":1e999}"#;
        assert_eq!(Echo::of(huge.as_bytes()).value(), serde_json::json!(huge));
    }

    mod echo_props {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(serde_json::Value::from),
                (-1e300f64..1e300).prop_map(serde_json::Value::from),
                "[ a-z\"\\\\\u{e9}\u{1F600}\n\t]{0,8}".prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(serde_json::Value::Array),
                    proptest::collection::btree_map("[a-z ]{0,5}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Whatever JSON a user writes, however it is spaced, its echo reads back as the
            /// same JSON, with no whitespace left between tokens.
            #[test]
            fn the_echo_reads_back_as_what_was_written(v in json(), pretty in any::<bool>()) {
                let text = if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    serde_json::to_string(&v).unwrap()
                };
                let echo = Echo::of(text.as_bytes());
                let read: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(echo.value(), read);
                prop_assert_eq!(echo.get(), serde_json::to_string(&v).unwrap());
            }
        }
    }

    #[test]
    fn huge_requests_are_invalid_and_not_echoed() {
        let big = format!(
            r#"{{"image":"x","cpus":1,"memory":1,"type":"s","args":["{}"]}}"#,
            "a".repeat(MAX_REQUEST_BYTES)
        );
        let Invalid(msg) = Request::parse(big.as_bytes()).unwrap_err();
        assert!(msg.starts_with("request: "), "{msg}");
        let echo = Echo::of(big.as_bytes()).value();
        assert!(echo.as_str().is_some_and(|s| s.len() < 100));
    }

    #[test]
    fn ids_are_checked() {
        assert!(RequestId::new("web-1").is_ok());
        assert_eq!(RequestId::new(""), Err(IdError::Empty));
        assert!(matches!(RequestId::new("a/b"), Err(IdError::Slash(_))));
        assert!(matches!(
            RequestId::new("x".repeat(254)),
            Err(IdError::TooLong(254))
        ));
        assert!(RequestId::new("x".repeat(253)).is_ok());
        assert!(matches!(
            RequestId::new("a b"),
            Err(IdError::Unprintable(_))
        ));
        assert!(matches!(
            RequestId::new("a\nb"),
            Err(IdError::Unprintable(_))
        ));
    }

    #[test]
    fn engine_capacity_rounds_down_and_requests_round_up() {
        let id = EngineId::new("e1").unwrap();
        let e = EngineSpec::parse(
            &id,
            br#"{"addr":"tcp://h:2375","cpus":1.9999,"memory":100.7}"#,
        )
        .unwrap();
        assert_eq!(e.cpus, Millicpus(1999));
        assert_eq!(e.memory, MemoryMb(100));
        assert_eq!(Millicpus::from_cpus_ceil(0.0001), Millicpus(1));
    }

    #[test]
    fn engine_id_must_match_its_key() {
        let id = EngineId::new("e1").unwrap();
        assert!(EngineSpec::parse(&id, br#"{"id":"e2","cpus":1,"memory":1}"#).is_err());
        assert!(EngineSpec::parse(&id, br#"{"id":"e1","cpus":1,"memory":1}"#).is_ok());
    }

    #[test]
    fn reservation_round_trips_its_units() {
        let r = Reservation {
            cpus: Millicpus(200).as_cpus(),
            memory: 512.0,
            ports: vec![
                HostPort {
                    proto: Proto::Udp,
                    port: 53,
                }
                .to_port(),
            ],
        };
        let back: Reservation = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let held = back.held();
        assert_eq!(held.cpus, Millicpus(200));
        assert_eq!(held.memory, MemoryMb(512));
        assert_eq!(
            held.ports,
            vec![HostPort {
                proto: Proto::Udp,
                port: 53
            }]
        );
    }
}
