//! The leader's fenced writes: every one is a transaction whose first compare is the leader's
//! election key's create revision (invariant 3), so a deposed leader's writes are refused by
//! etcd itself. The manager's batches, the runner's updates and the barrier all go through here.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use std::time::Duration;

use crate::store::{EtcdErrorKind, StoreError};

/// What every leader write is fenced on: `create_revision(key) == rev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub rev: i64,
}

impl Fence {
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)
    }
}

/// How long a fenced write may take. Shorter than other calls: a write to a member that froze
/// holds its batch's requests until it ends (as an unknown outcome), and etcd commits a healthy
/// transaction in milliseconds.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

async fn timed<T>(
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(WRITE_TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::Timeout(WRITE_TIMEOUT))?
        .map_err(StoreError::Etcd)
}

/// Whether etcd refused a transaction as holding more operations than its `--max-txn-ops`.
/// Such a transaction never reached raft: nothing of it can commit later.
pub fn too_many_ops(e: &StoreError) -> bool {
    e.etcd_kind() == Some(EtcdErrorKind::TooManyOps)
}

/// How a batch transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed at this revision.
    Done(i64),
    /// A compare other than the fence failed: wait for the cache to reach this revision.
    Conflict(i64),
    Fenced,
}

/// Rewrites the leader's own election key, fenced, keeping its lease. Its revision is a barrier:
/// once the cache has applied it, it has applied everything committed before it.
pub async fn barrier(client: &Client, fence: &Fence, value: &[u8]) -> Result<Commit, StoreError> {
    let txn = Txn::new()
        .when(vec![fence.compare()])
        .and_then(vec![TxnOp::put(
            fence.key.clone(),
            value.to_vec(),
            Some(PutOptions::new().with_ignore_lease()),
        )]);
    let resp = timed(client.kv_client().txn(txn)).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok(if resp.succeeded() {
        Commit::Done(rev)
    } else {
        Commit::Fenced
    })
}

/// Commits writes as one transaction fenced on the leader's election key. A refused fence is
/// `Fenced`: the caller must stop writing.
pub async fn commit(
    client: &Client,
    fence: &Fence,
    compares: &[Compare],
    ops: &[TxnOp],
) -> Result<Commit, StoreError> {
    let mut all = Vec::with_capacity(compares.len() + 1);
    all.push(fence.compare());
    all.extend(compares.iter().cloned());
    let txn = Txn::new()
        .when(all)
        .and_then(ops.to_vec())
        .or_else(vec![TxnOp::get(
            fence.key.clone(),
            Some(GetOptions::new().with_keys_only()),
        )]);
    let resp = timed(client.kv_client().txn(txn)).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if resp.succeeded() {
        return Ok(Commit::Done(rev));
    }
    let still_ours = resp.op_responses().iter().any(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.create_revision() == fence.rev),
        _ => false,
    });
    Ok(if still_ours {
        Commit::Conflict(rev)
    } else {
        Commit::Fenced
    })
}
