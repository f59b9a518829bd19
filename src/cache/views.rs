//! Read-only views of the mirror: one request, decision or engine; where each request stands,
//! the newest decisions and the election's candidates, for the operator's status page, metrics
//! and commands.
//!
//! Each view is one pass over the requests or decisions under the caller's lock (a few
//! milliseconds at 200,000 requests) and returns a bounded list, so a status page refreshing
//! every two seconds costs the replica little and never ships every request.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use super::mirror::*;
use crate::keys::{Key, Keys, NOT_TEXT_ID};
use crate::model::*;

/// One reservation, as `citadel engine show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub request: RequestId,
    pub status: Option<Status>,
    pub cpus: Millicpus,
    pub memory: MemoryMb,
    pub ports: Vec<HostPort>,
}

/// Where a request stands: the status of the decision on its current revision, or queued for
/// one (new, changed, or its decision being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Decided(Status),
    Queued,
}

// By name: `Status` itself is not `Hash`, and each standing has a name of its own.
impl std::hash::Hash for Standing {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl Standing {
    /// Every standing, in the order an operator reads them: what needs a look first.
    pub const ORDER: [Standing; 9] = [
        Standing::Decided(Status::Unschedulable),
        Standing::Decided(Status::Preempted),
        Standing::Decided(Status::Failed),
        Standing::Decided(Status::Invalid),
        Standing::Decided(Status::Lost),
        Standing::Decided(Status::Pending),
        Standing::Queued,
        Standing::Decided(Status::Exited),
        Standing::Decided(Status::Placed),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Standing::Queued => "queued",
            Standing::Decided(s) => s.as_str(),
        }
    }
}

/// One request as the status page lists it.
#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: RequestId,
    /// The decision's reason (empty while queued).
    pub reason: String,
    /// The engine its decision names, if any.
    pub engine: Option<String>,
    pub request_revision: i64,
    /// The decision key's mod revision (`None` while queued).
    pub decision_revision: Option<i64>,
}

/// The requests of one standing: how many, and the first few.
#[derive(Debug, Clone)]
pub struct StandingGroup {
    pub standing: Standing,
    pub total: usize,
    /// Newest decision first; queued requests oldest first (the longest wait leads).
    pub rows: Vec<RequestRow>,
}

/// A decision, as the status page lists the newest.
#[derive(Debug, Clone)]
pub struct RecentDecision {
    pub id: RequestId,
    pub status: Status,
    pub reason: String,
    pub engine: Option<String>,
    pub scheduler: Option<&'static str>,
    /// The decision key's mod revision.
    pub revision: i64,
    pub request_revision: i64,
}

/// One campaign key of the election.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The key's last segment (etcd's election API names it after the lease).
    pub key: String,
    pub create_revision: i64,
    /// 0: the key has no lease (not written by the election API; it blocks every election).
    pub lease: i64,
    /// The candidate's own description, when its value is one.
    pub info: Option<LeaderInfo>,
    /// This key leads: the lowest create revision among the keys with a lease.
    pub leads: bool,
}

impl Mirror {
    /// Where `id`'s request stands (it must exist).
    pub(super) fn standing(&self, id: &RequestId, request_revision: i64) -> Standing {
        match self.decisions.get(id) {
            Some(d) if d.request_revision == request_revision => Standing::Decided(d.status),
            _ => Standing::Queued,
        }
    }

    /// How many requests stand where, in [`Standing::ORDER`] (zeros included).
    /// Kept as requests and decisions change: a scrape reads, it does not walk the requests.
    pub fn request_counts(&self) -> Vec<(Standing, usize)> {
        self.tally.counts()
    }

    /// How many decisions have lost their request (the leader releases them). Kept as they
    /// change.
    pub fn orphaned_decisions(&self) -> usize {
        self.tally.orphans()
    }

    /// Requests grouped by where they stand, in [`Standing::ORDER`], at most `per_group` rows
    /// each (groups with no request left out).
    pub fn requests_by_standing(&self, per_group: usize) -> Vec<StandingGroup> {
        // Sort keys first, rows only for what is shown: a reason is cloned per row shown, not
        // per request.
        let mut keyed: HashMap<Standing, Vec<(i64, &RequestId)>> = HashMap::new();
        for (id, r) in &self.requests {
            let standing = self.standing(id, r.mod_revision);
            let key = match (standing, self.decisions.get(id)) {
                (Standing::Decided(_), Some(d)) => -d.mod_revision,
                _ => r.mod_revision,
            };
            keyed.entry(standing).or_default().push((key, id));
        }
        Standing::ORDER
            .iter()
            .filter_map(|standing| {
                let mut all = keyed.remove(standing)?;
                let total = all.len();
                if all.len() > per_group && per_group > 0 {
                    all.select_nth_unstable(per_group - 1);
                }
                all.truncate(per_group);
                all.sort_unstable();
                let rows = all
                    .into_iter()
                    .filter_map(|(_, id)| self.request_row(id))
                    .collect();
                Some(StandingGroup {
                    standing: *standing,
                    total,
                    rows,
                })
            })
            .collect()
    }

    pub(super) fn request_row(&self, id: &RequestId) -> Option<RequestRow> {
        let r = self.requests.get(id)?;
        let d = self
            .decisions
            .get(id)
            .filter(|d| d.request_revision == r.mod_revision);
        Some(RequestRow {
            id: id.clone(),
            reason: d.map(|d| d.reason.clone()).unwrap_or_default(),
            engine: d.and_then(|d| d.engine.as_ref().map(ToString::to_string)),
            request_revision: r.mod_revision,
            decision_revision: d.map(|d| d.mod_revision),
        })
    }

    /// The `n` decisions with the highest mod revision, newest first.
    pub fn recent_decisions(&self, n: usize) -> Vec<RecentDecision> {
        if n == 0 {
            return Vec::new();
        }
        let mut newest: BinaryHeap<Reverse<(i64, &RequestId)>> = BinaryHeap::with_capacity(n + 1);
        for (id, d) in &self.decisions {
            newest.push(Reverse((d.mod_revision, id)));
            if newest.len() > n {
                newest.pop();
            }
        }
        let mut ids: Vec<(i64, &RequestId)> = newest.into_iter().map(|Reverse(k)| k).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .filter_map(|(_, id)| {
                let d = self.decisions.get(id)?;
                Some(RecentDecision {
                    id: id.clone(),
                    status: d.status,
                    reason: d.reason.clone(),
                    engine: d.engine.as_ref().map(ToString::to_string),
                    scheduler: d.scheduler.map(|s| s.name()),
                    revision: d.mod_revision,
                    request_revision: d.request_revision,
                })
            })
            .collect()
    }

    /// The election's candidates, lowest create revision first, the leader marked.
    pub fn candidates(&self) -> Vec<Candidate> {
        let keys = self.leader_keys();
        let leading = keys.iter().position(|(_, k)| k.lease != 0);
        keys.into_iter()
            .enumerate()
            .map(|(i, (key, k))| Candidate {
                key,
                create_revision: k.create_revision,
                lease: k.lease,
                info: k.info,
                leads: Some(i) == leading,
            })
            .collect()
    }
}

impl Mirror {
    pub fn decision(&self, id: &RequestId) -> Option<&DecisionEntry> {
        self.decisions.get(id)
    }

    /// The mod revision of the decision for the request whose id is `id`, without building an
    /// id (the watch asks this of every decision event).
    pub fn decision_revision(&self, id: &str) -> Option<i64> {
        self.decisions.get(id).map(|d| d.mod_revision)
    }

    /// The odd request key with this segment, and its decision (see [`OddEntry`]).
    pub fn odd(&self, segment: &[u8]) -> Option<&OddEntry> {
        self.odd.get(segment)
    }

    /// Every odd request key's segment, with what the mirror holds of it.
    pub fn odd_keys(&self) -> impl Iterator<Item = (&Vec<u8>, &OddEntry)> {
        self.odd.iter()
    }

    /// Every request id.
    pub fn request_ids(&self) -> impl Iterator<Item = &RequestId> {
        self.requests.keys()
    }

    /// Every id that has a decision.
    pub fn decision_ids(&self) -> impl Iterator<Item = &RequestId> {
        self.decisions.keys()
    }

    /// Every engine's id, valid or not.
    pub fn engine_ids(&self) -> impl Iterator<Item = &EngineId> {
        self.engines.keys()
    }

    /// Where each named volume lives.
    pub fn volumes(&self) -> Arc<HashMap<String, EngineId>> {
        self.volumes.clone()
    }

    /// `id`'s decision as the mirror holds it, rebuilt to be written back (over someone else's
    /// change): `None` when it holds none for the request's current revision.
    pub fn rebuild_decision(&self, id: &RequestId) -> Option<Decision> {
        let d = self.decisions.get(id)?;
        let r = self.requests.get(id)?;
        if d.request_revision != r.mod_revision {
            return None;
        }
        let resource = match &d.engine {
            Some(e) => Some(self.engine_view(e)?.resource()),
            None => None,
        };
        let reservation = self.reservations.get(id).map(|h| {
            Reservation::of(&crate::model::Held {
                cpus: h.cpus,
                memory: h.memory,
                disk: h.disk,
                ports: h.ports.clone(),
                image: h.image.clone(),
                rank: h.rank.clone(),
            })
        });
        Some(Decision {
            container: Echo::of(r.raw()),
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
            preempted_by: String::new(),
            preempted: Vec::new(),
        })
    }

    /// Placed requests on `engine`, with their decisions.
    /// Every request with a placed decision.
    pub fn placed(&self) -> impl Iterator<Item = &RequestId> {
        self.decisions
            .iter()
            .filter(|(_, d)| d.status == Status::Placed)
            .map(|(id, _)| id)
    }

    pub fn placed_on(&self, engine: &EngineId) -> Vec<(RequestId, DecisionEntry)> {
        self.decisions
            .iter()
            .filter(|(_, d)| d.status == Status::Placed && d.engine.as_ref() == Some(engine))
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect()
    }

    /// What decisions hold on `engine`, by request id.
    pub fn held_on(&self, engine: &EngineId) -> Vec<Holding> {
        let mut held: Vec<Holding> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.engine == *engine)
            .map(|(id, r)| Holding {
                request: id.clone(),
                status: self.decisions.get(id).map(|d| d.status),
                cpus: r.cpus,
                memory: r.memory,
                ports: r.ports.clone(),
            })
            .collect();
        held.sort_by(|a, b| a.request.cmp(&b.request));
        held
    }

    pub fn health(&self, engine: &EngineId) -> Option<&HealthEntry> {
        self.health.get(engine)
    }

    /// The engine's agent, if an agent registered it (valid engines only).
    pub fn agent(&self, engine: &EngineId) -> Option<&AgentInfo> {
        self.engines
            .get(engine)
            .and_then(|e| e.spec.as_ref().ok())
            .and_then(|(s, _)| s.wire.agent.as_ref())
    }

    /// Whether any agent is part of the cluster: an engine an agent registered, or an
    /// assignment or report left by one.
    /// Engines keep their tenants: some request has asked for affinity, a priority or a
    /// group (and from then on).
    pub fn tracks_tenants(&self) -> bool {
        self.tracks_tenants
    }

    pub fn has_agents(&self) -> bool {
        self.agents > 0 || !self.assignments.is_empty() || !self.runs.is_empty()
    }

    /// Every valid engine that an agent registered.
    pub fn agent_engines(&self) -> impl Iterator<Item = &EngineId> + '_ {
        self.engines
            .iter()
            .filter(|(_, e)| e.spec.as_ref().is_ok_and(|(s, _)| s.wire.agent.is_some()))
            .map(|(id, _)| id)
    }

    /// Every request placed on an engine an agent runs.
    pub fn placed_on_agents(&self) -> Vec<RequestId> {
        if self.agents == 0 {
            return Vec::new();
        }
        self.decisions
            .iter()
            .filter(|(_, d)| {
                d.status == Status::Placed
                    && d.engine.as_ref().is_some_and(|e| self.agent(e).is_some())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Where the request is assigned to an agent, by engine.
    pub fn assignments(
        &self,
        id: &RequestId,
    ) -> impl Iterator<Item = (&EngineId, &AssignmentEntry)> + '_ {
        self.assignments.get(id).into_iter().flatten()
    }

    /// Every request assigned to an agent.
    pub fn assigned(&self) -> impl Iterator<Item = &RequestId> + '_ {
        self.assignments.keys()
    }

    /// The agent's report on the request from `engine`.
    pub fn run_report(&self, id: &RequestId, engine: &EngineId) -> Option<&RunEntry> {
        self.runs.get(id)?.get(engine)
    }

    /// Every agent report on the request, by engine.
    pub fn run_reports(&self, id: &RequestId) -> impl Iterator<Item = (&EngineId, &RunEntry)> + '_ {
        self.runs.get(id).into_iter().flatten()
    }

    /// Every request an agent reported on.
    pub fn reported(&self) -> impl Iterator<Item = &RequestId> + '_ {
        self.runs.keys()
    }

    /// One valid engine's id, address and TLS files.
    pub fn engine_spec(&self, id: &EngineId) -> Option<EngineSpec> {
        self.engines
            .get(id)
            .and_then(|e| e.spec.as_ref().ok().map(|(s, _)| s.clone()))
    }

    /// Every valid engine's id, address and TLS files.
    pub fn engine_specs(&self) -> Vec<EngineSpec> {
        self.engines
            .values()
            .filter_map(|e| e.spec.as_ref().ok().map(|(s, _)| s.clone()))
            .collect()
    }

    /// The election's keys, lowest create revision (the leader) first.
    pub fn leader_keys(&self) -> Vec<(String, LeaderKey)> {
        let mut keys: Vec<(String, LeaderKey)> = self
            .leaders
            .iter()
            .map(|(s, k)| (s.clone(), k.clone()))
            .collect();
        keys.sort_by_key(|(_, k)| k.create_revision);
        keys
    }

    /// Bumped whenever a campaign key is written or deleted: what was read of the candidates
    /// before is stale.
    pub fn leaders_generation(&self) -> u64 {
        self.leaders_generation
    }

    /// Whether the campaign key `key` is still present.
    pub fn has_leader_key(&self, keys: &Keys, key: &[u8]) -> bool {
        match keys.parse(key) {
            Some(Key::Leader(suffix)) => self.leaders.contains_key(&suffix),
            _ => false,
        }
    }

    pub fn request(&self, id: &RequestId) -> Option<&RequestEntry> {
        self.requests.get(id)
    }

    /// The seed's `ClusterInfo` for the whole cluster.
    pub fn cluster_info(&self) -> ClusterInfo {
        let mut info = ClusterInfo::default();
        let mut images = BTreeSet::new();
        for entry in self.engines.values() {
            if let Ok((spec, _)) = &entry.spec {
                info.engine_count += 1;
                info.cpus += spec.wire.cpus;
                info.memory += spec.wire.memory;
            }
        }
        for u in self.usage.values() {
            info.reserved_cpus += u.cpus.as_cpus();
            info.reserved_memory += u.memory.0 as f64;
            info.container_count += u.count;
        }
        for (id, d) in &self.decisions {
            if d.status == Status::Placed
                && let Some(r) = self.requests.get(id)
                && let Ok(image) = serde_json::from_slice::<crate::model::Image>(r.raw())
            {
                images.insert(image.name);
            }
        }
        info.image_count = images.len() as u64;
        info
    }

    /// One row per engine: the seed's `EngineSnapshot`, plus whether its JSON is valid.
    pub fn engine_rows(&self) -> Vec<(crate::model::EngineSnapshot, String, Option<String>)> {
        self.engines
            .iter()
            .map(|(id, entry)| {
                let u = self.usage.get(id).cloned().unwrap_or_default();
                match &entry.spec {
                    Ok((spec, _)) => (
                        crate::model::EngineSnapshot {
                            id: id.to_string(),
                            cpus: spec.wire.cpus,
                            memory: spec.wire.memory,
                            reserved_cpus: u.cpus.as_cpus(),
                            reserved_memory: u.memory.0 as f64,
                            ..Default::default()
                        },
                        spec.addr.clone(),
                        None,
                    ),
                    Err(e) => (
                        crate::model::EngineSnapshot {
                            id: id.to_string(),
                            ..Default::default()
                        },
                        String::new(),
                        Some(e.to_string()),
                    ),
                }
            })
            .chain(self.odd_engines.iter().map(|segment| {
                (
                    crate::model::EngineSnapshot {
                        id: segment.escape_ascii().to_string(),
                        ..Default::default()
                    },
                    String::new(),
                    Some(NOT_TEXT_ID.to_string()),
                )
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fed::Fed;

    use crate::cache::fed::rid;

    #[test]
    pub(super) fn requests_stand_by_their_current_decision_and_what_needs_a_look_comes_first() {
        let mut f = Fed::new();
        let a = f.request("a", 1.0, "service");
        f.decide("a", "invalid", "cpus: NaN is not a number", a);
        let b = f.request("b", 1.0, "service");
        f.decide(
            "b",
            "unschedulable",
            "0/1 engines fit: 1 insufficient cpus",
            b,
        );
        let c = f.request("c", 1.0, "service");
        f.decide(
            "c",
            "unschedulable",
            "0/1 engines fit: 1 insufficient memory",
            c,
        );
        let stale = f.request("d", 1.0, "service");
        f.decide("d", "invalid", "old", stale);
        f.request("d", 1.0, "service"); // rewritten: its decision is for the old revision
        f.request("e", 1.0, "service");

        let counts: HashMap<&str, usize> = f
            .mirror()
            .request_counts()
            .into_iter()
            .map(|(s, n)| (s.name(), n))
            .collect();
        assert_eq!(counts["unschedulable"], 2);
        assert_eq!(counts["invalid"], 1);
        assert_eq!(counts["queued"], 2);
        assert_eq!(counts["placed"], 0);

        let groups = f.mirror().requests_by_standing(1);
        let names: Vec<&str> = groups.iter().map(|g| g.standing.name()).collect();
        assert_eq!(names, ["unschedulable", "invalid", "queued"]);
        assert_eq!(groups[0].total, 2);
        assert_eq!(groups[0].rows.len(), 1, "capped");
        assert_eq!(groups[0].rows[0].id, rid("c"), "newest decision first");
        assert!(groups[0].rows[0].reason.contains("insufficient memory"));
        assert_eq!(groups[2].rows[0].id, rid("d"), "longest wait first");
        assert_eq!(
            groups[2].rows[0].reason, "",
            "no decision for this revision"
        );
    }

    #[test]
    pub(super) fn the_newest_decisions_come_first() {
        let mut f = Fed::new();
        for id in ["a", "b", "c", "d"] {
            let r = f.request(id, 1.0, "service");
            f.decide(id, "invalid", id, r);
        }
        let recent: Vec<String> = f
            .mirror()
            .recent_decisions(3)
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
        assert_eq!(recent, ["d", "c", "b"]);
        assert!(f.mirror().recent_decisions(0).is_empty());
    }

    #[test]
    pub(super) fn the_first_candidate_with_a_lease_leads() {
        let mut f = Fed::new();
        f.put("/citadel/leader/stray", "by hand");
        f.put_leased(
            "/citadel/leader/694d",
            r#"{"id":"r1","addr":"a:1","since":"t"}"#,
            0x694d,
        );
        f.put_leased("/citadel/leader/694e", r#"{"id":"r2","since":"t"}"#, 0x694e);
        let c = f.mirror().candidates();
        assert_eq!(c.len(), 3);
        assert!(!c[0].leads, "a key without a lease never leads");
        assert!(c[1].leads);
        assert_eq!(c[1].info.as_ref().map(|i| i.id.as_str()), Some("r1"));
        assert!(!c[2].leads);
    }
}
