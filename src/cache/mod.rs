//! One watch-fed view of everything under the prefix: engines, requests, decisions (with the
//! reservations inside them) and the election's keys.
//!
//! The watch task is the only writer ([`Cache::run`]); the leader and the CLI read snapshots.
//! The loop is a small state machine, as kube-runtime's watcher is: `List` reads every key at one
//! revision, `Watch` follows from the next revision, and a compacted or cancelled watch goes back
//! to `List`. A broken stream resumes from the last revision seen, so nothing is applied twice.
//!
//! Besides mirroring etcd, the cache classifies every request as it changes, so the leader finds
//! its work without scanning: `pending` (needs a decision), `releases` (a decision whose request
//! is gone or changed, or that holds what its status says it should not) and `waiting`
//! (unschedulable, parked until room that could fit it appears: see `parked.rs`).
//!
//! Requests are parsed (and their constraints compiled) before the state's lock is taken, so a
//! costly request holds up no reader. While its replica leads, the leader applies its own
//! decisions as it commits them, and the guard (`guard.rs`) holds back decision events that no
//! write of its own explains: someone else changed them, and the leader writes its own back.
//!
//! It may not write to etcd: it reads (list and watch) and is written only by its watch task and
//! by the leader applying what it committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{Client, WatchOptions};
use tokio::sync::watch;

use crate::keys::Keys;
use crate::store::{self, StoreError};

#[cfg(test)]
mod fed;
mod guard;
mod parked;
mod progress;
mod state;
mod usage;
mod views;
mod work;

pub use progress::{Followed, Progress, Stage};
pub use state::*;
pub use usage::apply_usage;
pub use views::*;

/// Keys per range page when (re)listing.
const LIST_PAGE: i64 = 2_000;
/// A watch quiet this long is asked for progress (a few bytes each way, only while nothing
/// else flows) ...
const QUIET: Duration = Duration::from_secs(1);
/// ... and one that answers nothing within this long after is given up for dead.
const PROGRESS_WAIT: Duration = Duration::from_secs(1);

/// The shared cache: one writer (the watch task), many readers.
pub struct Cache {
    keys: Keys,
    // A std mutex: nothing awaits while holding it, and every critical section is short
    // (requests are parsed before it is taken).
    state: Mutex<State>,
    /// The applied revision, published after every change; readers wait on it.
    revision: watch::Sender<i64>,
    /// How many times the cache has listed everything (its first load included).
    lists: AtomicU64,
    /// How many requests the leader has planned a decision for (the same one again when it
    /// is retried): an idle cluster's count stands still.
    planned: AtomicU64,
    /// hook(http): how closely the watch follows etcd, for the probes and metrics.
    progress: Progress,
}

#[derive(Debug)]
enum Phase {
    List,
    Watch { from: i64 },
}

impl Cache {
    pub fn new(keys: Keys, overcommit: f64) -> Arc<Self> {
        Arc::new(Cache {
            keys,
            state: Mutex::new(State::new(overcommit)),
            revision: watch::channel(0).0,
            lists: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            progress: Progress::default(),
        })
    }

    /// While this replica leads, decisions are its own writes (the fence shuts everyone else
    /// out, and its barrier showed it every earlier one): it applies them as it commits them
    /// ([`State::decided`]), and decision events no write of its own explains are held back,
    /// judged ([`State::judge`]) and repaired. When it stops leading, the held-back events
    /// are applied as any follower applies them.
    pub fn set_leading(&self, leading: bool) {
        self.lock().set_leading(leading);
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The state, for a short read or a `park`. Never hold it across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any single event
        // leaves it; carry on rather than take the whole replica down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// How many times the cache has listed every key (a compacted watch lists again).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    /// How many requests the leader has planned a decision for, retries included.
    pub fn planned(&self) -> u64 {
        self.planned.load(Ordering::Relaxed)
    }

    /// The leader planned `n` more.
    pub fn note_planned(&self, n: usize) {
        self.planned.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// hook(http): what the watch task last reported (see [`Progress`]).
    pub fn progress(&self) -> &Progress {
        &self.progress
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

    /// Loads everything once at one revision (for one-shot CLI commands).
    pub async fn load(&self, client: &Client) -> Result<(), StoreError> {
        self.list(client).await.map(|_| ())
    }

    /// Keeps the cache in step with etcd until `shutdown` turns true. Errors are logged and
    /// retried with backoff; this returns only on shutdown.
    pub async fn run(self: Arc<Self>, client: Client, mut shutdown: watch::Receiver<bool>) {
        let mut phase = Phase::List;
        let mut delays = store::backoff().without_max_times().build();
        loop {
            if stopping(&shutdown) {
                return;
            }
            let outcome = match phase {
                Phase::List => self
                    .list(&client)
                    .await
                    .map(|rev| Phase::Watch { from: rev + 1 }),
                Phase::Watch { ref mut from } => self.follow(&client, from, &mut shutdown).await,
            };
            match outcome {
                Ok(next) => {
                    delays = store::backoff().without_max_times().build();
                    phase = next;
                }
                Err(e) => {
                    // A broken watch resumes from the last revision it applied (`follow`
                    // moved `from` along), not from where it began.
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    self.progress.broken(e.to_string()); // hook(http)
                    tracing::warn!(error = %e, retry_in = ?delay, phase = ?phase, "cache: etcd call failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    if stopping(&shutdown) {
                        return;
                    }
                }
            }
        }
    }

    async fn list(&self, client: &Client) -> Result<i64, StoreError> {
        self.progress.listing(); // hook(http)
        let (kvs, rev) = store::range_all(client, self.keys.root(), LIST_PAGE).await?;
        let parsed: Vec<Option<Parsed>> = kvs
            .iter()
            .map(|kv| State::parse_ahead(&self.keys, kv))
            .collect();
        let count = kvs.len();
        self.lock().reset(&self.keys, &kvs, parsed, rev);
        self.revision.send_replace(rev);
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.progress.listed(rev); // hook(http)
        tracing::info!(revision = rev, keys = count, "cache listed");
        Ok(rev)
    }

    /// Follows the watch from `*from`, moving it past every revision applied. Returns the next
    /// phase: `Watch` to resume after a stream that ended, `List` after a compaction or
    /// cancellation; an error leaves `*from` where the stream broke.
    async fn follow(
        &self,
        client: &Client,
        from: &mut i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Phase, StoreError> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(*from);
        let mut stream = store::timed(
            client
                .watch_client()
                .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
                .watch(self.keys.root(), Some(opts)),
        )
        .await?;
        // A member frozen (SIGSTOP) or cut off keeps the stream open and says nothing: after a
        // quiet spell, ask it for progress; a stream that answers nothing then is dead.
        let mut quiet_until = tokio::time::Instant::now() + QUIET;
        let mut asked = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.changed() => {
                    if stopping(shutdown) {
                        return Ok(Phase::Watch { from: *from });
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(quiet_until) => {
                    if asked {
                        tracing::warn!(resume_from = *from, "watch stream silent; resuming on another member");
                        return Err(StoreError::Timeout(QUIET + PROGRESS_WAIT));
                    }
                    asked = true;
                    quiet_until = tokio::time::Instant::now() + PROGRESS_WAIT;
                    if let Err(e) = stream.request_progress().await {
                        return Err(StoreError::Etcd(e));
                    }
                    continue;
                }
                msg = stream.message() => msg,
            };
            quiet_until = tokio::time::Instant::now() + QUIET;
            asked = false;
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::info!(resume_from = *from, "watch stream ended; resuming");
                    return Ok(Phase::Watch { from: *from });
                }
                Err(e) => {
                    tracing::warn!(error = %e, resume_from = *from, "watch stream broke; resuming");
                    return Err(StoreError::Etcd(e));
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    wanted = *from,
                    "watch revision compacted; listing again"
                );
                return Ok(Phase::List);
            }
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "watch cancelled; listing again"
                );
                return Ok(Phase::List);
            }
            // hook(http): etcd answers; its header says how far etcd itself is.
            self.progress
                .answered(resp.header().map_or(0, |h| h.revision()));
            if resp.events().is_empty() {
                continue; // the creation reply; nothing to apply
            }
            // Parsed before the lock: a costly request must not hold up the state's readers.
            let parsed: Vec<Option<Parsed>> = resp
                .events()
                .iter()
                .map(|ev| match (ev.event_type(), ev.kv()) {
                    (etcd_client::EventType::Put, Some(kv)) => State::parse_ahead(&self.keys, kv),
                    _ => None,
                })
                .collect();
            let applied = {
                let mut state = self.lock();
                let mut applied = *from - 1;
                for (ev, parsed) in resp.events().iter().zip(parsed) {
                    if let Some(kv) = ev.kv() {
                        state.apply(&self.keys, ev.event_type(), kv, parsed);
                        applied = applied.max(kv.mod_revision());
                    }
                }
                state.revision = state.revision.max(applied);
                state.revision
            };
            *from = applied + 1;
            self.revision.send_replace(applied);
            self.progress.applied(applied); // hook(http)
        }
    }
}

/// True once shutdown is asked for, or its sender is gone (nobody can ask any more).
pub fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}
