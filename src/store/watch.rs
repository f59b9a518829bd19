//! A watch that outlives its connection: it follows a key or a prefix from a revision, and
//! when the stream breaks (etcd restarting, a member lost, a member gone silent) it opens
//! again from the revision after the last one it handed out, so nothing is skipped and
//! nothing repeated. When that revision is compacted it says so ([`Next::Compacted`]): the
//! caller reads the current state again and goes on from there ([`Resumable::resume_at`]).
//!
//! The same states as the cache's watcher (`cache/watcher.rs`): following, broken (retry from
//! `from` after a backoff delay), compacted (list again). It prints nothing and never sleeps
//! by itself: the caller gets each failure, says what it wants, and waits [`Resumable::delay`]
//! (capped, so that a watch is back within about a second of etcd).

use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{Client, Event, WatchOptions, WatchStream};
use tokio::time::Instant;

use super::{EtcdErrorKind, MAX_RESPONSE_BYTES, MAX_RETRY_DELAY, StoreError, backoff, timed};

/// Why a watch stopped for now.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("etcd ended the watch")]
    Ended,
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
    #[error("the watch stream went silent for {0:?}")]
    Silent(Duration),
}

impl WatchError {
    /// What trying again will not fix by itself: settings, credentials, a role that does not
    /// allow the watch. Everything else (etcd restarting, a member gone) passes.
    pub fn is_permanent(&self) -> bool {
        match self {
            WatchError::Store(e) => gives_up(e),
            // etcd cancels a watch (compaction apart) that it will never allow: a role
            // without read access, a range it refuses.
            WatchError::Cancelled(_) => true,
            WatchError::Ended | WatchError::Silent(_) => false,
        }
    }
}

/// A stream quiet this long is asked for progress, and one that answers nothing within as
/// long again is given up for dead (a frozen member keeps its connection open).
const QUIET: Duration = Duration::from_secs(2);

/// Whether waiting will not fix a failed call of a command that keeps running: a setting, the
/// credentials, a role that does not allow it. etcd restarting or a member gone will pass.
pub fn gives_up(e: &StoreError) -> bool {
    e.is_permanent() || e.etcd_kind().is_some_and(kind_gives_up)
}

/// [`gives_up`] for an etcd error as it came.
pub fn kind_gives_up(kind: EtcdErrorKind) -> bool {
    matches!(
        kind,
        EtcdErrorKind::PermissionDenied
            | EtcdErrorKind::AuthFailed
            | EtcdErrorKind::AuthRequired
            | EtcdErrorKind::Tls
    )
}

/// What a watch brings.
#[derive(Debug)]
pub enum Next {
    /// Changes, in revision order; every event of one revision comes in the same batch.
    /// `live_after` is etcd's revision when this stream was opened: a later event was seen
    /// as it happened, an earlier one (or any, before etcd's reply said) is history replayed.
    Events { events: Vec<Event>, live_after: i64 },
    /// The revisions from `wanted` up to `oldest` are compacted: they are gone.
    Compacted { wanted: i64, oldest: i64 },
}

/// A watch on `key` (or every key under it) that resumes where it broke.
pub struct Resumable {
    client: Client,
    key: Vec<u8>,
    prefix: bool,
    /// The next revision to ask for.
    from: i64,
    stream: Option<(WatchStream, i64)>,
    delays: backon::ExponentialBackoff,
}

/// The delays between tries of a command that keeps running while etcd is away: the
/// controllers' own ([`backoff`]: from 100 ms, with jitter, about a second at most), without end.
pub fn delays() -> backon::ExponentialBackoff {
    backoff().without_max_times().build()
}

impl Resumable {
    /// Follows `key` (every key under it with `prefix`) from revision `from` (at least 1).
    pub fn new(client: &Client, key: impl Into<Vec<u8>>, prefix: bool, from: i64) -> Resumable {
        Resumable {
            client: client.clone(),
            key: key.into(),
            prefix,
            from: from.max(1),
            stream: None,
            delays: delays(),
        }
    }

    /// The next revision this watch asks for.
    pub fn from(&self) -> i64 {
        self.from
    }

    /// Goes on from `rev` after the caller read the state at `rev - 1` again.
    pub fn resume_at(&mut self, rev: i64) {
        self.from = rev.max(1);
        self.stream = None;
    }

    /// How long to wait before the next try after a failure (see [`delays`]).
    pub fn delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_RETRY_DELAY)
    }

    async fn open(&mut self) -> Result<(), WatchError> {
        let mut opts = WatchOptions::new().with_start_revision(self.from);
        if self.prefix {
            opts = opts.with_prefix();
        }
        let stream = timed(
            self.client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .watch(self.key.clone(), Some(opts)),
        )
        .await?;
        tracing::debug!(from = self.from, "watch open");
        // What is live is known from the creation reply, the stream's first message.
        self.stream = Some((stream, i64::MAX));
        Ok(())
    }

    /// The next changes. An error means the stream broke (or could not be opened): wait
    /// [`Resumable::delay`] and call again, and it resumes from [`Resumable::from`].
    pub async fn next(&mut self) -> Result<Next, WatchError> {
        if self.stream.is_none() {
            self.open().await?;
        }
        let mut quiet_until = Instant::now() + QUIET;
        let mut asked = false;
        loop {
            let Some((stream, live_after)) = self.stream.as_mut() else {
                return Err(WatchError::Ended);
            };
            let live_after = *live_after;
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(quiet_until) => {
                    if asked {
                        self.stream = None;
                        return Err(WatchError::Silent(QUIET * 2));
                    }
                    asked = true;
                    quiet_until = Instant::now() + QUIET;
                    // A lost request shows as the silence that follows.
                    let _ = stream.request_progress().await;
                    continue;
                }
                msg = stream.message() => msg,
            };
            quiet_until = Instant::now() + QUIET;
            asked = false;
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.stream = None;
                    return Err(WatchError::Ended);
                }
                Err(e) => {
                    self.stream = None;
                    return Err(StoreError::Etcd(e).into());
                }
            };
            // etcd answers: the next outage starts its backoff afresh.
            self.delays = delays();
            if resp.compact_revision() > 0 {
                self.stream = None;
                return Ok(Next::Compacted {
                    wanted: self.from,
                    oldest: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                self.stream = None;
                return Err(WatchError::Cancelled(resp.cancel_reason().to_string()));
            }
            if resp.created() {
                // Its header is etcd's revision now: what comes later happens as we watch.
                if let Some((_, live_after)) = self.stream.as_mut() {
                    *live_after = resp.header().map_or(0, |h| h.revision());
                }
                continue;
            }
            let events = resp.events();
            let Some(last) = events
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| kv.mod_revision())
                .max()
            else {
                continue; // a progress report
            };
            self.from = last + 1;
            return Ok(Next::Events {
                events: events.to_vec(),
                live_after,
            });
        }
    }
}
