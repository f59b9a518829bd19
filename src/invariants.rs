//! The invariants, checked from etcd's own contents (`citadel check`, the tests and the bench).
//!
//! 1. No engine's reservations exceed its capacity (times the overcommit factor), and no host
//!    port is reserved twice on one engine.
//! 2. A placed decision holds exactly one reservation (inside it), on the engine it names, and
//!    no other decision holds one.
//! 7. No request is assigned to two engines' agents at once (no twin): the leader withdraws an
//!    assignment in the very transaction that moves it.
//!
//! And what a settled cluster shows, which a live one passes through for a moment: every
//! request has a decision for its current revision, no decision outlives its request, and no
//! placement names an engine that is not registered (the leader moves those). Engine keys
//! that can never be scheduled (an unreadable value, an id no command line can name) are
//! named too.
//!
//! It may not write: it reads etcd at one revision and reports.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::Client;
use serde::Serialize;

use crate::keys::{Key, Keys, NOT_TEXT_ID};
use crate::model::{Decision, EngineSpec, HostPort, MemoryMb, Millicpus, Status};
use crate::store::{self, StoreError};

/// What the check found. Empty lists everywhere mean the invariants hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// etcd's revision the check read.
    pub revision: i64,
    pub engines: usize,
    pub requests: usize,
    pub decided: usize,
    pub placed: usize,
    pub unschedulable: usize,
    pub invalid: usize,
    /// Evicted by a request of higher priority, waiting to be placed again.
    pub preempted: usize,
    /// Waiting to be placed again after a failed launch or a lost engine.
    pub pending: usize,
    /// Containers that failed to start, exited (batch) or were lost with their engine.
    pub ended: usize,
    /// `engine: reserved/capacity` for each engine over capacity.
    pub overcommitted_engines: Vec<String>,
    /// `engine port` for each host port reserved more than once.
    pub double_bound_ports: Vec<String>,
    /// Placed decisions without a reservation on a named engine, and other decisions with one.
    pub mismatched: Vec<String>,
    /// Requests without a decision for their current revision (or only a `pending` one).
    pub undecided: Vec<String>,
    /// Decisions whose request is gone.
    pub without_request: Vec<String>,
    /// Placements on an engine that is not registered.
    pub on_missing_engines: Vec<String>,
    /// Engine keys the leader never schedules: their value is unreadable, or their id breaks
    /// the id grammar.
    pub ignored_engines: Vec<String>,
    /// Requests assigned to more than one engine's agent.
    pub assigned_twice: Vec<String>,
    /// Assignments no decision holds (the leader withdraws them).
    pub stale_assignments: Vec<String>,
}

impl Report {
    /// Broken invariants: never true for a moment, whatever the load.
    pub fn violations(&self) -> usize {
        self.overcommitted_engines.len()
            + self.double_bound_ports.len()
            + self.mismatched.len()
            + self.assigned_twice.len()
    }

    /// What a settled cluster never shows, and a busy one may for a moment: requests waiting
    /// for their decision, decisions waiting to be released, placements waiting to move.
    pub fn unsettled(&self) -> usize {
        self.undecided.len()
            + self.without_request.len()
            + self.on_missing_engines.len()
            + self.stale_assignments.len()
    }

    /// Keys an operator wrote that citadel cannot use: waiting changes nothing.
    pub fn ignored(&self) -> usize {
        self.ignored_engines.len()
    }

    /// Every finding, as `(kind, detail)`, broken invariants first.
    pub fn findings(&self) -> Vec<(&'static str, &str)> {
        let lists: [(&'static str, &Vec<String>); 9] = [
            ("overcommitted", &self.overcommitted_engines),
            ("port bound twice", &self.double_bound_ports),
            ("reservation mismatch", &self.mismatched),
            ("assigned twice", &self.assigned_twice),
            ("undecided", &self.undecided),
            ("decision without request", &self.without_request),
            ("on a missing engine", &self.on_missing_engines),
            ("stale assignment", &self.stale_assignments),
            ("engine never scheduled", &self.ignored_engines),
        ];
        lists
            .into_iter()
            .flat_map(|(kind, list)| list.iter().map(move |d| (kind, d.as_str())))
            .collect()
    }
}

/// Reads everything under the prefix at one revision and checks it.
pub async fn check_etcd(
    client: &Client,
    keys: &Keys,
    overcommit: f64,
) -> Result<Report, StoreError> {
    let (kvs, revision) = store::range_all(client, keys.root(), 5_000).await?;
    let mut report = check(
        keys,
        kvs.iter()
            .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
        overcommit,
    );
    report.revision = revision;
    Ok(report)
}

/// Checks a set of `(key, value, mod revision)` as read from etcd at one revision.
pub fn check<'a>(
    keys: &Keys,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
    overcommit: f64,
) -> Report {
    let mut report = Report::default();
    let seen = Seen::read(keys, kvs, &mut report);
    seen.settlement(&mut report);
    seen.assignments(&mut report);
    let used = seen.reservations(&mut report);
    seen.capacity(&used, overcommit, &mut report);
    report
}

/// How the check names a request key whose segment cannot be a request id: its bytes,
/// escaped and quoted.
fn odd_name(segment: &[u8]) -> String {
    format!("\"{}\"", segment.escape_ascii())
}

/// What one engine's reservations add up to: cpus, memory, how often each host port is held,
/// and disk.
type Held = (Millicpus, MemoryMb, BTreeMap<HostPort, usize>, MemoryMb);

/// The keys the check reads, sorted by kind.
#[derive(Default)]
struct Seen {
    /// Engines whose key parses, for their capacity.
    engines: BTreeMap<String, EngineSpec>,
    /// Every engine key, readable or not.
    registered: BTreeSet<String>,
    /// Request id to the revision it was last written at.
    requests: BTreeMap<String, i64>,
    decisions: BTreeMap<String, Decision>,
    /// Request id to the engines whose agents it is assigned to.
    assignments: BTreeMap<String, Vec<String>>,
}

impl Seen {
    fn read<'a>(
        keys: &Keys,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
        report: &mut Report,
    ) -> Self {
        let mut seen = Seen::default();
        for (key, value, mod_revision) in kvs {
            match keys.parse(key) {
                Some(Key::Engine(id)) => {
                    seen.registered.insert(id.to_string());
                    match EngineSpec::parse(&id, value) {
                        Ok(spec) => {
                            seen.engines.insert(id.to_string(), spec);
                        }
                        Err(e) => report
                            .ignored_engines
                            .push(format!("{:?}: {e}", id.as_str())),
                    }
                }
                Some(Key::OddEngine(segment)) => report
                    .ignored_engines
                    .push(format!("{}: {NOT_TEXT_ID}", odd_name(&segment))),
                Some(Key::Request(id)) => {
                    seen.requests.insert(id.to_string(), mod_revision);
                }
                Some(Key::OddRequest(segment, _)) => {
                    seen.requests.insert(odd_name(&segment), mod_revision);
                }
                Some(Key::Decision(id)) => seen.decision(id.to_string(), value, report),
                Some(Key::OddDecision(segment)) => seen.decision(odd_name(&segment), value, report),
                Some(Key::Assignment(engine, id)) => seen
                    .assignments
                    .entry(id.to_string())
                    .or_default()
                    .push(engine.to_string()),
                _ => {}
            }
        }
        report.requests = seen.requests.len();
        report.decided = seen.decisions.len();
        report.engines = seen.registered.len();
        seen
    }

    fn decision(&mut self, id: String, value: &[u8], report: &mut Report) {
        match serde_json::from_slice::<Decision>(value) {
            Ok(d) => {
                self.decisions.insert(id, d);
            }
            Err(e) => report
                .mismatched
                .push(format!("{id}: unreadable decision: {e}")),
        }
    }

    /// Requests assigned twice, and assignments no placement holds.
    fn assignments(&self, report: &mut Report) {
        for (id, engines) in &self.assignments {
            if engines.len() > 1 {
                report
                    .assigned_twice
                    .push(format!("{id}: assigned to {}", engines.join(" and ")));
            }
            for engine in engines {
                let held = self.decisions.get(id).is_some_and(|d| {
                    matches!(d.status, Status::Placed | Status::Exited)
                        && d.resource.as_ref().is_some_and(|r| r.id == *engine)
                });
                if !held {
                    report.stale_assignments.push(format!(
                        "{id}: assigned to {engine}, which no decision holds"
                    ));
                }
            }
        }
    }

    /// Requests still waiting for their decision (a gang's member waiting for its gang is
    /// not), and decisions whose request is gone.
    fn settlement(&self, report: &mut Report) {
        for (id, rev) in &self.requests {
            match self.decisions.get(id) {
                None => report.undecided.push(format!("{id}: no decision")),
                Some(d) if d.request_revision != *rev => report.undecided.push(format!(
                    "{id}: the decision is for revision {}, the request is at {rev}",
                    d.request_revision
                )),
                // A gang's member waiting for the rest of its gang is decided: it waits, and
                // says why, until its gang fits or its group_timeout passes.
                Some(d) if d.status == Status::Pending && !is_gang_member(d) => report
                    .undecided
                    .push(format!("{id}: pending: {}", d.reason)),
                Some(_) => {}
            }
        }
        for id in self.decisions.keys() {
            if !self.requests.contains_key(id) {
                report
                    .without_request
                    .push(format!("{id}: its request does not exist"));
            }
        }
    }

    /// Counts each decision by status, checks that placements and reservations pair up, and
    /// adds up what each engine holds.
    fn reservations(&self, report: &mut Report) -> BTreeMap<&str, Held> {
        let mut used: BTreeMap<&str, Held> = BTreeMap::new();
        for (id, d) in &self.decisions {
            match d.status {
                Status::Placed => report.placed += 1,
                Status::Unschedulable => report.unschedulable += 1,
                Status::Preempted => report.preempted += 1,
                Status::Invalid => report.invalid += 1,
                Status::Pending => report.pending += 1,
                Status::Failed | Status::Exited | Status::Lost => report.ended += 1,
            }
            let placed = d.status == Status::Placed;
            let engine = d.resource.as_ref().map(|r| r.id.as_str());
            match (&d.reservation, engine) {
                (Some(r), Some(engine)) => {
                    if !self.registered.contains(engine) {
                        report.on_missing_engines.push(format!(
                            "{id}: {} on {engine}, which is not registered",
                            d.status
                        ));
                    }
                    if !placed {
                        report.mismatched.push(format!(
                            "{id}: {} but holds a reservation on {engine}",
                            d.status
                        ));
                    }
                    // Counted whatever the status: capacity a decision claims is taken.
                    let held = r.held();
                    let u = used.entry(engine).or_default();
                    u.0.0 += held.cpus.0;
                    u.1.0 += held.memory.0;
                    u.3.0 += held.disk.0;
                    for p in held.ports {
                        *u.2.entry(p).or_default() += 1;
                    }
                }
                (Some(_), None) => report
                    .mismatched
                    .push(format!("{id}: holds a reservation on no engine")),
                (None, _) if placed => report.mismatched.push(format!(
                    "{id}: placed on {:?} without a reservation",
                    engine.unwrap_or("")
                )),
                (None, _) => {}
            }
        }
        used
    }

    /// Engines holding more than their capacity (times the overcommit factor), and host ports
    /// held twice on one engine.
    fn capacity(&self, used: &BTreeMap<&str, Held>, overcommit: f64, report: &mut Report) {
        for (engine, (cpus, memory, ports, disk)) in used {
            if let Some(spec) = self.engines.get(*engine) {
                let cap_c = (spec.cpus.0 as f64 * overcommit).floor() as u64;
                let cap_m = (spec.memory.0 as f64 * overcommit).floor() as u64;
                let cap_d = (spec.disk.0 as f64 * overcommit).floor() as u64;
                if cpus.0 > cap_c || memory.0 > cap_m || disk.0 > cap_d {
                    report.overcommitted_engines.push(format!(
                        "{engine}: {}/{} cpus, {}/{} MB, {}/{} MB disk",
                        cpus.as_cpus(),
                        cap_c as f64 / 1000.0,
                        memory.0,
                        cap_m,
                        disk.0,
                        cap_d
                    ));
                }
            }
            let doubles: BTreeSet<String> = ports
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(p, _)| format!("{engine} {p}"))
                .collect();
            report.double_bound_ports.extend(doubles);
        }
    }
}

/// Whether a decision answers a gang's member (its request, as echoed, has `group_min` > 1).
fn is_gang_member(d: &Decision) -> bool {
    let request = d.container.value();
    request.get("group").is_some_and(|g| g.is_string())
        && request
            .get("group_min")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|n| n > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> Report {
        check(
            &Keys::default(),
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes(), 1)),
            1.0,
        )
    }

    const ENGINE: (&str, &str) = ("/citadel/engines/e1", r#"{"cpus":1,"memory":1000}"#);

    /// A decision of `status` on e1, holding `cpus` and host port `port` if `cpus` is given.
    fn decision(id: &str, status: &str, held: Option<(f64, u16)>) -> (String, String) {
        let reservation = held
            .map(|(cpus, port)| {
                format!(
                    r#""reservation":{{"cpus":{cpus},"memory":100,"ports":[{{"proto":"tcp","port":{port}}}]}},"#
                )
            })
            .unwrap_or_default();
        (
            format!("/citadel/decisions/{id}"),
            format!(
                r#"{{"container":{{}},"resource":{{"id":"e1","addr":"","total_cpus":1,"total_memory":1000}},{reservation}"status":"{status}","request_revision":1,"decided_at":"","decided_by":""}}"#
            ),
        )
    }

    fn placed(id: &str, cpus: f64, port: u16) -> (String, String) {
        decision(id, "placed", Some((cpus, port)))
    }

    fn pairs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
        std::iter::once(ENGINE)
            .chain(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect()
    }

    #[test]
    fn a_consistent_state_passes() {
        let report = run(&pairs(&[placed("a", 0.5, 80), placed("b", 0.5, 81)]));
        assert_eq!(report.violations(), 0, "{report:?}");
        assert_eq!(report.placed, 2);
    }

    #[test]
    fn a_planted_overcommit_and_double_port_are_caught() {
        let report = run(&pairs(&[placed("a", 0.6, 80), placed("b", 0.6, 80)]));
        assert_eq!(report.overcommitted_engines.len(), 1, "{report:?}");
        assert_eq!(report.double_bound_ports, vec!["e1 80/tcp".to_string()]);
    }

    #[test]
    fn a_request_assigned_twice_or_without_its_placement_is_named() {
        let assign = |engine: &str, id: &str| {
            (
                format!("/citadel/assignments/{engine}/{id}"),
                "{}".to_string(),
            )
        };
        let report = run(&pairs(&[
            placed("a", 0.1, 80),
            assign("e1", "a"),
            placed("b", 0.1, 81),
            assign("e1", "b"),
            assign("e2", "b"),
            assign("e1", "gone"),
        ]));
        assert_eq!(
            report.assigned_twice,
            vec!["b: assigned to e1 and e2".to_string()]
        );
        assert_eq!(report.violations(), 1, "{report:?}");
        assert_eq!(
            report.stale_assignments,
            vec![
                "b: assigned to e2, which no decision holds".to_string(),
                "gone: assigned to e1, which no decision holds".to_string(),
            ]
        );
    }

    #[test]
    fn placements_and_reservations_must_pair_up() {
        let report = run(&pairs(&[
            decision("a", "placed", None),
            decision("b", "exited", Some((0.1, 80))),
            decision("c", "exited", None),
            ("/citadel/decisions/d".into(), "{".into()),
        ]));
        assert_eq!(report.mismatched.len(), 3, "{report:?}");
        for want in ["a: placed on", "b: exited but holds", "d: unreadable"] {
            assert!(
                report.mismatched.iter().any(|m| m.starts_with(want)),
                "{want}: {report:?}"
            );
        }
    }

    #[test]
    fn an_unsettled_cluster_names_what_waits() {
        let report = check(
            &Keys::default(),
            [
                (ENGINE.0.as_bytes(), ENGINE.1.as_bytes(), 2),
                (&b"/citadel/requests/current"[..], &b"{}"[..], 1),
                (&b"/citadel/requests/rewritten"[..], &b"{}"[..], 9),
                (&b"/citadel/requests/waiting"[..], &b"{}"[..], 4),
            ]
            .into_iter()
            .chain(
                [
                    decision("current", "placed", Some((0.1, 80))),
                    decision("rewritten", "unschedulable", None),
                    decision("gone", "invalid", None),
                ]
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes(), 5)),
            )
            .chain([(
                &b"/citadel/decisions/elsewhere"[..],
                &br#"{"container":{},"resource":{"id":"e9","addr":"","total_cpus":1,"total_memory":1},"reservation":{"cpus":0.1,"memory":1},"status":"placed","request_revision":1,"decided_at":"","decided_by":""}"#[..],
                6,
            )]),
            1.0,
        );
        assert_eq!(report.violations(), 0, "{report:#?}");
        assert_eq!(report.engines, 1);
        assert_eq!(
            report.undecided,
            vec![
                "rewritten: the decision is for revision 1, the request is at 9".to_string(),
                "waiting: no decision".to_string(),
            ]
        );
        assert_eq!(
            report.without_request,
            vec![
                "elsewhere: its request does not exist".to_string(),
                "gone: its request does not exist".to_string(),
            ]
        );
        assert_eq!(
            report.on_missing_engines,
            vec!["elsewhere: placed on e9, which is not registered".to_string()]
        );
        assert_eq!(report.unsettled(), 5);
        assert_eq!(report.findings().len(), 5);
    }
}
