//! Who keeps books on the mirror: a [`Listener`] hears every change the cache applies, in
//! revision order, under the cache's lock, and may hold a decision event back.
//!
//! The leader's ledger (the manager's work sets, parked requests and guard) is one; a one-shot
//! CLI read has none ([`NoListener`]). The mirror and its listener share one lock
//! ([`Shared`]): a change and the books kept on it are never seen apart. The cache never looks
//! inside a listener; the listener's owner holds a typed handle to the same lock
//! ([`super::Books`]) and reaches its own books through it.

use etcd_client::{EventType, KeyValue};

use super::change::Change;
use super::mirror::Mirror;
use crate::keys::Keys;
use crate::model::{Decision, EngineId, RequestId};
use crate::scheduler::Parsed;

/// What keeps books on the mirror.
pub trait Listener: Send {
    /// A decision event for request `id` at `rev` (`value` is `None` for a delete), before it
    /// is applied: apply it (true), or not (false: the mirror holds it already, or the
    /// listener holds it back to judge it later).
    fn admit(&mut self, mirror: &Mirror, id: &str, rev: i64, value: Option<&[u8]>) -> bool;
    /// The mirror changed.
    fn changed(&mut self, mirror: &Mirror, change: Change);
    /// The mirror was filled anew from a list; `parsed` holds each request's parse.
    fn listed(&mut self, mirror: &Mirror, parsed: Vec<(RequestId, Parsed)>);
    /// How much work the books hold for their owner, for the operator's metrics and page.
    fn backlog(&self) -> Backlog {
        Backlog::default()
    }
}

/// What a listener's books hold for their owner to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Requests waiting for the leader: to decide, to release, or to write back.
    pub queued: usize,
    /// Unschedulable requests waiting for room that could fit them.
    pub parked: usize,
}

/// Keeps no books: the mirror alone, as a one-shot read needs it.
#[derive(Debug, Default)]
pub struct NoListener;

impl Listener for NoListener {
    fn admit(&mut self, _: &Mirror, _: &str, _: i64, _: Option<&[u8]>) -> bool {
        true
    }
    fn changed(&mut self, _: &Mirror, _: Change) {}
    fn listed(&mut self, _: &Mirror, _: Vec<(RequestId, Parsed)>) {}
}

/// The mirror and its listener under one lock. `L` is last: a `Shared<Ledger>` is also a
/// `Shared<dyn Listener>`, so the cache and the listener's owner hold the same lock, each
/// with the type it knows.
pub struct Shared<L: ?Sized> {
    pub(super) mirror: Mirror,
    /// Changes made and not yet told (a buffer reused from event to event).
    changes: Vec<Change>,
    listener: L,
}

impl<L> Shared<L> {
    pub(super) fn new(mirror: Mirror, listener: L) -> Self {
        Shared {
            mirror,
            changes: Vec::new(),
            listener,
        }
    }
}

impl<L: Listener + ?Sized> Shared<L> {
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    pub fn listener_mut(&mut self) -> &mut L {
        &mut self.listener
    }

    /// The mirror to read and the listener's books to keep, at once.
    pub fn parts(&mut self) -> (&Mirror, &mut L) {
        (&self.mirror, &mut self.listener)
    }

    /// Applies one watch event (`parsed`: the request's parse, if it is a request key).
    pub(super) fn apply(
        &mut self,
        keys: &Keys,
        kind: EventType,
        kv: &KeyValue,
        parsed: Option<Parsed>,
    ) {
        // Told apart before anything is allocated or parsed: the leader's own decisions come
        // back as events it has already applied, one per placement.
        if let Some(("decisions", id)) = keys.split(kv.key())
            && RequestId::names_key_segment(id)
        {
            let value = (kind == EventType::Put).then(|| kv.value());
            if !self
                .listener
                .admit(&self.mirror, id, kv.mod_revision(), value)
            {
                return;
            }
        }
        match kind {
            EventType::Put => self.mirror.put(keys, kv, parsed, &mut self.changes),
            EventType::Delete => self.mirror.delete(keys, kv, &mut self.changes),
        }
        self.tell();
    }

    /// Replaces everything with a fresh list taken at `revision`; `parsed` holds each key's
    /// request parse.
    pub(super) fn list(
        &mut self,
        keys: &Keys,
        kvs: &[KeyValue],
        parsed: Vec<Option<Parsed>>,
        revision: i64,
    ) {
        let requests = self.mirror.reset(keys, kvs, parsed, revision);
        self.changes.clear();
        self.listener.listed(&self.mirror, requests);
    }

    /// etcd went back in time (see `rewind.rs`); a list follows.
    pub(super) fn rewound(&mut self) {
        self.mirror.rewound();
    }

    /// Every event up to `revision` is applied.
    pub(super) fn reached(&mut self, revision: i64) -> i64 {
        self.mirror.reached(revision)
    }

    /// Applies a decision event the listener held back (judged to be the truth, or let go when
    /// its replica stopped leading), as the watch would have.
    pub fn apply_held(&mut self, id: &RequestId, rev: i64, value: Option<&[u8]>) {
        match value {
            Some(v) => self.mirror.read_decision(id, rev, v, &mut self.changes),
            None => self.mirror.remove_decision(id, &mut self.changes),
        }
        self.tell();
    }

    /// A decision the leader committed at `rev` (`None`: it deleted it), applied as the commit
    /// returns: etcd holds it already, and its watch event, when it comes, is admitted as
    /// held ([`Listener::admit`]).
    pub fn committed(&mut self, id: &RequestId, rev: i64, decision: Option<&Decision>) {
        self.mirror.committed(id, rev, decision, &mut self.changes);
        self.tell();
    }

    /// The leader wrote (`Some`: answering this request revision) or deleted the decision of
    /// the odd request key with this segment ([`crate::keys::Key::OddRequest`]).
    pub fn odd_committed(&mut self, segment: &[u8], rev: i64, answers: Option<i64>) {
        self.mirror
            .odd_committed(segment, rev, answers, &mut self.changes);
        self.tell();
    }

    /// A named volume the leader recorded on `engine` in a transaction that committed.
    pub fn volume_committed(&mut self, name: &str, engine: EngineId) {
        self.mirror.volume_recorded(name, engine, &mut self.changes);
        self.tell();
    }

    /// Tells the listener what changed, in order.
    fn tell(&mut self) {
        let Shared {
            mirror,
            changes,
            listener,
        } = self;
        for change in changes.drain(..) {
            listener.changed(mirror, change);
        }
    }
}
