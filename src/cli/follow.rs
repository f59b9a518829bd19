//! The commands that keep running (`events`, `status --watch`, `requests ls --watch`): one etcd
//! watch over the whole prefix, and a clean stop on SIGINT or SIGTERM. A closed pipe ends them
//! at their next write (see [`super::output::write_line`]).

use std::time::Duration;

use etcd_client::{Client, Event, WatchOptions, WatchStream};
use rustix::event::{PollFd, PollFlags};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use super::CliError;
use crate::keys::{Key, Keys};

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

/// A watch on everything under the prefix.
pub struct Follow {
    stream: WatchStream,
    pub keys: Keys,
}

impl Follow {
    /// Watches from revision `from` (0: from now on).
    pub async fn start(client: &Client, keys: &Keys, from: i64) -> Result<Follow, CliError> {
        let mut opts = WatchOptions::new().with_prefix();
        if from > 0 {
            opts = opts.with_start_revision(from);
        }
        let stream = super::timed(client.watch_client().watch(keys.root(), Some(opts))).await?;
        Ok(Follow {
            stream,
            keys: keys.clone(),
        })
    }

    /// The next events, or `None` once `stop` fires.
    pub async fn next(&mut self, stop: &mut Stop) -> Result<Option<Vec<Event>>, CliError> {
        loop {
            let resp = tokio::select! {
                () = stop.wait() => return Ok(None),
                m = self.stream.message() => m?,
            };
            let Some(resp) = resp else {
                return Err(CliError::Usage("etcd ended the watch".into()));
            };
            if resp.canceled() {
                let why = if resp.compact_revision() > 0 {
                    format!(
                        "etcd has compacted its history up to revision {}: start later",
                        resp.compact_revision()
                    )
                } else {
                    resp.cancel_reason().to_string()
                };
                return Err(CliError::Usage(format!("watch cancelled: {why}")));
            }
            if !resp.events().is_empty() {
                return Ok(Some(resp.events().to_vec()));
            }
        }
    }

    /// Waits until a key that `matters` changes, then lets a burst of writes settle for a
    /// moment (a leader commits in batches): true, or false once `stop` fires.
    pub async fn changed(
        &mut self,
        stop: &mut Stop,
        matters: impl Fn(&Key) -> bool,
    ) -> Result<bool, CliError> {
        let relevant = |keys: &Keys, events: &[Event]| {
            events.iter().any(|e| {
                e.kv()
                    .and_then(|kv| keys.parse(kv.key()))
                    .is_some_and(|k| matters(&k))
            })
        };
        loop {
            let Some(events) = self.next(stop).await? else {
                return Ok(false);
            };
            if relevant(&self.keys, &events) {
                break;
            }
        }
        // Coalesce what follows within a short quiet spell, bounded by a count.
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_millis(150), self.next(stop)).await {
                Err(_) => break,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Ok(false),
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(true)
    }
}
