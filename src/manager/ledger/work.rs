//! The work the ledger hands the leader, read from one look at the mirror: decide a request,
//! release a decision, or write back one someone else changed.

use std::collections::HashSet;
use std::sync::Arc;

use super::Ledger;
use super::classify::Class;
use crate::cache::{Mirror, OddRequest};
use crate::model::{Decision, EngineId, Lifecycle, RequestId, Run, Status};
use crate::scheduler::Parsed;

/// A unit of work for the leader.
#[derive(Debug, Clone)]
pub enum Work {
    /// Decide a request that has no current decision.
    Decide(Decide),
    /// Delete the decision (and with it the reservation) of a request that is gone or changed.
    Release {
        id: RequestId,
        /// The request's mod revision if it still exists (then it is decided anew), else `None`.
        request_revision: Option<i64>,
    },
    /// Write back a decision someone else changed or deleted (see the guard).
    Restore {
        id: RequestId,
        /// The decision key's mod revision in etcd now (0: deleted).
        decision_fence: i64,
        decision: Box<Decision>,
    },
    /// Answer a request key whose segment cannot be a request id: an `invalid` decision at the
    /// decision key with the same segment, or its deletion once the request is gone.
    Odd {
        segment: Vec<u8>,
        request: Option<OddRequest>,
    },
}

/// A request to decide, with what its decision is made of.
#[derive(Debug, Clone)]
pub struct Decide {
    pub id: RequestId,
    pub request_revision: i64,
    /// Compare the decision key's mod revision too (`Some(0)`: it must not exist): only for
    /// a request whose last write has an unknown outcome.
    pub decision_fence: Option<i64>,
    /// The status and reason of this request revision's decision, if it has one.
    pub previous: Option<(Status, String)>,
    /// The request's bytes as written, for the decision's echo.
    pub raw: Arc<[u8]>,
    /// `None`: parse `raw` (the ledger keeps the parse only while a request waits).
    pub parsed: Option<Parsed>,
    pub lifecycle: Lifecycle,
    /// What earlier placements of this request went through (engines it failed on are
    /// never tried again), carried into the next decision.
    pub history: Option<Box<Run>>,
    /// It is placed, but its engine was removed or holds more than it can: move it.
    pub displaced: Option<Displaced>,
    /// A gang's member: how long its gang has waited for a decision.
    pub gang_waited: Option<std::time::Duration>,
}

/// Why a placed request must move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Displaced {
    /// Its engine's key was deleted.
    Removed(EngineId),
    /// Its engine now holds more than its capacity, and this is among its newest placements.
    Shrunk(EngineId),
    /// Its engine is being drained (`citadel engine drain`), and it is a service.
    Drained(EngineId),
}

impl Ledger {
    /// Up to `max_work` work items: repairs, releases, odd request keys, then pending requests
    /// oldest first, leaving out those in `skip` and `skip_odd` (written by the leader and not
    /// yet seen).
    pub fn work(
        &self,
        mirror: &Mirror,
        max_work: usize,
        skip: &HashSet<RequestId>,
        skip_odd: &HashSet<Vec<u8>>,
    ) -> Vec<Work> {
        let mut work = Vec::new();
        self.repairs_into(mirror, max_work, skip, &mut work);
        for id in &self.releases {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) {
                continue;
            }
            work.push(Work::Release {
                id: id.clone(),
                request_revision: mirror.request(id).map(|r| r.mod_revision),
            });
        }
        for segment in &self.odd {
            if work.len() >= max_work {
                break;
            }
            if let Some(e) = mirror.odd(segment)
                && !skip_odd.contains(segment)
            {
                work.push(Work::Odd {
                    segment: segment.clone(),
                    request: e.request.clone(),
                });
            }
        }
        // A gang's members are taken together, whatever the limit: it is placed whole or not.
        // Without gangs there is nothing to remember (the common case costs no set).
        let gangs = !self.gangs.is_empty();
        let mut taken: HashSet<&RequestId> = HashSet::new();
        for (_, id) in &self.pending {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id) || (gangs && taken.contains(id)) {
                continue;
            }
            // A gang with a member in flight waits for that write to land: decided without
            // it, the gang would count too few members, and the members parked on that count
            // would wait for their timeout. It stays pending, taken once the write is seen.
            if self.gangs.siblings(id).any(|s| skip.contains(s)) {
                continue;
            }
            let Some(d) = self.decide(mirror, id) else {
                continue;
            };
            work.push(Work::Decide(d));
            if !gangs {
                continue;
            }
            taken.insert(id);
            for sibling in self.gangs.siblings(id) {
                if !taken.insert(sibling) {
                    continue;
                }
                if let Some(d) = self.decide(mirror, sibling) {
                    work.push(Work::Decide(d));
                }
            }
        }
        work
    }

    /// Write-backs of decisions someone else changed, unless the request's own work writes
    /// the key anyway.
    fn repairs_into(
        &self,
        mirror: &Mirror,
        max_work: usize,
        skip: &HashSet<RequestId>,
        work: &mut Vec<Work>,
    ) {
        for (id, foreign) in &self.guard.repairs {
            if work.len() >= max_work {
                break;
            }
            if skip.contains(id)
                || matches!(self.class.get(id), Some(Class::Pending(_) | Class::Release))
            {
                continue;
            }
            if let Some(decision) = mirror.rebuild_decision(id) {
                work.push(Work::Restore {
                    id: id.clone(),
                    decision_fence: foreign.fence(),
                    decision: Box::new(decision),
                });
            } else if mirror.request(id).is_none() && mirror.decision(id).is_none() {
                work.push(Work::Release {
                    id: id.clone(),
                    request_revision: None,
                });
            }
        }
    }

    /// The request `id`, waiting for a decision, ready to decide.
    fn decide(&self, mirror: &Mirror, id: &RequestId) -> Option<Decide> {
        let r = mirror.request(id)?;
        let rev = r.mod_revision;
        let d = mirror.decision(id);
        Some(Decide {
            id: id.clone(),
            request_revision: rev,
            // A write of ours whose outcome is unknown may still land: compare the key too.
            decision_fence: self
                .guard
                .uncertain
                .contains(id)
                .then(|| d.map_or(0, |d| d.mod_revision)),
            // Only this revision's own decision counts: a rewritten request is decided
            // anew even when the answer is the same.
            previous: d
                .filter(|d| d.request_revision == rev)
                .map(|d| (d.status, d.reason.clone())),
            raw: r.raw_shared(),
            // Parsed by the leader outside the lock when the ledger no longer holds it.
            parsed: self.parses.get(id).cloned(),
            lifecycle: r.lifecycle,
            history: d
                .filter(|d| matches!(d.status, Status::Pending | Status::Unschedulable))
                .and_then(|d| d.run.clone()),
            displaced: self.displaced(mirror, id),
            gang_waited: self.gangs.waited(id, std::time::Instant::now()),
        })
    }
}
