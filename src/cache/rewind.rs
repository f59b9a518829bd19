//! Noticing that etcd went back in time: restored from a snapshot (its revision is back where
//! the snapshot was taken), or replaced by another cluster (another cluster id).
//!
//! etcd's revision never goes back in one history: a response whose header is below the
//! highest revision this replica has seen comes from another history, or from a member that
//! lags (a follower answering a watch before it has applied what the leader has). The watch
//! task tells the two apart with one linearizable read ([`History::confirms`]): a lagging
//! member's cluster answers it at the revision the replica has seen or beyond, a restored one
//! below. A watch from a revision the restored etcd has not reached would otherwise wait,
//! silently, until etcd reaches it, and then go on with the restored history never read.

/// What the replica knows of etcd's history: the highest revision and the cluster id seen in
/// any response header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct History {
    highest: i64,
    /// 0 until a header says.
    cluster: u64,
}

/// How a response shows another history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rewind {
    /// etcd's revision is below one seen before.
    Revision { seen: i64, now: i64 },
    /// Another cluster answers on the same address.
    Cluster { seen: u64, now: u64 },
}

impl std::fmt::Display for Rewind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rewind::Revision { seen, now } => {
                write!(f, "etcd's revision is {now}, below the {seen} already seen")
            }
            Rewind::Cluster { seen, now } => {
                write!(
                    f,
                    "etcd's cluster id is {now:x}, not the {seen:x} seen before"
                )
            }
        }
    }
}

impl History {
    /// A header from another history than the one seen so far, if this one is; otherwise
    /// notes it. A header without a revision or a cluster id (0) says nothing of either.
    pub(super) fn saw(&mut self, revision: i64, cluster: u64) -> Option<Rewind> {
        let rewind = self.differs(revision, cluster);
        if rewind.is_none() {
            self.highest = self.highest.max(revision);
            if cluster != 0 {
                self.cluster = cluster;
            }
        }
        rewind
    }

    /// Whether a header (of a linearizable read, answered by etcd's raft leader) confirms
    /// what [`History::saw`] suspected.
    pub(super) fn confirms(&self, revision: i64, cluster: u64) -> Option<Rewind> {
        self.differs(revision, cluster)
    }

    /// Forgets the old history (after a rewind, before listing again): the next header
    /// starts the new one.
    pub(super) fn forget(&mut self) {
        *self = History::default();
    }

    fn differs(&self, revision: i64, cluster: u64) -> Option<Rewind> {
        if cluster != 0 && self.cluster != 0 && cluster != self.cluster {
            return Some(Rewind::Cluster {
                seen: self.cluster,
                now: cluster,
            });
        }
        (revision > 0 && revision < self.highest).then_some(Rewind::Revision {
            seen: self.highest,
            now: revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_below_one_seen_or_another_cluster_is_another_history() {
        let mut h = History::default();
        assert_eq!(h.saw(10, 7), None, "the first header starts the history");
        assert_eq!(h.saw(145, 7), None);
        assert_eq!(h.saw(145, 0), None, "no cluster id: nothing said of it");
        assert_eq!(h.saw(0, 7), None, "no revision: nothing said of it");
        assert_eq!(h.saw(64, 7), Some(Rewind::Revision { seen: 145, now: 64 }));
        assert_eq!(
            h.saw(64, 7),
            Some(Rewind::Revision { seen: 145, now: 64 }),
            "a suspicion changes nothing until confirmed"
        );
        assert_eq!(h.saw(200, 9), Some(Rewind::Cluster { seen: 7, now: 9 }));
        assert_eq!(
            h.confirms(150, 7),
            None,
            "a member that lagged: same history"
        );
        assert!(h.confirms(64, 7).is_some());

        h.forget();
        assert_eq!(h.saw(64, 9), None, "the new history starts at the restore");
        assert_eq!(h.saw(65, 9), None);
        assert_eq!(h.saw(64, 9), Some(Rewind::Revision { seen: 65, now: 64 }));
    }
}
