//! The leader's guard over the decisions it owns.
//!
//! While a replica leads, every decision under the prefix is its own write: the fence shuts out
//! every other replica, and its barrier showed it everything earlier leaders wrote. So a
//! decision event that none of its own writes explains was made by someone else (an operator's
//! `etcdctl del --prefix …/decisions/`, a script, a stray tool). The leader keeps its own state,
//! logs what happened, and writes its decision back ([`super::Work::Restore`]).
//!
//! An event is explained by a write of ours when the state already holds that decision at that
//! revision (the leader applies its commits as they return, and the watch echoes them later),
//! or, for an event that arrived first, once every write of ours that was in flight when it
//! arrived has returned and been applied: each write takes a sequence number before it is sent
//! ([`Guard::begin`]) and gives it back, under the state's lock, after it is applied
//! ([`Guard::end`]). An event is judged only when every number taken before it is back.
//!
//! A write whose outcome is unknown (the call failed) may land unseen: its requests are
//! *uncertain*, and an event for one of them is taken as the truth, whoever wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::state::*;
use crate::model::*;

/// A decision event no write of ours explains yet.
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    /// The event's revision.
    pub rev: i64,
    /// Writes numbered below this were sent before the event arrived.
    mark: u64,
    /// The value written, or `None` for a delete.
    pub value: Option<Arc<[u8]>>,
}

impl Suspect {
    /// The decision key's mod revision in etcd after this event (0: deleted).
    pub fn fence(&self) -> i64 {
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
    pub repairs: BTreeMap<RequestId, Suspect>,
    /// Requests whose last write of ours has an unknown outcome.
    pub uncertain: HashSet<RequestId>,
}

impl Guard {
    /// Numbers a write of ours before it is sent.
    pub fn begin(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// The write numbered `seq` has returned and what it wrote (if anything) is applied.
    pub fn end(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Notes an event for `id` that the state cannot explain yet; a later one replaces it.
    pub fn suspect(&mut self, id: RequestId, rev: i64, value: Option<Arc<[u8]>>) {
        let mark = self.next;
        self.suspects.insert(id, Suspect { rev, mark, value });
    }

    pub fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// The suspects every write of ours sent before them has answered for.
    pub fn ready(&mut self) -> Vec<(RequestId, Suspect)> {
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
    /// and repairs alike, oldest first, for the state to apply as it would any event; forgets
    /// the writes in flight.
    pub fn stop(&mut self) -> Vec<(RequestId, Suspect)> {
        let mut all: Vec<(RequestId, Suspect)> = self.suspects.drain().collect();
        all.extend(std::mem::take(&mut self.repairs));
        all.sort_by_key(|(_, s)| s.rev);
        self.in_flight.clear();
        self.uncertain.clear();
        all
    }
}

impl State {
    /// Whether decision events are checked against this leader's own writes: while it leads,
    /// once its cache has replayed what a fresh list may have wiped.
    pub(super) fn guarding(&self) -> bool {
        self.leading && self.caught_up()
    }

    /// This replica starts or stops leading. When it stops, the events the guard held back are
    /// applied as they would have been.
    pub fn set_leading(&mut self, leading: bool) {
        if self.leading == leading {
            return;
        }
        self.leading = leading;
        if leading {
            let engines: Vec<EngineId> = self.engines.keys().cloned().collect();
            for engine in engines {
                self.check_capacity(&engine);
            }
            return;
        }
        for (id, s) in self.guard.stop() {
            let held = self.decisions.get(&id).map(|d| d.mod_revision);
            if held.is_some_and(|r| r >= s.rev) {
                continue;
            }
            match s.value {
                Some(v) => self.read_decision(&id, s.rev, &v),
                None => self.remove_decision(&id),
            }
        }
    }

    /// Numbers a decision write of this leader's before it is sent (see the guard); give the
    /// number back with [`State::end_write`] once what it wrote is applied.
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

    /// Judges the decision events the guard held back whose writes of ours have all answered:
    /// those none explains were someone else's, and are queued to be written back.
    pub fn judge(&mut self) {
        if !self.guard.has_suspects() {
            return;
        }
        for (id, s) in self.guard.ready() {
            let held = self.decisions.get(&id).map(|d| d.mod_revision);
            if explained(s.value.is_some(), s.rev, held) {
                continue;
            }
            if self.guard.uncertain.remove(&id) {
                match &s.value {
                    Some(v) => self.read_decision(&id, s.rev, v),
                    None => self.remove_decision(&id),
                }
                continue;
            }
            let request = self.requests.get(&id).map(|r| r.mod_revision);
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
    }

    /// Decisions written by someone else and not repaired yet.
    pub fn repairs(&self) -> usize {
        self.guard.repairs.len()
    }

    /// The decision this leader holds for `id`, to write back over someone else's change:
    /// `None` when it holds none that is current (the request's work rewrites the key anyway).
    pub(super) fn restoration(&self, id: &RequestId) -> Option<Decision> {
        let d = self.decisions.get(id)?;
        let r = self.requests.get(id)?;
        if d.request_revision != r.mod_revision {
            return None;
        }
        let resource = match &d.engine {
            Some(e) => Some(self.resource_of(e)?),
            None => None,
        };
        let reservation = self.reservations.get(id).map(|h| Reservation {
            cpus: h.cpus.as_cpus(),
            memory: h.memory.0 as f64,
            disk: h.disk.0 as f64,
            ports: h.ports.iter().map(|p| p.to_port()).collect(),
            image: h.image.to_string(),
        });
        Some(Decision {
            container: crate::model::Echo::of(&r.raw),
            resource,
            reservation,
            status: d.status,
            reason: d.reason.clone(),
            scheduler: d.scheduler.map(|s| s.to_string()).unwrap_or_default(),
            alternatives: Vec::new(),
            request_revision: d.request_revision,
            decided_at: String::new(),
            decided_by: String::new(),
            run: d.run.as_deref().cloned(),
        })
    }

    pub(super) fn resource_of(&self, engine: &EngineId) -> Option<Resource> {
        match &self.engines.get(engine)?.spec {
            Ok((_, view)) => Some(view.resource()),
            Err(_) => None,
        }
    }
}

/// Whether a decision event at `rev` (a put, or a delete) is explained by what the leader holds:
/// a decision it applied at that revision or later, or, for a delete, none at all.
pub(super) fn explained(put: bool, rev: i64, held: Option<i64>) -> bool {
    match held {
        Some(r) => r > rev || (put && r == rev),
        None => !put,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rid(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }

    #[test]
    pub(super) fn a_suspect_waits_for_every_write_sent_before_it() {
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
        assert!(!g.has_suspects());
    }

    #[test]
    pub(super) fn stopping_hands_back_suspects_oldest_first() {
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
}
