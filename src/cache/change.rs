//! What the mirror reports of each change it makes, for the books kept on it.

use crate::model::{EngineId, RequestId};
use crate::scheduler::Parsed;

/// One change the mirror made, as its listener hears it. Ids are reference-counted: a change
/// costs no copy of one.
#[derive(Debug)]
pub enum Change {
    /// A request was written, with its parse, or deleted (`parsed` is `None`).
    Request {
        id: RequestId,
        parsed: Option<Parsed>,
    },
    /// A request's decision was applied or removed. `freed`: the engine a reservation it held
    /// was released from (capacity grew there); `held_on`: the engine it holds on now; `own`:
    /// the leader applied it from its own commit.
    Decision {
        id: RequestId,
        freed: Option<EngineId>,
        held_on: Option<EngineId>,
        own: bool,
    },
    /// What an engine holds, or its health, changed.
    Usage(EngineId),
    /// An engine's key was written or deleted.
    Engine { id: EngineId, how: EngineChange },
    /// An engine's health key was written (`first`: it had none).
    Health { engine: EngineId, first: bool },
    /// Where named volumes live changed: requests held to one may go elsewhere now.
    Volumes,
    /// A request key whose last segment cannot be a request id, or its decision, changed (by
    /// that segment's bytes).
    Odd(Vec<u8>),
    /// An agent's assignment of the request, or the agent's report on it, changed.
    Agent(RequestId),
}

/// How an engine's key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChange {
    Added,
    /// Rewritten; `drain` says whether its drained flag flipped.
    Changed {
        drain: bool,
    },
    Removed,
}
