//! Items grouped into transactions within etcd's limits, each engine placed on fenced on its key.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, TxnOp};

use super::MAX_TXN_BYTES;
use super::item::Item;
use crate::keys::Keys;
use crate::model::{EngineId, Request};

/// One transaction's worth of items, encoded once.
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// What the engine compares of a batch are checked against.
#[derive(Debug, Clone, Copy)]
pub struct EngineFence {
    /// Keys under `engines/` (valid or not) when the view was built.
    pub count: usize,
    /// The newest mod revision among them.
    pub newest: i64,
}

#[derive(Default)]
struct Open {
    items: Vec<Item>,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
    /// Engines placed on, with the mod revision each was verified at.
    engines: HashMap<EngineId, i64>,
}

/// Compares a placement needs beside one per new named volume: the leader's fence, its
/// engine's, and its decision key's when its last write has an unknown outcome.
const PLACE_COMPARES: usize = 3;

/// Whether `r`'s placement can commit in one transaction of at most `max_ops` compares and
/// operations: its decision, and a record and an absent-compare for each named volume it is
/// the first to mount. Counted for every volume it names, so the answer does not depend on
/// which were recorded before. The error is the reason its decision gives.
/// Compares and operations a `Together` of these parts may need at most, with every
/// placement assigned to an agent and every eviction withdrawing one: whether they fit one
/// transaction of `max_ops`.
pub fn together_fits(parts: &[Item], max_ops: usize) -> bool {
    let (mut compares, mut ops) = (1usize, 0usize);
    let mut engines = std::collections::HashSet::new();
    for p in parts {
        match p {
            Item::Place {
                engine, volumes, ..
            } => {
                engines.insert(engine);
                compares += 1 + volumes.len();
                ops += 3 + volumes.len();
            }
            Item::Evict { .. } => {
                compares += 1;
                ops += 3;
            }
            _ => {
                compares += 1;
                ops += 3;
            }
        }
    }
    compares + engines.len() <= max_ops && ops <= max_ops
}

pub fn place_fits(r: &Request, max_ops: usize) -> Result<(), String> {
    let most = max_ops.saturating_sub(PLACE_COMPARES);
    if r.volumes.len() <= most {
        return Ok(());
    }
    Err(format!(
        "volumes: {} named volumes, the limit is {most}: a placement records each in the \
         transaction that writes its decision, and a transaction holds at most {max_ops} \
         operations and compares (etcd's --max-txn-ops)",
        r.volumes.len()
    ))
}

/// Engine compares a batch placing on `distinct` engines needs: one per engine, or one over
/// the whole engines prefix when that is no more keys for etcd to read.
fn engine_compares(fence: EngineFence, distinct: usize) -> usize {
    match distinct {
        0 => 0,
        d if fence.count <= d => 1,
        d => d,
    }
}

impl Open {
    fn close(self, keys: &Keys, fence: EngineFence) -> Batch {
        let mut compares = self.compares;
        if !self.engines.is_empty() && fence.count <= self.engines.len() {
            // No engine key written after the newest revision in the view.
            compares.push(
                Compare::mod_revision(keys.engines(), CompareOp::Less, fence.newest + 1)
                    .with_prefix(),
            );
        } else {
            for (engine, rev) in self.engines {
                compares.push(Compare::mod_revision(
                    keys.engine(&engine),
                    CompareOp::Equal,
                    rev,
                ));
            }
        }
        Batch {
            items: self.items,
            compares,
            ops: self.ops,
        }
    }
}

/// Items grouped into transactions within etcd's limits: `max_ops` compares and operations
/// (`--max-txn-ops`, 128 by default) and 1.5 MiB per request (`--max-request-bytes`). Parked
/// and deferred items write nothing.
///
/// Every placement is fenced on its engine being unchanged since the view it was verified on,
/// so an engine shrunk meanwhile fails the batch instead of being overcommitted. etcd reads
/// every key a compare names (a range compare reads the whole range), so a batch compares each
/// engine it touches, or the whole engines prefix when the cluster is that small.
///
/// An item whose value cannot be encoded is left out, and returned with why: nothing is
/// written in its place.
pub fn batches(
    items: Vec<Item>,
    keys: &Keys,
    fence: EngineFence,
    max_ops: usize,
) -> (Vec<Batch>, Vec<(Item, serde_json::Error)>) {
    let mut out = Vec::new();
    let mut unwritable = Vec::new();
    let mut open = Open::default();
    for item in items {
        if item.writes_nothing() {
            continue;
        }
        let (ops, bytes) = match item.ops(keys) {
            Ok(ops) => ops,
            Err(e) => {
                unwritable.push((item, e));
                continue;
            }
        };
        let compares = item.compares(keys);
        // A placement, or a `Together`'s: all its engines are fenced in its transaction.
        let placed_on: HashMap<EngineId, i64> = item
            .leaves()
            .iter()
            .filter_map(|leaf| match leaf {
                Item::Place {
                    engine,
                    engine_revision,
                    ..
                } => Some((engine.clone(), *engine_revision)),
                _ => None,
            })
            .collect();
        let full = |o: &Open| {
            let new = placed_on
                .keys()
                .filter(|e| !o.engines.contains_key(*e))
                .count();
            let engines = engine_compares(fence, o.engines.len() + new);
            // + 1: the leader's fence.
            1 + engines + o.compares.len() + compares.len() > max_ops
                || o.ops.len() + ops.len() > max_ops
                || o.bytes + bytes > MAX_TXN_BYTES
        };
        if !open.items.is_empty() && full(&open) {
            out.push(std::mem::take(&mut open).close(keys, fence));
        }
        open.engines.extend(placed_on);
        open.compares.extend(compares);
        open.ops.extend(ops);
        open.bytes += bytes;
        match item {
            // Its parts commit in this transaction; from here on each is an item of its own.
            Item::Together(parts) => open.items.extend(parts),
            one => open.items.push(one),
        }
    }
    if !open.items.is_empty() {
        out.push(open.close(keys, fence));
    }
    (out, unwritable)
}
