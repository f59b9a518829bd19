//! The leader's guard over the decisions it owns.
//!
//! While a replica leads, every decision under the prefix is its own write: the fence shuts out
//! every other replica, and its barrier showed it everything earlier leaders wrote. So a
//! decision event that none of its own writes explains was made by someone else (an operator's
//! `etcdctl del --prefix …/decisions/`, a script, a stray tool). The leader keeps its own view,
//! logs what happened, and writes its decision back ([`super::Work::Restore`]).
//!
//! An event is explained by a write of ours when the mirror already holds that decision at that
//! revision (the leader applies its commits as they return, and the watch echoes them later),
//! or, for an event that arrived first, once every write of ours that was in flight when it
//! arrived has returned and been applied: each write takes a sequence number before it is sent
//! ([`Ledger::begin_write`]) and gives it back, under the cache's lock, after it is applied
//! ([`Ledger::end_write`]). An event is judged only when every number taken before it is back.
//!
//! A write whose outcome is unknown (the call failed) may land unseen: its requests are
//! *uncertain*, and an event for one of them is taken as the truth, whoever wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::Ledger;
use crate::cache::{Mirror, Shared};
use crate::model::{EngineId, RequestId};

/// A decision event no write of ours explains yet.
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    /// The event's revision.
    pub(super) rev: i64,
    /// Writes numbered below this were sent before the event arrived.
    mark: u64,
    /// The value written, or `None` for a delete.
    pub(super) value: Option<Arc<[u8]>>,
}

impl Suspect {
    /// The decision key's mod revision in etcd after this event (0: deleted).
    pub(super) fn fence(&self) -> i64 {
        if self.value.is_some() { self.rev } else { 0 }
    }
}

#[derive(Debug, Default)]
pub(super) struct Guard {
    next: u64,
    in_flight: BTreeSet<u64>,
    suspects: HashMap<RequestId, Suspect>,
    /// Decisions someone else changed, to be written back, with what they wrote (the repair
    /// compares the key's mod revision: [`Suspect::fence`]).
    pub(super) repairs: BTreeMap<RequestId, Suspect>,
    /// Requests whose last write of ours has an unknown outcome.
    pub(super) uncertain: HashSet<RequestId>,
}

impl Guard {
    /// Numbers a write of ours before it is sent.
    fn begin(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// The write numbered `seq` has returned and what it wrote (if anything) is applied.
    fn end(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// A write of ours for `id` committed and is applied: nothing of `id`'s is to repair, nor
    /// uncertain.
    pub(super) fn own(&mut self, id: &RequestId) {
        self.repairs.remove(id);
        self.uncertain.remove(id);
    }

    /// Notes an event for `id` that the mirror cannot explain yet; a later one replaces it.
    fn suspect(&mut self, id: RequestId, rev: i64, value: Option<Arc<[u8]>>) {
        let mark = self.next;
        self.suspects.insert(id, Suspect { rev, mark, value });
    }

    /// The suspects every write of ours sent before them has answered for.
    fn ready(&mut self) -> Vec<(RequestId, Suspect)> {
        if self.suspects.is_empty() {
            return Vec::new();
        }
        let settled = self.in_flight.first().copied().unwrap_or(self.next);
        let ids: Vec<RequestId> = self
            .suspects
            .iter()
            .filter(|(_, s)| s.mark <= settled)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| self.suspects.remove(&id).map(|s| (id, s)))
            .collect()
    }

    /// Stops guarding (the replica no longer leads): returns the events held back, suspects
    /// and repairs alike, oldest first, to be applied as any event; forgets the writes in
    /// flight.
    fn stop(&mut self) -> Vec<(RequestId, Suspect)> {
        let mut all: Vec<(RequestId, Suspect)> = self.suspects.drain().collect();
        all.extend(std::mem::take(&mut self.repairs));
        all.sort_by_key(|(_, s)| s.rev);
        self.in_flight.clear();
        self.uncertain.clear();
        all
    }
}

/// Whether a decision event at `rev` (a put, or a delete) is explained by what the mirror holds:
/// a decision applied at that revision or later, or, for a delete, none at all.
fn explained(put: bool, rev: i64, held: Option<i64>) -> bool {
    match held {
        Some(r) => r > rev || (put && r == rev),
        None => !put,
    }
}

impl Ledger {
    /// Whether decision events are checked against this leader's own writes: while it leads,
    /// once the mirror has replayed what a fresh list may have wiped.
    fn guarding(&self, mirror: &Mirror) -> bool {
        self.leading && mirror.caught_up()
    }

    /// A decision event, before the mirror applies it: false when the mirror holds it already
    /// (the leader's own), or when it is held back for the guard to judge.
    pub(super) fn admit_decision(
        &mut self,
        mirror: &Mirror,
        id: &str,
        rev: i64,
        value: Option<&[u8]>,
    ) -> bool {
        if !self.guarding(mirror) {
            return true;
        }
        let held = mirror.decision_revision(id);
        if explained(value.is_some(), rev, held) {
            return false;
        }
        let Some(id) = RequestId::from_key_segment(id) else {
            return true;
        };
        if self.guard.uncertain.remove(&id) {
            return true;
        }
        self.guard.suspect(id, rev, value.map(Arc::from));
        false
    }

    /// This replica starts or stops leading. When it stops, the events the guard held back are
    /// applied as they would have been.
    pub fn set_leading(books: &mut Shared<Ledger>, leading: bool) {
        let (mirror, ledger) = books.parts();
        if ledger.leading == leading {
            return;
        }
        ledger.leading = leading;
        if leading {
            let engines: Vec<EngineId> = mirror.engine_ids().cloned().collect();
            for engine in engines {
                ledger.check_capacity(mirror, &engine);
            }
            return;
        }
        let mut held: Vec<(RequestId, Suspect)> = ledger
            .guard
            .stop()
            .into_iter()
            .filter(|(id, s)| mirror.decision(id).is_none_or(|d| d.mod_revision < s.rev))
            .collect();
        // In etcd's order, and within one transaction what frees before what holds (a
        // preemption's evictions before the placement they make room for), so no engine is
        // seen to hold more than it can on the way.
        held.sort_by_key(|(_, s)| (s.rev, s.value.as_deref().is_some_and(holds)));
        for (id, s) in held {
            books.apply_held(&id, s.rev, s.value.as_deref());
        }
    }

    /// Numbers a decision write of this leader's before it is sent (see the guard); give the
    /// number back with [`Ledger::end_write`] once what it wrote is applied.
    pub fn begin_write(&mut self) -> u64 {
        self.guard.begin()
    }

    pub fn end_write(&mut self, seq: u64) {
        self.guard.end(seq);
    }

    /// A write of ours for these requests failed without an answer: it may land unseen.
    pub fn uncertain<'a>(&mut self, ids: impl IntoIterator<Item = &'a RequestId>) {
        self.guard.uncertain.extend(ids.into_iter().cloned());
    }

    #[cfg(test)]
    pub(crate) fn is_uncertain(&self, id: &RequestId) -> bool {
        self.guard.uncertain.contains(id)
    }

    /// Judges the decision events the guard held back whose writes of ours have all answered:
    /// those none explains were someone else's, and are queued to be written back; those of
    /// uncertain requests are the truth, and are applied.
    pub fn judge(books: &mut Shared<Ledger>) {
        let (mirror, ledger) = books.parts();
        let truth = ledger.judge_ready(mirror);
        for (id, s) in truth {
            books.apply_held(&id, s.rev, s.value.as_deref());
        }
    }

    fn judge_ready(&mut self, mirror: &Mirror) -> Vec<(RequestId, Suspect)> {
        let mut truth = Vec::new();
        for (id, s) in self.guard.ready() {
            let held = mirror.decision(&id).map(|d| d.mod_revision);
            if explained(s.value.is_some(), s.rev, held) {
                continue;
            }
            if self.guard.uncertain.remove(&id) {
                truth.push((id, s));
                continue;
            }
            let request = mirror.request(&id).map(|r| r.mod_revision);
            let (change, to_do) = match (&s.value, held, request) {
                (Some(_), None, Some(_)) => ("written", "it is decided anyway"),
                (Some(_), None, None) => ("written", "deleting it: its request does not exist"),
                (Some(_), Some(_), _) => ("changed", "writing the leader's back"),
                (None, _, _) => ("deleted", "writing the leader's back"),
            };
            tracing::warn!(request = %id, revision = s.rev,
                "a decision was {change} by someone other than the leader: {to_do}");
            self.guard.repairs.insert(id, s);
        }
        truth
    }

    /// Decisions written by someone else and not repaired yet.
    pub fn repairs(&self) -> usize {
        self.guard.repairs.len()
    }
}

/// Whether a decision's value holds a reservation.
fn holds(value: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(value)
        .is_ok_and(|v| v.get("reservation").is_some_and(|r| !r.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fed::rid;

    #[test]
    fn a_suspect_waits_for_every_write_sent_before_it() {
        let mut g = Guard::default();
        let early = g.begin();
        let other = g.begin();
        g.suspect(rid("a"), 10, None);
        let late = g.begin();
        assert!(g.ready().is_empty(), "two writes sent before it are out");
        g.end(other);
        assert!(g.ready().is_empty(), "one is still out");
        g.end(early);
        // The write sent after the event cannot explain it: no need to wait for it.
        let ready = g.ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.rev, 10);
        g.end(late);
        assert!(g.suspects.is_empty());
    }

    #[test]
    fn stopping_hands_back_suspects_oldest_first() {
        let mut g = Guard::default();
        g.begin();
        g.suspect(rid("b"), 7, Some(Arc::from(&b"{}"[..])));
        g.suspect(rid("a"), 5, None);
        let c = g.suspects.remove(&rid("b")).unwrap();
        g.repairs.insert(rid("c"), c);
        let back = g.stop();
        let revs: Vec<i64> = back.iter().map(|(_, s)| s.rev).collect();
        assert_eq!(revs, vec![5, 7]);
        assert!(g.repairs.is_empty() && g.ready().is_empty());
    }

    #[test]
    fn an_event_is_explained_by_a_decision_held_at_its_revision_or_later() {
        // (put, event revision, held revision) -> explained
        let cases = [
            (true, 5, Some(5), true),
            (true, 5, Some(6), true),
            (true, 5, Some(4), false),
            (true, 5, None, false),
            (false, 5, None, true),
            (false, 5, Some(5), false),
            (false, 5, Some(6), true),
        ];
        for (put, rev, held, want) in cases {
            assert_eq!(explained(put, rev, held), want, "{put} {rev} {held:?}");
        }
    }
}
