//! The commands that keep running (`events`, `status --watch`, `requests ls --watch`): one etcd
//! watch over the whole prefix, and a clean stop on SIGINT or SIGTERM. A closed pipe ends them
//! at their next write (see [`super::output::write_line`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, Event, EventType};
use rustix::event::{PollFd, PollFlags};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use super::CliError;
use crate::keys::{Key, Keys};
use crate::store::EtcdErrorKind;
use crate::store::watch::{self, Next, Resumable, WatchError};

/// SIGINT and SIGTERM, caught for as long as the command runs, and a pipe on stdout whose
/// reader went away (`citadel events | head -1` in a quiet cluster: no write would tell).
pub struct Stop {
    int: Option<Signal>,
    term: Option<Signal>,
    reader_gone: Option<oneshot::Receiver<()>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            reader_gone: reader_gone(),
        }
    }

    /// Resolves when either signal arrives or the reader goes away.
    pub async fn wait(&mut self) {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        async fn gone(r: &mut Option<oneshot::Receiver<()>>) {
            if let Some(rx) = r {
                let said = rx.await.is_ok();
                // A receiver is awaited once; a watcher thread that ended without a word
                // found nothing to watch.
                *r = None;
                if said {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            () = one(&mut self.int) => {}
            () = one(&mut self.term) => {}
            () = gone(&mut self.reader_gone) => {}
        }
    }
}

/// When stdout is a pipe: a thread that waits in poll(2) until the pipe's reader closes it
/// (poll reports an error on a pipe without a reader, whatever events were asked for). The
/// thread is detached: it never keeps the process from exiting.
fn reader_gone() -> Option<oneshot::Receiver<()>> {
    use std::os::unix::fs::FileTypeExt;
    let fifo = std::fs::metadata("/proc/self/fd/1").is_ok_and(|m| m.file_type().is_fifo());
    if !fifo {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout-reader".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            loop {
                let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                        let _ = tx.send(());
                        return;
                    }
                    Err(rustix::io::Errno::INTR) | Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .ok()?;
    Some(rx)
}

/// Whether etcd is away, as said on stderr in one line when it goes and when it is back, so that a
/// command that keeps running neither dies on an etcd restart nor hides it. Once per process,
/// not per watch: `submit --replicas N --wait` follows several keys at once.
static AWAY: AtomicBool = AtomicBool::new(false);

/// etcd failed a call: said once until it answers again.
fn away(why: &str, resume: Option<i64>) {
    if !AWAY.swap(true, Ordering::Relaxed) {
        let at = resume.map_or(String::new(), |r| format!(", resuming at revision {r}"));
        eprintln!("citadel: etcd is away ({why}); trying again{at}");
    }
}

/// etcd answered: said if it was away.
fn back() {
    if AWAY.swap(false, Ordering::Relaxed) {
        eprintln!("citadel: etcd answers again");
    }
}

/// Whether a failed etcd call is worth trying again: etcd restarting or a member gone, not a
/// role that forbids it nor a wrong setting.
fn transient(e: &CliError) -> bool {
    match e {
        CliError::Store(e) => !watch::gives_up(e),
        CliError::Etcd(e) => !watch::kind_gives_up(EtcdErrorKind::of(e)),
        _ => false,
    }
}

fn into_cli(e: WatchError) -> CliError {
    match e {
        WatchError::Store(e) => CliError::Store(e),
        other => CliError::Usage(other.to_string()),
    }
}

/// What a watch brought.
pub enum Batch {
    /// Changes in revision order (see [`Next::Events`]).
    Events { events: Vec<Event>, live_after: i64 },
    /// The revisions the watch wanted were compacted, up to `oldest`, the oldest etcd keeps:
    /// the caller reads the state again and goes on from it with [`Follow::watch_from`].
    Compacted { oldest: i64 },
}

/// A command that keeps running: its watch on everything under the prefix, which rides out
/// etcd restarts, member loss and compaction; its reads, tried again while etcd is away; and
/// its stop.
pub struct Follow {
    client: Client,
    pub keys: Keys,
    stop: Stop,
    watch: Option<Resumable>,
}

impl Follow {
    pub fn new(client: &Client, keys: &Keys) -> Follow {
        Follow {
            client: client.clone(),
            keys: keys.clone(),
            stop: Stop::new(),
            watch: None,
        }
    }

    /// Watches from revision `from` on.
    pub fn watch_from(&mut self, from: i64) {
        match self.watch.as_mut() {
            Some(w) => w.resume_at(from),
            None => self.watch = Some(Resumable::new(&self.client, self.keys.root(), true, from)),
        }
    }

    /// Runs `op` (a read) until it succeeds, waiting while etcd is away: `None` once a stop
    /// comes. An error that waiting will not fix is returned.
    pub async fn read<T, F, Fut>(&mut self, mut op: F) -> Result<Option<T>, CliError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CliError>>,
    {
        let mut delays = watch::delays();
        loop {
            let outcome = tokio::select! {
                () = self.stop.wait() => return Ok(None),
                r = op() => r,
            };
            match outcome {
                Ok(v) => {
                    back();
                    return Ok(Some(v));
                }
                Err(e) if transient(&e) => {
                    away(&e.to_string(), None);
                    let delay = delays.next().unwrap_or(crate::store::MAX_RETRY_DELAY);
                    tokio::select! {
                        () = self.stop.wait() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next changes (or word of a compaction), or `None` once a stop comes. While etcd is
    /// away it says so and tries again, resuming after the last revision handed out.
    pub async fn next(&mut self) -> Result<Option<Batch>, CliError> {
        let Some(watch) = self.watch.as_mut() else {
            return Err(CliError::Usage("no watch started".into()));
        };
        loop {
            let got = tokio::select! {
                () = self.stop.wait() => return Ok(None),
                got = watch.next() => got,
            };
            match got {
                Ok(Next::Events { events, live_after }) => {
                    back();
                    return Ok(Some(Batch::Events { events, live_after }));
                }
                Ok(Next::Compacted { wanted, oldest }) => {
                    back();
                    eprintln!(
                        "citadel: etcd has compacted its history up to revision {oldest} \
                         (wanted {wanted}): reading the current state again"
                    );
                    return Ok(Some(Batch::Compacted { oldest }));
                }
                Err(e) if e.is_permanent() => return Err(into_cli(e)),
                Err(e) => {
                    tracing::debug!(error = %e, resume_from = watch.from(), "watch broke");
                    away(&e.to_string(), Some(watch.from()));
                    let delay = watch.delay();
                    tokio::select! {
                        () = self.stop.wait() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Watches from `from` until a key that `matters` changes (or history is compacted: the
    /// state must be read again), then lets a burst of writes settle for a moment (a leader
    /// commits in batches): true, or false once a stop comes.
    pub async fn changed(
        &mut self,
        from: i64,
        matters: impl Fn(&Key) -> bool,
    ) -> Result<bool, CliError> {
        self.watch_from(from);
        let relevant = |keys: &Keys, events: &[Event]| {
            events.iter().any(|e| {
                e.kv()
                    .and_then(|kv| keys.parse(kv.key()))
                    .is_some_and(|k| matters(&k))
            })
        };
        loop {
            match self.next().await? {
                None => return Ok(false),
                Some(Batch::Compacted { .. }) => return Ok(true),
                Some(Batch::Events { events, .. }) if relevant(&self.keys, &events) => break,
                Some(Batch::Events { .. }) => {}
            }
        }
        // Coalesce what follows within a short quiet spell, bounded by a count.
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_millis(150), self.next()).await {
                Err(_) => break,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Ok(false),
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// One key watched from a revision for `submit --wait`: the values it takes (empty when it is
/// deleted), through etcd restarts; after a compaction, its value now.
pub struct KeyWatch {
    client: Client,
    key: String,
    watch: Resumable,
}

impl KeyWatch {
    pub fn new(client: &Client, key: String, from: i64) -> KeyWatch {
        KeyWatch {
            client: client.clone(),
            watch: Resumable::new(client, key.clone(), false, from),
            key,
        }
    }

    /// The next values the key took, in order. Waits as long as etcd is away: the caller
    /// bounds it.
    pub async fn next(&mut self) -> Result<Vec<Vec<u8>>, CliError> {
        loop {
            match self.watch.next().await {
                Ok(Next::Events { events, .. }) => {
                    back();
                    return Ok(events
                        .iter()
                        .filter_map(|e| match (e.event_type(), e.kv()) {
                            (EventType::Delete, _) => Some(Vec::new()),
                            (EventType::Put, kv) => kv.map(|kv| kv.value().to_vec()),
                        })
                        .collect());
                }
                Ok(Next::Compacted { .. }) => {
                    let got =
                        match super::timed(self.client.kv_client().get(self.key.as_str(), None))
                            .await
                        {
                            Ok(got) => got,
                            Err(e) if transient(&e) => {
                                away(&e.to_string(), None);
                                tokio::time::sleep(self.watch.delay()).await;
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                    let rev = got.header().map_or(0, |h| h.revision());
                    self.watch.resume_at(rev + 1);
                    return Ok(vec![
                        got.kvs()
                            .first()
                            .map(|kv| kv.value().to_vec())
                            .unwrap_or_default(),
                    ]);
                }
                Err(e) if e.is_permanent() => return Err(into_cli(e)),
                Err(e) => {
                    away(&e.to_string(), Some(self.watch.from()));
                    tokio::time::sleep(self.watch.delay()).await;
                }
            }
        }
    }
}
