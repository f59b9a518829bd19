//! Gangs: groups placed all or nothing. The ledger keeps, per gang, its members that wait for a
//! decision (pending or parked), so that the leader takes a gang's members together, and when
//! the gang began to wait, for its `group_timeout`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Ledger;
use crate::cache::Mirror;
use crate::model::RequestId;

/// The members of each gang that wait for a decision, and since when the gang waits.
#[derive(Debug, Default)]
pub(super) struct Gangs {
    members: HashMap<Arc<str>, Waiting>,
    /// Which gang each waiting member is in (its request may change gang).
    gang_of: HashMap<RequestId, Arc<str>>,
}

#[derive(Debug)]
struct Waiting {
    ids: BTreeSet<RequestId>,
    /// When the first of these members began to wait (on this replica: a new leader starts
    /// the clock again, which only ever waits longer).
    since: Instant,
    /// The gang's timeout, in seconds, as its newest member says.
    timeout: Duration,
    /// Its members were taken out of the parked set once its timeout passed.
    expired: bool,
}

impl Gangs {
    /// No gang waits.
    pub(super) fn is_empty(&self) -> bool {
        self.gang_of.is_empty()
    }

    /// The other waiting members of `id`'s gang.
    pub(super) fn siblings(&self, id: &RequestId) -> impl Iterator<Item = &RequestId> {
        self.gang_of
            .get(id)
            .and_then(|g| self.members.get(g))
            .into_iter()
            .flat_map(|w| w.ids.iter())
            .filter(move |m| *m != id)
    }

    /// How long `id`'s gang has waited.
    pub(super) fn waited(&self, id: &RequestId, now: Instant) -> Option<Duration> {
        let w = self.members.get(self.gang_of.get(id)?)?;
        Some(now.saturating_duration_since(w.since))
    }

    fn remove(&mut self, id: &RequestId) {
        if let Some(g) = self.gang_of.remove(id)
            && let Some(w) = self.members.get_mut(&g)
        {
            w.ids.remove(id);
            if w.ids.is_empty() {
                self.members.remove(&g);
            }
        }
    }

    fn insert(&mut self, id: &RequestId, gang: &Arc<str>, timeout_s: u64) {
        if self.gang_of.get(id) == Some(gang) {
            return;
        }
        self.remove(id);
        let w = self.members.entry(gang.clone()).or_insert_with(|| Waiting {
            ids: BTreeSet::new(),
            since: Instant::now(),
            timeout: Duration::ZERO,
            expired: false,
        });
        w.ids.insert(id.clone());
        w.timeout = Duration::from_secs(timeout_s);
        self.gang_of.insert(id.clone(), gang.clone());
    }

    /// Members of gangs whose timeout passed since they were last looked at, once per gang.
    fn expired(&mut self, now: Instant) -> Vec<RequestId> {
        let mut out = Vec::new();
        for w in self.members.values_mut() {
            if !w.expired && now.saturating_duration_since(w.since) >= w.timeout {
                w.expired = true;
                out.extend(w.ids.iter().cloned());
            }
        }
        out
    }

    pub(super) fn clear(&mut self) {
        self.members.clear();
        self.gang_of.clear();
    }
}

/// Members of groups with a disruption budget that preemption took down and that are not
/// placed again yet, by group.
#[derive(Debug, Default)]
pub(super) struct Down {
    by_group: HashMap<Arc<str>, BTreeSet<RequestId>>,
    group_of: HashMap<RequestId, Arc<str>>,
}

impl Down {
    fn set(&mut self, id: &RequestId, group: Option<&Arc<str>>) {
        if self.group_of.get(id) == group {
            return;
        }
        if let Some(g) = self.group_of.remove(id)
            && let Some(ids) = self.by_group.get_mut(&g)
        {
            ids.remove(id);
            if ids.is_empty() {
                self.by_group.remove(&g);
            }
        }
        if let Some(g) = group {
            self.by_group
                .entry(g.clone())
                .or_default()
                .insert(id.clone());
            self.group_of.insert(id.clone(), g.clone());
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_group.clear();
        self.group_of.clear();
    }
}

impl Ledger {
    /// Keeps `id` in its gang's waiting members while it waits for a decision, and among its
    /// group's members down while it is preempted.
    pub(super) fn index_gang(&mut self, mirror: &Mirror, id: &RequestId, waits: bool) {
        // No request has ever had a group (the mirror would keep tenants): nothing to index.
        if !mirror.tracks_tenants() {
            return;
        }
        let request = mirror.request(id);
        match request.and_then(|r| r.gang.as_ref()) {
            Some((gang, timeout)) if waits => self.gangs.insert(id, gang, *timeout),
            _ => self.gangs.remove(id),
        }
        let down = request.and_then(|r| r.budgeted.as_ref()).filter(|_| {
            mirror.decision(id).is_some_and(|d| {
                d.status == crate::model::Status::Preempted
                    && request.is_some_and(|r| r.mod_revision == d.request_revision)
            })
        });
        if down.is_some() || !self.down.group_of.is_empty() {
            self.down.set(id, down);
        }
    }

    /// How many members of each group with a disruption budget are down (preempted, not
    /// placed again): what preemption may take is the budget less these.
    pub fn down(&self) -> HashMap<Arc<str>, u32> {
        self.down
            .by_group
            .iter()
            .map(|(g, ids)| (g.clone(), ids.len() as u32))
            .collect()
    }

    /// Gangs whose `group_timeout` passed are decided again, once: the leader then decides
    /// them unschedulable as a whole if they still do not fit.
    pub fn expire_gangs(&mut self, mirror: &Mirror) {
        let due = self.gangs.expired(Instant::now());
        if !due.is_empty() {
            self.retry_ids(mirror, due);
        }
    }
}
