//! How every long-running task learns that the process is stopping: a `watch` channel whose
//! value turns true on SIGTERM/SIGINT (or when its sender is dropped).

use tokio::sync::watch;

/// True once shutdown is asked for, or its sender is gone (nobody can ask any more).
pub fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}
