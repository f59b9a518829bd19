//! The cache: one watch-fed mirror of everything under the prefix, as kube-runtime's reflector
//! store is, with one writer and many readers.
//!
//! ```text
//! etcd ──list, then watch──▶ watch task (watcher.rs) ──apply──▶ Mirror (mirror.rs)
//!                               parses requests                 │ each change told to
//!                               outside the lock                ▼
//!                                                          its Listener (listener.rs):
//!                                                          the leader's ledger, or none
//! readers (CLI, status page, metrics, runner) ──read()──▶ &Mirror (views.rs, usage.rs)
//! ```
//!
//! - [`Mirror`] holds what etcd holds: engines, requests, decisions (with the reservations inside
//!   them, summed per engine), the election's keys, volumes and health. Only the cache writes it:
//!   the watch task, and the leader's own commits ([`Shared::committed`]).
//! - A [`Listener`] keeps books on the mirror under the same lock (the manager's ledger: work
//!   sets, parked requests, the guard over the leader's decisions). The cache only tells it
//!   what changed; its owner reaches it through [`Books`].
//! - Readers take [`Cache::read`] for a short look (never across an `.await`).
//!
//! It may not write to etcd: it reads (list and watch).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::keys::Keys;

mod change;
mod dead;
mod decision;
mod engines;
#[cfg(test)]
pub(crate) mod fed;
mod listener;
mod mirror;
mod progress;
mod rewind;
mod tally;
mod usage;
mod views;
mod watcher;

pub use change::{Change, EngineChange};
use dead::Dead;
pub use engines::Engines;
pub use listener::{Backlog, Listener, NoListener, Shared};
pub use mirror::{
    AssignmentEntry, DecisionEntry, HealthEntry, LeaderKey, Mirror, OddEntry, OddRequest,
    RequestEntry, RunEntry,
};
pub use progress::{Followed, Progress, Stage};
pub use usage::{HealthPolicy, Usage, apply_usage};
pub use views::*;

/// The shared cache: one writer (the watch task), many readers.
pub struct Cache {
    keys: Keys,
    // A std mutex: nothing awaits while holding it, and every critical section is short
    // (requests are parsed before it is taken).
    shared: Arc<Mutex<Shared<dyn Listener>>>,
    /// The applied revision, published after every change; readers wait on it.
    revision: watch::Sender<i64>,
    /// How many times the cache has listed everything (its first load included).
    lists: AtomicU64,
    /// hook(http): how closely the watch follows etcd, for the probes and metrics.
    progress: Progress,
    /// How many times etcd went back in time under this cache (see `rewind.rs`).
    rewinds: watch::Sender<u64>,
    /// The history a compaction would drop, by revision (see `dead.rs`).
    dead: Mutex<Dead>,
}

/// The listener's owner's handle to the lock its listener shares with a cache: the same lock
/// the cache takes, typed, so the owner reaches its own books without asking the cache.
pub struct Books<L>(Arc<Mutex<Shared<L>>>);

impl<L: Listener> Books<L> {
    /// The mirror and the books, under the cache's lock. Never hold it across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Shared<L>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<L> Clone for Books<L> {
    fn clone(&self) -> Self {
        Books(self.0.clone())
    }
}

/// A short read of the mirror (the cache's lock is held while it lives).
pub struct Read<'a>(MutexGuard<'a, Shared<dyn Listener>>);

impl Deref for Read<'_> {
    type Target = Mirror;
    fn deref(&self) -> &Mirror {
        self.0.mirror()
    }
}

impl Read<'_> {
    /// What the books kept on the mirror hold (nothing, when nobody keeps any).
    pub fn backlog(&self) -> Backlog {
        self.0.listener().backlog()
    }
}

impl Cache {
    /// A cache that keeps no books: the mirror alone.
    pub fn new(keys: Keys, overcommit: f64) -> Arc<Self> {
        Cache::with_listener(keys, overcommit, NoListener).0
    }

    /// A cache whose every change `listener` hears; the handle reaches the listener.
    pub fn with_listener<L: Listener + 'static>(
        keys: Keys,
        overcommit: f64,
        listener: L,
    ) -> (Arc<Self>, Books<L>) {
        let shared = Arc::new(Mutex::new(Shared::new(Mirror::new(overcommit), listener)));
        let cache = Arc::new(Cache {
            keys,
            shared: shared.clone(),
            revision: watch::channel(0).0,
            lists: AtomicU64::new(0),
            progress: Progress::default(),
            rewinds: watch::channel(0).0,
            dead: Mutex::new(Dead::default()),
        });
        (cache, Books(shared))
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The mirror, for a short read. Never hold it across an `.await`.
    pub fn read(&self) -> Read<'_> {
        Read(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Shared<dyn Listener>> {
        // A panic while holding the lock leaves the mirror as consistent as any single event
        // leaves it; carry on rather than take the whole replica down.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// From now on engines keep their tenants, whatever the requests ask: a dry run that
    /// looks for placements to preempt (`citadel plan`) needs them.
    pub fn track_tenants(&self) {
        let mut shared = self.lock();
        if !shared.mirror.tracks_tenants {
            shared.mirror.track_tenants();
        }
    }

    /// Dead revisions (history a compaction would drop) above `from` and at or below `to`,
    /// under the prefix, as far as this cache has seen (see `dead.rs`).
    pub fn dead_between(&self, from: i64, to: i64) -> u64 {
        self.dead().between(from, to)
    }

    fn dead(&self) -> MutexGuard<'_, Dead> {
        self.dead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times the cache has listed every key (a compacted watch lists again).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    /// hook(http): what the watch task last reported (see [`Progress`]).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// A receiver that changes each time etcd goes back in time (restored from a snapshot,
    /// or replaced): whatever a leader assumed of the old history is void, and the cache lists
    /// everything again.
    pub fn rewinds(&self) -> watch::Receiver<u64> {
        self.rewinds.subscribe()
    }

    /// A receiver that sees every applied revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Waits until every event up to `rev` is applied. The revision only moves with events
    /// (etcd 3.4 answers a progress request before a lagging watcher has caught up, so progress
    /// reports are not trusted): to wait for "now", write a key under the prefix and wait for
    /// its revision, as the leader's barrier does. False on timeout.
    pub async fn wait_for(&self, rev: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|applied| *applied >= rev);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }
}
