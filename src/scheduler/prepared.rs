//! The request made ready: its constraints and affinity parsed, and their regexes compiled,
//! once, when the request is read, and the [`Shape`] the leader's memo of refused requests
//! knows it by.
//!
//! It may not look at an engine: whether one fits is [`super::feasible`]'s to say, from what
//! this stage parsed. A bad expression is refused here, naming its entry.

use super::{Constraint, ConstraintError, SchedulerError, constraint};
use crate::model::{EngineId, HostPort, MemoryMb, Millicpus, Request};

/// What decides whether, and why not, a request fits an engine: its demand, its host ports and
/// its constraints as written (affinity and volume pins aside: see
/// [`Prepared::depends_on_placements`]); not its image, name, type or environment. Requests of one shape
/// are refused alike on the same engines, so when one fits nowhere, neither does the next until
/// capacity grows (the leader's memo of unschedulable shapes holds them). A request field
/// that the filters read belongs here too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    cpus: Millicpus,
    memory: MemoryMb,
    disk: MemoryMb,
    ports: Vec<HostPort>,
    constraints: Vec<String>,
}

impl Shape {
    /// Whether `p` has this shape, without building its own.
    pub fn is_of(&self, p: &Prepared) -> bool {
        let r = &p.request;
        self.cpus == r.cpus
            && self.memory == r.memory
            && self.disk == r.disk
            && self.ports == r.ports
            && self.constraints == r.constraints
    }

    fn hash_of(r: &Request) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (r.cpus, r.memory, r.disk, &r.ports, &r.constraints).hash(&mut h);
        h.finish()
    }
}

/// A request ready to schedule: its constraints and affinity parsed (and their regexes
/// compiled) once, when the request is read, not once per engine or per scheduling round.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: Request,
    pub(super) hard: Vec<Constraint>,
    pub(super) soft: Vec<Constraint>,
    pub(super) affinity_hard: Vec<Constraint>,
    pub(super) affinity_soft: Vec<Constraint>,
    /// The engines its named volumes are recorded on (see [`Prepared::pinned`]).
    pub(super) pins: Vec<(String, EngineId)>,
    /// A hash of its [`Shape`], made once when it is read: the leader's memo of refused shapes
    /// looks it up without building one.
    shape_hash: u64,
}

/// The keys an affinity expression may name.
const AFFINITY_KEYS: [&str; 2] = ["request", "image"];

impl Prepared {
    /// Fails with a reason naming the bad `labels[i]` or `affinity[i]` entry.
    pub fn new(request: Request) -> Result<Self, SchedulerError> {
        // Counted before any is compiled: a request pays for at most this many.
        let regexes = request
            .constraints
            .iter()
            .chain(&request.affinity)
            .filter(|e| constraint::names_regex(e))
            .count();
        if regexes > constraint::MAX_REGEX_CONSTRAINTS {
            return Err(SchedulerError::TooManyRegexes {
                count: regexes,
                limit: constraint::MAX_REGEX_CONSTRAINTS,
            });
        }
        let (hard, soft) = parse_all(&request.constraints, |index, source| {
            SchedulerError::Constraint { index, source }
        })?;
        let (affinity_hard, affinity_soft) = parse_all(&request.affinity, |index, source| {
            SchedulerError::Affinity { index, source }
        })?;
        if let Some((index, c)) = affinity_hard
            .iter()
            .chain(&affinity_soft)
            .enumerate()
            .find(|(_, c)| !AFFINITY_KEYS.contains(&c.key.as_str()))
        {
            return Err(SchedulerError::AffinityKey {
                index,
                expr: c.expr.clone(),
            });
        }
        let shape_hash = Shape::hash_of(&request);
        Ok(Prepared {
            request,
            hard,
            soft,
            affinity_hard,
            affinity_soft,
            pins: Vec::new(),
            shape_hash,
        })
    }

    /// A hash of [`Prepared::shape`]; equal shapes hash alike.
    pub fn shape_hash(&self) -> u64 {
        self.shape_hash
    }

    /// What decides where this request may go (see [`Shape`]).
    pub fn shape(&self) -> Shape {
        Shape {
            cpus: self.request.cpus,
            memory: self.request.memory,
            disk: self.request.disk,
            ports: self.request.ports.clone(),
            constraints: self.request.constraints.clone(),
        }
    }

    /// The same request, held to the engines its named volumes are recorded on.
    pub fn pinned(&self, pins: Vec<(String, EngineId)>) -> Prepared {
        Prepared {
            pins,
            ..self.clone()
        }
    }

    /// It asks for more than resources, ports and labels (affinity or a pinned volume): a
    /// plan for it made on another view must be made again, not only re-verified.
    pub fn depends_on_placements(&self) -> bool {
        !self.affinity_hard.is_empty() || !self.affinity_soft.is_empty() || !self.pins.is_empty()
    }

    /// It has soft constraints or soft affinity: a scan that finds no engine meeting them is
    /// made again without them.
    pub(super) fn has_soft(&self) -> bool {
        !self.soft.is_empty() || !self.affinity_soft.is_empty()
    }
}

/// Parses expressions into hard and soft ones; `err` names the bad entry.
fn parse_all(
    exprs: &[String],
    err: impl Fn(usize, ConstraintError) -> SchedulerError,
) -> Result<(Vec<Constraint>, Vec<Constraint>), SchedulerError> {
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        let c = Constraint::parse(expr).map_err(|source| err(i, source))?;
        if c.soft {
            soft.push(c);
        } else {
            hard.push(c);
        }
    }
    Ok((hard, soft))
}
