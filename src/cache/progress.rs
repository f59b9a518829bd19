//! How closely the cache follows etcd, for the operator's probes (`/readyz`) and metrics.
//!
//! The cache's watch task reports here as it works: when it lists, when etcd answers, when a
//! call fails. Nothing in scheduling reads this: the leader's own catch-up is its barrier write
//! (see the manager), never these reports.
//!
//! The *timeline* remembers, for the newest watch responses, the revision each one brought the
//! cache to and when it was applied. A leader looks a request's revision up in it when it
//! commits the request's decision: that is the request's wait, from the cache seeing it to its
//! decision being in etcd, without a timestamp kept per request.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Watch responses remembered in the timeline (16 bytes and an `Instant` each): at a few hundred
/// commits a second, a backlog of tens of seconds. A request older than that goes untimed.
const TIMELINE: usize = 8192;

/// What the watch task is doing (its stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Nothing asked of etcd yet (the replica may still be connecting).
    Starting,
    /// Reading every key under the prefix: the first time, or again after a compacted or
    /// cancelled watch.
    Listing,
    /// Listed, and the watch is open.
    Following,
    /// The last list or watch call failed (the error, as one line); retried with backoff.
    Broken(String),
}

/// A copy of the cache's progress, as the probes read it.
#[derive(Debug, Clone)]
pub struct Followed {
    pub stage: Stage,
    /// When the stage began.
    pub since: Instant,
    /// The cache has listed every key at least once: it holds a whole view, if perhaps an old one.
    pub listed: bool,
    /// The newest revision etcd wrote in the header of a list or watch response the cache read.
    pub head: i64,
    /// When etcd last answered the cache.
    pub last_answer: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    followed: Followed,
    /// (revision reached, when), oldest first.
    timeline: VecDeque<(i64, Instant)>,
    /// Revisions up to this one fell out of the timeline: their time is unknown.
    floor: i64,
}

/// The watch task's reports, behind a lock of their own: a probe never waits on the state's.
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<Inner>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            inner: Mutex::new(Inner {
                followed: Followed {
                    stage: Stage::Starting,
                    since: Instant::now(),
                    listed: false,
                    head: 0,
                    last_answer: None,
                },
                timeline: VecDeque::new(),
                floor: 0,
            }),
        }
    }
}

impl Progress {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the reports whole: a panic elsewhere cannot tear them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A list begins.
    pub(super) fn listing(&self) {
        self.inner().enter(Stage::Listing);
    }

    /// A list at `revision` is applied: the cache holds a whole view as of then.
    pub(super) fn listed(&self, revision: i64) {
        let mut inner = self.inner();
        inner.followed.listed = true;
        inner.answered(revision);
        inner.enter(Stage::Following);
        inner.reached(revision);
    }

    /// etcd answered the watch (with events or without), its header at `head`.
    pub(super) fn answered(&self, head: i64) {
        let mut inner = self.inner();
        inner.answered(head);
        inner.enter(Stage::Following);
    }

    /// A watch response's events are applied, up to `revision`.
    pub(super) fn applied(&self, revision: i64) {
        self.inner().reached(revision);
    }

    /// etcd went back in time: the head and the timeline of the old history mean nothing now.
    pub(super) fn rewound(&self) {
        let mut inner = self.inner();
        inner.followed.head = 0;
        inner.followed.listed = false;
        inner.timeline.clear();
        inner.floor = 0;
    }

    /// A list or watch call failed; the task retries.
    pub(super) fn broken(&self, error: String) {
        let mut inner = self.inner();
        match &mut inner.followed.stage {
            // Keeps when it first broke: a probe reports how long it has been down.
            Stage::Broken(e) => *e = error,
            _ => inner.enter(Stage::Broken(error)),
        }
    }

    pub fn followed(&self) -> Followed {
        self.inner().followed.clone()
    }

    /// When the cache applied the response that brought it `revision`, if the timeline still
    /// holds it.
    pub fn applied_at(&self, revision: i64) -> Option<Instant> {
        let inner = self.inner();
        if revision <= inner.floor {
            return None;
        }
        let i = inner.timeline.partition_point(|(r, _)| *r < revision);
        inner.timeline.get(i).map(|(_, t)| *t)
    }
}

impl Inner {
    fn enter(&mut self, stage: Stage) {
        if self.followed.stage != stage {
            self.followed.stage = stage;
            self.followed.since = Instant::now();
        }
    }

    fn answered(&mut self, head: i64) {
        self.followed.last_answer = Some(Instant::now());
        self.followed.head = self.followed.head.max(head);
    }

    fn reached(&mut self, revision: i64) {
        if self.timeline.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        self.timeline.push_back((revision, Instant::now()));
        while self.timeline.len() > TIMELINE {
            if let Some((r, _)) = self.timeline.pop_front() {
                self.floor = r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_timed_by_the_first_response_that_reached_it() {
        let p = Progress::default();
        assert_eq!(p.applied_at(1), None, "nothing applied yet");
        p.listed(10);
        p.applied(12);
        p.applied(15);
        let at = |r| p.applied_at(r).expect("timed");
        assert_eq!(at(3), at(10), "a listed request was first seen by the list");
        assert!(at(11) >= at(10));
        assert_eq!(at(11), at(12));
        assert_eq!(at(13), at(15));
        assert_eq!(p.applied_at(16), None, "not applied yet");
    }

    #[test]
    fn the_timeline_forgets_its_oldest_revisions() {
        let p = Progress::default();
        p.listed(1);
        for r in 2..(TIMELINE as i64 + 10) {
            p.applied(r);
        }
        assert_eq!(p.applied_at(5), None, "fell out: unknown, not a wrong time");
        assert!(p.applied_at(TIMELINE as i64).is_some());
    }

    #[test]
    fn a_break_keeps_its_start_and_an_answer_ends_it() {
        let p = Progress::default();
        assert_eq!(p.followed().stage, Stage::Starting);
        p.listing();
        p.broken("refused".into());
        let first = p.followed().since;
        p.broken("refused again".into());
        let f = p.followed();
        assert_eq!(f.stage, Stage::Broken("refused again".into()));
        assert_eq!(f.since, first);
        assert!(!f.listed);
        p.listed(7);
        p.answered(9);
        let f = p.followed();
        assert_eq!(f.stage, Stage::Following);
        assert!(f.listed);
        assert_eq!(f.head, 9);
    }
}
