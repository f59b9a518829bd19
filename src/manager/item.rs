//! What a round of the leader decides, one item per request: the writes (or non-writes) that
//! go into a batch transaction.

use etcd_client::{Compare, CompareOp, TxnOp};

use std::sync::Arc;

use crate::keys::Keys;
use crate::model::{Decision, EngineId, Held, RequestId, VolumeRecord};

/// What an item also writes for the engines' agents, in the same transaction as its decision
/// (filled in by the leader just before it batches, from the mirror: see `Lead::send`).
#[derive(Debug, Clone, Default)]
pub struct AgentOps {
    /// The assignment to put at `assignments/<engine>/<id>` (placements to be launched on an
    /// engine that has an agent).
    pub assign: Option<Arc<[u8]>>,
    /// Engines whose assignment of this request goes, with its run report: a request moved,
    /// refused or released is withdrawn from the agent that ran it in the same commit, so no
    /// agent runs what no decision holds.
    pub withdraw: Vec<EngineId>,
    /// The engine it is assigned to holds a report on an earlier assignment: deleted with it.
    pub stale_report: bool,
}

impl AgentOps {
    fn ops(&self, keys: &Keys, id: &RequestId, engine: Option<&EngineId>) -> Vec<(TxnOp, usize)> {
        let del = |key: String| (key.len(), TxnOp::delete(key, None));
        let mut out: Vec<(TxnOp, usize)> = Vec::new();
        for e in &self.withdraw {
            for (n, op) in [del(keys.assignment(e, id)), del(keys.run(e, id))] {
                out.push((op, n));
            }
        }
        if let (Some(value), Some(e)) = (&self.assign, engine) {
            // A report on an earlier assignment here is no longer about this one.
            if self.stale_report {
                let (n, op) = del(keys.run(e, id));
                out.push((op, n));
            }
            let key = keys.assignment(e, id);
            let n = key.len() + value.len();
            out.push((TxnOp::put(key, value.to_vec(), None), n));
        }
        out
    }
}

/// One write (or non-write) decided in a round.
#[derive(Debug, Clone)]
pub enum Item {
    Place {
        id: RequestId,
        /// Compare the decision key's mod revision too (see the module's notes).
        decision_fence: Option<i64>,
        engine: EngineId,
        /// The engine key's mod revision in the view the placement was verified on.
        engine_revision: i64,
        held: Held,
        /// Holds the reservation.
        decision: Decision,
        /// Named volumes it is the first to mount: recorded on its engine.
        volumes: Vec<String>,
        agent: AgentOps,
    },
    /// An `invalid` or `unschedulable` decision.
    Refuse {
        id: RequestId,
        decision_fence: Option<i64>,
        decision: Decision,
        agent: AgentOps,
    },
    /// Evict a placement to make room for a request of higher priority: its `preempted`
    /// decision, written only if its placed decision is still the one the leader saw
    /// (`decision_revision`). Only ever inside [`Item::Together`], beside the placement it
    /// makes room for.
    Evict {
        id: RequestId,
        engine: EngineId,
        decision_revision: i64,
        decision: Decision,
        agent: AgentOps,
    },
    /// Items that commit in one transaction or not at all: a placement and the evictions that
    /// make room for it, or a gang's members (with theirs). Batched whole; a batch holds its
    /// parts as items of their own.
    Together(Vec<Item>),
    /// Unschedulable for the same reason as already written: nothing to write.
    Park { id: RequestId },
    /// Uses a request field this release does not know and candidate `to` does: left for it
    /// to decide (see `upgrade.rs`); nothing to write.
    Defer {
        id: RequestId,
        field: String,
        to: String,
    },
    /// Delete a decision (and the reservation inside it).
    Release {
        id: RequestId,
        request_revision: Option<i64>,
        agent: AgentOps,
    },
    /// Write back a decision someone else changed or deleted, if etcd still holds what they
    /// wrote (the decision key's mod revision; 0: none).
    Restore {
        id: RequestId,
        decision_fence: i64,
        decision: Decision,
    },
    /// Answer a request key whose segment cannot be a request id: its `invalid` decision, for
    /// the request revision it answers, at the decision key with the same segment; `None`:
    /// delete that decision, the request is gone.
    Odd {
        segment: Vec<u8>,
        answer: Option<(i64, Box<Decision>)>,
    },
}

impl Item {
    /// The request it is for (`None`: an odd request key, which has no id).
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Item::Place { id, .. }
            | Item::Refuse { id, .. }
            | Item::Evict { id, .. }
            | Item::Park { id }
            | Item::Defer { id, .. }
            | Item::Release { id, .. }
            | Item::Restore { id, .. } => Some(id),
            Item::Odd { .. } | Item::Together(_) => None,
        }
    }

    /// The decision this item writes, if it writes one.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Item::Place { decision, .. }
            | Item::Refuse { decision, .. }
            | Item::Evict { decision, .. }
            | Item::Restore { decision, .. } => Some(decision),
            Item::Odd { answer, .. } => answer.as_ref().map(|(_, d)| &**d),
            Item::Park { .. } | Item::Defer { .. } | Item::Release { .. } | Item::Together(_) => {
                None
            }
        }
    }

    /// What it writes for the agents, if it may write anything for them.
    pub fn agent_mut(&mut self) -> Option<&mut AgentOps> {
        match self {
            Item::Place { agent, .. }
            | Item::Refuse { agent, .. }
            | Item::Evict { agent, .. }
            | Item::Release { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// The items it is made of: itself, or a [`Item::Together`]'s parts.
    pub fn leaves(&self) -> &[Item] {
        match self {
            Item::Together(parts) => parts,
            one => std::slice::from_ref(one),
        }
    }

    /// [`Item::leaves`], to change.
    pub fn leaves_mut(&mut self) -> &mut [Item] {
        match self {
            Item::Together(parts) => parts,
            one => std::slice::from_mut(one),
        }
    }

    /// Whether it writes nothing.
    pub fn writes_nothing(&self) -> bool {
        match self {
            Item::Park { .. } | Item::Defer { .. } => true,
            Item::Together(parts) => parts.iter().all(Item::writes_nothing),
            _ => false,
        }
    }

    pub(super) fn compares(&self, keys: &Keys) -> Vec<Compare> {
        match self {
            Item::Restore {
                id, decision_fence, ..
            } => vec![Compare::mod_revision(
                keys.decision(id),
                CompareOp::Equal,
                *decision_fence,
            )],
            Item::Place {
                id,
                decision_fence,
                volumes,
                ..
            } => decision_fence
                .map(|rev| Compare::mod_revision(keys.decision(id), CompareOp::Equal, rev))
                .into_iter()
                // A volume is recorded once: nobody else may have recorded it meanwhile.
                .chain(
                    volumes
                        .iter()
                        .map(|v| Compare::create_revision(keys.volume(v), CompareOp::Equal, 0)),
                )
                .collect(),
            Item::Refuse {
                id, decision_fence, ..
            } => decision_fence
                .map(|rev| Compare::mod_revision(keys.decision(id), CompareOp::Equal, rev))
                .into_iter()
                .collect(),
            // Evicted only while it is placed as the leader saw it: two preemptions never
            // take the same victim, and a victim released meanwhile is not written back.
            Item::Evict {
                id,
                decision_revision,
                ..
            } => vec![Compare::mod_revision(
                keys.decision(id),
                CompareOp::Equal,
                *decision_revision,
            )],
            Item::Together(parts) => parts.iter().flat_map(|p| p.compares(keys)).collect(),
            // A release deletes what a request's new revision would otherwise be decided over.
            Item::Release {
                id,
                request_revision: Some(rev),
                ..
            } => vec![Compare::mod_revision(
                keys.request(id),
                CompareOp::Equal,
                *rev,
            )],
            Item::Release {
                id,
                request_revision: None,
                ..
            } => vec![Compare::create_revision(
                keys.request(id),
                CompareOp::Equal,
                0,
            )],
            // Decided for the request revision it answers; deleted only once it is gone.
            Item::Odd { segment, answer } => {
                let request = keys.odd_request(segment);
                vec![match answer {
                    Some((rev, _)) => Compare::mod_revision(request, CompareOp::Equal, *rev),
                    None => Compare::create_revision(request, CompareOp::Equal, 0),
                }]
            }
            Item::Park { .. } | Item::Defer { .. } => vec![],
        }
    }

    /// The writes, and roughly how many bytes they put on the wire; an error when a value
    /// cannot be encoded (never an empty value written in its place).
    pub(super) fn ops(&self, keys: &Keys) -> Result<(Vec<TxnOp>, usize), serde_json::Error> {
        let put = |key: Vec<u8>, value: Vec<u8>| {
            let n = key.len() + value.len();
            (TxnOp::put(key, value, None), n)
        };
        let del = |key: Vec<u8>| {
            let n = key.len();
            (TxnOp::delete(key, None), n)
        };
        let ops: Vec<(TxnOp, usize)> = match self {
            Item::Place {
                id,
                decision,
                engine,
                volumes,
                agent,
                ..
            } => {
                let mut ops = vec![put(keys.decision(id).into(), serde_json::to_vec(decision)?)];
                ops.extend(agent.ops(keys, id, Some(engine)));
                for v in volumes {
                    let record = VolumeRecord {
                        name: v.clone(),
                        engine: engine.to_string(),
                        request: id.to_string(),
                    };
                    ops.push(put(keys.volume(v).into(), serde_json::to_vec(&record)?));
                }
                ops
            }
            // A refusal, or an eviction: its decision, and its assignment withdrawn.
            Item::Refuse {
                id,
                decision,
                agent,
                ..
            }
            | Item::Evict {
                id,
                decision,
                agent,
                ..
            } => {
                let mut ops = vec![put(keys.decision(id).into(), serde_json::to_vec(decision)?)];
                ops.extend(agent.ops(keys, id, None));
                ops
            }
            Item::Restore { id, decision, .. } => {
                vec![put(keys.decision(id).into(), serde_json::to_vec(decision)?)]
            }
            Item::Together(parts) => {
                let mut ops = Vec::new();
                let mut bytes = 0;
                for p in parts {
                    let (o, n) = p.ops(keys)?;
                    ops.extend(o);
                    bytes += n;
                }
                return Ok((ops, bytes));
            }
            Item::Release { id, agent, .. } => {
                let mut ops = vec![del(keys.decision(id).into())];
                ops.extend(agent.ops(keys, id, None));
                ops
            }
            Item::Odd { segment, answer } => vec![match answer {
                Some((_, decision)) => {
                    put(keys.odd_decision(segment), serde_json::to_vec(decision)?)
                }
                None => del(keys.odd_decision(segment)),
            }],
            Item::Park { .. } | Item::Defer { .. } => vec![],
        };
        let bytes = ops.iter().map(|(_, n)| n).sum();
        Ok((ops.into_iter().map(|(op, _)| op).collect(), bytes))
    }
}
