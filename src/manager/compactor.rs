//! The leader's compaction of etcd's history, as the Kubernetes API server does, but paced by
//! what a compaction costs etcd.
//!
//! etcd 3.4 compacts by scanning every key revision below the target, kept or not, a thousand
//! per backend commit, after building a map of every revision it keeps. A compaction costs in
//! proportion to the keys alive, not to the history it drops: on a fixed timer, a growing
//! keyspace makes each one longer until they run back to back (a million requests: 16 s each,
//! queued every 10 s), and etcd spends its cpu scanning instead of committing. So:
//!
//! - one at a time: a compaction is waited for until etcd has dropped the history (physical),
//!   in a task of its own, never on the leader's loop;
//! - only when the history to drop is at least a quarter as long as the keys alive: each
//!   revision then pays for at most a few keys scanned, however large the keyspace grows.

use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a compaction is waited for; past it the next one may start.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// When the leader compacts next, and the compaction in progress.
#[derive(Debug)]
pub(super) struct Compactor {
    every: Option<Duration>,
    retain: i64,
    last_try: Instant,
    /// The revision the last compaction compacted up to (0: none yet).
    compacted: i64,
    running: Option<JoinHandle<()>>,
}

impl Compactor {
    pub(super) fn new(every: Option<Duration>, retain: i64) -> Self {
        Compactor {
            every,
            retain,
            last_try: Instant::now(),
            compacted: 0,
            running: None,
        }
    }

    /// The revision to compact up to, if it is time: the timer ran out, no compaction is in
    /// progress, and the history to drop is long enough for the `alive` keys it makes etcd
    /// scan (counted only once the rest holds).
    pub(super) fn due(&mut self, revision: i64, alive: impl FnOnce() -> usize) -> Option<i64> {
        let every = self.every?;
        if self.last_try.elapsed() < every
            || self.running.as_ref().is_some_and(|t| !t.is_finished())
        {
            return None;
        }
        self.last_try = Instant::now();
        let target = revision - self.retain;
        let worth = i64::try_from(alive() / 4).unwrap_or(i64::MAX).max(1);
        (target > 0 && target - self.compacted >= worth).then_some(target)
    }

    /// Compacts up to `target` in a task of its own.
    pub(super) fn start(&mut self, client: &Client, target: i64) {
        self.compacted = target;
        let mut kv = client.kv_client();
        self.running = Some(tokio::spawn(async move {
            let started = Instant::now();
            let options = CompactionOptions::new().with_physical();
            match tokio::time::timeout(MAX_WAIT, kv.compact(target, Some(options))).await {
                Ok(Ok(_)) => tracing::info!(
                    revision = target,
                    took_ms = started.elapsed().as_millis() as u64,
                    "compacted etcd history"
                ),
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::store::short(&e), revision = target, "compaction skipped")
                }
                Err(_) => tracing::warn!(
                    revision = target,
                    waited_s = MAX_WAIT.as_secs(),
                    "compaction still running; the next may start"
                ),
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_compaction_waits_for_the_timer_and_for_history_worth_its_scan() {
        let mut hourly = Compactor::new(Some(Duration::from_secs(3600)), 100);
        assert_eq!(hourly.due(1_000, || 10), None, "the timer has not run out");
        let mut c = Compactor::new(Some(Duration::ZERO), 100);
        assert_eq!(c.due(1_000, || 10), Some(900));
        c.compacted = 900;
        // 4,000 keys alive: dropping 500 revisions of history is not worth a scan of them all.
        assert_eq!(c.due(1_500, || 4_000), None);
        assert_eq!(c.due(2_000, || 4_000), Some(1_900));
        let mut never = Compactor::new(None, 100);
        assert_eq!(
            never.due(1_000_000, || 0),
            None,
            "never compacting means never"
        );
    }

    #[tokio::test]
    async fn one_compaction_at_a_time() {
        let mut c = Compactor::new(Some(Duration::ZERO), 1);
        c.running = Some(tokio::spawn(std::future::pending()));
        assert_eq!(c.due(1_000, || 0), None, "one is still running");
        if let Some(t) = c.running.take() {
            t.abort();
        }
        assert_eq!(c.due(1_000, || 0), Some(999));
    }
}
