//! `citadel engine cordon|uncordon|drain`: taking an engine out of service and back.
//!
//! The flags live in the engine's own key (`"cordoned": true`, `"drained": true`), so etcdctl
//! shows them and every replica's cache sees them. A cordoned engine takes no new placement;
//! a drained one is cordoned too, and the leader places its `service` requests again elsewhere
//! while its `batch` ones run to the end.

use super::output::{Done, DoneArgs};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{CliError, engine_id, timed};
use crate::cache::{Cache, Mirror};
use crate::keys::Keys;
use crate::model::{Engine, EngineId, Lifecycle};

/// What an operator asks of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    Cordon,
    Uncordon,
    Drain,
}

/// Writes the engine's flags, comparing its key's revision so a concurrent change is not lost.
pub(super) async fn set(
    client: &Client,
    keys: &Keys,
    id: &str,
    what: Maintenance,
    output: DoneArgs,
) -> Result<(), CliError> {
    let id = engine_id(id)?;
    let key = keys.engine(&id);
    // What it holds is counted before the write: once it is drained, the leader starts
    // moving its services at once.
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let (services, batches) = placed(&cache.read(), &id);
    let got = timed(client.kv_client().get(key.as_str(), None)).await?;
    let Some(kv) = got.kvs().first() else {
        return Err(CliError::Usage(format!("engine {id} is not registered")));
    };
    let mut wire: Engine = serde_json::from_slice(kv.value())
        .map_err(|e| CliError::Usage(format!("engine {id}: unreadable: {e}")))?;
    (wire.cordoned, wire.drained) = match what {
        Maintenance::Cordon => (true, wire.drained),
        Maintenance::Uncordon => (false, false),
        Maintenance::Drain => (true, true),
    };
    let value = serde_json::to_vec(&wire).map_err(|e| CliError::Usage(e.to_string()))?;
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
    if !timed(client.kv_client().txn(txn)).await?.succeeded() {
        return Err(CliError::Usage(format!(
            "engine {id} changed meanwhile; try again"
        )));
    }
    let (action, message) = match what {
        Maintenance::Cordon => (
            "cordoned",
            format!(
                "engine {id} cordoned: no new placements; its {} placement(s) stay",
                services + batches
            ),
        ),
        Maintenance::Uncordon => (
            "uncordoned",
            format!("engine {id} uncordoned: it takes placements again"),
        ),
        Maintenance::Drain => (
            "drained",
            format!(
                "engine {id} draining: {services} service placement(s) are placed again \
                 elsewhere, {batches} batch placement(s) run to the end"
            ),
        ),
    };
    output.print(&Done {
        what: "engine",
        id: id.as_str(),
        action,
        message,
    })
}

/// Service and batch placements on `engine`.
fn placed(state: &Mirror, engine: &EngineId) -> (usize, usize) {
    let mut counts = (0, 0);
    for (id, _) in state.placed_on(engine) {
        match state.request(&id).map(|r| r.lifecycle) {
            Some(Lifecycle::Batch) => counts.1 += 1,
            _ => counts.0 += 1,
        }
    }
    counts
}

/// An engine's state for `engine ls`: `ready`, `cordoned`, `draining` (services still on it)
/// or `drained`.
pub(super) fn state_of(state: &Mirror, engine: &EngineId) -> &'static str {
    match state.engine_spec(engine) {
        Some(s) if s.drained => {
            if placed(state, engine).0 > 0 {
                "draining"
            } else {
                "drained"
            }
        }
        Some(s) if s.cordoned => "cordoned",
        _ => "ready",
    }
}
