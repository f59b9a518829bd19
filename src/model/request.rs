//! A request as the scheduler works on it: parsed from the user's bytes, checked against the
//! limits, with its echo for the decision.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::*;

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
    "disk",
    "alternatives",
    "affinity",
    "priority",
    "preemptible",
    "group",
    "group_min",
    "group_timeout",
    "spread",
    "max_per_engine",
    "disruption_budget",
];

/// Fields this process's build knows but acts as if it did not: set once, at start, by a
/// hidden test switch (`controller --forget-request-field`), so that one build can stand in
/// for an older release in a rolling-upgrade test. Empty in production.
static FORGOTTEN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn forgotten() -> &'static [String] {
    FORGOTTEN.get().map_or(&[], Vec::as_slice)
}

/// Makes this process act as a release that does not know `fields` (each must be one of
/// [`REQUEST_FIELDS`]). Once per process, before any request is read.
pub fn forget_request_fields(fields: Vec<String>) -> Result<(), Invalid> {
    if let Some(f) = fields
        .iter()
        .find(|f| !REQUEST_FIELDS.contains(&f.as_str()))
    {
        return Err(Invalid(format!("{f:?} is not a request field")));
    }
    FORGOTTEN
        .set(fields)
        .map_err(|_| Invalid("the request fields to forget are set already".into()))
}

/// The request fields this process understands: what its campaign key advertises, so that a
/// leader of an older release leaves a request with a newer field to a replica that knows it.
pub fn known_request_fields() -> Vec<&'static str> {
    REQUEST_FIELDS
        .iter()
        .copied()
        .filter(|f| is_known(f))
        .collect()
}

fn is_known(field: &str) -> bool {
    REQUEST_FIELDS.contains(&field) && !forgotten().iter().any(|f| f == field)
}

/// The top-level fields of a request that this process does not know (none when the value is
/// not a JSON object).
pub fn unknown_request_fields(raw: &[u8]) -> Vec<String> {
    serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(raw)
        .map(|fields| fields.into_keys().filter(|k| !is_known(k)).collect())
        .unwrap_or_default()
}

/// The most alternatives a placed decision lists.
pub const MAX_ALTERNATIVES: u64 = 16;

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
    /// As an assignment names it: `service` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Service => "service",
            Lifecycle::Batch => "batch",
        }
    }

    pub fn of(kind: &str) -> Self {
        if kind.trim() == "batch" {
            Lifecycle::Batch
        } else {
            Lifecycle::Service
        }
    }
}

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
    /// Disk to reserve (0: none).
    pub disk: DiskMb,
    /// How many more engines that fit a placed decision lists.
    pub alternatives: usize,
    /// Raw affinity expressions; parsed by the scheduler.
    pub affinity: Vec<String>,
    /// The named volumes it mounts (`pgdata` of `pgdata:/var/lib/postgresql`): each sticks to
    /// the engine it was first placed on.
    pub volumes: Vec<String>,
    /// Higher is planned first and may preempt lower (0 by default).
    pub priority: i32,
    /// May be evicted by a request of higher priority (true by default).
    pub preemptible: bool,
    /// The group it belongs to, and the group's rules.
    pub group: Option<Group>,
}

/// The most members a gang may need at once (`group_min`).
pub const MAX_GROUP_MIN: u64 = 1000;
/// How long a gang waits to fit when it says nothing (`group_timeout`), in seconds.
pub const DEFAULT_GROUP_TIMEOUT_S: u64 = 300;
/// The longest `group_timeout`: one week, in seconds.
pub const MAX_GROUP_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// A request's group (`group`) and the rules its members share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: std::sync::Arc<str>,
    /// Placed all or nothing once this many members are pending (1: each on its own).
    pub min: usize,
    /// Seconds a gang may wait to fit before it is decided unschedulable as a whole.
    pub timeout_s: u64,
    /// Spread over the values of this engine label, with at most this skew.
    pub spread: Option<(String, u32)>,
    pub max_per_engine: Option<u32>,
    /// How many members preemption may take down at once.
    pub disruption_budget: Option<u32>,
}

impl Group {
    /// Placed all or nothing.
    pub fn is_gang(&self) -> bool {
        self.min > 1
    }
}

/// The named volume of a `volumes` entry, if it names one: `name:/path[:mode]`, where a name
/// is not a path (no `/`, not `.` or `~` first). A bind mount (`/host:/path`) or an anonymous
/// volume (`/path`) names none.
pub fn named_volume(entry: &str) -> Option<&str> {
    let (source, _) = entry.split_once(':')?;
    let source = source.trim();
    (!source.is_empty() && !source.contains('/') && !source.starts_with(['.', '~']))
        .then_some(source)
}

/// Why a request was refused as `invalid`. The message names the field and the rule, and
/// never quotes a string the user wrote back: the reason is shown by every reader of the
/// decision (a status page, a terminal, a log), so a hostile value would travel with it.
/// Numbers may be shown (they were parsed), and names made of plain characters ([`plain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Longest name a reason shows as written.
const MAX_SHOWN_BYTES: usize = 64;

/// Whether a name the user wrote (a field, a map key) may be shown in a reason: short, and
/// only letters, digits and `_ . -`.
pub fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SHOWN_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `field.key` when the key is [`plain`], else `field` alone.
pub(crate) fn shown_key(field: &str, key: &str) -> String {
    if plain(key) {
        format!("{field}.{key}")
    } else {
        field.to_string()
    }
}

/// Where a serde error happened, as a path (`bind_ports[0].proto`), each map key shown only
/// when it is [`plain`] (`?` otherwise).
pub(crate) fn shown_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(if plain(key) { key } else { "?" });
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    if out.is_empty() { ".".into() } else { out }
}

/// A serde data error's rule without the value it quotes: serde says `invalid type: string
/// "…", expected a number`, and only what is expected (our own text) is kept.
pub(crate) fn shown_data_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let text = text.strip_suffix(&position).unwrap_or(&text);
    let Some((what, expected)) = text.rsplit_once(", expected ") else {
        // `missing field `x`` and `duplicate field `x`` name our own fields; anything else
        // is not quoted back.
        return if text.starts_with("missing field") || text.starts_with("duplicate field") {
            text.to_string()
        } else if text.starts_with("data did not match any variant") {
            // The one untagged type: cpus, memory and disk (see `number_or_string`).
            "wrong type, expected a number or a numeric string".to_string()
        } else {
            "not a value this field takes".to_string()
        };
    };
    let what = if what.starts_with("invalid type") {
        "wrong type".to_string()
    } else if what.starts_with("invalid value") {
        "invalid value".to_string()
    } else if what.starts_with("invalid length") {
        what.to_string()
    } else if let Some(rest) = what
        .strip_prefix("unknown field ")
        .or_else(|| what.strip_prefix("unknown variant "))
    {
        let kind = if what.starts_with("unknown field") {
            "unknown field"
        } else {
            "unknown variant"
        };
        let name = rest.trim_matches('`');
        if plain(name) {
            format!("{kind} {name:?}")
        } else {
            kind.to_string()
        }
    } else {
        "not a value this field takes".to_string()
    };
    format!("{what}, expected {expected}")
}

pub(super) fn check_amount(
    field: &str,
    value: Option<f64>,
    max: f64,
    unit: &str,
) -> Result<f64, Invalid> {
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
            if !forgotten().is_empty()
                && let Some(unknown) = unknown_fields(raw)
            {
                return Err(unknown);
            }
            return Self::from_image(image);
        }
        if let Some(unknown) = unknown_fields(raw) {
            return Err(unknown);
        }
        let mut de = serde_json::Deserializer::from_slice(raw);
        let image: Image = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            if e.inner().is_data() {
                Invalid(format!(
                    "{}: {}",
                    shown_path(e.path()),
                    shown_data_error(e.inner())
                ))
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
        check_expressions("labels", "constraints", &image.labels)?;

        let mut ports = Vec::new();
        for (i, p) in image.bind_ports.iter().enumerate() {
            let proto = match p.proto.to_ascii_lowercase().as_str() {
                "" | "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                "sctp" => Proto::Sctp,
                _ => {
                    return Err(Invalid(format!(
                        "bind_ports[{i}].proto: not tcp, udp or sctp"
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
        let (disk, alternatives, volumes) = scheduling_fields(&image)?;
        let (priority, preemptible, group) = ranking_fields(&image)?;
        Ok(Request {
            priority,
            preemptible,
            group,
            disk,
            alternatives,
            affinity: image.affinity.clone(),
            volumes,
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

/// Bounds a list of constraint-grammar expressions (`labels`, `affinity`): how many, and how
/// long each may be.
fn check_expressions(field: &str, what: &str, exprs: &[String]) -> Result<(), Invalid> {
    if exprs.len() > MAX_CONSTRAINTS {
        return Err(Invalid(format!(
            "{field}: {} {what}, the limit is {MAX_CONSTRAINTS}",
            exprs.len()
        )));
    }
    if let Some((i, e)) = exprs
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > MAX_CONSTRAINT_BYTES)
    {
        return Err(Invalid(format!(
            "{field}[{i}]: {} bytes, the limit is {MAX_CONSTRAINT_BYTES}",
            e.len()
        )));
    }
    Ok(())
}

/// The placement fields beyond cpus and memory, checked: disk (rounded up), how many alternatives, and the named
/// volumes (sorted, once each); affinity expressions are bounded like constraints.
fn scheduling_fields(image: &Image) -> Result<(DiskMb, usize, Vec<String>), Invalid> {
    let disk = match image.disk {
        None => 0.0,
        Some(_) => check_amount("disk", image.disk, MAX_MEMORY_MB, " MB")?,
    };
    let alternatives = match image.alternatives {
        None => 0,
        Some(n) if n <= MAX_ALTERNATIVES => n as usize,
        Some(n) => {
            return Err(Invalid(format!(
                "alternatives: {n} is too many, the limit is {MAX_ALTERNATIVES}"
            )));
        }
    };
    check_expressions("affinity", "expressions", &image.affinity)?;
    let mut volumes: Vec<String> = image
        .volumes
        .iter()
        .filter_map(|v| named_volume(v))
        .map(str::to_string)
        .collect();
    volumes.sort();
    volumes.dedup();
    if let Some(i) = image
        .volumes
        .iter()
        .position(|v| named_volume(v).is_some_and(|name| RequestId::new(name).is_err()))
    {
        return Err(Invalid(format!(
            "volumes[{i}]: the volume's name is not 1 to 253 printable bytes"
        )));
    }
    Ok((DiskMb::from_mb_ceil(disk), alternatives, volumes))
}

/// Priority, whether it may be preempted, and its group, checked.
fn ranking_fields(image: &Image) -> Result<(i32, bool, Option<Group>), Invalid> {
    let priority = match image.priority {
        None => 0,
        Some(p) => i32::try_from(p).map_err(|_| {
            Invalid(format!(
                "priority: {p} is out of range, a signed 32-bit integer ({} to {})",
                i32::MIN,
                i32::MAX
            ))
        })?,
    };
    let preemptible = image.preemptible.unwrap_or(true);
    let Some(name) = &image.group else {
        for (field, set) in [
            ("group_min", image.group_min.is_some()),
            ("group_timeout", image.group_timeout.is_some()),
            ("spread", image.spread.is_some()),
            ("max_per_engine", image.max_per_engine.is_some()),
            ("disruption_budget", image.disruption_budget.is_some()),
        ] {
            if set {
                return Err(Invalid(format!(
                    "{field}: a rule of a group; name the group with \"group\""
                )));
            }
        }
        return Ok((priority, preemptible, None));
    };
    if RequestId::new(name.as_str()).is_err() {
        return Err(Invalid(
            "group: cannot name a group (1 to 253 printable bytes, no '/')".into(),
        ));
    }
    let min = match image.group_min {
        None => 1,
        Some(n) if (1..=MAX_GROUP_MIN).contains(&n) => n as usize,
        Some(n) => {
            return Err(Invalid(format!(
                "group_min: {n} is out of range, 1 to {MAX_GROUP_MIN}"
            )));
        }
    };
    let timeout_s = match &image.group_timeout {
        None => DEFAULT_GROUP_TIMEOUT_S,
        Some(v) => group_timeout(v)?,
    };
    let small = |field: &str, v: Option<u64>| -> Result<Option<u32>, Invalid> {
        match v {
            None => Ok(None),
            Some(n) if (1..=MAX_GROUP_MIN).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(Invalid(format!(
                "{field}: {n} is out of range, 1 to {MAX_GROUP_MIN}"
            ))),
        }
    };
    let spread = match &image.spread {
        None => None,
        Some(s) => {
            let over = s.over.trim();
            if over.is_empty()
                || !over
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(Invalid(
                    "spread.over: not a label key (letters, digits and . _ -)".into(),
                ));
            }
            let skew = small("spread.max_skew", s.max_skew)?.unwrap_or(1);
            Some((over.to_string(), skew))
        }
    };
    Ok((
        priority,
        preemptible,
        Some(Group {
            name: name.as_str().into(),
            min,
            timeout_s,
            spread,
            max_per_engine: small("max_per_engine", image.max_per_engine)?,
            disruption_budget: small("disruption_budget", image.disruption_budget)?,
        }),
    ))
}

/// `group_timeout`: whole seconds, or a duration such as `"90s"`.
fn group_timeout(v: &serde_json::Value) -> Result<u64, Invalid> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => humantime::parse_duration(s.trim())
            .ok()
            .map(|d| d.as_secs()),
        _ => None,
    };
    match secs {
        Some(s) if (1..=MAX_GROUP_TIMEOUT_S).contains(&s) => Ok(s),
        _ => Err(Invalid(format!(
            "group_timeout: {} from 1s to 7 days (seconds, or e.g. \"90s\", \"5m\")",
            match v {
                serde_json::Value::Number(n) => format!("{n} is not a duration"),
                _ => "not a duration".to_string(),
            }
        ))),
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
    let known = known_request_fields();
    let unknown: Vec<String> = unknown_request_fields(raw)
        .iter()
        .map(|k| match did_you_mean(k, &known) {
            _ if !plain(k) => "(a name not shown: it is not letters, digits and _ . -)".into(),
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
