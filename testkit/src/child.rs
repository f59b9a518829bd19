//! A child process a test owns: signalled through rustix, stopped gracefully (SIGTERM, then
//! SIGKILL after a grace period), paused and resumed (SIGSTOP/SIGCONT, as a partitioned or
//! frozen host looks to its peers), and always reaped.

use std::io;
use std::time::Duration;

pub use rustix::process::Signal;
use tokio::process::Child;

/// Sends `sig` to process `pid` (one of the caller's own children: a pid it has not reaped
/// cannot have been recycled).
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(io::Error::from)
}

/// A spawned child, reaped however it ends.
#[derive(Debug)]
pub struct ChildProcess {
    child: Option<Child>,
    pid: u32,
}

impl ChildProcess {
    pub fn new(child: Child) -> Self {
        ChildProcess {
            pid: child.id().unwrap_or(0),
            child: Some(child),
        }
    }

    /// The OS process id (of the latest run).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it still runs (a paused child runs).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig`, if it still runs.
    pub fn signal(&mut self, sig: Signal) -> io::Result<()> {
        if !self.is_running() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not running"));
        }
        signal(self.pid, sig)
    }

    /// SIGSTOP: it keeps its sockets but answers nothing, like a host cut off mid-flight.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(Signal::STOP)
    }

    /// SIGCONT after [`ChildProcess::pause`].
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(Signal::CONT)
    }

    /// SIGKILL, and reaps it. No-op once it has ended.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it. True if it
    /// exited on SIGTERM. A paused child is resumed first, or it could not act on SIGTERM.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = signal(self.pid, Signal::CONT);
        if signal(self.pid, Signal::TERM).is_ok()
            && tokio::time::timeout(grace, child.wait()).await.is_ok()
        {
            return true;
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        false
    }

    /// [`ChildProcess::stop`] for `Drop`, where nothing can be awaited: blocks for at most
    /// `grace` plus a second.
    pub fn stop_blocking(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let _ = signal(self.pid, Signal::CONT);
            if signal(self.pid, Signal::TERM).is_ok() {
                wait_blocking(&mut child, grace);
            }
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.start_kill();
            wait_blocking(&mut child, Duration::from_secs(1));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Give the kernel a moment to tear the process down, so that whatever directory
            // it works in is not removed under it.
            wait_blocking(child, Duration::from_secs(1));
        }
    }
}

/// Polls until `child` has exited or `limit` has passed.
fn wait_blocking(child: &mut Child, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> ChildProcess {
        ChildProcess::new(
            tokio::process::Command::new("sleep")
                .arg("30")
                .kill_on_drop(true)
                .spawn()
                .expect("spawn sleep"),
        )
    }

    #[tokio::test]
    async fn a_paused_child_still_runs_and_stops_on_sigterm() {
        let mut c = sleeper();
        assert!(c.pid() > 0 && c.is_running());
        c.pause().expect("SIGSTOP");
        assert!(c.is_running());
        assert!(c.stop(Duration::from_secs(5)).await, "exits on SIGTERM");
        assert!(!c.is_running());
        assert!(c.signal(Signal::TERM).is_err(), "nothing left to signal");
    }

    #[tokio::test]
    async fn kill_reaps() {
        let mut c = sleeper();
        c.kill().await;
        assert!(!c.is_running());
    }
}
