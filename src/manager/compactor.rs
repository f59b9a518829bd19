//! The leader's compaction of etcd's history, as the Kubernetes API server does, but paced by
//! what a compaction costs etcd and what it drops.
//!
//! etcd 3.4 compacts by scanning every key revision below the target, kept or not, a thousand
//! per batch with a pause between batches, after building a map of every revision it keeps. A
//! compaction costs in proportion to the keys alive, not to the history it drops: a million
//! requests make each one scan two million revisions (20 to 30 s of etcd's cpu and a backend
//! lock taken every thousand keys, while every write waits on that lock), and such a
//! compaction may drop next to nothing, for a request submitted and decided writes two new
//! keys and supersedes none. So:
//!
//! - one at a time: a compaction is waited for until etcd has dropped the history (physical),
//!   in a task of its own, never on the leader's loop;
//! - only when the history it would drop, the dead revisions the cache counted below the
//!   target (a value overwritten, a key deleted: see `cache/dead.rs`), is at least a quarter as
//!   long as the keys alive: each dead revision then pays for at most a few keys scanned,
//!   however large the keyspace grows, and a keyspace that only grows is never scanned for
//!   nothing.
//!
//! History written outside the prefix is not counted: an etcd shared with others compacts it
//! for them with its own `--auto-compaction-*`.

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
    /// A compaction was put off since the last one, and the log said so once.
    told: bool,
}

impl Compactor {
    pub(super) fn new(every: Option<Duration>, retain: i64) -> Self {
        Compactor {
            every,
            retain,
            last_try: Instant::now(),
            compacted: 0,
            running: None,
            told: false,
        }
    }

    /// The revision to compact up to, if it is time: the timer ran out, no compaction is in
    /// progress, and the history it would drop (`dead` revisions from the last compaction to
    /// the target) is long enough for the `alive` keys it makes etcd scan (both counted only
    /// once the rest holds).
    pub(super) fn due(
        &mut self,
        revision: i64,
        alive: impl FnOnce() -> usize,
        dead: impl FnOnce(i64, i64) -> u64,
    ) -> Option<i64> {
        let every = self.every?;
        if self.last_try.elapsed() < every
            || self.running.as_ref().is_some_and(|t| !t.is_finished())
        {
            return None;
        }
        self.last_try = Instant::now();
        let target = revision - self.retain;
        if target <= 0 {
            return None;
        }
        let alive = alive() as u64;
        let dead = dead(self.compacted, target);
        if dead >= (alive / 4).max(1) {
            return Some(target);
        }
        if !self.told {
            self.told = true;
            tracing::info!(
                below = target,
                dead,
                alive,
                "compaction put off: the history it would drop is less than a quarter of the keys it would scan"
            );
        }
        None
    }

    /// Compacts up to `target` in a task of its own.
    pub(super) fn start(&mut self, client: &Client, target: i64) {
        self.compacted = target;
        self.told = false;
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

    /// Every revision dead: the history as long as the revisions.
    fn all(from: i64, to: i64) -> u64 {
        (to - from).max(0) as u64
    }

    #[tokio::test]
    async fn a_compaction_waits_for_the_timer_and_for_history_worth_its_scan() {
        let mut hourly = Compactor::new(Some(Duration::from_secs(3600)), 100);
        assert_eq!(
            hourly.due(1_000, || 10, all),
            None,
            "the timer has not run out"
        );
        let mut c = Compactor::new(Some(Duration::ZERO), 100);
        assert_eq!(c.due(1_000, || 10, all), Some(900));
        c.compacted = 900;
        // 4,000 keys alive: dropping 500 revisions of history is not worth a scan of them all.
        assert_eq!(c.due(1_500, || 4_000, all), None);
        assert_eq!(c.due(2_000, || 4_000, all), Some(1_900));
        let mut never = Compactor::new(None, 100);
        assert_eq!(
            never.due(1_000_000, || 0, all),
            None,
            "never compacting means never"
        );
    }

    #[tokio::test]
    async fn history_that_only_created_keys_is_not_worth_a_scan() {
        let mut c = Compactor::new(Some(Duration::ZERO), 100);
        c.compacted = 1_000;
        // A million revisions later, every one of them a key created: nothing would be dropped.
        assert_eq!(c.due(1_001_000, || 1_000_000, |_, _| 0), None);
        // The same history with a third of it overwritten or deleted is.
        let mut asked = None;
        let third = |from: i64, to: i64| {
            asked = Some((from, to));
            ((to - from) / 3) as u64
        };
        assert_eq!(c.due(1_001_000, || 1_000_000, third), Some(1_000_900));
        assert_eq!(
            asked,
            Some((1_000, 1_000_900)),
            "counted from the last compaction to the target"
        );
    }

    #[tokio::test]
    async fn one_compaction_at_a_time() {
        let mut c = Compactor::new(Some(Duration::ZERO), 1);
        c.running = Some(tokio::spawn(std::future::pending()));
        assert_eq!(c.due(1_000, || 0, all), None, "one is still running");
        if let Some(t) = c.running.take() {
            t.abort();
        }
        assert_eq!(c.due(1_000, || 0, all), Some(999));
    }
}
