//! The one writer: the list/watch state machine that keeps the mirror in step with etcd.
//!
//! A small state machine, as kube-runtime's watcher is: `List` reads every key at one
//! revision, `Watch` follows from the next revision, and a compacted or cancelled watch goes back
//! to `List`. A broken stream resumes from the last revision applied, so nothing is applied
//! twice. A header from another history (etcd restored from a snapshot: its revision went
//! back) goes to `Rewound`: the old history is forgotten, the replica told, and everything
//! listed again (see `rewind.rs`). Requests are parsed (and their constraints compiled) before
//! the lock is taken, so a costly request holds up no reader.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::sync::watch;
use tracing::Instrument;

use super::rewind::{History, Rewind};
use super::{Cache, dead};
use crate::keys::{Key, Keys};
use crate::scheduler::{Parsed, prepare};
use crate::shutdown::stopping;
use crate::store::{self, StoreError};

/// Keys per range page when (re)listing.
const LIST_PAGE: i64 = 2_000;
/// A watch quiet this long is asked for progress (a few bytes each way, only while nothing
/// else flows) ...
const QUIET: Duration = Duration::from_secs(1);
/// ... and one that answers nothing within this long after is given up for dead.
const PROGRESS_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Phase {
    List,
    Watch {
        from: i64,
    },
    /// etcd is on another history than the one followed.
    Rewound(Rewind),
}

/// Parses a request key's value, if `kv` is one, before the lock is taken.
fn parse_ahead(keys: &Keys, kv: &KeyValue) -> Option<Parsed> {
    if !matches!(keys.split(kv.key()), Some(("requests", _))) {
        return None;
    }
    match keys.parse(kv.key()) {
        Some(Key::Request(id)) => Some(prepare(&id, kv.value())),
        _ => None,
    }
}

/// Watch responses read ahead of the one being applied, at most: etcd sends one per write, so
/// at 20,000 writes a second, most of a second of applying held up. Counted in responses, not
/// bytes: one of a leader's batches may carry `--max-txn-ops` events, so a leader held up for
/// long may hold several hundred MB here before etcd's own flow control takes over again.
const HANDED_OVER: usize = 16_384;

/// What the reader hands over.
enum Read {
    Response(WatchResponse),
    /// The stream ended (etcd closed it): resume.
    Ended,
    Failed(StoreError),
}

/// Aborts the task when dropped: the reader goes with the watch it reads for.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the watch stream and hands every response over, until it ends, breaks, goes silent,
/// or nobody takes them. A member frozen (SIGSTOP) or cut off keeps the stream open and says
/// nothing: after a quiet spell it is asked for progress; a stream that answers nothing then is
/// dead. `from`, where the watch was opened, is only for the logs.
async fn read(
    mut stream: etcd_client::WatchStream,
    from: i64,
    tx: tokio::sync::mpsc::Sender<Read>,
) {
    let mut quiet_until = tokio::time::Instant::now() + QUIET;
    let mut asked = false;
    loop {
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(quiet_until) => {
                if asked {
                    tracing::warn!(opened_at = from, "watch stream silent; resuming on another member");
                    let _ = tx.send(Read::Failed(StoreError::Timeout(QUIET + PROGRESS_WAIT))).await;
                    return;
                }
                asked = true;
                quiet_until = tokio::time::Instant::now() + PROGRESS_WAIT;
                if let Err(e) = stream.request_progress().await {
                    let _ = tx.send(Read::Failed(StoreError::Etcd(e))).await;
                    return;
                }
                continue;
            }
            msg = stream.message() => msg,
        };
        quiet_until = tokio::time::Instant::now() + QUIET;
        asked = false;
        let read = match msg {
            Ok(Some(resp)) => Read::Response(resp),
            Ok(None) => Read::Ended,
            Err(e) => {
                tracing::warn!(error = %store::short(&e), opened_at = from, "watch stream broke; resuming");
                Read::Failed(StoreError::Etcd(e))
            }
        };
        let last = !matches!(read, Read::Response(_));
        if tx.send(read).await.is_err() || last {
            return;
        }
    }
}

impl Cache {
    /// Loads everything once at one revision (for one-shot CLI commands).
    pub async fn load(&self, client: &Client) -> Result<(), StoreError> {
        self.list(client).await.map(|_| ())
    }

    /// Keeps the cache in step with etcd until `shutdown` turns true. Errors are logged and
    /// retried with backoff; this returns only on shutdown.
    pub async fn run(self: Arc<Self>, client: Client, mut shutdown: watch::Receiver<bool>) {
        let mut phase = Phase::List;
        let mut history = History::default();
        let mut delays = store::backoff().without_max_times().build();
        loop {
            if stopping(&shutdown) {
                return;
            }
            let outcome = match phase {
                // A list is a linearizable read: its revision below one seen is a rewind.
                Phase::List => self
                    .list(&client)
                    .await
                    .map(|rev| match history.saw(rev, 0) {
                        Some(why) => Phase::Rewound(why),
                        None => Phase::Watch { from: rev + 1 },
                    }),
                Phase::Watch { ref mut from } => {
                    self.follow(&client, from, &mut history, &mut shutdown)
                        .await
                }
                Phase::Rewound(ref why) => {
                    self.rewound(why);
                    history.forget();
                    Ok(Phase::List)
                }
            };
            match outcome {
                Ok(next) => {
                    delays = store::backoff().without_max_times().build();
                    phase = next;
                }
                Err(e) => {
                    // A broken watch resumes from the last revision it applied (`follow`
                    // moved `from` along), not from where it began.
                    let delay = delays.next().unwrap_or(store::MAX_RETRY_DELAY);
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

    /// etcd went back in time: said loudly, once; the replica told (a leader steps down and
    /// everyone campaigns again on the new history); the leader's commits applied ahead of the
    /// watch and the applied revision forgotten, so that nobody waits for, or trusts, a
    /// revision of the old history. A list follows.
    fn rewound(&self, why: &Rewind) {
        tracing::error!(
            reason = %why,
            "etcd went back in time (restored from a snapshot, or replaced): listing everything again and electing again; requests whose decisions the restore lost are decided again"
        );
        self.lock().rewound();
        self.revision.send_replace(0);
        self.progress.rewound(); // hook(http)
        self.rewinds.send_modify(|n| *n += 1);
    }

    /// Whether a linearizable read confirms that etcd is on another history than `history`
    /// (a lagging member answering a watch looks the same until then).
    async fn confirm(
        &self,
        client: &Client,
        history: &History,
    ) -> Result<Option<Rewind>, StoreError> {
        let opts = GetOptions::new().with_keys_only().with_limit(1);
        let got = store::timed(client.kv_client().get(self.keys.root(), Some(opts))).await?;
        Ok(got
            .header()
            .and_then(|h| history.confirms(h.revision(), h.cluster_id())))
    }

    async fn list(&self, client: &Client) -> Result<i64, StoreError> {
        self.progress.listing(); // hook(http)
        let (kvs, rev) = store::range_all(client, self.keys.root(), LIST_PAGE).await?;
        let parsed: Vec<Option<Parsed>> =
            kvs.iter().map(|kv| parse_ahead(&self.keys, kv)).collect();
        let count = kvs.len();
        self.lock().list(&self.keys, &kvs, parsed, rev);
        self.dead().listed(rev, count);
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
        history: &mut History,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Phase, StoreError> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(*from);
        let stream = store::timed(
            client
                .watch_client()
                .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
                .watch(self.keys.root(), Some(opts)),
        )
        .await?;
        // The stream is read by a task of its own, which only hands the responses over: while
        // applying stalls (a map of a million requests growing under the lock, the planner
        // holding it), etcd keeps sending, and this watch stays in etcd's memory instead of
        // falling among the watchers it serves from its backend, which slows every write.
        let (tx, mut rx) = tokio::sync::mpsc::channel(HANDED_OVER);
        let reader = AbortOnDrop(tokio::spawn(read(stream, *from, tx).in_current_span()));
        loop {
            let got = tokio::select! {
                _ = shutdown.changed() => {
                    if stopping(shutdown) {
                        return Ok(Phase::Watch { from: *from });
                    }
                    continue;
                }
                got = rx.recv() => got,
            };
            let resp = match got {
                Some(Read::Response(resp)) => resp,
                Some(Read::Ended) | None => {
                    tracing::info!(resume_from = *from, "watch stream ended; resuming");
                    return Ok(Phase::Watch { from: *from });
                }
                Some(Read::Failed(e)) => return Err(e),
            };
            if let Some(h) = resp.header()
                && let Some(suspected) = history.saw(h.revision(), h.cluster_id())
            {
                match self.confirm(client, history).await? {
                    Some(why) => return Ok(Phase::Rewound(why)),
                    None => {
                        tracing::debug!(reason = %suspected, "a member lags behind; following on")
                    }
                }
            }
            if let Some(next) = self.on_response(&resp, from) {
                drop(reader);
                return Ok(next);
            }
        }
    }

    /// One watch response: the phase to go to (`List` after a compaction or cancellation), or
    /// `None` to follow on, its events applied and `*from` moved past them.
    fn on_response(&self, resp: &WatchResponse, from: &mut i64) -> Option<Phase> {
        if resp.compact_revision() > 0 {
            tracing::warn!(
                compacted = resp.compact_revision(),
                wanted = *from,
                "watch revision compacted; listing again"
            );
            return Some(Phase::List);
        }
        if resp.canceled() {
            tracing::warn!(
                reason = resp.cancel_reason(),
                "watch cancelled; listing again"
            );
            return Some(Phase::List);
        }
        // hook(http): etcd answers; its header says how far etcd itself is.
        self.progress
            .answered(resp.header().map_or(0, |h| h.revision()));
        if resp.events().is_empty() {
            return None; // the creation reply, or a progress report; nothing to apply
        }
        // Parsed before the lock: a costly request must not hold up the mirror's readers.
        let parsed: Vec<Option<Parsed>> = resp
            .events()
            .iter()
            .map(|ev| match (ev.event_type(), ev.kv()) {
                (EventType::Put, Some(kv)) => parse_ahead(&self.keys, kv),
                _ => None,
            })
            .collect();
        let applied = {
            let mut shared = self.lock();
            let mut applied = *from - 1;
            for (ev, parsed) in resp.events().iter().zip(parsed) {
                if let Some(kv) = ev.kv() {
                    shared.apply(&self.keys, ev.event_type(), kv, parsed);
                    applied = applied.max(kv.mod_revision());
                }
            }
            shared.reached(applied)
        };
        *from = applied + 1;
        let dead = resp
            .events()
            .iter()
            .map(|ev| dead::of_event(ev.event_type(), ev.kv().map_or(0, |kv| kv.version())))
            .sum();
        self.dead().saw(applied, dead);
        self.revision.send_replace(applied);
        self.progress.applied(applied); // hook(http)
        None
    }
}
