//! The data model: the seed's types as serde structs, the validated form of a request that the
//! scheduler works on, and what the leader writes back (decisions and reservations).
//!
//! JSON in etcd is the contract, so the wire structs keep the seed's field names. Inside, resources
//! are integers (`Millicpus`, `MemoryMb`) so that sums never drift: a request is rounded *up* and an
//! engine's capacity *down*, which can only ever err on the side of not overcommitting.
//!
//! It may not do I/O or use any other citadel module: everything else builds on it.

pub mod agent;
mod decision;
mod engine;
mod ids;
pub mod launch;
pub mod policy;
mod request;
#[cfg(test)]
mod tests;
mod units;
mod wire;

pub use agent::{AgentInfo, AgentStamp, Assignment, HostVolume, LaunchPolicy, RunReport};
pub use decision::*;
pub use engine::*;
pub use ids::*;
pub use request::*;
pub use units::*;
pub use wire::*;

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
