//! Run reports: `runs/<engine>/<request>`, written only while the assignment they describe is
//! the one in etcd (its mod revision compared), never twice the same, and deleted only once the
//! assignment is gone (its absence compared).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::docker::Running;
use crate::keys::Key;
use crate::model::now_rfc3339;

use super::*;

/// Whether two reports say the same (the time aside).
fn same(a: &RunReport, b: &RunReport) -> bool {
    let mut a = a.clone();
    a.updated_at.clone_from(&b.updated_at);
    a == *b
}

impl Agent {
    /// Reads the reports already written, so a restart does not write them again.
    pub(super) async fn seed_reports(&self) {
        let prefix = self.cfg.keys.runs_of(&self.cfg.engine);
        let got = match store::timed(
            self.client
                .kv_client()
                .get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the run reports; they are rewritten");
                return;
            }
        };
        let mut reported = lock(&self.reported);
        for kv in got.kvs() {
            let Some(Key::Run(engine, id)) = self.cfg.keys.parse(kv.key()) else {
                continue;
            };
            if engine != self.cfg.engine {
                continue;
            }
            // One we cannot read is still ours to delete once its assignment is gone.
            let r = serde_json::from_slice(kv.value()).unwrap_or_default();
            reported.insert(id, r);
        }
    }

    /// Writes what became of an assignment, if it says something new.
    pub(super) async fn report(&self, id: &RequestId, rev: i64, c: Option<&Running>, error: &str) {
        let mut r = work::run_report(id, self.engine(), rev, c, error);
        r.cut_off = c.is_some_and(|c| lock(&self.cut_stopped).contains(&c.id));
        if lock(&self.reported)
            .get(id)
            .is_some_and(|old| same(old, &r))
        {
            return;
        }
        r.updated_at = now_rfc3339();
        let Ok(value) = serde_json::to_vec(&r) else {
            return;
        };
        let assignment = self.cfg.keys.assignment(&self.cfg.engine, id);
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                assignment,
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::put(
                self.cfg.keys.run(&self.cfg.engine, id),
                value,
                None,
            )]);
        match store::timed(self.client.kv_client().txn(txn)).await {
            Ok(t) if t.succeeded() => {
                tracing::info!(request = %id, state = ?r.state.as_ref().map(|s| s.to_string()),
                    error = %r.error, "reported");
                lock(&self.reported).insert(id.clone(), r);
            }
            Ok(_) => tracing::debug!(request = %id, "the assignment changed; report not written"),
            Err(e) => tracing::warn!(request = %id, error = %e, "cannot write the run report"),
        }
    }

    /// Deletes the report of an assignment that is gone.
    pub(super) async fn unreport(&self, id: &RequestId) {
        let assignment = self.cfg.keys.assignment(&self.cfg.engine, id);
        let txn = Txn::new()
            .when(vec![Compare::version(assignment, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::delete(
                self.cfg.keys.run(&self.cfg.engine, id),
                None,
            )]);
        match store::timed(self.client.kv_client().txn(txn)).await {
            Ok(t) if t.succeeded() => {
                tracing::info!(request = %id, "run report deleted");
                lock(&self.reported).remove(id);
            }
            Ok(_) => tracing::debug!(request = %id, "assigned again; report kept"),
            Err(e) => tracing::warn!(request = %id, error = %e, "cannot delete the run report"),
        }
    }
}
