//! Rewriting one decision outside the leader's rounds: the runner's container states and the
//! dispatch's reactions to agents' reports. Read from etcd, edited, written back in a fenced
//! transaction that also compares the decision's and the request's mod revisions, so it never
//! overwrites a newer decision; numbered for the ledger's guard, and applied to the leader's
//! cache from its commit.

use etcd_client::{Client, Compare, CompareOp, TxnOp};

use crate::cache::Books;
use crate::keys::Keys;
use crate::manager::Ledger;
use crate::metrics::Metrics;
use crate::model::{Decision, RequestId};
use crate::store;
use crate::store::fence::{self, Commit, Fence};

/// What a rewrite needs of the leader.
#[derive(Clone)]
pub struct Rewriter {
    pub client: Client,
    pub books: Books<Ledger>,
    pub keys: Keys,
    pub fence: Fence,
    /// Set when etcd refuses one of our writes' fence: another replica leads.
    pub fenced: tokio::sync::watch::Sender<bool>,
    pub metrics: std::sync::Arc<Metrics>,
}

impl Rewriter {
    /// Rewrites a decision if neither it nor its request changed since `seen` (the decision's
    /// mod revision the caller acted on); `extra` ops go in the same transaction.
    pub async fn update(
        &self,
        id: &RequestId,
        seen: i64,
        edit: impl FnOnce(&mut Decision),
        extra: Vec<TxnOp>,
    ) -> Option<Commit> {
        let key = self.keys.decision(id);
        let got = match store::timed(self.client.kv_client().get(key.as_str(), None)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "cannot read the decision");
                return None;
            }
        };
        let kv = got.kvs().first()?;
        if kv.mod_revision() != seen {
            return None; // The cache is behind; the next round sees the new one.
        }
        let mut decision: Decision = serde_json::from_slice(kv.value()).ok()?;
        let before = decision.status;
        edit(&mut decision);
        let value = match serde_json::to_vec(&decision) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(request = %id, error = %e, "cannot encode the decision; not written");
                return None;
            }
        };
        let mut ops = vec![TxnOp::put(key.as_str(), value, None)];
        ops.extend(extra);
        let compares = vec![
            Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
            Compare::mod_revision(
                self.keys.request(id),
                CompareOp::Equal,
                decision.request_revision,
            ),
        ];
        // Numbered for the ledger's guard: the decision's watch event may arrive before the
        // commit returns, and must be known as ours.
        let seq = self.books.lock().listener_mut().begin_write();
        let done = self.commit(compares, ops, "decision").await;
        if matches!(done, Some(Commit::Done(_))) && decision.status != before {
            self.metrics.decided(decision.status); // hook(http)
        }
        let mut books = self.books.lock();
        match done {
            // The leader's cache learns its own decisions from its commits.
            Some(Commit::Done(rev)) => books.committed(id, rev, Some(&decision)),
            // It may land later: its event is then taken as the truth.
            None => books.listener_mut().uncertain([id]),
            Some(_) => {}
        }
        books.listener_mut().end_write(seq);
        done
    }

    /// A fenced transaction; `None` when its outcome is unknown (logged).
    pub async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        what: &str,
    ) -> Option<Commit> {
        match fence::commit(&self.client, &self.fence, &compares, &ops).await {
            Ok(c) => {
                if c == Commit::Fenced {
                    tracing::warn!(what, "write refused: no longer the leader");
                    self.fenced.send_replace(true);
                }
                Some(c)
            }
            Err(e) => {
                tracing::warn!(what, error = %e, "write failed");
                None
            }
        }
    }

    /// Whether our election key is still the one we won with (a linearizable read).
    pub async fn still_leads(&self) -> bool {
        match store::timed(self.client.kv_client().get(self.fence.key.clone(), None)).await {
            Ok(r) => r
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == self.fence.rev),
            Err(_) => false,
        }
    }
}
