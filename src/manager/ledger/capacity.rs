//! Capacity as the ledger follows it: parked requests re-tried when room appears, and the
//! placements that must move (their engine was removed or drained, or holds more than it can).

use super::Ledger;
use super::classify::Since;
use super::parked::Demand;
use super::work::Displaced;
use crate::cache::Mirror;
use crate::model::{EngineId, Lifecycle, MemoryMb, Millicpus, RequestId};

impl Ledger {
    /// Reclassifies the requests placed on `engine` (it came or went).
    pub(super) fn reclassify_on(&mut self, mirror: &Mirror, engine: &EngineId) {
        let on: Vec<RequestId> = mirror
            .reservations_on(engine)
            .map(|(id, ..)| id.clone())
            .collect();
        for id in on {
            self.classify(mirror, &id);
        }
    }

    /// If `engine` holds more than its capacity (changed by hand, or a smaller `--overcommit`),
    /// its newest placements are moved until the rest fit. Live use does not count here.
    pub(super) fn check_capacity(&mut self, mirror: &Mirror, engine: &EngineId) {
        let Some(((used_c, used_m), (cap_c, cap_m))) = mirror.load(engine) else {
            return;
        };
        let fits = used_c <= cap_c && used_m <= cap_m;
        if fits && self.evicted.is_empty() {
            return;
        }
        // Choose afresh: capacity may have grown back since earlier evictions.
        let mut held: Vec<(i64, RequestId, Millicpus, MemoryMb)> = mirror
            .reservations_on(engine)
            .map(|(id, rev, c, m)| (rev, id.clone(), c, m))
            .collect();
        let before: Vec<RequestId> = held
            .iter()
            .filter(|(_, id, _, _)| self.evicted.remove(id))
            .map(|(_, id, _, _)| id.clone())
            .collect();
        if !fits {
            held.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let (mut c, mut m) = (used_c, used_m);
            for (_, id, hc, hm) in &held {
                if c <= cap_c && m <= cap_m {
                    break;
                }
                self.evicted.insert(id.clone());
                c.0 = c.0.saturating_sub(hc.0);
                m.0 = m.0.saturating_sub(hm.0);
            }
            tracing::warn!(engine = %engine,
                reserved = format!("{}/{} cpus, {}/{} MB", used_c, cap_c, used_m.0, cap_m.0),
                moving = self.evicted.len(),
                "engine holds more than its capacity: moving its newest placements until the rest fit");
        }
        for id in before.iter().chain(held.iter().map(|(_, id, _, _)| id)) {
            self.classify(mirror, id);
        }
    }

    /// Why a placed request must move, if it must.
    pub(super) fn displaced(&self, mirror: &Mirror, id: &RequestId) -> Option<Displaced> {
        let engine = mirror.reserved_on(id)?;
        if !mirror.has_engine(engine) {
            Some(Displaced::Removed(engine.clone()))
        } else if self.evicted.contains(id) {
            Some(Displaced::Shrunk(engine.clone()))
        } else if mirror.is_drained(engine)
            && mirror
                .request(id)
                .is_some_and(|q| q.lifecycle == Lifecycle::Service)
            && !mirror.held_by_volume(id, engine)
        {
            Some(Displaced::Drained(engine.clone()))
        } else {
            None
        }
    }

    /// A placement the leader planned did not commit: refusals made beside it get another look.
    pub fn retry_waiting(&mut self, mirror: &Mirror) {
        self.capacity_changed(mirror);
    }

    /// Capacity may have grown anywhere: every parked request gets another look.
    pub(super) fn capacity_changed(&mut self, mirror: &Mirror) {
        self.capacity_epoch += 1;
        let all = self.waiting.take_all();
        self.retry(mirror, all);
    }

    /// `engine` may have more room than before (a release, a new or larger engine, its health
    /// back): parked requests that fit into what it has free get another look, oldest first.
    /// Any change starts a new capacity epoch: what the leader found unschedulable before it
    /// is no longer known to be.
    pub(super) fn capacity_grew_on(&mut self, mirror: &Mirror, engine: &EngineId) {
        self.capacity_epoch += 1;
        if self.waiting.is_empty() {
            return;
        }
        let Some(((used_c, used_m), (cap_c, cap_m))) = mirror.load(engine) else {
            return;
        };
        let free = Demand {
            cpus: Millicpus(cap_c.0.saturating_sub(used_c.0)),
            memory: MemoryMb(cap_m.0.saturating_sub(used_m.0)),
        };
        let fitting = self.waiting.take_fitting(free);
        self.retry(mirror, fitting);
    }

    /// Takes requests (parked or not) to be decided again.
    pub(super) fn retry_ids(&mut self, mirror: &Mirror, ids: Vec<RequestId>) {
        for id in ids {
            if let Some(p) = self.parked_in.get_mut(&id) {
                p.since = Since::Retry;
            }
            self.classify(mirror, &id);
        }
    }

    /// Takes requests out of the parked set to be decided again.
    fn retry(&mut self, mirror: &Mirror, ids: Vec<RequestId>) {
        for id in ids {
            if let Some(p) = self.parked_in.get_mut(&id) {
                p.since = Since::Retry;
            }
            self.class.remove(&id);
            self.classify(mirror, &id);
        }
    }
}
