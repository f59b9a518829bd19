//! Units that never drift: thousandths of a cpu and whole megabytes, as integers. Memory and
//! disk are both counted in megabytes, but never against each other: each has a type.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Megabytes of disk (an engine's, or what a request reserves of it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct DiskMb(pub u64);

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

impl DiskMb {
    pub fn from_mb_ceil(mb: f64) -> Self {
        Self(mb.ceil() as u64)
    }
    pub fn from_mb_floor(mb: f64) -> Self {
        Self(mb.floor().max(0.0) as u64)
    }
}

impl fmt::Display for DiskMb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0)
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
